"""The whole WSSS pipeline as one re-runnable command (``weakseg run`` / ``weakseg demo``).

Stages, each writing into its own folder of the run and skipped when its ``DONE`` marker exists:

    data (synthetic, when no dataset is given) → cls (train classifier) → cams (make CAMs)
    → eval/cams.json (seed mIoU, threshold sweep) → [aff (train AffinityNet), only with refiner "rw"]
    → pseudo (pseudo labels) → seg (train segmenter)
    → eval/seg.json (segmenter mIoU on the val split) → report.html

An interrupted stage is resumed (training from its last epoch, CAMs and pseudo labels from the
files already written); a complete one is skipped. With ``supervision="full"`` the classifier
stages are skipped and the segmenter is trained on the ground-truth masks (the upper bound).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from weakseg.engine.artifacts import is_done, load_json, mark_done, save_json
from weakseg.errors import ConfigError

log = logging.getLogger(__name__)

SUPERVISIONS = ("pseudo", "full")
BG_OFFSET = 0.15
"""the pseudo labels' background threshold is the seed sweep's best threshold minus this"""
SKIPPABLE = ("data", "cls", "cams", "aff", "pseudo", "seg")
"""stages that skip a complete output folder (the evaluations always recompute)"""


@dataclass(frozen=True)
class RunConfig:
    """Run the whole pipeline: train-cls → make-cams → eval-cams → pseudo → train-seg → eval."""

    out: Path = Path("runs/demo")
    """run folder; every stage writes a sub-folder and a rerun skips complete stages"""
    config: Path | None = None
    """JSON file with any of these fields (command-line values given explicitly win)"""
    data: Path | None = None
    """dataset root; None = generate the synthetic benchmark into OUT/data"""
    fmt: str = "auto"
    synth_preset: str = "small"
    """size preset of the synthetic benchmark when no dataset is given (tiny, small, default, large)"""
    synth_seed: int = 0
    train_split: str = "train"
    val_split: str = "val"
    supervision: str = "pseudo"
    """pseudo: the weakly supervised pipeline; full: segmenter trained on true masks (upper bound)"""
    method: str = "mcis"
    backbone: str = "efficientnet-lite0"
    weights: Path | None = None
    cls_preset: str = "cpu192"
    """classifier preset (see train-cls); cpu192 = the cpu preset at input 192 without the self-pair copy, stem
    and stride-2/4 stages frozen: in the demo seeds 50.54 vs 41.49 with the cpu preset (128 px); classifier
    stage 369 s vs 260 s (README, "Classifier input size")"""
    cls_epochs: int | None = None
    cls_input_size: int | None = None
    """classifier training input side; None = the preset's"""
    cls_output_stride: int | None = None
    """classifier backbone output stride (8 or 16); None = the preset's"""
    cam_scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
    """test-time scales (× the classifier's input size). On the demo's MCIS classifier (128 px, stride 16)
    adding 2.0 (16×16 maps) raised the seeds from 38.4 to 42.0 mIoU; with a 192-px classifier from 47.95 to 50.89"""
    partners_per_class: int = 0
    """MCIS test-time partners per class. The paper fuses co-attention CAMs of 3 partners + self-pairs;
    on the synthetic benchmark at CPU resolution the plain-head CAMs of the MCIS-trained classifier
    scored higher (README, "MCIS vs plain CAM"), so the CPU pipeline defaults to 0 and no self-pairs"""
    cam_self_pairs: bool = False
    background: str = "threshold"
    """background rule of the pseudo labels: threshold, power, or mcis (needs a saliency folder)"""
    bg_threshold: float | None = None
    """background score for the threshold rule; None = the best seed threshold found by eval-cams minus
    BG_OFFSET = 0.15 (the refiner grows regions). Pseudo mIoU by threshold, 50-step PAR at full size: demo
    CAMs of the cpu preset (best seed threshold 0.65) 0.45 → 53.6, 0.5 → 55.7, 0.55 → 55.1, 0.6 → 51.3;
    of the cpu192 preset (best 0.6) 0.35 → 65.3, 0.4 → 66.8, 0.45 → 65.5, 0.5 → 61.8, 0.55 → 55.4.
    Picking it on the train split's masks is the usual WSSS practice; pass a number where no masks exist"""
    ignore_margin: float = 0.05
    """pseudo-label pixels whose top-1 minus top-2 probability is below this become 255. On the demo's CAMs
    (threshold 0.6 + PAR): 0.1 → 29.5 % ignored, pseudo mIoU 42.5 (ignored counted as background), segmenter
    51.26 on val; 0.05 → 15.0 %, 51.7, segmenter 51.75; 0 → 52.8 (segmenter not measured)"""
    par_iters: int = 20
    """PAR propagation steps (refiner par; `weakseg pseudo`'s default is AFA's 10); README, section Pseudo labels"""
    par_scale: float = 0.65
    """PAR working size as a fraction of the image size (refiner par; `weakseg pseudo`'s default is 1). On the
    demo's cpu192 CAMs (threshold 0.45, one torch thread): 0.65 / 20 steps → pseudo mIoU 66.44, 0.5 / 15 → 65.76,
    full size / 50 steps → 65.46 (62 s vs ~20 s for 0.65 / 20 on an idle core)"""
    par_w1: float = 0.2
    """PAR colour/position temperature (refiner par; smaller = sharper at colour edges; AFA: 0.3)"""
    refiner: str = "par"
    """pseudo-label refiner: par, crf, none, or rw (trains AffinityNet first, stage aff/; its seed thresholds
    come from the seed sweep, see aff_thresholds)"""
    aff_epochs: int | None = None
    """AffinityNet epochs with refiner rw; None = train-aff's default"""
    seg_arch: str = "deeplabv3plus"
    seg_epochs: int | None = None
    seg_eval_scales: tuple[float, ...] = (1.0, 1.5)
    """test-time scales of the segmenter's evaluation (softmax averaged, + flip). The demo's weak segmenter
    (commit 5f002b7) on val: 1 → 66.64, 0.75/1/1.25 → 68.72, 1/1.5 → 70.50, 0.75/1/1.25/1.5 → 70.49 (the
    images are small: upscaling helps the thin shapes); the full baseline is evaluated the same way"""
    seed: int = 0
    device: str = "auto"
    report_images: int = 8
    extra: tuple[str, ...] = field(default_factory=tuple)
    """extra training data for the classifier, e.g. single:DIR or web:DIR (see train-cls)"""

    def __post_init__(self) -> None:
        if self.supervision not in SUPERVISIONS:
            raise ConfigError(f"unknown supervision {self.supervision!r}; valid: {', '.join(SUPERVISIONS)}")


