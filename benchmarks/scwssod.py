"""SCWSSOD figures: scribble SOD (SCWSSOD vs partial BCE alone vs full masks) and MCIS pseudo labels with its saliency.

Run from the repository root, one step per call (each is sized to ≤ ~10 min on the project's 2-core CPU)::

    python benchmarks/scwssod.py sod --dataset synthetic --method scwssod   # also sod-pce, sod-full
    python benchmarks/scwssod.py sod --dataset davis --method scwssod       # also sod-pce, sod-full
    python benchmarks/scwssod.py pseudo                                     # MCIS pseudo labels with / without saliency
    python benchmarks/scwssod.py summary                                    # summary.json + summary.md of the above

Data (nothing is copied into the repository; work folders under ``--work``):

- ``synthetic``: the salient object of a synthetic image is the union of its labelled objects (255 boundary band
  filled with the nearest label; unlabelled clutter is background; :mod:`weakseg.data.saliency`). Train: the
  ``small`` benchmark drawn with **seed 1** (``weakseg data synth --size small --seed 1``), its train split, every
  4th image (150); eval: the ``small`` benchmark of seed 0 (the demo's data), val split (150 images). Scribbles are
  simulated from the train masks (seeded); evaluation reads the val masks only to score.
- ``davis``: ``../shared/data/davis2016`` (10 sequences, read in place). Temporal split per sequence: train = the
  first half of each sequence's frames, every ``--train-step``-th; eval = the second half, every
  ``--eval-step``-th. Scribbles simulated from the train frames' masks.
- ``pseudo``: the demo's MCIS CAMs (``/tmp/demo/cams``, read only) of the demo's train split (``/tmp/demo/data``,
  600 images) → pseudo labels with the demo's threshold rule (bg 0.45, PAR) vs MCIS's saliency rule with the
  saliency of the ``synthetic`` SCWSSOD model (trained on the seed-1 draw, so it never saw these images' labels),
  of the ``sod-pce`` model, and of the ground truth (objects' union: the rule's ceiling).

Raw JSON: ``--json-dir`` (default ``benchmarks/results/cpu-2026-11-30/scwssod``).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from weakseg.data.saliency import open_saliency
from weakseg.data.synthetic import SynthConfig, generate
from weakseg.stages.pseudo import PseudoConfig, make_pseudo
from weakseg.stages.train_saliency import (
    PredictSaliencyConfig,
    TrainSaliencyConfig,
    predict_saliency_maps,
    train_saliency,
)

JSON_DIR = Path("benchmarks/results/cpu-2026-11-30/scwssod")
DAVIS = Path("../shared/data/davis2016")
DEMO = Path("/tmp/demo")
SOD_KEYS = ("mae", "max_fmeasure", "mean_fmeasure", "adaptive_fmeasure", "smeasure", "max_emeasure")


def commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()


def machine() -> dict:
    return {"host": platform.node(), "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
            "commit": commit(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip


def synth(folder: Path, seed: int) -> Path:
    if not (folder / "synth.json").is_file():
        generate(SynthConfig(out=folder, seed=seed, size="small"))
    return folder


def eval_data_synthetic(work: Path) -> Path:
    """The seed-0 small benchmark: the demo's own data when present (read only), else drawn again (identical)."""
    return DEMO / "data" if (DEMO / "data" / "synth.json").is_file() else synth(work / "synth_seed0", 0)


