"""Benchmark (a): MCIS training step time ÷ plain CAM step time on the same batch (CPU).

Same pair batch (B anchors + B partners at 128 px), same backbone (efficientnet-lite0) and head
(the ``cpu`` preset's), measured in one run: plain CAM on the 2B images; MCIS on the B pairs
without self-pairs; MCIS with the reference's three self-pair copies (flip, 0.75×, 2×). A step is
forward + loss + backward + SGD update; warm-up iterations, then the median of ``--iters``.
Targets: ≤ 1.1 without self-pairs, ≤ 4.0 with them (the copies alone are 1 + 0.56 + 4 = 5.56
extra images per anchor, i.e. 3.78× the backbone work of the pair).

    python benchmarks/bench_mcis_step.py [--batch 4] [--size 128] [--iters 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without installing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4, help="pairs per step")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: robust on a shared machine)")
    ap.add_argument("--backbone", default="efficientnet-lite0")
    ap.add_argument("--preset", default="cpu", help="head / stride preset")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from weakseg.backbones import create_backbone
    from weakseg.methods import METHODS, get_preset

    torch.manual_seed(0)
    k = 10
    paper_copies = get_preset("paper").self_pairs
    base = dataclasses.replace(get_preset(args.preset), input_size=args.size, contrastive_from_epoch=0)
    b, s = args.batch, args.size
    anchor, partner = torch.rand(b, 3, s, s), torch.rand(b, 3, s, s)
    y_a = (torch.rand(b, k) < 0.3).float()
    y_a[:, 0] = 1
    y_p = (torch.rand(b, k) < 0.3).float()
    y_p[:, 0] = 1  # the pair shares class 0

    def copies(self_pairs):
        out = []
        for scale, flip in self_pairs:
            n = max(8, round(s * scale))
            v = torch.nn.functional.interpolate(anchor, (n, n), mode="bilinear", align_corners=False)
            out.append(v.flip(-1) if flip else v)
        return out

    cases = {
        "cam (2B images)": ("cam", base, {"image": torch.cat([anchor, partner]), "label": torch.cat([y_a, y_p])}),
        "mcis, no self-pairs": (
            "mcis",
            dataclasses.replace(base, self_pairs=()),
            {"anchor": anchor, "partner": partner, "label_a": y_a, "label_p": y_p, "views": []},
        ),
        "mcis + self-pairs": (
            "mcis",
            dataclasses.replace(base, self_pairs=paper_copies),
            {"anchor": anchor, "partner": partner, "label_a": y_a, "label_p": y_p, "views": copies(paper_copies)},
        ),
    }
    nets = {}
    for name, (method, hp, _) in cases.items():
        torch.manual_seed(0)
        bb = create_backbone(args.backbone, output_stride=hp.output_stride)
        net = METHODS[method].build(bb, k, hp).train()
        opt = torch.optim.SGD(net.parameter_groups(hp), lr=1e-4, momentum=0.9, nesterov=True)
        nets[name] = (net, opt)

    times: dict[str, list[float]] = {name: [] for name in cases}
    for it in range(args.warmup + args.iters):
        for name, (method, hp, batch) in cases.items():  # interleaved: load changes hit every case alike
            net, opt = nets[name]
            t0 = time.perf_counter()
            loss = METHODS[method].step(net, batch, 5, hp)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if it >= args.warmup:
                times[name].append(time.perf_counter() - t0)

    med = {n: statistics.median(t) for n, t in times.items()}
    ref = med["cam (2B images)"]
    print(f"{args.backbone} @ {s}px, {b} pairs/step, preset {args.preset} head, {args.threads} threads")
    print(f"{'case':<24}{'median ms':>10}{'min ms':>9}{'÷ cam':>8}")
    for n, t in times.items():
        print(f"{n:<24}{1000 * med[n]:>10.0f}{1000 * min(t):>9.0f}{med[n] / ref:>8.2f}")
    print(f"ratio without self-pairs: {med['mcis, no self-pairs'] / ref:.2f} (target ≤ 1.1)")
    print(f"ratio with self-pairs:    {med['mcis + self-pairs'] / ref:.2f} (target ≤ 4.0)")


if __name__ == "__main__":
    main()
