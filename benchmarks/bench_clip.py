"""CLIP-family step costs (issue #14), CPU, random weights: WeCLIP's training step and CLIP-ES's CAMs per image.

Two CLIPs, both with random weights (no download; the cost does not depend on the weights):

- ``vit-b-16``: open_clip's ``ViT-B-16`` architecture (12 blocks, width 768, patch 16) at 224 px;
- ``toy``: the embedded toy CLIP (``ToyClipConfig``: 4 blocks, width 128, patch 8) at 128 px.

Figures, each a ratio of medians measured in the same run, interleaved so that load changes hit both sides alike:

1. **WeCLIP train step ÷ (bare frozen-encoder forward + decoder step)** (target ≤ 1.3). The step is
   ``WeCLIPMethod.step`` + backward + AdamW step on a batch (forward through the frozen CLIP keeping the fused
   tokens and the last blocks' attention, the online pseudo label of every image — GradCAM backward through the
   last block, Sinkhorn, box mask, propagation, PAR — the losses). The reference is what the network alone costs:
   the CLIP image embedding under ``no_grad`` + the fusion/decoder forward, the same losses on fixed labels,
   backward and AdamW step. Both phases: before the RFM switch and after it (``rfm_start_step=0``). Also timed
   alone: the online labels of the batch (given the step's forward) and PAR on random score maps of the same shapes.
2. **CLIP-ES CAMs per image ÷ bare encoder forward** (one image, one view at ``input_size``; ``K`` classes): the
   real ``ClipESPredictor.view_cams`` (forward with attention, GradCAM of the ``K`` classes, attention-affinity
   refinement), once with weakseg's one batched backward and once with one forward + backward of the last block
   per class (the official way; ``last_block_gradcam`` swapped for a per-class loop in this script only).

Writes ``results/cpu-2026-11-30/bench_clip.json``. Run from the repository root with one thread::

    OMP_NUM_THREADS=1 python benchmarks/bench_clip.py
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

import weakseg.methods.clip_es as clip_es_module
from weakseg.backbones.clip import import_open_clip, tiny_clip
from weakseg.backbones.clip_text import VOC_BACKGROUND_WORDS
from weakseg.cams.cam import View
from weakseg.config import apply_overrides
from weakseg.engine.artifacts import save_json
from weakseg.losses.weclip import affinity_loss, balanced_ce, label_affinity
from weakseg.methods.clip_es import PRESETS as CLIP_ES_PRESETS
from weakseg.methods.clip_es import ClipESNet, ClipESPredictor, ToyClipConfig
from weakseg.methods.weclip import PRESETS as WECLIP_PRESETS
from weakseg.methods.weclip import WeCLIPMethod, WeCLIPNet, feature_affinity
from weakseg.refine.par import par_refine

TARGET_WECLIP = 1.3
OUT = Path(__file__).resolve().parent / "results" / "cpu-2026-11-30" / "bench_clip.json"
VOC = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
       "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")  # fmt: skip
SHAPES = ("disc", "triangle", "ring", "cross", "star", "square", "ellipse", "arrow", "crescent", "hexagon")
BATCHED = clip_es_module.last_block_gradcam


def per_class_gradcam(visual, tokens, text, scale, rows, targets, grid):
    """The official CLIP-ES way: one forward + backward of the last block per class (same outputs as batched)."""
    outs = [BATCHED(visual, tokens, text, scale, [r], [t], grid) for r, t in zip(rows, targets, strict=True)]
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs]), outs[0][2]


def clip_model(kind: str) -> tuple[torch.nn.Module, int]:
    """``(random CLIP, input side)`` of ``kind``."""
    if kind == "vit-b-16":
        cfg = import_open_clip().get_model_config("ViT-B-16")
        cfg.pop("custom_text", None)
        return tiny_clip(0, cfg), 224
    return tiny_clip(0, ToyClipConfig().model_cfg(128)), 128


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def median_times(fns: dict, reps: int, warmup: int) -> dict[str, float]:
    """Median seconds of each function, run interleaved ``warmup + reps`` times (the warm-up runs are dropped)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for k in range(warmup + reps):
        for name, fn in fns.items():
            dt = timed(fn)
            if k >= warmup:
                times[name].append(dt)
    return {name: statistics.median(t) for name, t in times.items()}


