"""MCIS test-time fusion and contrastive rows vs plain CAM: seed mIoU on the synthetic benchmark, `cpu192` preset.

Rows (a classifier × the way its CAMs are made; train split, scales --scales + flip, best background threshold
of THRESHOLDS, 0.01 … 0.95):

    cam                plain CAM classifier (method cam)
    cam-matched        plain CAM, compute-matched to an MCIS run (below)
    mcis-plain         MCIS classifier (contrastive_rows=nonempty), plain-head CAMs
    mcis-official      the same classifier, official fusion (test_fusion=official test_partners=3: co-attention maps
                       of the image with its flip / 0.75× / 2× copies and 3 partners per class; its own views)
    mcis-weakseg       the same classifier, weakseg fusion with test_partners=3 test_self_pairs=true
    mcis-all-plain, mcis-all-official, mcis-all-weakseg
                       the same three CAMs of an MCIS classifier trained with contrastive_rows=all

Compute matching (``cam-matched``): an MCIS step of B pairs puts B × (2 + S) images through the backbone
(anchor, partner and S self-pair copies; `cpu192`: S = 0, B = 8 → 16 images), and each epoch has one step per
B labelled images. ``cam-matched`` trains the plain CAM with batch (2 + S) × B images for (2 + S) × E epochs (E =
the MCIS preset's epochs): the same number of optimiser steps (N·E/B for N labelled images) and of images through
the backbone, forward and backward ((2 + S)·N·E), as the MCIS run (`cpu192`: batch 16, 8 epochs vs MCIS's 8 pairs ×
4 epochs). The MCIS co-attention and its extra heads are not matched (they cost ~1 % of a step,
benchmarks/bench_mcis_step.py). Self-pair copies at other sizes than 1× would cost more than one image each;
`cpu192` has none.

Each (row, seed) writes ``RESULTS/<row>_seed<seed>.json`` (seed mIoU, threshold, the classifier and CAM options,
times, the training's gradient-norm summary) and is skipped when that file exists; classifiers and CAMs live under
``WORK`` (``cls/<classifier>_seed<s>``, ``cams/<row>_seed<s>``) and are reused by every row and invocation that
needs them (the stage folders resume when interrupted). So one invocation may run one (row, seed):

    python benchmarks/mcis_fusion.py --rows mcis-official --seeds 1
    python benchmarks/mcis_fusion.py --seeds 0 1 2                  # every row; then the table
    python benchmarks/mcis_fusion.py --summary-only                 # the table of the results there
    python benchmarks/mcis_fusion.py --size tiny --preset tiny --backbone tiny --scales 1.0 \\
        --work /tmp/mf --results /tmp/mf/results --seeds 0           # smoke test, a minute

The table goes to ``RESULTS/summary.md`` (and ``summary.json``). Defaults: the `small` synthetic preset (600
train images) generated into ``WORK/data``, EfficientNet-Lite0, the `cpu192` preset, CAM scales 1/0.5/1.5 + flip.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

from common import load_results, method_config, save_result, training_log

RESULTS = Path("benchmarks/results/cpu-2026-11-30/mcis_fusion")

PLAIN = ("test_fusion=weakseg", "test_partners=0", "test_self_pairs=false")
OFFICIAL = ("test_fusion=official", "test_partners=3")
WEAKSEG = ("test_fusion=weakseg", "test_partners=3", "test_self_pairs=true")

CLASSIFIERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "cam": ("cam", ()),
    "cam-matched": ("cam", ()),  # + the matched epochs and batch (matched_overrides)
    "mcis": ("mcis", ("contrastive_rows=nonempty",)),
    "mcis-all": ("mcis", ("contrastive_rows=all",)),
}
"""classifier name → (method, train-cls --set besides the preset and --set)"""

ROWS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "cam": ("cam", (), "plain CAM"),
    "cam-matched": ("cam-matched", (), "plain CAM, compute-matched to MCIS"),
    "mcis-plain": ("mcis", PLAIN, "MCIS (contrast: nonempty rows), plain-head CAMs"),
    "mcis-official": ("mcis", OFFICIAL, "MCIS (nonempty), official fusion"),
    "mcis-weakseg": ("mcis", WEAKSEG, "MCIS (nonempty), weakseg fusion: 3 partners + self-pairs"),
    "mcis-all-plain": ("mcis-all", PLAIN, "MCIS (contrast: all rows), plain-head CAMs"),
    "mcis-all-official": ("mcis-all", OFFICIAL, "MCIS (all), official fusion"),
    "mcis-all-weakseg": ("mcis-all", WEAKSEG, "MCIS (all), weakseg fusion: 3 partners + self-pairs"),
}
"""row → (classifier, make-cams --set, description)"""

THRESHOLDS = (0.01, 0.02, 0.03, 0.04, *(round(0.05 * i, 2) for i in range(1, 20)))
"""background thresholds swept: eval-cams' 0.05 … 0.95 plus lower ones, because the official fusion's maps are not
normalised again (a class whose other maps were all dropped peaks at 0.2)"""


def seed_miou(cls_dir: Path, data: Path, cams: Path, args, seed: int, cam_set: tuple[str, ...]) -> dict:
    """Make the train split's CAMs and score them: ``{"miou" (%), "threshold", "per_threshold"}``."""
    from weakseg.stages.eval_cams import EvalCamsConfig, eval_cams
    from weakseg.stages.make_cams import MakeCamsConfig, make_cams

    make_cams(
        MakeCamsConfig(
            cls_dir=cls_dir, data=data, out=cams, split="train", scales=tuple(args.scales), flip=True, set=cam_set,
            seed=seed, device=args.device,
        )
    )  # fmt: skip
    r = eval_cams(
        EvalCamsConfig(cams=cams, data=data, split="train", thresholds=THRESHOLDS, out=cams.with_suffix(".json"))
    )
    return {"miou": 100 * r["best_miou"], "threshold": r["best_threshold"], "per_threshold": r["per_threshold"]}


