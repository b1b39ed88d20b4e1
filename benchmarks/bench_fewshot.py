"""Few-shot episode inference time ÷ the bare backbone forwards of its support + query images (issue 19; aim ≤ 1.3).

One episode = ``K`` supports + 1 query at ``--size``² px. The bare cost is the backbone's plain ``forward`` on those
``K + 1`` images (one batch). The episode cost is everything inference does from the same pixels: the frozen
backbone's mid/high features (:class:`weakseg.methods.fewshot.FeatureLevels`; it stops before EfficientNet's 1×1
``conv_head``, which the bare forward runs), then the head's ``predict`` (for SCL with K > 1: the cross-guided
module's K² support passes), plus, for ``scl+clip``, PI-CLIP's CLIP prior of the query (a CLIP forward and a
last-block backward). Heads are untrained (the time does not depend on the weights). Both are timed in the same
process, interleaved, ``--repeats`` times; the medians are compared.

    python benchmarks/bench_fewshot.py --clip runs/fewshot/toy-clip20 \\
        --json benchmarks/results/cpu-2026-11-30/fewshot/bench_fewshot.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

TARGET = 1.3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="efficientnet-lite0")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--clip", type=Path, default=None, help="clip pretrain folder for the scl+clip row")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/cpu-2026-11-30/fewshot/bench_fewshot.json"))
    args = ap.parse_args()

    import torch

    from weakseg.backbones import create_backbone
    from weakseg.data.synthetic import class_names
    from weakseg.methods.clip_es import load_clip_weights
    from weakseg.methods.fewshot import ClipPrior, EpisodeFeatures, FeatureLevels, FewShotConfig, build_fewshot_net

    torch.manual_seed(0)
    backbone = create_backbone(args.backbone, None, 8).eval()
    levels = FeatureLevels(backbone).eval()
    rows = []
    variants = [("prototype", "prototype", "visual"), ("scl", "scl", "visual")]
    if args.clip is not None:
        variants.append(("scl+clip", "scl", "visual+clip"))
    for name, method, prior in variants:
        cfg = FewShotConfig(input_size=args.size, prior=prior, clip_weights=str(args.clip or ""), clip_input=args.size)
        net = build_fewshot_net(method, levels.mid_channels, cfg).eval()
        clip = ClipPrior(load_clip_weights(str(args.clip)), class_names(20), cfg) if prior != "visual" else None
        for k in args.shots:
            x = torch.rand(k + 1, 3, args.size, args.size)
            target = (torch.rand(1, k, args.size, args.size) > 0.6).to(torch.uint8)

            def bare(x=x) -> None:
                with torch.no_grad():
                    backbone(x)

            def episode(x=x, clip=clip, net=net, target=target) -> None:
                with torch.no_grad():
                    mid, high = levels(x)
                pr = clip(x[:1], 3)[None, None] if clip is not None else None
                with torch.no_grad():
                    net.predict(EpisodeFeatures(mid[:1], high[:1], mid[None, 1:], high[None, 1:], target, pr))

            bare(), episode()  # warm-up
            tb, te = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                bare()
                t1 = time.perf_counter()
                episode()
                t2 = time.perf_counter()
                tb.append(t1 - t0)
                te.append(t2 - t1)
            ratio = statistics.median(te) / statistics.median(tb)
            rows.append({
                "row": name, "shots": k, "bare_ms": 1000 * statistics.median(tb),
                "episode_ms": 1000 * statistics.median(te), "ratio": ratio, "target": TARGET,
                "met": ratio <= TARGET, "bare_all_ms": [1000 * t for t in tb], "episode_all_ms": [1000 * t for t in te],
            })  # fmt: skip
            verdict = "met" if ratio <= TARGET else "missed"
            print(f"{name:<10} {k}-shot: episode {rows[-1]['episode_ms']:.1f} ms / bare {rows[-1]['bare_ms']:.1f} ms"
                  f" = {ratio:.2f} ({verdict}, target {TARGET})", flush=True)  # fmt: skip
    out = {
        "backbone": args.backbone, "size": args.size, "repeats": args.repeats, "rows": rows,
        "clip": str(args.clip) if args.clip else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "loadavg": os.getloadavg()},
    }  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
