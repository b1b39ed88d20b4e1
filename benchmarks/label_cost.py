"""The label-cost table (issue #15): one synthetic benchmark, one segmenter, one training budget, five kinds of labels.

Rows (each a ``weakseg run`` in ``--work/<row>``, on the same data ``--work/data``, the same segmenter options):

- ``full``: ``--task full`` (the true masks; the upper bound);
- ``scribbles-dfr`` / ``scribbles-pce``: ``--task scribble --method dfr`` with the ``cpu`` preset / the ``pce``
  preset (partial CE alone, the ablation), scribbles simulated from the train masks under a 3 % pixel budget;
- ``points-dfr`` (and ``points-pce`` with ``--rows``): the same with ``--weak.kind points`` (one click per object,
  three on the background, discs of radius 2);
- ``tags``: the MCIS pipeline's classifier and pseudo labels are not rerun: with ``--tags-pseudo DIR`` (the demo run's
  ``pseudo/`` folder, made on the same synthetic data) the table's segmenter is trained on those pseudo labels with
  this table's budget (``tags-mcis``: train-seg + eval-seg, the same options as every row); the demo's own
  figures (``results/cpu-2026-11-30/demo/summary.json``, its larger budget) are kept as ``tags`` for reference;
- ``boxes``: read from ``results/cpu-2026-11-30/a2gnn/synthetic_small.json`` when the A2GNN run has written it.

A row whose run folder is complete is not retrained (``weakseg run`` skips complete stages; eval-seg reruns);
``--collect`` only reads the rows' ``summary.json``. Each row also records the background share of its labelled
training pixels (the class balance its loss sees). Writes one JSON per
row and ``summary.json`` into ``results/cpu-2026-11-30/label_cost/``.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/label_cost.py --work /tmp/lc --epochs 2 --crop 96
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

RESULTS = Path(__file__).resolve().parent / "results" / "cpu-2026-11-30"
OUT = RESULTS / "label_cost"
DEMO = RESULTS / "demo" / "summary.json"
A2GNN = RESULTS / "a2gnn" / "synthetic_small.json"
DEMO_SEG = {"arch": "deeplabv3plus", "epochs": 8, "crop": 128, "batch_size": 8, "eval_scales": [1.0, 1.5]}
"""the demo's segmenter options (weakseg run's defaults when the demo was measured)"""

ROWS: dict[str, tuple[str, ...]] = {
    "full": ("--task", "full"),
    "scribbles-pce": ("--task", "scribble", "--method", "dfr", "--scribble.preset", "pce"),
    "scribbles-dfr": ("--task", "scribble", "--method", "dfr"),
    "points-dfr": ("--task", "scribble", "--method", "dfr", "--weak.kind", "points"),
    "points-pce": ("--task", "scribble", "--method", "dfr", "--weak.kind", "points", "--scribble.preset", "pce"),
    "scribbles-dfr-shallow": ("--task", "scribble", "--method", "dfr", "--scribble.preset", "shallow"),
    "scribbles-dfr-static": ("--task", "scribble", "--method", "dfr", "--scribble.preset", "static"),
    "scribbles-fch-only": ("--task", "scribble", "--method", "dfr", "--scribble.set", "reg_weight=0"),
    "scribbles-dfr-reg0.01": ("--task", "scribble", "--method", "dfr", "--scribble.set", "reg_weight=0.01"),
    "scribbles-dfr-fch-detached": ("--task", "scribble", "--method", "dfr", "--scribble.set", "fch_detach=true"),
}


def _pct(x: float | None) -> float | None:
    return None if x is None else round(100 * x, 2)


def background_share(labels: Path | None, data: Path) -> float:
    """Fraction of the labelled training pixels that are background (``labels``: a weak-label folder; None = the
    train masks). Counts what the loss sees: the class balance of the supervision."""
    files = sorted(labels.glob("*.png")) if labels is not None else sorted((data / "SegmentationClass").glob("*.png"))
    if labels is None:
        ids = set((data / "ImageSets" / "Segmentation" / "train.txt").read_text().split())
        files = [f for f in files if f.stem in ids]
    bg = known = 0
    for f in files:
        m = np.asarray(Image.open(f))
        bg += int((m == 0).sum())
        known += int((m != 255).sum())
    return round(bg / max(known, 1), 4)


def run_row(name: str, args: argparse.Namespace, seg: dict) -> dict:
    out = args.work / name
    cmd = [sys.executable, "-m", "weakseg", "run", *ROWS[name], "--data", str(args.work / "data"), "--out", str(out),
           "--seg.arch", seg["arch"], "--seg.train.epochs", str(seg["epochs"]), "--seg.crop", str(seg["crop"]),
           "--seg.train.batch-size", str(seg["batch_size"]), "--eval-seg.scales", *map(str, seg["eval_scales"]),
           "--seed", str(args.seed), "--device", "cpu"]  # fmt: skip
    t0 = time.perf_counter()
    log = args.work / f"{name}.log"
    if not (args.collect and (out / "summary.json").is_file()):
        with log.open("w") as f:
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, env=env)
    summary = json.loads((out / "summary.json").read_text())
    weak = summary.get("weak") or {}
    row = {
        "row": name,
        "command": " ".join(["weakseg", *cmd[3:]]),
        "segmenter_miou": _pct(summary["segmenter"]["miou"]),
        "pseudo_miou": None,
        "labelled_fraction": weak.get("labelled_fraction", 1.0 if name == "full" else None),
        "weak_source": weak.get("source"),
        "background_share_of_labelled_pixels": background_share(out / "weak" if weak else None, args.work / "data"),
        "masks_read": {"weak": weak.get("masks_read"), "segmenter": summary["segmenter"].get("masks_read")},
        "wall_s_this_call": None if args.collect else round(time.perf_counter() - t0, 1),
        "per_class_val": json.loads((out / "eval" / "seg" / "metrics.json").read_text()).get("per_class"),
        "timings_s": summary.get("timings_s"),
        "summary": summary,
    }
    (OUT / f"{name}.json").write_text(json.dumps(row, indent=2))
    return row


def tags_row(seg: dict) -> dict:
    if not DEMO.is_file():
        return {"row": "tags", "status": "not measured (no demo summary)"}
    s = json.loads(DEMO.read_text())
    same = seg == DEMO_SEG
    return {
        "row": "tags",
        "method": "mcis",
        "segmenter_miou": _pct(s["segmenter"]["miou"]),
        "pseudo_miou": _pct(s["pseudo"]["miou"]),
        "labelled_fraction": None,
        "source": str(DEMO.relative_to(RESULTS.parents[1])),
        "segmenter_budget": DEMO_SEG,
        "same_budget": same,
        "note": None if same else "the demo's segmenter budget differs from this table's (see segmenter_budget)",
    }


def tags_measured(args: argparse.Namespace, seg: dict) -> dict:
    """``tags-mcis``: the table's segmenter trained on MCIS pseudo labels ``--tags-pseudo`` (PNG, 255 = ignore)."""
    out = args.work / "tags-mcis"
    wk = [sys.executable, "-m", "weakseg"]
    train = [*wk, "train-seg", "--data", str(args.work / "data"), "--labels", str(args.tags_pseudo),
             "--out", str(out / "seg"), "--arch", seg["arch"], "--train.epochs", str(seg["epochs"]),
             "--crop", str(seg["crop"]), "--train.batch-size", str(seg["batch_size"]), "--seed", str(args.seed),
             "--device", "cpu"]  # fmt: skip
    evaluate = [
        *wk,
        "eval-seg",
        "--seg-dir",
        str(out / "seg"),
        "--data",
        str(args.work / "data"),
        "--out",
        str(out / "eval"),
        "--split",
        "val",
        "--scales",
        *map(str, seg["eval_scales"]),
        "--device",
        "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for cmd in (train, evaluate):  # a complete train-seg folder with the same config is skipped
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    pseudo = (
        json.loads((args.tags_pseudo / "metrics.json").read_text())
        if (args.tags_pseudo / "metrics.json").is_file()
        else {}
    )
    row = {
        "row": "tags-mcis",
        "method": "mcis (classifier, CAMs and pseudo labels of the demo run; segmenter at this table's budget)",
        "commands": [" ".join(["weakseg", *c[3:]]) for c in (train, evaluate)],
        "segmenter_miou": _pct(metrics["miou"]),
        "pseudo_miou": _pct(pseudo.get("miou")),
        "masks_read": {"segmenter": metrics.get("masks_read"), "pseudo": pseudo.get("masks_read")},
        "per_class_val": metrics.get("per_class"),
    }
    (OUT / "tags-mcis.json").write_text(json.dumps(row, indent=2))
    return row


def boxes_row() -> dict:
    if not A2GNN.is_file():
        return {"row": "boxes", "status": "not yet (no results/cpu-2026-11-30/a2gnn/synthetic_small.json)"}
    return {"row": "boxes", "method": "a2gnn", "source": str(A2GNN.relative_to(RESULTS.parents[1])),
            "raw": json.loads(A2GNN.read_text())}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/lc"))
    ap.add_argument("--rows", nargs="+", default=["full", "scribbles-pce", "scribbles-dfr", "points-dfr"],
                    choices=list(ROWS))  # fmt: skip
    ap.add_argument("--arch", default="deeplabv3plus")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--eval-scales", type=float, nargs="+", default=[1.0, 1.5])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--collect", action="store_true", help="read rows whose run folder has a summary; run no row")
    ap.add_argument("--tags-pseudo", type=Path, default=None, help="MCIS pseudo labels (a demo run's pseudo/) for "
                    "the tags-mcis row, trained with this table's segmenter budget")  # fmt: skip
    args = ap.parse_args()
    seg = {"arch": args.arch, "epochs": args.epochs, "crop": args.crop, "batch_size": args.batch_size,
           "eval_scales": list(args.eval_scales)}  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    data = args.work / "data"
    if not (data / "DONE").is_file() and not (data / "ImageSets").is_dir():
        subprocess.run([sys.executable, "-m", "weakseg", "data", "synth", "--out", str(data), "--size", "small",
                        "--seed", "0"], check=True)  # fmt: skip
    rows = {}
    for name in args.rows:
        rows[name] = run_row(name, args, seg)
        print(f"{name}: segmenter mIoU {rows[name]['segmenter_miou']}", flush=True)
    summary = {
        "benchmark": "synthetic small (600 train / 150 val, seed 0)",
        "segmenter": seg,
        "rows": {"tags": tags_row(seg), **rows, "boxes": boxes_row()},
    }
    if args.tags_pseudo is not None:
        summary["rows"]["tags-mcis"] = tags_measured(args, seg)
    previous = json.loads((OUT / "summary.json").read_text()) if (OUT / "summary.json").is_file() else {}
    if previous.get("segmenter") == seg:  # keep rows measured by earlier calls with the same budget
        summary["rows"] = {**previous.get("rows", {}), **summary["rows"]}
    (OUT / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v.get("segmenter_miou") for k, v in summary["rows"].items()}, indent=1))


if __name__ == "__main__":
    main()
