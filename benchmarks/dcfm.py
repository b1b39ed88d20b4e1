"""DCFM vs the single-image saliency baseline (same network, no group interaction) on co-saliency groups (#17).

One row = one method on one setting: ``train-cosal`` on the setting's training groups, then ``eval-cosal`` on
its evaluation groups (the *last* weights, no checkpoint selection). Both methods of a setting use the same
preset, overrides, seed and training groups (the same images per step). Writes
``OUT/<setting>-<method>.json`` (metrics overall / per target / per group, the stage records, CPU and wall
seconds, the command line). Run from the repository root, one row per call (each ≤ ~10 min on 2 shared cores)::

    python benchmarks/dcfm.py --setting synthetic --method dcfm
    python benchmarks/dcfm.py --setting synthetic --method single-saliency

Settings (training split → evaluation split; groups = images sharing a target):

- ``synthetic``: the synthetic benchmark (``weakseg data synth --size small``, seed 0): train split → val split,
  grouped by image-level class, the co-salient mask = that class's mask (other objects are distractors);
- ``synthetic-long``: the same with 2.5× the steps (250 groups);
- ``coco128``: coco128-seg's one split halved by record index: even → odd, grouped by class (person, car,
  dog, ...; a class needs 2 images in a half), the mask = that class's pixels;
- ``davis``: DAVIS-2016 frames (every 3rd for training, every 5th for evaluation) grouped by object category
  across sequences: sequences ``cosal-train`` (blackswan, bmx-trees, car-roundabout, cows, dog, goat) →
  ``cosal-eval`` (drift-chicane: car, kite-surf + parkour: person, libby: dog), the mask = the annotated object;
- ``davis-long``: the same with 2.5× the steps (250 groups).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from weakseg.engine.artifacts import load_json, save_json
from weakseg.stages.train_cosal import EvalCosalConfig, GroupOptions, TrainCosalConfig, eval_cosal, train_cosal

RESULTS = Path(__file__).resolve().parent / "results" / "cpu-2026-11-30" / "dcfm"


@dataclass(frozen=True)
class Setting:
    data: str
    train_split: str
    eval_split: str
    train_groups: GroupOptions
    eval_groups: GroupOptions
    overrides: tuple[str, ...]
    max_groups_per_target: int = 0


SETTINGS = {
    "synthetic": Setting("/tmp/dcfm/synth-small", "train", "val", GroupOptions(), GroupOptions(),
                         ("epochs=2", "groups_per_epoch=50"), max_groups_per_target=2),
    "synthetic-long": Setting("/tmp/dcfm/synth-small", "train", "val", GroupOptions(), GroupOptions(),
                              ("epochs=5", "groups_per_epoch=50"), max_groups_per_target=2),
    "coco128": Setting("../shared/data/coco128-seg", "all", "all", GroupOptions(images="even"),
                       GroupOptions(images="odd"), ("epochs=2", "groups_per_epoch=47")),
    "davis": Setting("../shared/data/davis2016", "cosal-train", "cosal-eval", GroupOptions(davis_every=3),
                     GroupOptions(davis_every=5), ("epochs=2", "groups_per_epoch=50"), max_groups_per_target=4),
    "davis-long": Setting("../shared/data/davis2016", "cosal-train", "cosal-eval", GroupOptions(davis_every=3),
                          GroupOptions(davis_every=5), ("epochs=5", "groups_per_epoch=50"), max_groups_per_target=4),
}  # fmt: skip


def table(folder: Path) -> str:
    """The markdown table of every row in ``folder`` (one line per JSON, sorted by setting then method)."""
    cols = ("setting", "train → eval", "eval groups / images", "method", "Sα", "max Fβ", "mean Fβ", "max Eξ", "MAE",
            "train wall s")  # fmt: skip
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    rows = [(load_json(path), path) for path in folder.glob("*.json")]
    for r, path in sorted(rows, key=lambda rp: (rp[0]["setting"], rp[1].stem)):
        e, m = r["eval"], r["eval"]["metrics"]
        name = path.stem.removeprefix(f"{r['setting']}-")
        st = SETTINGS[r["setting"]]
        half = {"all": ""} | {h: f" ({h} records)" for h in ("even", "odd")}
        splits = f"{r['train_split']}{half[st.train_groups.images]} → {r['eval_split']}{half[st.eval_groups.images]}"
        scores = " | ".join(f"{m[k]:.4f}" for k in ("smeasure", "max_fmeasure", "mean_fmeasure", "max_emeasure", "mae"))
        lines.append(f"| {r['setting']} | {splits} | {e['groups']} / {e['images']} | {name} | {scores} | "
                     f"{r['train_wall_s']:.0f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--table", action="store_true", help="print the table of the rows in --out and exit")
    ap.add_argument("--setting", choices=sorted(SETTINGS))
    ap.add_argument("--method", choices=["dcfm", "single-saliency"])
    ap.add_argument("--data", type=Path, default=None, help="override the setting's data root")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--set", nargs="*", default=[], help="more KEY=VALUE overrides (after the setting's)")
    ap.add_argument("--backbone", default="efficientnet-lite0")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("runs/dcfm_bench"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.table:
        print(table(args.out))
        return
    if not (args.setting and args.method):
        ap.error("--setting and --method are required (or --table)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    s = SETTINGS[args.setting]
    data = args.data or Path(s.data)
    run = args.work / f"{args.setting}-{args.method}"
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    train = TrainCosalConfig(data=data, split=s.train_split, out=run / "cosal", method=args.method,
                             preset=args.preset, set=(*s.overrides, *args.set), backbone=args.backbone,
                             groups=s.train_groups, seed=args.seed, device="cpu", overwrite=True)  # fmt: skip
    train_cosal(train)
    train_wall, train_cpu = time.perf_counter() - t_wall, time.process_time() - t_cpu
    ev = EvalCosalConfig(data=data, split=s.eval_split, out=run / "eval", model_dir=run / "cosal",
                         groups=s.eval_groups, max_groups_per_target=s.max_groups_per_target, device="cpu",
                         save_maps=True)  # fmt: skip
    result = eval_cosal(ev)
    row = {
        "setting": args.setting,
        "method": args.method,
        "data": str(data),
        "train_split": s.train_split,
        "eval_split": s.eval_split,
        "train_record": load_json(run / "cosal" / "config.json"),
        "train_done": load_json(run / "cosal" / "DONE") if (run / "cosal" / "DONE").stat().st_size else None,
        "eval": result,
        "train_wall_s": round(train_wall, 1),
        "train_cpu_s": round(train_cpu, 1),
        "total_wall_s": round(time.perf_counter() - t_wall, 1),
        "threads": args.threads,
        "machine": platform.platform(),
        "torch": torch.__version__,
        "command": shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    save_json(args.out / f"{args.setting}-{args.method}.json", row)
    m = result["metrics"]
    short = {"S": m["smeasure"], "maxF": m["max_fmeasure"], "MAE": m["mae"]}
    print(json.dumps({"setting": args.setting, "method": args.method, **{k: round(v, 4) for k, v in short.items()},
                      "wall_s": row["total_wall_s"]}))  # fmt: skip


if __name__ == "__main__":
    main()
