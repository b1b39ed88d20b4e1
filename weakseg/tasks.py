"""Task recipes: for each kind of supervision, which stages run, in which order, reading and writing what.

``weakseg run --task TASK --method METHOD`` runs the stages of ``TASKS[TASK]``; each stage reads the run's
earlier folders and writes its own (:mod:`weakseg.engine.stage` contract: rerun skips, interrupted resumes).
A task is open to the methods whose ``task`` attribute names it (:data:`weakseg.methods.METHODS`).
Tasks whose methods are not implemented yet are listed in :data:`PLANNED` so that ``--task`` names them
and says what is missing, instead of failing obscurely.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weakseg.data.davis import is_davis
from weakseg.data.registry import open_dataset
from weakseg.data.synthetic import SynthConfig, generate
from weakseg.engine.artifacts import is_done, mark_done
from weakseg.errors import ConfigError, unknown_name
from weakseg.methods import METHODS
from weakseg.refine.pseudo import PseudoOptions
from weakseg.stages.box_pseudo import BoxPseudoConfig, BoxPseudoOptions, make_box_pseudo
from weakseg.stages.eval_cams import EvalCamsConfig, EvalCamsOptions, eval_cams, mask_source
from weakseg.stages.eval_seg import EvalSegConfig, EvalSegOptions, eval_seg
from weakseg.stages.eval_volumes import EvalVolumesConfig, EvalVolumesOptions, eval_volumes
from weakseg.stages.make_cams import MakeCamsConfig, MakeCamsOptions, make_cams
from weakseg.stages.pseudo import PseudoConfig, make_pseudo
from weakseg.stages.scribble_labels import WeakLabelsConfig, WeakLabelsOptions, make_weak_labels
from weakseg.stages.track import (
    TrackConfig,
    TrackOptions,
    TrainAgentConfig,
    TrainAgentOptions,
    TrainProposerConfig,
    TrainProposerOptions,
    synthetic_davis,
    track,
    train_agent,
    train_proposer,
)
from weakseg.stages.train_aff import TrainAffinityConfig, TrainAffinityOptions, train_affinity
from weakseg.stages.train_cls import TrainClsConfig, TrainClsOptions, train_cls
from weakseg.stages.train_cosal import (
    EvalCosalConfig,
    EvalCosalOptions,
    TrainCosalConfig,
    TrainCosalOptions,
    eval_cosal,
    train_cosal,
)
from weakseg.stages.train_saliency import (
    PredictSaliencyConfig,
    PredictSaliencyOptions,
    TrainSaliencyConfig,
    TrainSaliencyOptions,
    predict_saliency_maps,
    train_saliency,
)
from weakseg.stages.train_scribble import ScribbleMethodOptions, TrainScribbleConfig, train_scribble
from weakseg.stages.train_seg import TrainSegConfig, TrainSegOptions, train_seg
from weakseg.stages.train_semi import TrainSemiConfig, TrainSemiOptions, train_semi

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    """Every stage's options, nested (``--cls.preset``, ``--pseudo.par-iters``, ``--seg.train.epochs`` ...)."""

    cls: TrainClsOptions = field(default_factory=TrainClsOptions)
    cams: MakeCamsOptions = field(default_factory=MakeCamsOptions)
    eval_cams: EvalCamsOptions = field(default_factory=EvalCamsOptions)
    aff: TrainAffinityOptions = field(default_factory=TrainAffinityOptions)
    pseudo: PseudoOptions = field(default_factory=PseudoOptions)
    box: BoxPseudoOptions = field(default_factory=BoxPseudoOptions)
    seg: TrainSegOptions = field(default_factory=TrainSegOptions)
    eval_seg: EvalSegOptions = field(default_factory=EvalSegOptions)
    semi: TrainSemiOptions = field(default_factory=TrainSemiOptions)
    eval_volumes: EvalVolumesOptions = field(default_factory=EvalVolumesOptions)
    weak: WeakLabelsOptions = field(default_factory=WeakLabelsOptions)
    scribble: ScribbleMethodOptions = field(default_factory=ScribbleMethodOptions)
    proposer: TrainProposerOptions = field(default_factory=TrainProposerOptions)
    agent: TrainAgentOptions = field(default_factory=TrainAgentOptions)
    track: TrackOptions = field(default_factory=TrackOptions)
    cosal: TrainCosalOptions = field(default_factory=TrainCosalOptions)
    eval_cosal: EvalCosalOptions = field(default_factory=EvalCosalOptions)
    saliency: TrainSaliencyOptions = field(default_factory=TrainSaliencyOptions)
    eval_saliency: PredictSaliencyOptions = field(default_factory=PredictSaliencyOptions)


