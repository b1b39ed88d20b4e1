"""Stage ``clip pretrain``: train the embedded toy CLIP on a labelled split and measure its zero-shot accuracy.

No CLIP weights can be downloaded offline, so the default path of the CLIP methods trains a small open_clip ViT
CLIP (:class:`weakseg.methods.clip_es.ToyClipConfig`) contrastively on the split's images with captions made from
their image-level labels ("a photo of a star and a ring.", :mod:`weakseg.data.captions`). It is a toy: a few
minutes on one CPU core, ten class names, a few hundred images. Real weights replace it with
``--set clip_weights=/path/ViT-B-16.pt`` in the CLIP methods.

Writes into ``out``: ``config.json`` (stage record), ``model.safetensors`` + ``state/`` + ``tb/`` (the training
loop's), ``clip.safetensors`` (the CLIP's own state dict, open_clip names) + ``clip_config.json`` (its open_clip
model config): ``load_clip(out / "clip.safetensors", model_cfg=json.load(open(out / "clip_config.json")))``, or
``--set clip_weights=OUT`` in ``clip-es``; ``metrics.json`` (zero-shot multi-label accuracy on ``val_split``:
per-class AP/AUC, mAP, top-1 and exact top-k accuracy, of image-text cosine scores with the method's prompts);
``DONE`` last. The training is that of ``train-cls --method clip-es`` with empty ``clip_weights``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save

from weakseg.backbones.clip import ClipVisual
from weakseg.backbones.clip_text import text_embeddings
from weakseg.data.registry import open_dataset
from weakseg.data.transforms import to_tensor
from weakseg.engine.artifacts import atomic_write_bytes, mark_done, save_json
from weakseg.engine.device import resolve_device, seed_everything
from weakseg.engine.stage import begin_stage, stage_record
from weakseg.engine.trainer import LoopConfig, fit
from weakseg.errors import ConfigError, DataError
from weakseg.eval.multilabel import multilabel_report
from weakseg.methods import create_method
from weakseg.methods.base import LoaderContext
from weakseg.methods.clip_es import CLIP_CONFIG, CLIP_FILE, ClipESConfig, class_prompts
from weakseg.stages.io import DataInput, StageOutput

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ClipPretrainConfig(DataInput, StageOutput):
    """Train the embedded toy CLIP on image-level labels (captions from the labels); zero-shot accuracy on val.

    Writes OUT/clip.safetensors + clip_config.json (load_clip(..., model_cfg=...)), metrics.json, DONE."""

    preset: str = "cpu192"
    """clip-es preset whose toy-CLIP fields are used (cpu192: 128 px, patch 8, 12 epochs; tiny: tests)"""
    set: tuple[str, ...] = field(default_factory=tuple)
    """KEY=VALUE overrides of the clip-es config, e.g. epochs=4 toy.layers=6 lr=5e-4"""
    val_split: str = "val"
    """split scored zero-shot (empty: none)"""
    seed: int = 0
    workers: int = 0
    """DataLoader worker processes"""


@torch.no_grad()
def zero_shot_scores(clip: torch.nn.Module, ds, cfg: ClipESConfig, device: torch.device) -> np.ndarray:
    """Cosine of every image of ``ds`` (resized to ``cfg.input_size``) to each class row of the method's prompts
    (background rows left out): ``float [N, K]``."""
    visual = ClipVisual(clip, freeze=False).to(device).eval()
    text = text_embeddings(clip, class_prompts(ds.class_names, cfg))[: ds.num_classes].to(device)
    p = visual.patch_size
    side = max(p, cfg.input_size // p * p)
    rows = []
    for i in range(len(ds)):
        x = to_tensor(ds.load_image(i))[None].to(device)
        x = F.interpolate(x, (side, side), mode="bilinear", align_corners=False, antialias=True)
        rows.append(F.normalize(visual.image_embedding(x), dim=-1) @ text.T)
    return torch.cat(rows).cpu().numpy() if rows else np.zeros((0, ds.num_classes))


def clip_pretrain(cfg: ClipPretrainConfig) -> Path:
    """Train and export the toy CLIP described by ``cfg``; returns ``cfg.out``. Skips a complete folder."""
    out = Path(cfg.out)
    method = create_method("clip-es", cfg.preset, cfg.set)
    if not method.embedded:
        raise ConfigError("clip pretrain trains the embedded toy CLIP: leave clip_weights empty")
    ds = open_dataset(cfg.data, cfg.split, cfg.fmt)
    if not any(r.labels for r in ds.records):
        raise DataError(f"split {cfg.split!r} of {cfg.data} has no labelled images to make captions from")
    record = {
        **stage_record(cfg, drop=("workers", "device", "overwrite", "out", "set", "preset")),
        "method_config": method.cfg,
        "class_names": list(ds.class_names),
    }
    if begin_stage(out, "clip-pretrain", record, overwrite=cfg.overwrite, meta={"preset": cfg.preset}) == "complete":
        return out
    device = resolve_device(cfg.device)
    make_loader, steps = method.loader(ds, LoaderContext(seed=cfg.seed, workers=cfg.workers))
    seed_everything(cfg.seed)
    net = method.build(None, ds.num_classes)
    log.info("clip pretrain: toy CLIP on %d images, %d epochs × %d steps", len(ds), method.epochs, steps)
    means = fit(
        net, method.step, make_loader, method.optimizer(net), method.lr_factor(steps),
        LoopConfig(epochs=method.epochs, seed=cfg.seed), out, device, log_dir=out / "tb", steps_per_epoch=steps,
    )  # fmt: skip
    clip = net.clip_model.eval()
    state = {k: v.detach().cpu().contiguous() for k, v in clip.state_dict().items()}
    atomic_write_bytes(out / CLIP_FILE, save(state, metadata={"format": "open_clip"}))
    save_json(out / CLIP_CONFIG, method.cfg.toy.model_cfg(method.cfg.input_size))
    metrics: dict = {"train_split": cfg.split, "last_epoch_losses": means}
    if cfg.val_split:
        val = open_dataset(cfg.data, cfg.val_split, cfg.fmt)
        labels = np.stack([val.label_vector(i) for i in range(len(val))]).astype(bool)
        report = multilabel_report(zero_shot_scores(clip, val, method.cfg, device), labels, val.class_names)
        metrics["zero_shot"] = {"split": cfg.val_split, "prompts": list(method.cfg.templates), **report}
        log.info("clip pretrain: zero-shot on %s: mAP %.3f, mean AUC %.3f, top-1 %.3f, exact top-k %.3f",
                 cfg.val_split, report["map"] or 0, report["mean_auc"] or 0, report["top1_accuracy"] or 0,
                 report["topk_exact_accuracy"] or 0)  # fmt: skip
    save_json(out / "metrics.json", metrics)
    mark_done(out, {"epochs": method.epochs, "metrics": "metrics.json"})
    return out