def matched_overrides(preset: str, user_set: tuple[str, ...]) -> tuple[str, ...]:
    """``epochs``/``batch_size`` of the plain CAM that match an MCIS run of ``preset`` (see the module docstring)."""
    from weakseg.methods import create_method

    mcis = create_method("mcis", preset, user_set).cfg
    factor = 2 + len(mcis.self_pairs)
    return (f"epochs={factor * mcis.epochs}", f"batch_size={factor * mcis.batch_size}")


def classifier_set(args, name: str) -> tuple[str, ...]:
    extra = CLASSIFIERS[name][1]
    if name == "cam-matched":
        extra = matched_overrides(args.preset, tuple(args.set))
    return (*args.set, *extra)


def train(args, data: Path, name: str, seed: int) -> tuple[Path, dict]:
    """Train (or reuse) classifier ``name`` of ``seed``: its folder and ``{"train_s", ...training log}``."""
    from weakseg.engine.artifacts import is_done
    from weakseg.stages.train_cls import TrainClsConfig, train_cls

    out = args.work / "cls" / f"{name}_seed{seed}"
    timing = out.with_name(out.name + ".timing.json")
    was_done = is_done(out)
    t0 = time.perf_counter()
    train_cls(
        TrainClsConfig(
            data=data, out=out, method=CLASSIFIERS[name][0], preset=args.preset, set=classifier_set(args, name),
            backbone=args.backbone, seed=seed, device=args.device, workers=args.workers,
        )
    )  # fmt: skip
    if not timing.is_file():  # trained (or finished after an interruption) now: the time of this call
        save_result(timing, {"train_s": None if was_done else round(time.perf_counter() - t0, 1)})
    info = json.loads(timing.read_text())
    info |= training_log(out / "tb", float(method_config(out).get("grad_clip", 0.0)))
    return out, info