def sod(args: argparse.Namespace) -> dict:
    name = args.method + (f"_{args.tag}" if args.tag else "")
    work = args.work / args.dataset / name
    sets = [f"epochs={args.epochs}", f"input_size={args.input_size}", *args.set]
    if args.dataset == "synthetic":
        train = {"data": synth(args.work / "synth_seed1", 1), "fmt": "voc", "split": "train", "frame_step": 4}
        evaluation = {"data": eval_data_synthetic(args.work), "fmt": "voc", "split": "val", "frame_step": 1}
    else:
        train = {"data": args.davis, "fmt": "davis", "split": "train", "frame_step": args.train_step}
        evaluation = {"data": args.davis, "fmt": "davis", "split": "val", "frame_step": args.eval_step}
    t0 = time.perf_counter()
    model = train_saliency(TrainSaliencyConfig(out=work / "model", method=args.method, preset="cpu", set=tuple(sets),
                                               backbone=args.backbone, device="cpu", seed=args.seed,
                                               overwrite=True, **train))  # fmt: skip
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    metrics = predict_saliency_maps(PredictSaliencyConfig(out=work / "maps", model_dir=model, device="cpu",
                                                          overwrite=True, **evaluation))  # fmt: skip
    done = json.loads((model / "DONE").read_text())
    tr, ev = open_saliency(**_open(train)), open_saliency(**_open(evaluation))
    result = {
        "figure": "scribble SOD",
        "dataset": args.dataset,
        "method": args.method,
        "tag": args.tag,
        "seed": args.seed,
        "supervision": "full masks" if args.method == "sod-full" else "scribbles (simulated, seeded)",
        "backbone": args.backbone,
        "method_config": json.loads((model / "config.json").read_text())["record"]["method_config"],
        "train": {
            **{k: str(v) for k, v in train.items()},
            "images": len(tr),
            "ids": _ids(tr),
            "labelled_fraction": done.get("labelled_fraction"),
            "seconds": round(train_s, 1),
            "last_epoch_losses": done.get("last"),
        },  # fmt: skip
        "eval": {
            **{k: str(v) for k, v in evaluation.items()},
            "images": len(ev),
            "ids": _ids(ev),
            "seconds": round(time.perf_counter() - t1, 1),
        },  # fmt: skip
        "metrics": {k: metrics.get(k) for k in (*SOD_KEYS, "mean_emeasure", "adaptive_emeasure")},
        "masks_read": metrics.get("masks_read"),
        "machine": machine(),
    }
    _save(args.json_dir / f"sod_{args.dataset}_{name}.json", result)
    return result


def _open(d: dict) -> dict:
    return {"root": d["data"], "split": d["split"], "fmt": d["fmt"], "frame_step": d["frame_step"]}


def _ids(data) -> list[str] | dict:
    if data.fmt == "davis":
        by_seq: dict[str, list[int]] = {}
        for it in data.items:
            by_seq.setdefault(it.sequence, []).append(it.frame)
        return by_seq
    return [it.image_id for it in data.items]


def _save(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))
    logging.info("wrote %s", path)


