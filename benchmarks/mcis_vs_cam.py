"""MCIS vs plain CAM: seed mIoU on the synthetic benchmark, same backbone, preset and epochs, several seeds.

For each seed: train a plain CAM classifier and an MCIS classifier (EfficientNet-Lite0, ``cpu``
preset), make CAMs of the train split at scales (1.0, 0.5, 1.5) + flip, and score the seeds
(best background threshold on the train split, as WSSS papers report seeds). MCIS is scored twice:
its plain-head CAMs, and the paper's test-time fusion (plain + co-attention CAMs of 3 partners per
class + self-pairs). Prints mean ± sample standard deviation over seeds.

    python benchmarks/mcis_vs_cam.py --data DIR --out runs/mcis_vs_cam --seeds 0 1 2
    (default --data: the synthetic preset --size (small), generated into OUT/data)

On 2 CPU cores one seed takes about 15 minutes (MCIS training dominates).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from common import seed_miou


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/mcis_vs_cam"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--size", default="small", help="synthetic preset generated when no --data is given")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--grad-clip", type=float, default=None, help="gradient-norm clip (default: the preset's)")
    ap.add_argument("--no-fusion", action="store_true", help="skip the paper-fusion CAMs (3 partners + self-pairs)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    from weakseg.methods.train import TrainClsConfig, train_cls

    data = args.data
    if data is None:
        from weakseg.data.synthetic import SynthConfig, generate

        data = args.out / "data"
        if not (data / "DONE").is_file():
            generate(SynthConfig(out=data, size=args.size))
            (data / "DONE").write_text("")
    variants = {
        "plain CAM": ("cam", 0, False),
        "MCIS, plain-head CAMs": ("mcis", 0, False),
        "MCIS, paper fusion (3 partners + self-pairs)": ("mcis", 3, True),
    }
    if args.no_fusion:
        variants = {k: v for k, v in variants.items() if not v[2]}
    scores: dict[str, list[float]] = {k: [] for k in variants}
    for seed in args.seeds:
        for name, (method, partners, self_pairs) in variants.items():
            run = args.out / f"{method}_seed{seed}"
            train_cls(
                TrainClsConfig(
                    data=data,
                    out=run / "cls",
                    method=method,
                    preset=args.preset,
                    seed=seed,
                    device=args.device,
                    grad_clip=args.grad_clip,
                )
            )
            cams = run / f"cams_k{partners}_sp{int(self_pairs)}"
            miou, threshold = seed_miou(
                run / "cls", data, cams, seed, args.device, partners_per_class=partners, self_pairs=self_pairs
            )
            scores[name].append(miou)
            print(f"seed {seed} {name}: {miou:.2f} (threshold {threshold})", flush=True)
    print(f"\n{'classifier / test-time CAMs':<48}{'seed mIoU (%)':>16}   per seed")
    for name, v in scores.items():
        spread = statistics.stdev(v) if len(v) > 1 else 0.0
        print(f"{name:<48}{statistics.mean(v):>9.2f} ± {spread:<5.2f}  {', '.join(f'{x:.2f}' for x in v)}")


if __name__ == "__main__":
    main()
