"""ABD vs cross teaching vs supervised-only on ACDC (issue #16): train-semi + eval-volumes per row, raw JSON per row.

Each row = one method at one labelled-patient count, all rows at the same preset and overrides (the same
budget: iterations, batch, input size, network). A row trains with ``train-semi`` (learning curve on the val
volumes), then scores the *last* weights on the volumes of ``--eval-split`` with ``eval-volumes`` (no
checkpoint selection). Writes ``OUT/<method>-<n>lab.json`` with the curve, the metrics, the CPU seconds of
the row (``time.process_time``: all threads of this process) and the command line. Run from the repository
root, e.g. two processes side by side with one torch thread each::

    python benchmarks/abd_acdc.py --methods supervised-only cross-teaching abd --labelled 3 --threads 1 &
    python benchmarks/abd_acdc.py --methods supervised-only cross-teaching abd --labelled 7 --threads 1
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from weakseg.engine.artifacts import load_json, save_json
from weakseg.stages.eval_volumes import EvalVolumesConfig, eval_volumes
from weakseg.stages.train_semi import TrainSemiConfig, train_semi

RESULTS = Path(__file__).resolve().parent / "results" / "cpu-2026-11-30" / "abd"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/acdc"))
    ap.add_argument("--work", type=Path, default=Path("runs/abd_acdc"), help="run folders (train-semi, eval)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder of the raw JSON per row")
    ap.add_argument("--methods", nargs="+", default=["supervised-only", "cross-teaching", "abd"])
    ap.add_argument("--labelled", nargs="+", type=int, default=[3, 7])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--set", nargs="*", default=[], help="KEY=VALUE overrides of the method config (every row)")
    ap.add_argument("--eval-split", default="test")
    ap.add_argument("--curve-split", default="val")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    for n in args.labelled:
        for method in args.methods:
            row = f"{method}-{n}lab"
            t_cpu, t_wall = time.process_time(), time.perf_counter()
            semi = train_semi(TrainSemiConfig(data=args.data, out=args.work / row / "semi", method=method,
                                              preset=args.preset, set=tuple(args.set), labelled=n,
                                              curve_split=args.curve_split, seed=args.seed, device="cpu"))  # fmt: skip
            train_cpu = time.process_time() - t_cpu
            metrics = eval_volumes(EvalVolumesConfig(model_dir=semi, data=args.data, out=args.work / row / "eval",
                                                     split=args.eval_split, device="cpu"))  # fmt: skip
            curve = load_json(semi / "curve.json")
            record = load_json(semi / "config.json")
            result = {
                "row": row,
                "method": method,
                "labelled_patients": n,
                "labelled_slices": record.get("labelled_slices"),
                "preset": args.preset,
                "overrides": args.set,
                "method_config": record["record"]["method_config"],
                "eval_split": args.eval_split,
                "metrics": {k: metrics[k] for k in ("unit", "volumes", "mean", "per_class", "empty", "checkpoint")},
                "table": metrics["table"],
                "curve": curve,
                "cpu_s": {
                    "row": round(time.process_time() - t_cpu, 1),
                    "train_and_curve": round(train_cpu, 1),
                    "train_steps": sum(e["train_cpu_s"] for e in curve["epochs"]),
                },  # fmt: skip
                "wall_s": round(time.perf_counter() - t_wall, 1),
                "torch_threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "machine": platform.machine(),
                "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
            }
            save_json(args.out / f"{row}.json", result)
            print(f"{row}: Dice {100 * metrics['mean']['dice']:.2f} %, HD95 {metrics['mean']['hd95']:.2f} "
                  f"{metrics['unit']}, CPU {result['cpu_s']['row']:.0f} s", flush=True)  # fmt: skip
    print(json.dumps({"rows": [f"{m}-{n}lab" for n in args.labelled for m in args.methods]}))


if __name__ == "__main__":
    main()