@dataclass
class RunContext:
    """What the stages of one run share: where things are, the run-wide settings and the results so far."""

    out: Path
    data: Path
    method: str
    opts: RunOptions
    fmt: str = "auto"
    train_split: str = "train"
    val_split: str = "val"
    seed: int = 0
    device: str = "auto"
    overwrite: bool = False
    summary: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)

    def config(self, options: Any, config_cls: type, folder: str, *, split: str = "train", **io: Any) -> Any:
        """The stage config ``config_cls``: ``options`` + this run's shared inputs/outputs + ``io``.

        The run-wide fields (data, fmt, seed, device, overwrite, method) are passed where the config has them;
        ``out`` is ``OUT/folder``; ``split`` picks the run's train or val split.
        """
        shared = {"data": self.data, "fmt": self.fmt, "seed": self.seed, "device": self.device,
                  "overwrite": self.overwrite, "method": self.method,
                  "split": self.train_split if split == "train" else self.val_split}  # fmt: skip
        names = {f.name for f in dataclasses.fields(config_cls)}
        io = {"out": self.out / folder, **io}
        return with_io(options, config_cls, **{k: v for k, v in shared.items() if k in names and k not in io}, **io)


def with_io(options: Any, config_cls: type, **io: Any) -> Any:
    """The stage config ``config_cls`` with every option of ``options`` and the run's inputs/outputs ``io``."""
    return config_cls(**{f.name: getattr(options, f.name) for f in dataclasses.fields(options)}, **io)


@dataclass(frozen=True)
class Stage:
    """One step of a task: its name (timing key), the folder it writes, and the function that runs it."""

    name: str
    folder: str
    run: Callable[[RunContext], Any]
    reads: tuple[str, ...] = ()
    """folders of earlier stages it reads (for the docs and the order check)"""
    when: Callable[[RunContext], bool] = lambda ctx: True
    skippable: bool = True
    """a complete output folder is skipped (evaluations always recompute)"""


@dataclass(frozen=True)
class Task:
    """A supervision type as a list of stages."""

    name: str
    supervision: str
    description: str
    stages: tuple[Stage, ...]
    needs_method: bool = True
    report: bool = True
    """write report.html (it reads the image-dataset stages' outputs; tasks without them set False)"""


# ---------------------------------------------------------------------------- stage runners


def _cls(ctx: RunContext) -> Path:
    cfg = ctx.config(ctx.opts.cls, TrainClsConfig, "cls")
    return train_cls(cfg)


def _cams(ctx: RunContext) -> Path:
    cfg = ctx.config(ctx.opts.cams, MakeCamsConfig, "cams", cls_dir=ctx.out / "cls")
    return make_cams(cfg)


def _eval_cams(ctx: RunContext) -> dict:
    """The seed sweep, on the train masks or the calibration masks; skipped (with a note) when there are none."""
    cfg = ctx.config(
        ctx.opts.eval_cams, EvalCamsConfig, "eval", cams=ctx.out / "cams", out=ctx.out / "eval" / "cams.json"
    )
    if mask_source(cfg, open_dataset(ctx.data, ctx.train_split, ctx.fmt)) is None:
        note = (
            f"split {ctx.train_split!r} has no masks: no seed mIoU, and the background threshold is the mask-free "
            "default (label a few images and give --eval-cams.calib DIR to tune it)"
        )
        log.info("eval-cams skipped: %s", note)
        Path(cfg.out).unlink(missing_ok=True)  # a sweep of an earlier run must not be mistaken for this one's
        ctx.summary["seeds"] = {"miou": None, "skipped": note}
        return {}
    seeds = eval_cams(cfg)
    ctx.summary["seeds"] = {
        "miou": seeds["best_miou"],
        "threshold": seeds["best_threshold"],
        "masks_read": seeds["masks_read"],
        **({"mask_ids": seeds["mask_ids"]} if seeds.get("mask_ids") else {}),
    }
    ctx.results["seeds"] = seeds
    return seeds


def aff_thresholds(seeds: dict) -> dict:
    """AffinityNet seed thresholds from the seed sweep's best background threshold ``t``.

    Foreground seeds where the highest CAM is at least ``t + 0.1`` and background below ``t - 0.2``
    (clipped to [0.05, 0.95]): the band around ``t`` is where the seeds are wrong most often, and
    AffinityNet only needs confident pairs; asymmetric because CAMs cover too little of the objects.
    The sweep reads the train masks; without it train-aff's defaults (0.8 / 0.5) are used.
    """
    best = seeds.get("best_threshold")
    if best is None or seeds.get("best_miou") is None:
        log.info("no seed sweep (no masks): AffinityNet seeds use train-aff's default thresholds")
        return {}
    fg = round(min(0.95, float(best) + 0.1), 2)
    bg = round(min(fg, max(0.05, float(best) - 0.2)), 2)
    return {"fg_threshold": fg, "bg_threshold": bg}


