"""Pseudo-label options on one run's CAMs: refiner × ignore margin → pseudo mIoU (and optionally the segmenter's).

For each option, ``weakseg pseudo`` on the train split of a finished run (its ``cams/`` and data; threshold
background rule at the run's seed sweep's best threshold - 0.15, as ``weakseg run`` does), then optionally
``train-seg`` + ``eval-seg`` on val with the run's segmenter options (``--seg.*``, ``--eval-seg.*`` of its
``config.json``). The ``rw`` options train AffinityNet once (``train-aff`` with the run's ``--aff.*`` options;
thresholds best seed threshold + 0.1 / - 0.2 unless the run set them, as ``weakseg run`` does). Options left out
of an option string take the run's ``--pseudo.*`` values (by default ``weakseg pseudo``'s: PAR 20 steps, w1 0.2,
at 0.65x the image size).

    python benchmarks/pseudo_options.py --run runs/demo --options par:0.1 par:0.05 par:0 rw:0:256 rw:0:8 [--seg]
    python benchmarks/pseudo_options.py --run runs/demo --options par:0.05:10:0.3:1 par:0.05:50:0.2 --seg

Prints: refiner, margin, ignored %, pseudo mIoU (ignored pixels counted as background), mIoU of the
non-ignored pixels, and the segmenter's val mIoU with ``--seg``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a run folder with cams/, eval/cams.json (and data/)")
    ap.add_argument("--data", type=Path, default=None, help="dataset root (default: RUN/data)")
    ap.add_argument("--out", type=Path, default=None, help="default: RUN/pseudo_options")
    ap.add_argument(
        "--options",
        nargs="+",
        default=["par:0.1", "par:0.05", "par:0"],
        help="rw:MARGIN[:STEPS], par:MARGIN[:ITERS[:W1[:SCALE]]], crf:MARGIN, none:MARGIN (others: the run's)",
    )
    ap.add_argument("--seg", action="store_true", help="also train + evaluate a segmenter per option")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    from weakseg.pipeline import RunConfig, load_run_config
    from weakseg.refine.pseudo import background_threshold
    from weakseg.stages.pseudo import PseudoConfig, make_pseudo
    from weakseg.tasks import aff_thresholds, with_io

    run_cfg = load_run_config(args.run / "config.json") if (args.run / "config.json").is_file() else RunConfig()
    data = args.data or run_cfg.data or args.run / "data"
    io = {"fmt": run_cfg.fmt, "split": run_cfg.train_split}
    out = args.out or args.run / "pseudo_options"
    seeds = json.loads((args.run / "eval" / "cams.json").read_text())
    bg = background_threshold(seeds)
    aff = None
    rows = []
    for option in args.options:
        refiner, margin, *rest = option.split(":")
        extra = {}
        affinity = None
        if refiner == "rw":
            if aff is None:
                from weakseg.stages.train_aff import TrainAffinityConfig, train_affinity

                aff_opts = run_cfg.aff
                if aff_opts.fg_threshold is None and aff_opts.bg_threshold is None:
                    aff_opts = replace(aff_opts, **aff_thresholds(seeds))
                aff = train_affinity(
                    with_io(
                        aff_opts,
                        TrainAffinityConfig,
                        cams=args.run / "cams",
                        data=data,
                        out=out / "aff",
                        **io,
                        seed=run_cfg.seed,
                        device=args.device,
                    )
                )
            affinity = aff
            extra = {"rw_iters": int(rest[0])} if rest else {}
        elif refiner == "par" and rest:
            fields = (("par_iters", int), ("par_w1", float), ("par_scale", float))
            extra = {name: kind(value) for (name, kind), value in zip(fields, rest, strict=False)}
        folder = out / option.replace(":", "_")
        options = replace(
            run_cfg.pseudo,
            background="threshold",
            bg_threshold=bg,
            refiner=refiner,
            ignore_margin=float(margin),
            **extra,
        )
        m = make_pseudo(
            with_io(options, PseudoConfig, cams=args.run / "cams", data=data, out=folder, **io, affinity=affinity)
        )
        seg = None
        if args.seg:
            from weakseg.stages.eval_seg import EvalSegConfig, eval_seg
            from weakseg.stages.train_seg import TrainSegConfig, train_seg

            seg_dir = folder.with_name(folder.name + "_seg")
            seg_cfg = with_io(
                run_cfg.seg,
                TrainSegConfig,
                data=data,
                out=seg_dir,
                labels=folder,
                **io,
                seed=run_cfg.seed,
                device=args.device,
            )
            train_seg(seg_cfg)
            eval_cfg = with_io(
                run_cfg.eval_seg,
                EvalSegConfig,
                seg_dir=seg_dir,
                data=data,
                out=seg_dir / "eval",
                fmt=run_cfg.fmt,
                split=run_cfg.val_split,
                device=args.device,
            )
            seg = eval_seg(eval_cfg)["miou"]
        rows.append((option, m, seg))
        print(f"{option}: pseudo mIoU {100 * m['miou']:.2f}", flush=True)
    print(f"\nseeds {100 * seeds['best_miou']:.2f} at threshold {seeds['best_threshold']}; background threshold {bg}")
    print(f"{'option':<20}{'ignored %':>10}{'pseudo mIoU':>13}{'non-ignored':>13}{'segmenter':>11}")
    for option, m, seg in rows:
        seg_s = "-" if seg is None else f"{100 * seg:.2f}"
        print(
            f"{option:<20}{100 * m['ignored_fraction']:>10.1f}{100 * m['miou']:>13.2f}"
            f"{100 * m['scored']['miou']:>13.2f}{seg_s:>11}"
        )


if __name__ == "__main__":
    main()
