"""Benchmark: torch PAR refiner vs dense CRF (pydensecrf2) vs no refinement, on the same CAMs.

Reports, in one run, the refinement throughput (images/s, refinement step only, one CPU thread
each so the comparison is fair: pydensecrf is single-threaded) and the pseudo-label quality
(mIoU / precision / recall against the ground truth, ignored pixels excluded, plus the fraction of
pixels ignored) of each refiner.

CAMs: by default **synthetic CAMs derived from the ground-truth masks** (no classifier needed):
each class mask is cut down to a random part of the object (partial activation), blurred (CAMs
are coarse), modulated by smooth noise, leaked into a random nearby background blob and
renormalised to max 1 -- the typical failure modes a refiner must fix. With ``--cams DIR`` the
real CAMs of the CAM stage (``<id>.npz``) are used instead.

    python benchmarks/refine.py                       # synthetic data + synthetic CAMs
    python benchmarks/refine.py --data D --cams C     # a dataset and CAMs from the CAM stage
    python benchmarks/refine.py --data runs/demo/data --cams runs/demo/cams --background threshold \
        --bg-threshold 0.55 --ignore-margin 0.05       # the demo's CAMs, as `weakseg run` labels them
    python benchmarks/refine.py --n 4 --work /tmp/refine_smoke   # smoke

Rows: ``none``; ``par``: PAR with AFA's settings (10 steps, w1 0.3, full image size); ``par@N``: the same at
most N px; ``par20@0.65x``: ``weakseg pseudo``'s / ``weakseg run``'s defaults (20 steps, w1 0.2, 0.65x the image
size); ``crf``: dense CRF, 10 iterations. Background rule and ignore margin: ``--background``, ``--bg-threshold``
and ``--ignore-margin`` (default: ``weakseg pseudo``'s margin, 0.05). An exception inside a refiner fails the run
(non-zero exit); only a missing optional extra (pydensecrf2 for ``crf``) is printed as a skipped row with the reason.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of ``[N, H, W]`` maps (separable, replicate padding)."""
    r = max(1, int(3 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sigma) ** 2)
    k = k / k.sum()
    x = x[:, None]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return x[:, 0]


