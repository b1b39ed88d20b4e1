"""Benchmark (b): test-time CAM inference ÷ the bare backbone forwards it needs (CPU).

For each image: ``len(scales) × (1 + flip)`` views of the image and of its unique partners
(``partners_per_class`` per ground-truth class). "Bare" = the backbone alone on exactly those input
batches, already resized. "Inference" = :meth:`predict_cams` end to end (resizing, backbone, head,
co-attention with every partner, self-pairs, fusion, resize to the image size). Target ≤ 1.15.
Images are random, 128-160 px, with 2 classes each; weights random (the work does not depend on them).

    python benchmarks/bench_cam_inference.py [--images 6] [--size 128] [--threads 1]
    python benchmarks/bench_cam_inference.py --images 1 --repeats 1 --scales 1 --backbone tiny --preset tiny  # smoke
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without installing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--classes", type=int, default=2, help="ground-truth classes per image")
    ap.add_argument("--partners", type=int, default=3, help="partners per class")
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.5, 1.5, 2.0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: robust on a shared machine)")
    ap.add_argument("--backbone", default="efficientnet-lite0")
    ap.add_argument("--preset", default="cpu", help="the methods' preset (head, stride): cpu, cpu192, paper, tiny")
    ap.add_argument("--repeats", type=int, default=3, help="passes over the images; the fastest pass counts")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from weakseg.backbones import create_backbone
    from weakseg.cams.cam import apply_view, make_views
    from weakseg.methods import create_method

    torch.manual_seed(0)
    k, s = 10, args.size
    views = make_views(args.scales, flip=True)
    nets = {}
    for m in ("cam", "mcis"):
        method = create_method(m, args.preset, (f"input_size={s}",))
        backbone = create_backbone(args.backbone, output_stride=method.cfg.output_stride)
        nets[m] = method.build(backbone, k).eval()

    def rand_image() -> torch.Tensor:
        h, w = torch.randint(128, 161, (2,)).tolist()
        return torch.rand(1, 3, h, w)

    images = []
    for _ in range(args.images):
        classes = torch.randperm(k)[: args.classes].tolist()
        n_part = args.classes * args.partners
        partners = [rand_image() for _ in range(n_part)]
        rows = {c: list(range(j * args.partners, (j + 1) * args.partners)) for j, c in enumerate(classes)}
        images.append((rand_image(), classes, partners, rows))

    def bare_inputs(image, partners, with_partners):
        per_scale = {}
        for v in views:
            per_scale.setdefault(v.scale, []).append(v)
        batches = []
        for group in per_scale.values():
            imgs = [apply_view(image, v, s) for v in group]
            if with_partners:
                imgs += [apply_view(p, v, s) for v in group for p in partners]
            batches.append(torch.cat(imgs))
        return batches

    rows_out = []
    for method, net in nets.items():
        paired = method == "mcis"
        prepared = [bare_inputs(img, parts, paired) for img, _, parts, _ in images]
        n_forwards = sum(b.shape[0] for batches in prepared for b in batches)
        best_bare, best_inf = float("inf"), float("inf")
        with torch.no_grad():
            for _ in range(args.repeats):  # alternate: load changes hit both measurements alike
                t0 = time.perf_counter()
                for batches in prepared:
                    for b in batches:
                        net.backbone(b)
                best_bare = min(best_bare, time.perf_counter() - t0)
                t0 = time.perf_counter()
                for img, classes, parts, rows in images:
                    kw = {"partners": parts, "partner_rows": rows, "self_pairs": True} if paired else {}
                    net.predict_cams(img, classes, views, s, tuple(img.shape[-2:]), **kw)
                best_inf = min(best_inf, time.perf_counter() - t0)
        rows_out.append((method, n_forwards // len(images), best_bare, best_inf))

    print(
        f"{args.backbone} @ {s}px, scales {args.scales} × flip, {args.classes} classes × {args.partners} partners, "
        f"{args.images} images, preset {args.preset} head, {args.threads} threads (fastest of {args.repeats} passes)"
    )
    print(f"{'method':<8}{'fwd/img':>8}{'bare ms/img':>13}{'infer ms/img':>14}{'ratio':>7}")
    for method, nf, bare, inf in rows_out:
        n = len(images)
        print(f"{method:<8}{nf:>8}{1000 * bare / n:>13.0f}{1000 * inf / n:>14.0f}{inf / bare:>7.2f}")
    mcis = next(r for r in rows_out if r[0] == "mcis")
    print(f"MCIS CAM inference ÷ bare backbone forwards: {mcis[3] / mcis[2]:.2f} (target ≤ 1.15)")


if __name__ == "__main__":
    main()
