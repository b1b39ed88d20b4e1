"""MCIS vs plain CAM: seed mIoU on the synthetic benchmark, same backbone, preset and epochs, several seeds.

For each seed: train a plain CAM classifier and an MCIS classifier (EfficientNet-Lite0, ``cpu``
preset), make CAMs of the train split at scales (1.0, 0.5, 1.5) + flip, and score the seeds
(best background threshold on the train split, as WSSS papers report seeds). MCIS is scored twice:
its plain-head CAMs (``make-cams --set test_partners=0 test_self_pairs=false``), and weakseg's test-time
fusion (plain + co-attention CAMs of 3 partners per class + self-pairs: ``--set test_partners=3
test_self_pairs=true``). Prints mean ± sample standard deviation over seeds.

Each (method, seed) run writes ``OUT/<method>_seed<seed>/result.json`` (seed mIoUs, thresholds, the
gradient-norm summary of its training) and is skipped when that exists, so runs can be spread over
processes (``--methods mcis --seeds 1``) and summarised afterwards (``--summary-only``).

    python benchmarks/mcis_vs_cam.py --size default --out runs/mcis_vs_cam --seeds 0 1 2
    (default --data: the synthetic preset --size, generated into OUT/data)
    python benchmarks/mcis_vs_cam.py --size tiny --preset tiny --backbone tiny --epochs 1 --out /tmp/mvc  # smoke

On 2 CPU cores one seed at ``small`` size takes about 15 minutes (MCIS training dominates).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from common import (
    PAPER_FUSION,
    PLAIN_HEAD,
    cam_options,
    load_results,
    method_config,
    save_result,
    seed_miou,
    training_log,
)

VARIANTS = {
    "plain CAM": ("cam", "plain"),
    "MCIS, plain-head CAMs": ("mcis", "plain"),
    "MCIS, weakseg fusion (3 partners + self-pairs)": ("mcis", "fusion"),
}


def cls_overrides(args) -> tuple[str, ...]:
    """``train-cls --set`` of every classifier: ``--epochs``, ``--grad-clip``, then ``--set`` as given."""
    out = [f"epochs={args.epochs}"] if args.epochs is not None else []
    out += [f"grad_clip={args.grad_clip}"] if args.grad_clip is not None else []
    return (*out, *args.set)


def run_one(args, data: Path, method: str, seed: int) -> dict:
    from weakseg.stages.train_cls import TrainClsConfig, train_cls

    run = args.out / f"{method}_seed{seed}"
    t0 = time.perf_counter()
    cfg = TrainClsConfig(
        data=data,
        out=run / "cls",
        method=method,
        preset=args.preset,
        set=cls_overrides(args),
        backbone=args.backbone,
        seed=seed,
        device=args.device,
        workers=args.workers,
    )
    train_cls(cfg)
    result: dict = {"method": method, "seed": seed, "train_s": round(time.perf_counter() - t0, 1)}
    result |= training_log(run / "cls" / "tb", method_config(run / "cls")["grad_clip"])
    kinds = ["plain"] + (["fusion"] if method == "mcis" and not args.no_fusion else [])
    for kind in kinds:
        options = PAPER_FUSION if kind == "fusion" else PLAIN_HEAD
        miou, threshold = seed_miou(
            run / "cls",
            data,
            run / f"cams_{kind}",
            seed,
            args.device,
            cam_set=cam_options(method, options),
        )
        result[kind] = {"miou": miou, "threshold": threshold}
        print(f"seed {seed} {method} {kind}: {miou:.2f} (threshold {threshold})", flush=True)
    result["total_s"] = round(time.perf_counter() - t0, 1)
    save_result(run / "result.json", result)
    return result


def summarise(out: Path) -> None:
    results = load_results(out, "*_seed*/result.json")
    print(f"\n{'classifier / test-time CAMs':<48}{'seed mIoU (%)':>16}   per seed")
    for name, (method, kind) in VARIANTS.items():
        rows = sorted((r["seed"], r[kind]["miou"]) for r in results if r["method"] == method and kind in r)
        if not rows:
            continue
        v = [m for _, m in rows]
        spread = statistics.stdev(v) if len(v) > 1 else 0.0
        seeds = ", ".join(f"{m:.2f} (seed {s})" for s, m in rows)
        print(f"{name:<48}{statistics.mean(v):>9.2f} ± {spread:<5.2f}  {seeds}")
    for r in results:
        norms = f"max grad norm {r['max_grad_norm']:.1f}" if "max_grad_norm" in r else "no grad-norm log"
        clipped = f", {r['clipped_steps']} clipped" if "clipped_steps" in r else ""
        loss = r.get("final_loss", float("nan"))
        times = f"train {r['train_s']:.0f} s, total {r['total_s']:.0f} s"
        print(f"  {r['method']} seed {r['seed']}: {norms}{clipped}, final loss {loss:.3f}, {times}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/mcis_vs_cam"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=["cam", "mcis"], choices=["cam", "mcis"])
    ap.add_argument("--size", default="small", help="synthetic preset generated when no --data is given")
    ap.add_argument("--preset", default="cpu", help="the methods' preset (cpu, cpu192, paper, tiny)")
    ap.add_argument("--backbone", default="efficientnet-lite0", help="efficientnet-lite0, tiny or timm:<name>")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default: the preset's)")
    ap.add_argument("--grad-clip", type=float, default=None, help="gradient-norm clip (default: the preset's)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more train-cls --set overrides")
    ap.add_argument("--no-fusion", action="store_true", help="skip the fusion CAMs (3 partners + self-pairs)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=0, help="data-loading processes per training")
    ap.add_argument("--generate-only", action="store_true", help="write the synthetic data and stop")
    ap.add_argument("--summary-only", action="store_true", help="print the table of the runs already done")
    args = ap.parse_args()
    if args.summary_only:
        return summarise(args.out)
    data = args.data
    if data is None:
        from weakseg.data.synthetic import SynthConfig, generate

        data = args.out / "data"
        if not (data / "DONE").is_file():
            generate(SynthConfig(out=data, size=args.size))
            (data / "DONE").write_text("")
    if args.generate_only:
        return None
    for seed in args.seeds:
        for method in args.methods:
            if not (args.out / f"{method}_seed{seed}" / "result.json").is_file():
                run_one(args, data, method, seed)
    summarise(args.out)


if __name__ == "__main__":
    main()