def synthetic_cams(gt: np.ndarray, classes: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Fake CAMs ``float16 [K, H, W]`` in ``[0, 1]`` for the classes of a ground-truth mask."""
    h, w = gt.shape
    side = min(h, w)
    out = []
    for c in classes:
        m = torch.from_numpy((gt == c + 1).astype(np.float32))
        # partial activation: keep the object where a smooth random field is high
        field = _blur(torch.from_numpy(rng.random((1, h, w), dtype=np.float32)), side / 10)[0]
        field = (field - field.min()) / (field.max() - field.min() + 1e-6)
        cam = m * field.pow(0.7)  # parts of the object fall below any threshold
        # leakage into the background near the object
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (side / 10) ** 2)) * float(rng.uniform(0.2, 0.6))
        cam = torch.maximum(cam, blob * (m.sum() > 0))
        cam = _blur(cam[None], side / 25)[0]  # CAMs are coarse
        cam = cam + 0.05 * torch.from_numpy(rng.standard_normal((h, w)).astype(np.float32))
        cam = cam.clamp_min(0)
        out.append((cam / (cam.max() + 1e-6)).numpy())
    return np.stack(out).astype(np.float16) if out else np.zeros((0, h, w), np.float16)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="dataset root (default: generate a synthetic one)")
    ap.add_argument("--cams", type=Path, default=None, help="CAM folder (default: synthetic CAMs from the masks)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--n", type=int, default=150, help="images to use")
    ap.add_argument("--work", type=Path, default=Path("/tmp/weakseg_bench_refine"))
    ap.add_argument("--background", default="power", help="background rule: power or threshold")
    ap.add_argument("--bg-threshold", type=float, default=None, help="background score of the threshold rule")
    ap.add_argument("--ignore-margin", type=float, default=None, help="default: weakseg pseudo's (PseudoOptions)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lowres", type=int, default=80, help="max side of the reduced-resolution PAR row")
    args = ap.parse_args(argv)

    from weakseg.data.registry import open_dataset
    from weakseg.engine.artifacts import load_npz
    from weakseg.errors import MissingExtraError
    from weakseg.eval.metrics import IGNORE, ConfusionMatrix, segmentation_class_names
    from weakseg.refine.background import low_margin, normalise_scores, scores_to_label
    from weakseg.refine.pseudo import BACKGROUNDS, REFINERS, PseudoOptions

    torch.set_num_threads(args.threads)
    if args.background == "threshold" and args.bg_threshold is None:
        raise SystemExit("--background threshold needs --bg-threshold T (e.g. the run's eval/cams.json best - 0.15)")
    data = args.data
    if data is None:
        from weakseg.data.synthetic import SynthConfig, generate

        data = args.work / "data"
        if not (data / "synth.json").is_file():
            generate(SynthConfig(out=data, size="default", n_train=args.n, n_val=8, n_single=0, n_web=0), workers=1)
    ds = open_dataset(data, args.split)
    n = min(args.n, len(ds))
    cam_source = f"CAM stage output {args.cams}" if args.cams else "synthetic CAMs derived from ground-truth masks"

    base = PseudoOptions(background=args.background)
    if args.ignore_margin is not None:
        base = replace(base, ignore_margin=args.ignore_margin)
    if args.bg_threshold is not None:
        base = replace(base, bg_threshold=args.bg_threshold)
    base.check()
    rng = np.random.default_rng(0)
    items = []  # (image, gt, probs before refinement, rule ignore, classes)
    for i in range(n):
        rec = ds[i]
        gt = ds.load_mask(i)
        if args.cams:
            z = load_npz(args.cams / f"{rec.image_id}.npz")
            cams, classes = z["cams"].astype(np.float32), tuple(int(c) for c in z["classes"])
        else:
            classes = rec.labels
            cams = synthetic_cams(gt, classes, rng).astype(np.float32)
        scores, ignore = BACKGROUNDS[base.background](torch.from_numpy(cams), None, base)
        items.append((ds.load_image(i), gt, normalise_scores(scores), ignore, classes))

    names = segmentation_class_names(ds.class_names)
    rows = []
    afa = {"par_iters": 10, "par_w1": 0.3, "par_scale": 1.0}  # AFA's PAR (the refiner's reference settings)
    variants = [  # (row name, refiner, option changes)
        ("none", "none", {}),
        ("par", "par", afa),
        (f"par@{args.lowres}", "par", {**afa, "par_max_side": args.lowres}),
        (f"par{base.par_iters}@{base.par_scale}x", "par", {}),  # weakseg pseudo's / run's defaults
        ("crf", "crf", {}),
    ]
    for name, refiner, extra in variants:
        cfg = replace(base, refiner=refiner, **extra)
        cm = ConfusionMatrix(names)
        ignored = total = 0
        seconds = 0.0
        try:
            for image, gt, probs, ignore, classes in items:
                t0 = time.perf_counter()
                refined = REFINERS[refiner](image, probs, cfg, None) if len(classes) else probs
                seconds += time.perf_counter() - t0
                ign = low_margin(refined, cfg.ignore_margin)
                if ignore is not None:
                    ign = ign | ignore
                label = scores_to_label(refined, classes, ign)
                cm.update(np.where(label == IGNORE, IGNORE, gt), label)
                ignored += int((label == IGNORE).sum())
                total += label.size
        except MissingExtraError as e:  # an optional extra (pydensecrf2) is not installed: a skipped row
            rows.append((name, None, None, str(e)))
            continue
        # any other exception inside a refiner propagates: the benchmark fails (non-zero exit) rather than
        # reporting the row as unavailable
        m = cm.metrics()
        rows.append((name, n / max(seconds, 1e-9), m, ignored / total))

    sizes = [it[0].shape[:2] for it in items]
    print(f"data: {data} split {args.split}, {n} images, mean size {np.mean(sizes, axis=0).round().astype(int)}")
    print(f"CAMs: {cam_source}; background rule {base.background}, ignore margin {base.ignore_margin}")
    print(
        f"torch threads: {torch.get_num_threads()}; PAR: {afa['par_iters']} iters, w1 {afa['par_w1']}, dilations "
        f"(1,2,4,8,12,24); par{base.par_iters}@{base.par_scale}x: {base.par_iters} iters, w1 {base.par_w1} at "
        f"{base.par_scale}x the image size (weakseg pseudo's and run's); CRF: 10 iters"
    )
    print(f"{'refiner':<13}{'img/s':>9}{'mIoU':>8}{'prec':>8}{'recall':>8}{'ignored':>9}")
    speed = {}
    for refiner, ips, m, ign in rows:
        if m is None:
            print(f"{refiner:<13}  skipped (optional extra missing): {ign}")
            continue
        speed[refiner] = ips
        ips_s = "-" if refiner == "none" else f"{ips:.1f}"
        print(
            f"{refiner:<13}{ips_s:>9}{100 * m.miou:>8.2f}{100 * m.mean_precision:>8.2f}"
            f"{100 * m.mean_recall:>8.2f}{100 * ign:>8.1f}%"
        )
    if "crf" in speed:
        for name in (k for k in speed if k.startswith("par")):
            print(f"throughput ratio {name} / crf: {speed[name] / speed['crf']:.2f}x")


if __name__ == "__main__":
    main()
