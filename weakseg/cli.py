"""Command line: ``weakseg <command> [options]``. Thin: parse a stage config, call one function.

Every command's options are generated (by tyro) from the frozen dataclass config of its stage;
``weakseg <command> --help`` lists them with their defaults.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from weakseg.data.check import check_dataset, format_problems
from weakseg.data.download import download
from weakseg.data.synthetic import SynthConfig, generate
from weakseg.data.voc import build_labels
from weakseg.engine.logging import setup_logging
from weakseg.errors import WeaksegError
from weakseg.pipeline import RunConfig, load_run_config, run
from weakseg.stages.box_pseudo import BoxPseudoConfig, make_box_pseudo
from weakseg.stages.clip_pretrain import ClipPretrainConfig, clip_pretrain
from weakseg.stages.eval_cams import EvalCamsConfig, eval_cams
from weakseg.stages.eval_seg import EvalSegConfig, eval_seg
from weakseg.stages.eval_volumes import EvalVolumesConfig, eval_volumes
from weakseg.stages.evaluate import EvalConfig, evaluate_folders
from weakseg.stages.fewshot import FewShotEvalConfig, FewShotTrainConfig, fewshot_eval, fewshot_train
from weakseg.stages.make_cams import MakeCamsConfig, make_cams
from weakseg.stages.predict import PredictConfig, predict_images
from weakseg.stages.pseudo import PseudoConfig, make_pseudo
from weakseg.stages.scribble_labels import WeakLabelsConfig, make_weak_labels
from weakseg.stages.select import SelectConfig, select
from weakseg.stages.track import TrackConfig, TrainAgentConfig, TrainProposerConfig, track, train_agent, train_proposer
from weakseg.stages.train_aff import TrainAffinityConfig, train_affinity
from weakseg.stages.train_cls import TrainClsConfig, train_cls
from weakseg.stages.train_cosal import EvalCosalConfig, TrainCosalConfig, eval_cosal, train_cosal
from weakseg.stages.train_saliency import (
    PredictSaliencyConfig,
    TrainSaliencyConfig,
    predict_saliency_maps,
    train_saliency,
)
from weakseg.stages.train_scribble import TrainScribbleConfig, train_scribble
from weakseg.stages.train_seg import TrainSegConfig, train_seg
from weakseg.stages.train_semi import TrainSemiConfig, train_semi
from weakseg.viz.overlay import VizConfig, render_cam_grid_cmd

log = logging.getLogger("weakseg")


@dataclass(frozen=True)
class BuildLabelsConfig:
    """Write cls_labels.csv (image-level labels) from the segmentation masks of a VOC-layout dataset."""

    root: Path
    splits: tuple[str, ...] = ("train", "val")


@dataclass(frozen=True)
class CheckConfig:
    """Validate a dataset and list every problem (file, problem, fix) in one pass."""

    root: Path
    fmt: str = "auto"
    split: str | None = None
    """check only this split (default: every split found)"""
    strict: bool = False
    """files that belong to no image (label files, masks, label rows whose image is gone) are errors (exit 1),
    not warnings"""


@dataclass(frozen=True)
class DownloadConfig:
    """Fetch and verify PASCAL VOC 2012 (+SBD) or COCO-2014, or explain how to place the archives by hand."""

    name: str
    """voc or coco"""
    dest: Path = Path("data")


@dataclass(frozen=True)
class DemoConfig:
    """The main job: the whole pipeline on the synthetic benchmark with a CPU preset (minutes on 2 cores)."""

    out: Path = Path("runs/demo")
    synth_preset: str = "small"
    task: str = "tags"
    method: str = "mcis"
    full_baseline: bool = False
    """also train a segmenter on the true masks (the fully supervised upper bound) for comparison
    (about 4 more minutes on 2 cores; off by default to keep the demo within 15 minutes)"""
    seed: int = 0
    device: str = "auto"


def _data_commands() -> dict[str, tuple[type, Callable]]:
    return {
        "synth": (SynthConfig, _synth),
        "build-labels": (BuildLabelsConfig, _build_labels),
        "check": (CheckConfig, _check),
        "download": (DownloadConfig, _download),
    }


def _clip_commands() -> dict[str, tuple[type, Callable]]:
    return {"pretrain": (ClipPretrainConfig, clip_pretrain)}


def _fewshot_commands() -> dict[str, tuple[type, Callable]]:
    return {"train": (FewShotTrainConfig, fewshot_train), "eval": (FewShotEvalConfig, _print_result(fewshot_eval))}


def _commands() -> dict[str, tuple[type, Callable]]:
    return {
        "train-cls": (TrainClsConfig, train_cls),
        "make-cams": (MakeCamsConfig, make_cams),
        "eval-cams": (EvalCamsConfig, _print_result(eval_cams)),
        "viz": (VizConfig, render_cam_grid_cmd),
        "train-aff": (TrainAffinityConfig, train_affinity),
        "pseudo": (PseudoConfig, _print_result(make_pseudo)),
        "box-pseudo": (BoxPseudoConfig, _print_result(make_box_pseudo)),
        "select": (SelectConfig, _print_select(select)),
        "train-seg": (TrainSegConfig, train_seg),
        "weak-labels": (WeakLabelsConfig, _print_result(make_weak_labels)),
        "train-scribble": (TrainScribbleConfig, train_scribble),
        "eval-seg": (EvalSegConfig, _print_result(eval_seg)),
        "predict": (PredictConfig, predict_images),
        "train-semi": (TrainSemiConfig, train_semi),
        "train-cosal": (TrainCosalConfig, train_cosal),
        "eval-cosal": (EvalCosalConfig, _print_result(eval_cosal)),
        "train-saliency": (TrainSaliencyConfig, train_saliency),
        "predict-saliency": (PredictSaliencyConfig, _print_result(predict_saliency_maps)),
        "eval-volumes": (EvalVolumesConfig, _print_result(eval_volumes)),
        "train-proposer": (TrainProposerConfig, train_proposer),
        "train-agent": (TrainAgentConfig, train_agent),
        "track": (TrackConfig, _print_result(track)),
        "eval": (EvalConfig, _eval),
        "run": (RunConfig, _run),
        "demo": (DemoConfig, _demo),
    }


def _print_result(fn: Callable) -> Callable:
    def wrapped(cfg):
        result = fn(cfg)
        if isinstance(result, dict):
            table = result.get("table")
            if table:
                print(table)
            for key in ("best_threshold", "best_miou", "miou"):
                if key in result:
                    print(f"{key}: {result[key]}")
        return result

    return wrapped


def _print_select(fn: Callable) -> Callable:
    def wrapped(cfg):
        s = fn(cfg)
        d = s["dropped"]
        print(f"kept {s['kept']} of {s['images']} pairs; dropped {d['pcs']} by PCS, {d['asf']} by ASF, "
              f"{d['no_class']} without a class; {cfg.out}/kept.txt, report.md")  # fmt: skip
        return s

    return wrapped


def _synth(cfg) -> None:
    t0 = time.perf_counter()
    root = generate(cfg)
    print(f"synthetic benchmark written to {root} in {time.perf_counter() - t0:.1f} s; samples: {root / 'samples.png'}")


def _build_labels(cfg: BuildLabelsConfig) -> None:
    print(f"wrote {build_labels(cfg.root, cfg.splits)}")


def _check(cfg: CheckConfig) -> None:
    problems = check_dataset(cfg.root, fmt=cfg.fmt, split=cfg.split, strict=cfg.strict)
    print(format_problems(problems))
    if any(p.severity == "error" for p in problems):
        raise SystemExit(1)


def _download(cfg: DownloadConfig) -> None:
    download(cfg.name, cfg.dest)


def _eval(cfg) -> None:
    print(evaluate_folders(cfg).table())


def _run(cfg) -> None:
    summary = run(cfg)
    print(_summary_text(cfg.out, summary))


def _demo(cfg: DemoConfig) -> None:
    t0 = time.perf_counter()
    base = RunConfig(
        out=cfg.out, synth_preset=cfg.synth_preset, task=cfg.task, method=cfg.method, seed=cfg.seed, device=cfg.device
    )
    summary = run(base)
    print(_summary_text(cfg.out, summary))
    if cfg.full_baseline:
        full = dataclasses.replace(base, out=cfg.out / "full", data=cfg.out / "data", task="full")
        fs = run(full)
        ratio = summary["segmenter"]["miou"] / max(fs["segmenter"]["miou"], 1e-9)
        print(
            f"fully supervised segmenter mIoU {100 * fs['segmenter']['miou']:.2f} "
            f"→ weakly supervised reaches {100 * ratio:.1f}% of it"
        )
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; report: {cfg.out / 'report.html'}")


def _summary_text(out: Path, summary: dict) -> str:
    lines = [f"run folder: {out}"]
    for stage in ("seeds", "pseudo", "segmenter"):
        if stage in summary and summary[stage].get("miou") is not None:
            lines.append(f"  {stage:<10} mIoU {100 * summary[stage]['miou']:.2f}")
        elif stage in summary:
            lines.append(f"  {stage:<10} no mIoU (no masks to score it)")
    pseudo = summary.get("pseudo") or {}
    if pseudo.get("bg_threshold_source"):
        lines.append(f"  background threshold {pseudo['bg_threshold']}: {pseudo['bg_threshold_source']}")
    if summary.get("volumes"):
        v = summary["volumes"]
        lines.append(f"  volumes ({v['split']}) Dice {100 * v['dice']:.2f} %, HD95 {v['hd95']:.2f} {v['unit']}")
    if (Path(out) / "report.html").is_file():
        lines.append(f"  report: {Path(out) / 'report.html'}")
    return "\n".join(lines)


def _parse(commands: dict[str, tuple[type, Callable]], argv: list[str], prog: str):
    import tyro

    if argv and argv[0] == "run" and "--config" in argv:
        # a JSON config supplies the defaults; options given on the command line override it
        path = Path(argv[argv.index("--config") + 1])
        default = load_run_config(path)
        cfg = tyro.cli(RunConfig, args=argv[1:], default=default, prog=f"{prog} run")
        return commands["run"][1], cfg
    types = {name: typ for name, (typ, _) in commands.items()}
    cfg = tyro.extras.subcommand_cli_from_dict(types, args=argv, prog=prog)
    for typ, fn in commands.values():
        if type(cfg) is typ:
            return fn, cfg
    raise AssertionError(f"no command for {cfg!r}")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging()
    try:
        if argv and argv[0] == "data":
            fn, cfg = _parse(_data_commands(), argv[1:], "weakseg data")
        elif argv and argv[0] == "clip":
            fn, cfg = _parse(_clip_commands(), argv[1:], "weakseg clip")
        elif argv and argv[0] == "fewshot":
            fn, cfg = _parse(_fewshot_commands(), argv[1:], "weakseg fewshot")
        else:
            commands = _commands()
            # `weakseg --help` lists `data` too (its sub-commands: synth, build-labels, check, download)
            if not argv or argv[0] in ("-h", "--help"):
                _print_help(commands)
                return
            fn, cfg = _parse(commands, argv, "weakseg")
        fn(cfg)
    except WeaksegError as e:
        log.error("%s", e)
        raise SystemExit(2) from None


def _print_help(commands: dict[str, tuple[type, Callable]]) -> None:
    print("usage: weakseg <command> [options]   (weakseg <command> --help for its options)\n\ncommands:")
    rows = [("data", "Datasets: synth | build-labels | check | download (weakseg data --help).")]
    rows.append(("clip", "CLIP models: pretrain (the embedded toy CLIP; weakseg clip --help)."))
    rows.append(("fewshot", "Few-shot segmentation: train | eval (SCL, PI-CLIP prior; weakseg fewshot --help)."))
    for name, (typ, _) in commands.items():
        rows.append((name, (typ.__doc__ or "").strip().splitlines()[0]))
    for name, doc in rows:
        print(f"  {name:<12} {doc}")