def weclip_phase(base, names, clip, images, labels, rfm_start: int, reps: int, warmup: int) -> dict:
    """One WeCLIP phase (``rfm_start`` -1: before the RFM switch, 0: after it): step vs encoder + decoder."""
    batch, size = images.shape[0], images.shape[-1]
    cfg = apply_overrides(base, (f"input_size={size}", f"batch_size={batch}", f"rfm_start_step={rfm_start}"))
    method = WeCLIPMethod(cfg)
    method.class_names = names
    torch.manual_seed(0)
    net = WeCLIPNet(clip, len(names), cfg).train()
    opt = method.optimizer(net)
    method.text(net, images.device)  # the text rows are cached once per run: not part of a step
    v = net.visual
    with torch.no_grad():
        tokens, grid = v.embed(images)
        kept = []
        for block in v.blocks[: net.fuse_count]:
            tokens = v._block(block, tokens)
            kept.append(tokens)
    fixed = torch.randint(0, len(names) + 1, (batch, size, size), generator=torch.Generator().manual_seed(2))

    def step():
        losses = method.step(net, {"image": images, "label": labels}, 0)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()

    def encoder():
        with torch.no_grad():
            v(images)

    def decoder():
        feats = net.fusion(kept, grid)
        aff = feature_affinity(feats)
        logits = F.interpolate(net.decoder(feats), (size, size), mode="bilinear", align_corners=False)
        small = F.interpolate(fixed[:, None].float(), grid, mode="nearest")[:, 0].long()
        target, valid = label_affinity(small, cfg.aff_radius)
        loss = balanced_ce(logits, fixed) + cfg.aff_weight * affinity_loss(aff, target, valid)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with torch.no_grad():
        fwd = net(images)  # the online labels read the step's forward (CLIP tokens, attention, decoder affinity)
    counts = [int(n) for n in labels.sum(1)]
    scores = [torch.rand(1, 1 + k, size, size, generator=torch.Generator().manual_seed(3)) for k in counts]

    def online_labels():
        method.pseudo_labels(net, images, labels, fwd, rfm_start >= 0)

    def par_only():
        for b in range(batch):
            par_refine(images[b : b + 1], scores[b], iters=cfg.par_iters)

    fns = {"step": step, "encoder": encoder, "decoder": decoder, "online_labels": online_labels, "par": par_only}
    med = median_times(fns, reps, warmup)
    ratio = med["step"] / (med["encoder"] + med["decoder"])
    return {
        "median_s": {k: round(t, 4) for k, t in med.items()},
        "ratio_step_over_encoder_plus_decoder": round(ratio, 3),
        "online_labels_share_of_step": round(med["online_labels"] / med["step"], 3),
        "par_share_of_online_labels": round(med["par"] / med["online_labels"], 3),
        "target": TARGET_WECLIP,
        "status": "met" if ratio <= TARGET_WECLIP else "missed",
    }


def weclip_bench(kind: str, clip: torch.nn.Module, size: int, batch: int, reps: int, warmup: int) -> dict:
    names = VOC if kind == "vit-b-16" else SHAPES
    base = WECLIP_PRESETS["paper"] if kind == "vit-b-16" else WECLIP_PRESETS["cpu192"]
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, size, size, generator=g)
    labels = torch.zeros(batch, len(names))
    for b in range(batch):  # 1 or 2 classes per image (VOC: 1.5 on average)
        labels[b, torch.randperm(len(names), generator=g)[: 1 + b % 2]] = 1
    out: dict = {"input_size": size, "batch": batch, "classes_per_image": labels.sum(1).tolist()}
    for phase, start in (("before_rfm", -1), ("after_rfm", 0)):
        out[phase] = weclip_phase(base, names, clip, images, labels, start, reps, warmup)
    return out


def clip_es_classes(predictor: ClipESPredictor, image: torch.Tensor, k: int, reps: int, warmup: int) -> dict:
    """CAMs of ``k`` classes of one image, batched vs per-class backward, against the bare encoder forward."""
    classes = list(range(k))
    view = View(1.0, False)

    def encoder():
        with torch.no_grad():
            predictor.visual(image)

    def batched():
        clip_es_module.last_block_gradcam = BATCHED
        predictor.view_cams(image, classes, view)

    def per_class():
        clip_es_module.last_block_gradcam = per_class_gradcam
        try:
            predictor.view_cams(image, classes, view)
        finally:
            clip_es_module.last_block_gradcam = BATCHED

    med = median_times({"encoder": encoder, "cams_batched": batched, "cams_per_class": per_class}, reps, warmup)
    return {
        "median_s": {n: round(t, 4) for n, t in med.items()},
        "cams_batched_over_encoder": round(med["cams_batched"] / med["encoder"], 3),
        "cams_per_class_over_encoder": round(med["cams_per_class"] / med["encoder"], 3),
        "per_class_over_batched": round(med["cams_per_class"] / med["cams_batched"], 3),
    }


def clip_es_bench(kind: str, clip: torch.nn.Module, size: int, ks: tuple[int, ...], reps: int, warmup: int) -> dict:
    names = VOC if kind == "vit-b-16" else SHAPES
    base = CLIP_ES_PRESETS["paper"] if kind == "vit-b-16" else CLIP_ES_PRESETS["cpu192"]
    cfg = apply_overrides(base, (f"input_size={size}",))
    net = ClipESNet(clip, trainable=False)
    predictor = ClipESPredictor(net, SimpleNamespace(class_names=names), [View(1.0, False)], cfg, torch.device("cpu"))
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    return {
        "input_size": size,
        "background_rows": len(cfg.background),
        "per_classes": {str(k): clip_es_classes(predictor, image, k, reps, warmup) for k in ks},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", nargs="+", default=["toy", "vit-b-16"], choices=("toy", "vit-b-16"))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--classes", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    assert len(VOC_BACKGROUND_WORDS) == 25
    result: dict = {
        "figures": {
            "weclip": "WeCLIP train step / (bare frozen-encoder forward + decoder step on fixed labels), same batch",
            "clip_es": "CLIP-ES CAMs of one image (one view) / bare encoder forward; batched vs per-class backward",
        },
        "weights": "random (no download): timing only",
        "threads": a.threads,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "reps": a.reps,
        "warmup": a.warmup,
    }
    for kind in a.clips:
        clip, size = clip_model(kind)
        batch = 4 if kind == "vit-b-16" else 8  # the paper's batch / the cpu192 preset's
        t0 = time.perf_counter()
        result[kind] = {
            "weclip": weclip_bench(kind, clip, size, batch, a.reps, a.warmup),
            "clip_es": clip_es_bench(kind, clip, size, tuple(a.classes), a.reps, a.warmup),
        }
        result[kind]["seconds"] = round(time.perf_counter() - t0, 1)
        save_json(a.out, result)
        print(kind, result[kind])


if __name__ == "__main__":
    main()
