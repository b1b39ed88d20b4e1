"""MCIS on real photos: ``../shared/data/coco128-seg`` (96 COCO images with polygons, 80 classes, YOLO format).

Two small, honest checks on real data (the data are read in place: the script builds folder *views* of
symlinks plus a ``train.txt`` list under ``--out``, nothing is copied):

1. **MCIS vs plain CAM** (the MCIS issue): both classifiers trained on every labelled image (94), same
   backbone, preset, epochs and seed; seed mIoU on those images at the best background threshold.
2. **Setting 2 with real single-object images** (the settings issue): the images with exactly one class
   (19) serve as the extra single-label set for the others (75, with 2+ classes); MCIS trained on the 75
   alone (setting 1) vs with the 19 as ``train-cls --set extra=single:DIR:0.5`` (setting 2); seeds scored on the 75.

CAMs are the classifier's plain-head CAMs at scales 1.0/0.5/1.5 + flip (as the pipeline makes them;
``make-cams --set test_partners=0 test_self_pairs=false`` for MCIS).

    python benchmarks/coco128_mcis.py --out runs/coco128_mcis --seeds 0 1 2 [--epochs 15]
    python benchmarks/coco128_mcis.py --out /tmp/coco128 --seeds 0 --epochs 1 --preset tiny --backbone tiny  # smoke
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

from common import PLAIN_HEAD, cam_options, seed_miou

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128-seg"


def make_view(src: Path, dst: Path, image_paths: list[Path]) -> Path:
    """A YOLO folder at ``dst`` whose ``images``/``labels``/``classes.txt`` link to ``src`` and whose
    ``train.txt`` lists ``image_paths`` (relative to the view)."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("images", "labels", "classes.txt"):
        link = dst / name
        if not link.exists():
            os.symlink((src / name).resolve(), link)
    lines = [f"images/{p.name}" for p in image_paths]
    (dst / "train.txt").write_text("\n".join(lines) + "\n")
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--out", type=Path, default=Path("runs/coco128_mcis"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=15, help="the cpu preset's 4 epochs are 48 steps on 94 images")
    ap.add_argument("--parts", nargs="+", default=["cam-vs-mcis", "setting2"])
    ap.add_argument("--preset", default="cpu", help="the methods' preset (cpu, cpu192, paper, tiny)")
    ap.add_argument("--backbone", default="efficientnet-lite0", help="efficientnet-lite0, tiny or timm:<name>")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more train-cls --set overrides")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    from weakseg.data.registry import open_dataset
    from weakseg.stages.train_cls import TrainClsConfig, train_cls

    if not (args.data / "classes.txt").is_file():
        raise SystemExit(f"{args.data} is not the coco128-seg folder (no classes.txt); pass --data")
    ds = open_dataset(args.data, "all", "yolo")
    labelled = [r.image_path for r in ds.records if r.labels]
    single = [r.image_path for r in ds.records if len(r.labels) == 1]
    multi = [r.image_path for r in ds.records if len(r.labels) > 1]
    views = {
        "all": make_view(args.data, args.out / "view_all", labelled),
        "multi": make_view(args.data, args.out / "view_multi", multi),
        "single": make_view(args.data, args.out / "view_single", single),
    }
    print(f"coco128-seg: {len(labelled)} labelled images, {len(single)} single-class, {len(multi)} multi-class")

    experiments = {}
    if "cam-vs-mcis" in args.parts:
        experiments["plain CAM (94 images)"] = ("cam", views["all"], ())
        experiments["MCIS (94 images)"] = ("mcis", views["all"], ())
    if "setting2" in args.parts:
        experiments["MCIS setting 1 (75 multi-class images)"] = ("mcis", views["multi"], ())
        experiments["MCIS setting 2 (75 + 19 single-class as extra)"] = (
            "mcis",
            views["multi"],
            (f"single:{views['single']}:0.5",),
        )
    scores: dict[str, list[float]] = {k: [] for k in experiments}
    for seed in args.seeds:
        for i, (name, (method, data, extra)) in enumerate(experiments.items()):
            run = args.out / f"exp{i}_seed{seed}"
            train_cls(
                TrainClsConfig(
                    data=data,
                    out=run / "cls",
                    method=method,
                    fmt="yolo",
                    preset=args.preset,
                    set=(f"epochs={args.epochs}", *([f"extra={','.join(extra)}"] if extra else []), *args.set),
                    backbone=args.backbone,
                    seed=seed,
                    device=args.device,
                )
            )
            cam_set = cam_options(method, PLAIN_HEAD)
            scores[name].append(seed_miou(run / "cls", data, run / "cams", seed, args.device, cam_set=cam_set)[0])
            print(f"seed {seed} {name}: {scores[name][-1]:.2f}", flush=True)
    print(f"\n{'experiment':<50}{'seed mIoU (%)':>16}   per seed")
    for name, v in scores.items():
        spread = statistics.stdev(v) if len(v) > 1 else 0.0
        print(f"{name:<50}{statistics.mean(v):>9.2f} ± {spread:<5.2f}  {', '.join(f'{x:.2f}' for x in v)}")


if __name__ == "__main__":
    main()
