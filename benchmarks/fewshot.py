"""Few-shot segmentation (issue 19): 1-shot and 5-shot class mIoU / FB-IoU of the prototype baseline, SCL and SCL +
PI-CLIP's CLIP prior, per fold, with the real ``weakseg fewshot train`` / ``eval`` stages. One fold per call, so each
call stays within minutes on a CPU; the raw JSON of every (fold, method, shots) goes to ``--json-dir``.

    # synthetic: 20 classes, 4 folds of 5 (run once per fold)
    weakseg data synth --out runs/fewshot/synth20 --size small --n-classes 20 --n-train 600 --n-val 200 \\
        --n-single 0 --n-web 0
    weakseg clip pretrain --data runs/fewshot/synth20 --out runs/fewshot/toy-clip20 --device cpu --set epochs=6
    python benchmarks/fewshot.py --dataset synthetic --data runs/fewshot/synth20 --clip runs/fewshot/toy-clip20 \\
        --fold 0 --episodes 1000
    # coco128-seg: COCO-20i (interleaved) folds restricted to classes with 2+ images; one image set for train and test
    weakseg clip pretrain --data ../shared/data/coco128-seg --split all --val-split "" --out runs/fewshot/toy-clip-coco
    python benchmarks/fewshot.py --dataset coco128 --data ../shared/data/coco128-seg \\
        --clip runs/fewshot/toy-clip-coco --fold 0 --episodes 1000

Writes ``<json-dir>/<dataset>_fold<k>.json`` (every row, with the training history and the stage configs) and the
stage folders under ``--work``; ``python benchmarks/fewshot.py --summarize`` averages the folds measured so far into
``summary.json`` / ``summary.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

SETTINGS = {
    # dataset: (split for training, split for test episodes, fold split, novel-pixel convention, extra --set)
    "synthetic": ("train", "val", "synthetic-5i", "exclude", ()),
    "coco128": ("all", "all", "coco-20i", "ignore", ("input_size=128",)),
}
METHODS = {  # row name: (method, --set)
    "prototype": ("prototype", ()),
    "scl": ("scl", ("prior=visual",)),
    "scl+clip": ("scl", ("prior=visual+clip",)),
}


def summarize(json_dir: Path) -> None:
    """Mean over the measured folds of each (dataset, row, shots) from ``<dataset>_fold<k>.json`` →
    ``summary.json`` + ``summary.md`` in the same folder."""
    table: dict[tuple[str, str, int], list[dict]] = {}
    for path in sorted(json_dir.glob("*_fold*.json")):
        d = json.loads(path.read_text())
        for r in d["rows"]:
            if "error" not in r:
                table.setdefault((d["dataset"], r["row"], r["shots"]), []).append(r)
    rows = []
    for (dataset, row, shots), rs in sorted(table.items()):
        folds = sorted(r["fold"] for r in rs)
        rows.append({
            "dataset": dataset, "row": row, "shots": shots, "folds": folds,
            "miou": sum(r["miou"] for r in rs) / len(rs), "fb_iou": sum(r["fb_iou"] for r in rs) / len(rs),
            "per_fold_miou": {r["fold"]: r["miou"] for r in rs}, "episodes": {r["fold"]: r["episodes"] for r in rs},
        })  # fmt: skip
    (json_dir / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["| dataset | method | shots | folds | mIoU (%) | FB-IoU (%) | per-fold mIoU |"]
    lines.append("|---|---|---|---|---|---|---|")
    for r in rows:
        per = ", ".join(f"{f}: {v:.1f}" for f, v in r["per_fold_miou"].items())
        lines.append(f"| {r['dataset']} | {r['row']} | {r['shots']} | {len(r['folds'])} | {r['miou']:.2f} | "
                     f"{r['fb_iou']:.2f} | {per} |")  # fmt: skip
    (json_dir / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--summarize", action="store_true", help="only write summary.json/.md from the fold JSONs")
    ap.add_argument("--dataset", choices=sorted(SETTINGS))
    ap.add_argument("--data", type=Path)
    ap.add_argument("--clip", type=Path, default=None, help="CLIP for the scl+clip row (a clip pretrain folder)")
    ap.add_argument("--fold", type=int)
    ap.add_argument("--episodes", type=int, default=1000, help="test episodes per fold, 1-shot")
    ap.add_argument("--episodes-5shot", type=int, default=None, help="test episodes for K > 1 (default: --episodes)")
    ap.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--episodes-per-epoch", type=int, default=320)
    ap.add_argument("--backbone", default="efficientnet-lite0")
    ap.add_argument("--work", type=Path, default=Path("runs/fewshot"))
    ap.add_argument("--json-dir", type=Path, default=Path("benchmarks/results/cpu-2026-11-30/fewshot"))
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.summarize:
        summarize(args.json_dir)
        return
    if args.dataset is None or args.data is None or args.fold is None:
        ap.error("--dataset, --data and --fold are required (or --summarize)")

    import torch

    from weakseg.errors import DataError
    from weakseg.stages.fewshot import FewShotEvalConfig, FewShotTrainConfig, fewshot_eval, fewshot_train

    train_split, test_split, folds, novel, extra = SETTINGS[args.dataset]
    t_start = time.perf_counter()
    rows = []
    for name in args.methods:
        method, sets = METHODS[name]
        if name == "scl+clip":
            if args.clip is None:
                print("skipping scl+clip: no --clip folder")
                continue
            sets = (*sets, f"clip_weights={args.clip}")
        sets = (*sets, *extra, f"epochs={args.epochs}", f"episodes_per_epoch={args.episodes_per_epoch}")
        run = args.work / f"{args.dataset}-fold{args.fold}-{name}"
        t0 = time.perf_counter()
        fewshot_train(FewShotTrainConfig(
            data=args.data, split=train_split, out=run / "train", method=method, preset="cpu", set=sets,
            backbone=args.backbone, folds=folds, fold=args.fold, novel_pixels=novel, device=args.device,
            feature_cache=args.work / "cache",
        ))  # fmt: skip
        train_s = time.perf_counter() - t0
        history = json.loads((run / "train" / "history.json").read_text())
        for shots in args.shots:
            t1 = time.perf_counter()
            try:
                res = fewshot_eval(FewShotEvalConfig(
                    model_dir=run / "train", out=run / f"eval-{shots}shot", split=test_split, shots=shots,
                    episodes=args.episodes if shots == 1 else (args.episodes_5shot or args.episodes),
                    device=args.device, feature_cache=args.work / "cache",
                ))  # fmt: skip
            except DataError as e:  # e.g. no class of the fold has shots + 1 images
                rows.append({"row": name, "shots": shots, "fold": args.fold, "error": str(e)})
                print(f"{args.dataset} fold {args.fold} {name} {shots}-shot: not measured: {e}", flush=True)
                continue
            rows.append({
                "row": name, "method": method, "prior": res["prior"], "shots": shots, "fold": args.fold,
                "miou": 100 * res["miou"], "fb_iou": 100 * res["fb_iou"], "episodes": res["episodes"],
                "class_iou": {k: (None if v is None or v != v else 100 * v) for k, v in res["class_iou"].items()},
                "episodes_per_class": res["episodes_per_class"],
                "classes_without_episodes": res["classes_without_episodes"],
                "train_seconds": train_s, "eval_seconds": time.perf_counter() - t1,
                "best_val_miou": history["best_val_miou"], "history": history["history"],
                "train_dir": str(run / "train"), "eval_dir": str(run / f"eval-{shots}shot"),
            })  # fmt: skip
            print(f"{args.dataset} fold {args.fold} {name:<10} {shots}-shot: mIoU {rows[-1]['miou']:.2f}  "
                  f"FB-IoU {rows[-1]['fb_iou']:.2f}  ({res['episodes']} episodes)", flush=True)  # fmt: skip
    out = {
        "dataset": args.dataset, "data": str(args.data), "fold": args.fold, "folds": folds,
        "novel_pixels": novel, "train_split": train_split, "test_split": test_split,
        "episodes": args.episodes, "episodes_kshot": args.episodes_5shot or args.episodes,
        "epochs": args.epochs, "episodes_per_epoch": args.episodes_per_epoch,
        "backbone": args.backbone, "clip": str(args.clip) if args.clip else None, "rows": rows,
        "wall_seconds": time.perf_counter() - t_start,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
    }  # fmt: skip
    args.json_dir.mkdir(parents=True, exist_ok=True)
    path = args.json_dir / f"{args.dataset}_fold{args.fold}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path} ({out['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