def pseudo(args: argparse.Namespace) -> dict:
    """Pseudo labels of the demo's train split from its CAMs: threshold rule vs MCIS's saliency rule."""
    data, cams = DEMO / "data", DEMO / "cams"
    if not (cams / "DONE").is_file():
        raise SystemExit(f"{cams} has no finished CAMs; run `weakseg demo --out /tmp/demo` first")
    work = args.work / "pseudo"
    maps = {}
    for method in ("scwssod", "sod-pce"):
        model = args.work / "synthetic" / method / "model"
        if not (model / "DONE").is_file():
            raise SystemExit(f"{model} missing: run `python benchmarks/scwssod.py sod --dataset synthetic --method "
                             f"{method}` first")  # fmt: skip
        t0 = time.perf_counter()
        m = predict_saliency_maps(PredictSaliencyConfig(out=work / f"sal_{method}", model_dir=model, data=data,
                                                        fmt="voc", split="train", device="cpu"))  # fmt: skip
        maps[method] = {"folder": str(work / f"sal_{method}"), "sod_on_demo_train": {k: m.get(k) for k in SOD_KEYS},
                        "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    gt_dir = work / "sal_ground_truth"
    gt_dir.mkdir(parents=True, exist_ok=True)
    ds = open_saliency(data, "train", "voc")
    for i in range(len(ds)):
        Image.fromarray(ds.load_gt(i).astype(np.uint8) * 255).save(gt_dir / f"{ds[i].image_id}.png")
    rows = {}
    variants = {
        "threshold (demo: bg 0.45, PAR), no saliency": {"background": "threshold", "bg_threshold": 0.45},
        "MCIS saliency rule, SCWSSOD saliency": {"background": "mcis", "saliency": Path(maps["scwssod"]["folder"])},
        "MCIS saliency rule, sod-pce saliency": {"background": "mcis", "saliency": Path(maps["sod-pce"]["folder"])},
        "MCIS saliency rule, ground-truth saliency (ceiling)": {"background": "mcis", "saliency": gt_dir},
    }
    for k, (name, opts) in enumerate(variants.items()):
        t0 = time.perf_counter()
        r = make_pseudo(PseudoConfig(cams=cams, data=data, out=work / f"pseudo_{k}", refiner="par", overwrite=True,
                                     **opts))  # fmt: skip
        rows[name] = {"miou": r["miou"], "miou_non_ignored": r["scored"]["miou"],
                      "ignored_fraction": r["ignored_fraction"], "options": {k: str(v) for k, v in opts.items()},
                      "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
        logging.info("%s: mIoU %.4f", name, r["miou"])
    result = {"figure": "MCIS pseudo labels with / without saliency", "cams": str(cams), "data": f"{data} train",
              "saliency_models": maps, "rows": rows,
              "masks_read": "demo train masks: only to score the pseudo labels and to draw the ceiling row's saliency",
              "machine": machine()}  # fmt: skip
    _save(args.json_dir / "pseudo_mcis_saliency.json", result)
    return result


def coverage(args: argparse.Namespace) -> dict:
    """How much of each image the saliency maps of the ``pseudo`` step call salient (MCIS's rule reads 1 - saliency
    as the background score and ``saliency >= 32/255`` as salient), against the ground truth's share."""
    out = {}
    for name in ("sal_scwssod", "sal_sod-pce", "sal_ground_truth"):
        folder = args.work / "pseudo" / name
        maps = [np.asarray(Image.open(f), dtype=np.float64) / 255 for f in sorted(folder.glob("*.png"))]
        out[name] = {"images": len(maps), "mean_saliency": float(np.mean([m.mean() for m in maps])),
                     "fraction_at_least_32_255": float(np.mean([(m >= 32 / 255).mean() for m in maps])),
                     "fraction_at_least_half": float(np.mean([(m >= 0.5).mean() for m in maps]))}  # fmt: skip
    result = {"figure": "saliency coverage of the demo train split", "maps": out, "machine": machine()}
    _save(args.json_dir / "pseudo_saliency_coverage.json", result)
    print(json.dumps(out, indent=1))
    return result


def summary(args: argparse.Namespace) -> dict:
    rows, md = [], ["| dataset | method | MAE ↓ | max Fβ | mean Fβ | adaptive Fβ | Sα | train images | train s |",
                    "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for dataset in ("synthetic", "davis"):
        for path in sorted(args.json_dir.glob(f"sod_{dataset}_*.json")):
            r = json.loads(path.read_text())
            m = r["metrics"]
            method = r["method"] + (f" ({r['tag']})" if r.get("tag") else "")
            rows.append({"dataset": dataset, "method": method, "seed": r.get("seed", 0), **m})
            md.append(f"| {dataset} | {method} | {m['mae']:.4f} | {m['max_fmeasure']:.4f} | {m['mean_fmeasure']:.4f} | "
                      f"{m['adaptive_fmeasure']:.4f} | {m['smeasure']:.4f} | {r['train']['images']} | "
                      f"{r['train']['seconds']} |")  # fmt: skip
    pseudo_path = args.json_dir / "pseudo_mcis_saliency.json"
    if pseudo_path.is_file():
        p = json.loads(pseudo_path.read_text())
        md += ["", "| pseudo labels (demo train, MCIS CAMs) | mIoU | mIoU non-ignored | ignored |", "|---|---|---|---|"]
        for name, r in p["rows"].items():
            md.append(f"| {name} | {100 * r['miou']:.2f} | {100 * r['miou_non_ignored']:.2f} | "
                      f"{100 * r['ignored_fraction']:.1f} % |")  # fmt: skip
    out = {"sod": rows, "machine": machine()}
    _save(args.json_dir / "summary.json", out)
    (args.json_dir / "summary.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return out


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=("sod", "pseudo", "coverage", "summary"))
    ap.add_argument("--dataset", choices=("synthetic", "davis"), default="synthetic")
    ap.add_argument("--method", choices=("scwssod", "sod-pce", "sod-full"), default="scwssod")
    ap.add_argument("--backbone", default="efficientnet-lite0")
    ap.add_argument("--epochs", type=int, default=None, help="default: 8 (synthetic), 16 (davis)")
    ap.add_argument("--input-size", type=int, default=None, help="default: 112 (synthetic), 128 (davis)")
    ap.add_argument("--set", nargs="*", default=[], help="more KEY=VALUE overrides of the method config")
    ap.add_argument("--train-step", type=int, default=5, help="DAVIS: every n-th frame of the train half")
    ap.add_argument("--eval-step", type=int, default=10, help="DAVIS: every n-th frame of the eval half")
    ap.add_argument("--seed", type=int, default=0, help="training seed (init, order, flips); scribbles stay seed 0")
    ap.add_argument("--tag", default="", help="suffix of the run's JSON and work folder (variants, seeds)")
    ap.add_argument("--davis", type=Path, default=DAVIS)
    ap.add_argument("--work", type=Path, default=Path("/tmp/scwssod_bench"))
    ap.add_argument("--json-dir", type=Path, default=JSON_DIR)
    args = ap.parse_args()
    if args.epochs is None:
        args.epochs = 8 if args.dataset == "synthetic" else 16
    if args.input_size is None:
        args.input_size = 112 if args.dataset == "synthetic" else 128
    {"sod": sod, "pseudo": pseudo, "coverage": coverage, "summary": summary}[args.step](args)


if __name__ == "__main__":
    main()
