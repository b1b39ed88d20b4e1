"""FTMU on the shared DAVIS-2016 sequences: first-frame box → masks, J / F / J&F and frames/s per tracker mode.

Three steps, each one run of this script (each ≤ ~10 min on the 2-core CPU machine), in order:

    python benchmarks/ftmu_davis.py --stage proposer   # box-conditioned mask proposer: coco128-seg + synthetic shapes
    python benchmarks/ftmu_davis.py --stage agent      # A2C template-update agent: synthetic videos + DAVIS train split
    python benchmarks/ftmu_davis.py --stage track      # every mode on the DAVIS evaluation split, same run

Split of the ten shared sequences (fixed here, before any result was seen): the agent trains (and nothing is
tuned) on TRAIN; every figure is on EVAL. The proposer never sees DAVIS. Frames are read 240 px wide and every
``--step``-th frame is kept; J/F are scored at that size (DAVIS protocol otherwise: frames 1..T−2).
Each step writes its raw JSON to ``--json-dir`` (``proposer.json``, ``agent.json``, ``davis.json``); the
``track`` JSON also holds the tracker's cost in bare proposer forwards per frame (the speed ratio).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from weakseg.engine.artifacts import load_json
from weakseg.stages.track import (
    TrackConfig,
    TrainAgentConfig,
    TrainProposerConfig,
    track,
    train_agent,
    train_proposer,
)

TRAIN = ("bmx-trees", "car-roundabout", "cows", "goat")
EVAL = ("blackswan", "dog", "drift-chicane", "kite-surf", "libby", "parkour")


def machine() -> dict:
    return {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "cpus": os.cpu_count()}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=("proposer", "agent", "track"), required=True)
    ap.add_argument("--davis", type=Path, default=Path("../shared/data/davis2016"))
    ap.add_argument("--coco", type=Path, default=Path("../shared/data/coco128-seg"))
    ap.add_argument("--work", type=Path, default=Path("runs/ftmu_davis"))
    ap.add_argument("--json-dir", type=Path, default=Path("benchmarks/results/cpu-2026-11-30/ftmu"))
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--set", nargs="*", default=[], help="FTMU config overrides KEY=VALUE (proposer stage)")
    ap.add_argument("--agent-set", nargs="*", default=[], help="agent overrides KEY=VALUE (agent stage)")
    ap.add_argument("--synth-videos", type=int, default=40, help="synthetic videos for the proposer's instances")
    ap.add_argument("--agent-synth-videos", type=int, default=20)
    ap.add_argument("--width", type=int, default=240)
    ap.add_argument("--step", type=int, default=2, help="every n-th frame (agent and track)")
    ap.add_argument("--max-frames", type=int, default=30, help="DAVIS frames per agent episode")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.json_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.stage == "proposer":
        out = train_proposer(TrainProposerConfig(out=args.work / "proposer", preset=args.preset, set=tuple(args.set),
                                                 coco=args.coco, synth_videos=args.synth_videos, seed=args.seed,
                                                 device=args.device))  # fmt: skip
        result = {"metrics": load_json(out / "metrics.json"), "config": load_json(out / "config.json")}
    elif args.stage == "agent":
        out = train_agent(TrainAgentConfig(out=args.work / "agent", proposer_dir=args.work / "proposer",
                                           data=args.davis, davis_sequences=TRAIN, set=tuple(args.agent_set),
                                           synth_videos=args.agent_synth_videos, width=args.width, step=args.step,
                                           max_frames=args.max_frames, seed=args.seed, device=args.device))  # fmt: skip
        curve = load_json(out / "curve.json")
        eps = curve["episodes"]
        k = max(1, len(eps) // 4)
        result = {"config": load_json(out / "config.json"), "seconds": curve["seconds"], "videos": curve["videos"],
                  "first_quarter": {key: float(np.mean([e[key] for e in eps[:k] if key in e]))
                                    for key in ("iou", "update_rate", "reward")},
                  "last_quarter": {key: float(np.mean([e[key] for e in eps[-k:] if key in e]))
                                   for key in ("iou", "update_rate", "reward")},
                  "episodes": eps}  # fmt: skip
    else:
        result = track(TrackConfig(out=args.work / "track", data=args.davis, proposer_dir=args.work / "proposer",
                                   agent_dir=args.work / "agent", sequences=EVAL, width=args.width, step=args.step,
                                   seed=args.seed, device=args.device))  # fmt: skip
        result = {"split": {"train_agent": TRAIN, "eval": EVAL}, **result}
        for mode, s in result["modes"].items():
            print(
                f"{mode:14s} J {100 * s['j']:5.1f}  F {100 * s['f']:5.1f}  J&F {100 * s['jf']:5.1f}  "
                f"{s['fps']:5.1f} fps  ({s['proposer_forwards_per_frame']:.1f} proposer forwards / frame)"
            )
        if args.stage == "track":
            o = result["oracle_box"]
            print(
                f"{'oracle box':14s} J {100 * o['j']:5.1f}  F {100 * o['f']:5.1f}  (proposer on the true box per frame)"
            )
    result = {"stage": args.stage, "wall_s": time.perf_counter() - t0, "machine": machine(),
              "command": "python benchmarks/ftmu_davis.py " + " ".join(sys.argv[1:]), **result}  # fmt: skip
    name = {"proposer": "proposer.json", "agent": "agent.json", "track": "davis.json"}[args.stage]
    (args.json_dir / name).write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {args.json_dir / name} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
