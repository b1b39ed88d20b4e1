"""Evaluation: mIoU over 1,000 masks with ``ConfusionMatrix`` vs a bare ``np.bincount`` on the same arrays.

The bare baseline is the minimum any confusion-matrix evaluator must do (one bincount per mask);
ours adds ignore handling, out-of-range predictions and the metric computation. Ratio = ours ÷ bare
time (lower is better; 1.0 = no overhead). Both results are checked to agree.

    python benchmarks/bench_eval.py [--n 1000] [--size 256] [--classes 21]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from weakseg.eval.metrics import ConfusionMatrix


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--classes", type=int, default=21)
    args = ap.parse_args()
    c = args.classes
    rng = np.random.default_rng(0)
    gts = [rng.integers(0, c, (args.size, args.size), dtype=np.uint8) for _ in range(args.n)]
    for g in gts:
        g[rng.random(g.shape) < 0.05] = 255
    preds = [rng.integers(0, c, (args.size, args.size), dtype=np.uint8) for _ in range(args.n)]

    t0 = time.perf_counter()
    bare = np.zeros(c * c, np.int64)
    for g, p in zip(gts, preds, strict=True):
        g64 = g.astype(np.int64).ravel()
        keep = g64 != 255
        bare += np.bincount(c * g64[keep] + p.ravel()[keep], minlength=c * c)
    t_bare = time.perf_counter() - t0
    cmb = bare.reshape(c, c)
    iou_bare = np.diag(cmb) / (cmb.sum(0) + cmb.sum(1) - np.diag(cmb))

    t0 = time.perf_counter()
    cm = ConfusionMatrix([str(i) for i in range(c)])
    for g, p in zip(gts, preds, strict=True):
        cm.update(g, p)
    m = cm.metrics()
    t_ours = time.perf_counter() - t0
    assert np.allclose(m.iou, iou_bare), "results differ"
    print(f"{args.n} masks of {args.size}x{args.size}, {c} classes")
    print(f"bare np.bincount: {t_bare:.3f} s   ConfusionMatrix: {t_ours:.3f} s   mIoU {100 * m.miou:.2f} (both)")
    print(f"ratio ours / bare: {t_ours / t_bare:.2f}")


if __name__ == "__main__":
    main()
