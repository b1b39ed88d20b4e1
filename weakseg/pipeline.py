"""The whole pipeline of a task as one re-runnable command (``weakseg run`` / ``weakseg demo``).

``weakseg run --task tags --method mcis`` runs the stages of :data:`weakseg.tasks.TASKS` ``["tags"]``:

    data (synthetic, when no dataset is given) → cls (train classifier) → cams (make CAMs)
    → eval/cams.json (seed mIoU, threshold sweep) → [aff (train AffinityNet), only with refiner "rw"]
    → pseudo (pseudo labels) → seg (train segmenter) → eval/seg (segmenter mIoU on val) → report.html

Each stage writes its own folder of the run; an interrupted stage is resumed, a complete one skipped,
one with another configuration refused (``--overwrite`` rebuilds it). ``--task full`` trains the segmenter
on the true masks (the upper bound). Every stage's options are nested in :class:`RunConfig` with the
stage command's own defaults (``--cls.preset``, ``--pseudo.par-iters``, ``--seg.train.epochs`` ...).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from weakseg.config import config_from_dict
from weakseg.engine.artifacts import is_done, load_json, save_json
from weakseg.errors import ConfigError
from weakseg.tasks import RunContext, RunOptions, check_method, get_task, synthesize
from weakseg.viz.report import write_report

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunConfig(RunOptions):
    """Run a whole task: e.g. train-cls → make-cams → eval-cams → pseudo → train-seg → eval (task tags)."""

    out: Path = Path("runs/demo")
    """run folder; every stage writes a sub-folder and a rerun skips complete stages"""
    config: Path | None = None
    """JSON file with any of these fields, nested like them (command-line values given explicitly win)"""
    data: Path | None = None
    """dataset root; None = generate the synthetic benchmark into OUT/data"""
    fmt: str = "auto"
    synth_preset: str = "small"
    """size preset of the synthetic benchmark when no dataset is given (tiny, small, default, large)"""
    synth_seed: int = 0
    train_split: str = "train"
    val_split: str = "val"
    task: str = "tags"
    """what supervision the run learns from (weakseg.tasks.TASKS): tags (image-level labels) or full (masks)"""
    method: str = "mcis"
    """a method of the task (weakseg.methods.METHODS), e.g. mcis or cam for tags"""
    seed: int = 0
    device: str = "auto"
    overwrite: bool = False
    """rebuild stage folders that hold outputs of another configuration"""
    report_images: int = 8
    """images per gallery of report.html"""


def load_run_config(path: Path) -> RunConfig:
    """A :class:`RunConfig` from a JSON file (nested like the dataclass; missing fields take their defaults)."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None
    try:
        return config_from_dict(RunConfig, values)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def run(cfg: RunConfig) -> dict:
    """Run every stage of ``cfg.task`` in order; returns the summary written to ``OUT/summary.json``."""
    task = get_task(cfg.task)
    check_method(task, cfg.method)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_json(out / "config.json", cfg)
    timings: dict[str, float] = {}
    # a skipped stage keeps the time of the run that made it (a rerun, e.g. demo --full-baseline, would log ~0 s)
    earlier = load_json(out / "summary.json").get("timings_s", {}) if (out / "summary.json").is_file() else {}

    def timed(name: str, folder: Path, skippable: bool, fn, *args):
        """Run one stage (which itself skips complete work), logging and timing it."""
        skipped = skippable and is_done(folder)
        log.info("stage %s → %s%s", name, folder, " (complete, skipped)" if skipped else "")
        t0 = time.perf_counter()
        result = fn(*args)
        elapsed = round(time.perf_counter() - t0, 2)
        timings[name] = earlier.get(name, elapsed) if skipped else elapsed
        return result

    data = cfg.data
    if data is None:
        data = out / "data"
        timed("data", data, True, synthesize, data, cfg.synth_preset, cfg.synth_seed)
    opts = RunOptions(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(RunOptions)})
    ctx = RunContext(
        out=out,
        data=Path(data),
        method=cfg.method,
        opts=opts,
        fmt=cfg.fmt,
        train_split=cfg.train_split,
        val_split=cfg.val_split,
        seed=cfg.seed,
        device=cfg.device,
        overwrite=cfg.overwrite,
        summary={
            "task": task.name,
            "supervision": task.supervision,
            "method": cfg.method if task.needs_method else None,
        },
    )
    for stage in task.stages:
        if stage.when(ctx):
            timed(stage.name, out / stage.folder, stage.skippable, stage.run, ctx)
    summary = {**ctx.summary, "timings_s": timings}
    save_json(out / "summary.json", summary)
    if task.report:
        write_report(out, data=Path(data), fmt=cfg.fmt, train_split=cfg.train_split, val_split=cfg.val_split,
                     n_images=cfg.report_images)  # fmt: skip
    return summary