def _aff(ctx: RunContext) -> Path:
    opts = ctx.opts.aff
    if opts.fg_threshold is None and opts.bg_threshold is None:
        opts = dataclasses.replace(opts, **aff_thresholds(ctx.results.get("seeds", {})))
    cfg = ctx.config(opts, TrainAffinityConfig, "aff", cams=ctx.out / "cams")
    ctx.summary["aff"] = {"fg_threshold": cfg.thresholds[0], "bg_threshold": cfg.thresholds[1]}
    return train_affinity(cfg)


def _uses_rw(ctx: RunContext) -> bool:
    return ctx.opts.pseudo.refiner == "rw"


def _box_uses_cams(ctx: RunContext) -> bool:
    return ctx.opts.box.seeds == "cam"


def _box_cls(ctx: RunContext) -> Path:
    """The CAM classifier of the box task: a tags method (--box.cam-method) on the image-level labels."""
    return train_cls(ctx.config(ctx.opts.cls, TrainClsConfig, "cls", method=ctx.opts.box.cam_method))


def _box_pseudo(ctx: RunContext) -> dict:
    cams = ctx.out / "cams" if _box_uses_cams(ctx) else None
    cfg = ctx.config(ctx.opts.box, BoxPseudoConfig, "pseudo", cams=cams)
    result = make_box_pseudo(cfg)
    ctx.summary["pseudo"] = {k: result.get(k) for k in ("miou", "box_fill_miou", "box_cam_miou", "seeds_miou_labelled",
                                                        "boxes", "seeds", "masks_read")}  # fmt: skip
    return result


def _pseudo(ctx: RunContext) -> dict:
    cfg = ctx.config(
        ctx.opts.pseudo,
        PseudoConfig,
        "pseudo",
        cams=ctx.out / "cams",
        seeds=ctx.out / "eval" / "cams.json" if ctx.results.get("seeds") else None,  # none: the mask-free default
        affinity=ctx.out / "aff" if _uses_rw(ctx) else None,
    )
    pseudo = make_pseudo(cfg)
    ctx.summary["pseudo"] = {
        "miou": pseudo.get("miou"),  # ignored pixels counted as background (IRN's convention)
        "miou_non_ignored": (pseudo.get("scored") or {}).get("miou"),
        "ignored_fraction": pseudo.get("ignored_fraction"),
        "bg_threshold": pseudo.get("bg_threshold"),
        "bg_threshold_source": pseudo.get("bg_threshold_source"),
        "masks_read": pseudo.get("masks_read"),
    }
    return pseudo


def _seg(supervision: str) -> Callable[[RunContext], Path]:
    def run(ctx: RunContext) -> Path:
        labels = ctx.out / "pseudo" if supervision == "pseudo" else None
        cfg = ctx.config(ctx.opts.seg, TrainSegConfig, "seg", labels=labels, supervision=supervision)
        return train_seg(cfg)

    return run


def _eval_seg(ctx: RunContext) -> dict:
    cfg = ctx.config(ctx.opts.eval_seg, EvalSegConfig, "eval/seg", split="val", seg_dir=ctx.out / "seg")
    result = eval_seg(cfg)
    ctx.summary["segmenter"] = {"miou": result["miou"], "split": ctx.val_split, "masks_read": result.get("masks_read")}
    if result.get("note"):
        ctx.summary["segmenter"]["note"] = result["note"]
    return result


def _semi(ctx: RunContext) -> Path:
    cfg = ctx.config(ctx.opts.semi, TrainSemiConfig, "semi")
    return train_semi(cfg)


def _eval_volumes(ctx: RunContext) -> dict:
    cfg = ctx.config(ctx.opts.eval_volumes, EvalVolumesConfig, "eval/volumes", split="val", model_dir=ctx.out / "semi")
    result = eval_volumes(cfg)
    ctx.summary["volumes"] = {"split": ctx.val_split, "unit": result["unit"], **result["mean"],
                              "per_class": result["per_class"]}  # fmt: skip
    return result


def _saliency(ctx: RunContext) -> Path:
    return train_saliency(ctx.config(ctx.opts.saliency, TrainSaliencyConfig, "saliency"))


