"""Stage ``make-cams``: CAMs of a trained classifier for every image of a split, streamed to disk.

For each image with at least one label, CAMs of its ground-truth classes only (as WSSS seeds are
made), from the method's prediction hook (:meth:`weakseg.methods.base.Method.cam_predictor`: multi-scale
+ flip views; for MCIS also co-attention CAMs with partners and self-pairs, set by the method's
``test_*`` options, which ``--set`` overrides here). Each image gives ``out/<image_id>.npz`` with ``cams``
``float16 [K', H, W]`` in ``[0, 1]`` at the image's full size and ``classes`` ``int16 [K']`` (K' = 0 for
an image without labels). Files are written atomically; existing ones are kept (resume);
``--epoch N`` takes the classifier's snapshot after N epochs instead of its final weights (recorded as
``epoch``); a folder made with other scales, views or method options is refused (or rebuilt with
``--overwrite``). Under torchrun every rank takes every ``world_size``-th image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from weakseg.cams.cam import make_views
from weakseg.data.registry import open_dataset
from weakseg.engine import dist
from weakseg.engine.artifacts import mark_done, save_npz
from weakseg.engine.device import resolve_device
from weakseg.engine.stage import begin_stage, stage_record
from weakseg.errors import ConfigError
from weakseg.methods.base import apply_overrides
from weakseg.stages.io import DataInput, StageOutput
from weakseg.stages.progress import progress
from weakseg.stages.train_cls import load_classifier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MakeCamsOptions:
    """CAM options (nested as ``cams`` in ``weakseg run``)."""

    scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
    """input scales (× the classifier's input size)"""
    flip: bool = True
    """add the horizontally flipped view of every scale"""
    set: tuple[str, ...] = field(default_factory=tuple)
    """KEY=VALUE overrides of the method's prediction options, e.g. test_partners=3 test_self_pairs=true (mcis)"""
    shard: bool = True
    """under torchrun, split the images across ranks"""
    epoch: int | None = None
    """use the classifier's weights after this many training epochs (a train-cls snapshot,
    cls/epoch_<N>.safetensors); default: the final model"""


@dataclass(frozen=True, kw_only=True)
class MakeCamsConfig(MakeCamsOptions, DataInput, StageOutput):
    """Write CAMs (float16 .npz per image) of a trained classifier for every image of a split."""

    cls_dir: Path
    """folder written by train-cls (config.json + model.safetensors)"""
    seed: int = 0
    """seeds the choice of partner images (methods that pair images)"""


def _npz_path(out: Path, image_id: str) -> Path:
    return out / f"{image_id}.npz"


def make_cams(cfg: MakeCamsConfig) -> Path:
    """Write the CAMs of ``cfg.split`` into ``cfg.out``; returns ``cfg.out``. Skips a complete folder."""
    out = Path(cfg.out)
    if not cfg.scales or any(s <= 0 for s in cfg.scales):
        raise ConfigError(f"scales must be positive numbers, got {cfg.scales}")
    device = resolve_device(cfg.device)
    dist.init_distributed(device)
    net, method, cls_meta = load_classifier(cfg.cls_dir, device, cfg.epoch)
    method = type(method)(apply_overrides(method.cfg, cfg.set))
    ds = open_dataset(cfg.data, cfg.split, cfg.fmt)
    class_names = cls_meta["record"]["class_names"]
    if list(ds.class_names) != list(class_names):
        raise ConfigError(
            f"the classifier in {cfg.cls_dir} was trained on classes {class_names} but {cfg.data} has "
            f"{list(ds.class_names)}"
        )
    views = make_views(cfg.scales, cfg.flip)
    record = {
        **stage_record(replace(cfg, set=()), drop=("device", "overwrite", "out", "set", "shard")),
        "method": method.name,
        "method_config": method.cfg,
        "classifier": cls_meta["record"],
    }
    if begin_stage(out, "make-cams", record, overwrite=cfg.overwrite, meta={"views": views}) == "complete":
        return out
    predictor = method.cam_predictor(net, ds, views, device, cfg.seed)
    indices = list(range(len(ds)))
    if cfg.shard and dist.is_distributed():
        indices = indices[dist.rank() :: dist.world_size()]
    todo = [i for i in indices if not _npz_path(out, ds[i].image_id).is_file()]
    log.info("make-cams: %d of %d images to do (%d views, method %s)", len(todo), len(indices), len(views), method.name)
    for i in progress(todo, "cams"):
        rec = ds[i]
        classes = list(rec.labels)
        if not classes:
            h, w = ds.load_image(i).shape[:2]
            save_npz(_npz_path(out, rec.image_id), cams=np.zeros((0, h, w), np.float16), classes=np.zeros(0, np.int16))
            continue
        cams = predictor(i, classes)
        save_npz(
            _npz_path(out, rec.image_id),
            cams=cams.float().cpu().numpy().astype(np.float16),
            classes=np.asarray(classes, dtype=np.int16),
        )
    dist.barrier()
    if dist.is_main():
        missing = [r.image_id for r in ds.records if not _npz_path(out, r.image_id).is_file()]
        if missing:
            raise RuntimeError(f"make-cams: {len(missing)} images have no CAM file (e.g. {missing[:3]})")
        mark_done(out, {"images": len(ds)})
    dist.barrier()
    return out
