"""Stage ``eval-seg``: a trained segmenter on a dataset split -> ``out/pred/<id>.png`` and ``out/metrics.json``.

Predictions average softmax outputs over ``scales`` and flips (:func:`weakseg.seg.predict.predict_masks`);
the metrics (mIoU, precision, recall per class, background first) read the split's ground-truth masks. A split
without masks still gets its predictions; its ``metrics.json`` then holds ``miou: null`` and a note.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from weakseg.data.palette import save_mask_png
from weakseg.data.registry import open_dataset
from weakseg.engine.artifacts import mark_done, save_json
from weakseg.engine.device import resolve_device
from weakseg.errors import ConfigError
from weakseg.eval.metrics import ConfusionMatrix, segmentation_class_names
from weakseg.seg.models import load_segmenter
from weakseg.seg.predict import predict_masks
from weakseg.stages.io import DataInput
from weakseg.stages.progress import progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalSegOptions:
    """Segmenter-evaluation options (nested as ``eval_seg`` in ``weakseg run``)."""

    scales: tuple[float, ...] = (1.0, 1.5)
    """test-time scales (× the image size); softmax averaged over them"""
    flip: bool = True
    """also average over horizontally flipped inputs"""
    crf: bool = False
    """dense-CRF post-processing (extra 'crf')"""


@dataclass(frozen=True, kw_only=True)
class EvalSegConfig(EvalSegOptions, DataInput):
    """Evaluate a trained segmenter on a dataset split."""

    seg_dir: Path
    """folder of the trained segmenter (model.safetensors + config.json)"""
    out: Path
    """output folder: pred/<image_id>.png, metrics.json"""
    split: str = "val"
    device: str = "auto"


def eval_seg(cfg: EvalSegConfig) -> dict:
    """Predict every image of the split, write the masks and the metrics; returns the metrics dict.

    The result holds :meth:`weakseg.eval.metrics.SegMetrics.to_dict` (``miou``, ``per_class``, ...),
    ``table`` (a printable table) and the evaluation settings.
    """
    device = resolve_device(cfg.device)
    model, info = load_segmenter(cfg.seg_dir, device)
    ds = open_dataset(cfg.data, split=cfg.split, fmt=cfg.fmt)
    names = segmentation_class_names(ds.class_names)
    if len(names) != info.num_classes:
        raise ConfigError(
            f"the segmenter in {cfg.seg_dir} predicts {info.num_classes} classes but {cfg.data} has {len(names)} "
            "(background included); was it trained on another dataset?"
        )
    out = Path(cfg.out)
    cm = ConfusionMatrix(names)
    with_gt = 0
    for i in progress(range(len(ds)), "eval-seg"):
        _, mask = predict_masks(model, ds.load_image(i), cfg.scales, cfg.flip, cfg.crf)
        save_mask_png(out / "pred" / f"{ds[i].image_id}.png", mask)
        gt = ds.load_mask(i)
        if gt is not None:
            cm.update(gt, mask)
            with_gt += 1
    settings = {"split": cfg.split, "scales": list(cfg.scales), "flip": cfg.flip, "crf": cfg.crf}
    if with_gt == 0:
        note = f"split {cfg.split!r} of {cfg.data} has no masks: predictions written to {out / 'pred'}, no metrics"
        log.info("eval-seg: %s", note)
        result = {"miou": None, **settings, "num_images": 0, "num_predicted": len(ds), "masks_read": None,
                  "note": note}  # fmt: skip
        save_json(out / "metrics.json", result)
        mark_done(out)
        return result
    m = cm.metrics()
    result = {
        **m.to_dict(),
        "table": m.table(),
        **settings,
        "num_images": with_gt,
        "num_predicted": len(ds),
        "masks_read": f"ground-truth masks of split {cfg.split!r} of {cfg.data}",
    }
    save_json(out / "metrics.json", result)
    mark_done(out)
    log.info("segmenter on %s: mIoU %.2f over %d images", cfg.split, 100 * m.miou, with_gt)
    return result