def _eval_saliency(ctx: RunContext) -> dict:
    """Saliency maps of the val split (same data options as training) and their SOD metrics."""
    train = ctx.opts.saliency
    opts = PredictSaliencyOptions(sequences=train.sequences, frame_step=train.frame_step,
                                  scribble_seed=train.scribble_seed)  # fmt: skip
    if ctx.opts.eval_saliency != PredictSaliencyOptions():
        opts = ctx.opts.eval_saliency
    cfg = ctx.config(opts, PredictSaliencyConfig, "eval/saliency", split="val", model_dir=ctx.out / "saliency")
    result = predict_saliency_maps(cfg)
    ctx.summary["saliency"] = {k: result.get(k) for k in ("split", "images", "mae", "max_fmeasure", "mean_fmeasure",
                                                          "adaptive_fmeasure", "smeasure", "masks_read")}  # fmt: skip
    return result


def _weak(ctx: RunContext) -> dict:
    cfg = ctx.config(ctx.opts.weak, WeakLabelsConfig, "weak")
    metrics = make_weak_labels(cfg)
    ctx.summary["weak"] = {k: metrics.get(k) for k in ("kind", "source", "labelled_fraction", "masks_read")}
    return metrics


def _scribble_seg(ctx: RunContext) -> Path:
    """The segmenter from the partial labels: the ``seg`` options (same as train-seg) + the method's preset/set."""
    cfg = ctx.config(ctx.opts.seg, TrainScribbleConfig, "seg", labels=ctx.out / "weak",
                     preset=ctx.opts.scribble.preset, set=ctx.opts.scribble.set)  # fmt: skip
    return train_scribble(cfg)


def _cosal(ctx: RunContext) -> Path:
    return train_cosal(ctx.config(ctx.opts.cosal, TrainCosalConfig, "cosal"))


def _eval_cosal(ctx: RunContext) -> dict:
    cfg = ctx.config(ctx.opts.eval_cosal, EvalCosalConfig, "eval/cosal", split="val", model_dir=ctx.out / "cosal")
    result = eval_cosal(cfg)
    ctx.summary["co-saliency"] = {"split": ctx.val_split, "groups": result["groups"], "images": result["images"],
                                  **{k: result["metrics"][k] for k in ("smeasure", "max_fmeasure", "mae")}}  # fmt: skip
    return result


def _proposer(ctx: RunContext) -> Path:
    return train_proposer(ctx.config(ctx.opts.proposer, TrainProposerConfig, "proposer"))


def _agent(ctx: RunContext) -> Path:
    return train_agent(ctx.config(ctx.opts.agent, TrainAgentConfig, "agent", proposer_dir=ctx.out / "proposer"))


def _track(ctx: RunContext) -> dict:
    """Every tracker mode on the DAVIS folder --data (or, without one, on synthetic videos in OUT/videos)."""
    data = ctx.data if is_davis(ctx.data) else synthetic_davis(ctx.out / "videos", seed=ctx.seed)
    cfg = ctx.config(ctx.opts.track, TrackConfig, "track", data=data, proposer_dir=ctx.out / "proposer",
                     agent_dir=ctx.out / "agent")  # fmt: skip
    result = track(cfg)
    ctx.summary["video"] = {"sequences": result["sequences"], **result["modes"]}
    return result


# ---------------------------------------------------------------------------- the registry

_EVAL_SEG = Stage("eval-seg", "eval/seg", _eval_seg, reads=("seg",), skippable=False)