def load_run_config(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None
    names = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{path}: unknown fields {unknown}; valid fields: {', '.join(sorted(names))}")
    types = {f.name: f.type for f in dataclasses.fields(RunConfig)}
    for k, v in list(values.items()):
        if v is not None and "Path" in str(types[k]):
            values[k] = Path(v)
        if isinstance(v, list):
            values[k] = tuple(v)
    return values


def run(cfg: RunConfig) -> dict:
    """Run every stage of ``cfg`` in order; returns the summary written to ``OUT/summary.json``."""
    from weakseg.cams.evaluate import EvalCamsConfig, eval_cams
    from weakseg.cams.make import MakeCamsConfig, make_cams
    from weakseg.methods.train import TrainClsConfig, train_cls
    from weakseg.refine.pseudo import PseudoConfig, make_pseudo
    from weakseg.refine.train_affinity import train_affinity
    from weakseg.seg.predict import EvalSegConfig, eval_seg
    from weakseg.seg.train import TrainSegConfig, train_seg

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_json(out / "config.json", cfg)
    timings: dict[str, float] = {}
    summary: dict = {"supervision": cfg.supervision, "method": cfg.method}
    # a skipped stage keeps the time of the run that made it (a rerun, e.g. demo --full-baseline, would log ~0 s)
    earlier = load_json(out / "summary.json").get("timings_s", {}) if (out / "summary.json").is_file() else {}

    def timed(name: str, folder: Path, fn, *args):
        """Run one stage (which itself skips complete work), logging and timing it."""
        skipped = is_done(folder) and name in SKIPPABLE
        log.info("stage %s → %s%s", name, folder, " (complete, skipped)" if skipped else "")
        t0 = time.perf_counter()
        result = fn(*args)
        elapsed = round(time.perf_counter() - t0, 2)
        timings[name] = earlier.get(name, elapsed) if skipped else elapsed
        return result

    data = cfg.data
    if data is None:
        data = out / "data"
        timed("data", data, _synthesize, data, cfg.synth_preset, cfg.synth_seed)

    if cfg.supervision == "pseudo":
        cls_cfg = TrainClsConfig(
            data=data,
            out=out / "cls",
            method=cfg.method,
            fmt=cfg.fmt,
            split=cfg.train_split,
            backbone=cfg.backbone,
            weights=cfg.weights,
            preset=cfg.cls_preset,
            epochs=cfg.cls_epochs,
            input_size=cfg.cls_input_size,
            output_stride=cfg.cls_output_stride,
            seed=cfg.seed,
            device=cfg.device,
            extra=cfg.extra,
        )
        timed("cls", cls_cfg.out, train_cls, cls_cfg)
        cam_cfg = MakeCamsConfig(
            cls_dir=cls_cfg.out,
            data=data,
            out=out / "cams",
            fmt=cfg.fmt,
            split=cfg.train_split,
            scales=cfg.cam_scales,
            partners_per_class=cfg.partners_per_class,
            self_pairs=cfg.cam_self_pairs,
            seed=cfg.seed,
            device=cfg.device,
        )
        timed("cams", cam_cfg.out, make_cams, cam_cfg)
        seeds = timed(
            "eval-cams",
            out / "eval",
            eval_cams,
            EvalCamsConfig(
                cams=cam_cfg.out, data=data, fmt=cfg.fmt, split=cfg.train_split, out=out / "eval" / "cams.json"
            ),
        )
        summary["seeds"] = {"miou": seeds["best_miou"], "threshold": seeds["best_threshold"]}
        aff_dir = None
        if cfg.refiner == "rw":
            aff_cfg = _aff_config(cfg, data, cam_cfg.out, out / "aff", seeds)
            aff_dir = timed("aff", aff_cfg.out, train_affinity, aff_cfg)
            summary["aff"] = {"fg_threshold": aff_cfg.fg_threshold, "bg_threshold": aff_cfg.bg_threshold}
        pseudo_cfg = PseudoConfig(
            cams=cam_cfg.out,
            data=data,
            out=out / "pseudo",
            fmt=cfg.fmt,
            split=cfg.train_split,
            background=cfg.background,
            refiner=cfg.refiner,
            ignore_margin=cfg.ignore_margin,
            par_iters=cfg.par_iters,
            par_w1=cfg.par_w1,
            par_scale=cfg.par_scale,
            affinity=aff_dir,
            **_bg_threshold(cfg, seeds),
        )
        pseudo = timed("pseudo", pseudo_cfg.out, make_pseudo, pseudo_cfg)
        summary["pseudo"] = {
            "miou": pseudo.get("miou"),  # ignored pixels counted as background (IRN's convention)
            "miou_non_ignored": (pseudo.get("scored") or {}).get("miou"),
            "ignored_fraction": pseudo.get("ignored_fraction"),
        }
        labels: Path | None = pseudo_cfg.out
    else:
        labels = None

    seg_kwargs = {} if cfg.seg_epochs is None else {"epochs": cfg.seg_epochs}
    seg_cfg = TrainSegConfig(
        data=data,
        out=out / "seg",
        labels=labels,
        supervision=cfg.supervision,
        fmt=cfg.fmt,
        split=cfg.train_split,
        arch=cfg.seg_arch,
        seed=cfg.seed,
        device=cfg.device,
        **seg_kwargs,
    )
    timed("seg", seg_cfg.out, train_seg, seg_cfg)
    seg_eval = timed(
        "eval-seg",
        out / "eval" / "seg",
        eval_seg,
        EvalSegConfig(
            seg_dir=seg_cfg.out,
            data=data,
            out=out / "eval" / "seg",
            fmt=cfg.fmt,
            split=cfg.val_split,
            scales=cfg.seg_eval_scales,
            device=cfg.device,
        ),
    )
    summary["segmenter"] = {"miou": seg_eval["miou"], "split": cfg.val_split}
    summary["timings_s"] = timings
    save_json(out / "summary.json", summary)

    from weakseg.viz.report import write_report

    write_report(
        out, data=data, fmt=cfg.fmt, train_split=cfg.train_split, val_split=cfg.val_split, n_images=cfg.report_images
    )
    return summary


def _bg_threshold(cfg: RunConfig, seeds: dict) -> dict:
    if cfg.background != "threshold":
        return {}
    if cfg.bg_threshold is not None:
        return {"bg_threshold": cfg.bg_threshold}
    return {"bg_threshold": background_threshold(seeds)}


def background_threshold(seeds: dict) -> float:
    """The pseudo labels' background threshold: the seed sweep's best threshold minus BG_OFFSET (at least 0.05)."""
    best = seeds.get("best_threshold")
    if best is None or seeds.get("best_miou") is None:
        raise ConfigError("the split has no masks to pick a background threshold from; pass --bg-threshold")
    return round(max(0.05, float(best) - BG_OFFSET), 2)


def aff_thresholds(seeds: dict) -> dict:
    """AffinityNet seed thresholds from the seed sweep's best background threshold ``t``.

    Foreground seeds where the highest CAM is at least ``t + 0.1`` and background below ``t - 0.2``
    (clipped to [0.05, 0.95]): the band of width 0.3 around ``t`` is where the seeds are wrong most
    often, and AffinityNet only needs confident pairs; the band is asymmetric because the CAMs cover
    too little of the objects (low CAM values inside objects are common, high values outside rare).
    Without masks to sweep, train-aff's defaults (0.8 / 0.5: the demo's best threshold 0.7) are used.
    """
    best = seeds.get("best_threshold")
    if best is None or seeds.get("best_miou") is None:
        log.info("no seed sweep (no masks): AffinityNet seeds use train-aff's default thresholds")
        return {}
    fg = round(min(0.95, float(best) + 0.1), 2)
    bg = round(min(fg, max(0.05, float(best) - 0.2)), 2)
    return {"fg_threshold": fg, "bg_threshold": bg}


def _aff_config(cfg: RunConfig, data: Path, cams: Path, out: Path, seeds: dict):
    from weakseg.refine.train_affinity import TrainAffinityConfig

    epochs = {} if cfg.aff_epochs is None else {"epochs": cfg.aff_epochs}
    return TrainAffinityConfig(
        cams=cams,
        data=data,
        out=out,
        fmt=cfg.fmt,
        split=cfg.train_split,
        backbone=cfg.backbone,
        weights=cfg.weights,
        seed=cfg.seed,
        device=cfg.device,
        **epochs,
        **aff_thresholds(seeds),
    )


def _synthesize(folder: Path, preset: str, seed: int) -> Path:
    if is_done(folder):
        return folder
    from weakseg.data.synthetic import SynthConfig, generate

    generate(SynthConfig(out=folder, seed=seed, size=preset))
    mark_done(folder, {"preset": preset, "seed": seed})
    return folder