def run_one(args, data: Path, row: str, seed: int) -> dict:
    name, cam_set, what = ROWS[row]
    cls_dir, info = train(args, data, name, seed)
    cams = args.work / "cams" / f"{row}_seed{seed}"
    t0 = time.perf_counter()
    score = seed_miou(cls_dir, data, cams, args, seed, cam_set)
    miou, threshold = score["miou"], score["threshold"]
    result = {
        "row": row,
        "seed": seed,
        "what": what,
        "miou": miou,
        "threshold": threshold,
        "classifier": name,
        "method": CLASSIFIERS[name][0],
        "train_set": list(classifier_set(args, name)),
        "cams_set": list(cam_set),
        "scales": list(args.scales),
        "flip": True,
        "preset": args.preset,
        "backbone": args.backbone,
        "data": str(data),
        "method_config": method_config(cls_dir),
        "cams_s": round(time.perf_counter() - t0, 1),  # ~0 when the CAMs were already there
        "per_threshold": score["per_threshold"],
        **info,
        "commit": _git_commit(),
        "machine": f"{platform.node()}, {platform.processor() or platform.machine()}, torch threads {_threads()}",
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    save_result(args.results / f"{row}_seed{seed}.json", result)
    print(f"{row} seed {seed}: {miou:.2f} (threshold {threshold})", flush=True)
    return result


def summarise(results_dir: Path) -> str:
    results = load_results(results_dir, "*_seed*.json")
    lines = [
        "| row | classifier / CAMs | seed mIoU (%) | per seed (threshold) | train s | CAMs s |",
        "|---|---|---|---|---|---|",
    ]
    table: dict[str, dict] = {}
    for row, (_, _, what) in ROWS.items():
        rs = sorted((r for r in results if r.get("row") == row), key=lambda r: r["seed"])
        if not rs:
            continue
        v = [r["miou"] for r in rs]
        mean, std = statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0
        per = ", ".join(f"{r['miou']:.2f} (s{r['seed']}, {r['threshold']:g})" for r in rs)
        train_s = statistics.mean(r.get("train_s") or float("nan") for r in rs)
        cams_s = statistics.mean(r.get("cams_s") or float("nan") for r in rs)
        lines.append(f"| {row} | {what} | {mean:.2f} ± {std:.2f} | {per} | {train_s:.0f} | {cams_s:.0f} |")
        table[row] = {"mean": mean, "std": std, "seeds": {r["seed"]: r["miou"] for r in rs}}
    text = "\n".join(lines)
    if table:
        (results_dir / "summary.md").write_text(
            "Seed mIoU on the train split at the best threshold; mean ± sample std over seeds "
            "(benchmarks/mcis_fusion.py).\n\n" + text + "\n"
        )
        save_result(results_dir / "summary.json", table)
    return text


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--work", type=Path, default=Path("runs/mcis_fusion"), help="data, classifiers and CAMs")
    ap.add_argument("--results", type=Path, default=RESULTS, help="one JSON per (row, seed) + summary.md")
    ap.add_argument("--data", type=Path, default=None, help="dataset root (default: WORK/data, generated)")
    ap.add_argument("--size", default="small", help="synthetic preset generated when no --data is given")
    ap.add_argument("--preset", default="cpu192", help="the methods' preset (cpu192; tiny for a smoke test)")
    ap.add_argument("--backbone", default="efficientnet-lite0")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="train-cls --set of every classifier")
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.5, 1.5], help="CAM scales (+ flip)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--summary-only", action="store_true")
    args = ap.parse_args()
    args.results.mkdir(parents=True, exist_ok=True)
    if not args.summary_only:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        data = args.data
        if data is None:
            from weakseg.data.synthetic import SynthConfig, generate

            data = args.work / "data"
            if not (data / "DONE").is_file():
                generate(SynthConfig(out=data, size=args.size))
                (data / "DONE").write_text("")
        for seed in args.seeds:
            for row in args.rows:
                if not (args.results / f"{row}_seed{seed}.json").is_file():
                    run_one(args, data, row, seed)
    print(summarise(args.results))


if __name__ == "__main__":
    main()