TASKS: dict[str, Task] = {
    "tags": Task(
        "tags",
        supervision="image-level labels",
        description="classifier -> CAMs -> pseudo labels -> segmenter (MCIS, CAM)",
        stages=(
            Stage("cls", "cls", _cls, reads=("data",)),
            Stage("cams", "cams", _cams, reads=("cls", "data")),
            Stage("eval-cams", "eval", _eval_cams, reads=("cams", "data"), skippable=False),
            Stage("aff", "aff", _aff, reads=("cams", "data"), when=_uses_rw),
            Stage("pseudo", "pseudo", _pseudo, reads=("cams", "data", "aff")),
            Stage("seg", "seg", _seg("pseudo"), reads=("pseudo", "data")),
            _EVAL_SEG,
        ),
    ),
    "full": Task(
        "full",
        supervision="full masks",
        description="segmenter trained on the true masks (the upper bound of every weak task)",
        stages=(Stage("seg", "seg", _seg("full"), reads=("data",)), _EVAL_SEG),
        needs_method=False,
    ),
    "saliency": Task(
        "saliency",
        supervision="scribbles of the salient object (S-DUTS style: 1 salient, 2 background, 0 unknown)",
        description="scribble salient-object detection -> saliency maps + MAE / Fβ / Sα on val (SCWSSOD, sod-pce; "
        "sod-full = masks; --data: folder, davis or voc layout, weakseg.data.saliency)",
        stages=(
            Stage("saliency", "saliency", _saliency, reads=("data",)),
            Stage("eval-saliency", "eval/saliency", _eval_saliency, reads=("saliency", "data"), skippable=False),
        ),
        report=False,
    ),
    "semi-supervised": Task(
        "semi-supervised",
        supervision="a few labelled + many unlabelled volumes (2D slices)",
        description="two-stream training on slices -> 3D evaluation of the volumes (ABD, cross-teaching, "
        "supervised-only; --data: a weakseg.data.acdc layout)",
        stages=(
            Stage("semi", "semi", _semi, reads=("data",)),
            Stage("eval-volumes", "eval/volumes", _eval_volumes, reads=("semi", "data"), skippable=False),
        ),
        report=False,
    ),
    "box": Task(
        "box",
        supervision="bounding boxes (dataset boxes, or simulated from masks)",
        description="[CAM classifier on the boxes' classes -> CAMs ->] box pseudo labels (A2GNN) -> segmenter -> eval",
        stages=(
            Stage("cls", "cls", _box_cls, reads=("data",), when=_box_uses_cams),
            Stage("cams", "cams", _cams, reads=("cls", "data"), when=_box_uses_cams),
            Stage("box-pseudo", "pseudo", _box_pseudo, reads=("data", "cams")),
            Stage("seg", "seg", _seg("pseudo"), reads=("pseudo", "data")),
            _EVAL_SEG,
        ),
        report=False,
    ),
    "scribble": Task(
        "scribble",
        supervision="scribbles (or point clicks) on the training images",
        description="partial labels (read, or simulated from masks with a seeded pixel budget) -> segmenter trained "
        "with partial CE + a regularized loss (DFR) -> eval (--weak.kind points for clicks)",
        stages=(
            Stage("weak", "weak", _weak, reads=("data",)),
            Stage("seg", "seg", _scribble_seg, reads=("weak", "data")),
            _EVAL_SEG,
        ),
    ),
    "co-saliency": Task(
        "co-saliency",
        supervision="co-saliency masks of training groups (images sharing an object); groups only at test time",
        description="groups (images sharing a class, CoSOD folders, DAVIS frames) -> DCFM or the single-image "
        "baseline -> saliency maps (PNG) + Sα / Fβ / Eξ / MAE",
        stages=(
            Stage("cosal", "cosal", _cosal, reads=("data",)),
            Stage("eval-cosal", "eval/cosal", _eval_cosal, reads=("cosal", "data"), skippable=False),
        ),
        report=False,
    ),
    "video": Task(
        "video",
        supervision="the first frame's box of each object (box-initialised video object segmentation)",
        description="box-mask proposer (coco128-seg instances + synthetic shapes) -> A2C template-update agent "
        "(synthetic videos + DAVIS train sequences) -> tracking + J / F / J&F / fps per mode (FTMU)",
        stages=(
            Stage("proposer", "proposer", _proposer, reads=("data",)),
            Stage("agent", "agent", _agent, reads=("proposer", "data")),
            Stage("track", "track", _track, reads=("proposer", "agent", "data"), skippable=False),
        ),
        report=False,
    ),
}

PLANNED: dict[str, str] = {
    "few-shot": "K annotated examples of a new class; not a `weakseg run` task yet: its methods (prototype, SCL, "
    "PI-CLIP prior) run as `weakseg fewshot train` / `weakseg fewshot eval`",
}
"""task slots whose methods are not implemented yet: named by ``--task``, refused with this description"""


def get_task(name: str) -> Task:
    if name in PLANNED:
        raise ConfigError(
            f"task {name!r} ({PLANNED[name]}) has no implemented method yet; available: {', '.join(TASKS)}"
        )
    if name not in TASKS:
        raise unknown_name("task", name, [*TASKS, *PLANNED])
    return TASKS[name]


def methods_of(task: str) -> list[str]:
    """Registered methods that plug into ``task``."""
    return sorted(n for n, m in METHODS.items() if m.task == task)


def check_method(task: Task, method: str) -> None:
    if not task.needs_method:
        return
    valid = methods_of(task.name)
    if method not in valid:
        raise ConfigError(f"method {method!r} does not run task {task.name!r}; its methods: {', '.join(valid)}")


def synthesize(folder: Path, preset: str, seed: int) -> Path:
    """The synthetic benchmark in ``folder`` (skipped when already complete)."""
    if is_done(folder):
        return folder
    generate(SynthConfig(out=folder, seed=seed, size=preset))
    mark_done(folder, {"preset": preset, "seed": seed})
    return folder
