"""DFR's regularized loss (forward + backward) ÷ the segmenter's own training step at the same resolution (CPU).

Issue #15 target: ≤ 1.5. The segmenter step is ``train-seg``'s: DeepLabV3+ (EfficientNet-Lite0, the default
``--seg.arch``) on a batch of ``--batch`` crops of ``--crop`` px, forward + partial CE + backward + AdamW step.
The regularized loss is DFR's at its ``cpu`` preset: softmax of the logits resized to ``loss_scale`` × the crop,
the kernel over xy + rgb + deep features (radius 5), the Potts energy, and its backward to the logits. Also timed:
the same loss with the shallow kernel only, the FCH pair loss, and the whole DFR step ÷ the plain step. Medians of
``--steps`` after warm-up, interleaved so load changes hit all alike. Writes
``results/cpu-2026-11-30/dfr/bench_regularized_loss.json``.

    OMP_NUM_THREADS=1 python benchmarks/bench_regularized_loss.py
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from weakseg.engine.artifacts import save_json
from weakseg.losses.dense import partial_cross_entropy
from weakseg.losses.regularized import dfr_kernel, downsample_labels, pairwise_feature_loss, regularized_loss
from weakseg.methods import create_method
from weakseg.seg.models import create_segmenter

TARGET = 1.5
OUT = Path(__file__).resolve().parent / "results" / "cpu-2026-11-30" / "dfr" / "bench_regularized_loss.json"


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="deeplabv3plus")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--classes", type=int, default=11, help="classes incl. background (synthetic benchmark: 11)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.manual_seed(0)
    method = create_method("dfr", "cpu")
    cfg = method.cfg
    seg = create_segmenter(args.arch, args.classes, encoder_weights=None)
    plain_opt = torch.optim.AdamW(seg.parameters(), lr=1e-4)
    net = method.wrap(create_segmenter(args.arch, args.classes, encoder_weights=None), args.arch)
    dfr_opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    b, s, k = args.batch, args.crop, args.classes
    images = torch.rand(b, 3, s, s)
    target = torch.full((b, s, s), 255, dtype=torch.long)
    target[:, 10:14, 20:100] = torch.randint(0, k, (b, 1, 1))  # a scribble per image
    target[:, 100:103, 10:60] = 0
    size = (round(s * cfg.loss_scale), round(s * cfg.loss_scale))
    feats = F.normalize(torch.randn(b, cfg.fch_dim, s // 4, s // 4), dim=1)

    def seg_step() -> None:
        plain_opt.zero_grad()
        partial_cross_entropy(seg(images), target).backward()
        plain_opt.step()

    def reg(kernel_mode: str):
        def run() -> None:
            logits = torch.randn(b, k, s, s, requires_grad=True)
            probs = F.interpolate(logits.softmax(1), size=size, mode="bilinear", align_corners=False)
            small = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
            deep = F.normalize(F.interpolate(feats, size=size, mode="bilinear", align_corners=False), dim=1)
            kern = dfr_kernel(small, deep, kernel_mode, cfg.radius, cfg.xy_sigma, cfg.rgb_sigma, cfg.deep_sigma)
            regularized_loss(probs, kern).backward()

        return run

    def fch() -> None:
        f = feats.clone().requires_grad_(True)
        pairwise_feature_loss(f, downsample_labels(target, f.shape[-2:]), cfg.fch_pixels).backward()

    def dfr_step() -> None:
        dfr_opt.zero_grad()
        method.step(net, (images, target), epoch=cfg.reg_start_epoch)["loss"].backward()
        dfr_opt.step()

    fns = {"seg_step": seg_step, "reg_both": reg("both"), "reg_shallow": reg("shallow"), "fch": fch,
           "dfr_step": dfr_step}  # fmt: skip
    times: dict[str, list[float]] = {n: [] for n in fns}
    seg.train()
    net.train()
    for i in range(args.warmup + args.steps):
        for name, fn in fns.items():
            t = _timed(fn)
            if i >= args.warmup:
                times[name].append(t)
    med = {n: statistics.median(v) for n, v in times.items()}
    ratio = med["reg_both"] / med["seg_step"]
    result = {
        "figure": "DFR regularized loss forward+backward / segmenter training step, same batch and resolution",
        "target": f"<= {TARGET}",
        "ratio": round(ratio, 3),
        "met": ratio <= TARGET,
        "ratio_shallow_kernel": round(med["reg_shallow"] / med["seg_step"], 3),
        "ratio_fch_loss": round(med["fch"] / med["seg_step"], 3),
        "ratio_dfr_step_over_seg_step": round(med["dfr_step"] / med["seg_step"], 3),
        "median_s": {n: round(v, 4) for n, v in med.items()},
        "all_s": {n: [round(t, 4) for t in v] for n, v in times.items()},
        "setup": {"arch": args.arch, "batch": b, "crop": s, "classes": k, "loss_size": list(size),
                  "dfr_config": dataclasses.asdict(cfg), "steps": args.steps, "warmup": args.warmup,
                  "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine()},
    }  # fmt: skip
    save_json(args.out, result)
    print(
        f"regularized loss / segmenter step: {ratio:.2f} (target <= {TARGET}: {'met' if result['met'] else 'missed'});"
        f" shallow {result['ratio_shallow_kernel']}, FCH {result['ratio_fch_loss']}, "
        f"DFR step / plain step {result['ratio_dfr_step_over_seg_step']} -> {args.out}"
    )


if __name__ == "__main__":
    main()
