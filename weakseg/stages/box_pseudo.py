"""Stage ``box-pseudo``: boxes (+ optional CAMs) -> pseudo-label PNGs with A2GNN (:mod:`weakseg.methods.a2gnn`).

Zhang et al., "Affinity Attention Graph Neural Network for Weakly Supervised Semantic Segmentation", TPAMI 2021.

For the images of a split:

1. **Boxes**: the records' own (VOC XML, COCO JSON, YOLO polygons, ``boxes.csv``), or, for a dataset without
   boxes (the synthetic benchmark), boxes simulated from its masks (:func:`weakseg.data.simulate.simulate_boxes`,
   ``boxes = simulate``; the masks are then read to *make* the weak labels, as a dataset's annotators would;
   recorded in ``metrics.json``). ``boxes.json`` lists the boxes used.
2. **Affinity network** (``aff/``): a backbone + 1x1 head trained on the box seeds (pair loss + gated-CRF
   regulariser), as :mod:`weakseg.stages.train_aff` trains AffinityNet on CAM seeds.
3. **Labels**: for ``batch_images`` images at a time, seeds + node features + window graphs, one GNN per image
   trained in one batched computation, labels restricted to background and the classes of the boxes covering
   each pixel, written as ``<image_id>.png`` (0 = background, ``c + 1`` = class ``c``).

``metrics.json``: pseudo-label mIoU (ignored counted as background, IRN's convention) and the two box baselines on
the same images, box-fill (each box's interior = its class, smaller boxes on top) and, when CAMs are given,
box ∩ CAM (inside a box, its class where the box-normalised CAM ≥ ``cam_threshold``), plus the seeds' precision
on their labelled pixels. The masks are read only for these scores (and for ``boxes = simulate``).
Only the box labels and the CAMs (a classifier trained on the boxes' classes) train anything.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from weakseg.backbones import create_backbone
from weakseg.data.dataset import Box, SegDataset
from weakseg.data.dense import TargetImages
from weakseg.data.joint_transforms import train_transform
from weakseg.data.palette import read_mask_png, save_mask_png
from weakseg.data.registry import open_dataset
from weakseg.data.simulate import simulate_boxes
from weakseg.engine.artifacts import is_done, load_json, load_npz, mark_done, save_json
from weakseg.engine.checkpoint import load_model
from weakseg.engine.dense import DenseTrainConfig, train_dense
from weakseg.engine.device import resolve_device, seed_everything
from weakseg.engine.stage import begin_stage, stage_record
from weakseg.errors import ConfigError, DataError
from weakseg.eval.metrics import IGNORE, ConfusionMatrix, confusion, segmentation_class_names
from weakseg.methods import create_method
from weakseg.methods.a2gnn import A2GNNMethod
from weakseg.refine.a2gnn import box_cam_label, box_fill
from weakseg.stages.io import DataInput, StageOutput
from weakseg.stages.progress import progress

log = logging.getLogger(__name__)

BOX_SOURCES = ("auto", "records", "simulate")


@dataclass(frozen=True)
class BoxPseudoOptions:
    """Box pseudo-label options (nested as ``box`` in ``weakseg run --task box``)."""

    preset: str = "cpu"
    """the method's preset: paper, cpu or tiny"""
    set: tuple[str, ...] = ()
    """method overrides KEY=VALUE (e.g. gnn.epochs=30 batch_images=16)"""
    seeds: str = "cam"
    """cam: seeds from the CAMs of a classifier trained on the boxes' classes (weakseg run adds the cls and cams
    stages); box: box-only seeds (no classifier)"""
    cam_method: str = "cam"
    """seeds=cam in `weakseg run`: the tags method (cam, mcis, ...) whose classifier gives the CAMs"""
    boxes: str = "auto"
    """auto (the records' boxes, else simulated from the masks), records, or simulate"""
    jitter: float = 0.0
    """simulated boxes: each side moved by up to this fraction of the box's side"""
    backbone: str = "efficientnet-lite0"
    """backbone of the affinity network (efficientnet-lite0, tiny, timm:<name>)"""
    weights: Path | None = None
    pretrained: bool = True
    cam_threshold: float = 0.5
    """box ∩ CAM baseline: box-normalised CAM threshold"""
    limit: int = 0
    """label only the first N images of the split (0 = all)"""


@dataclass(frozen=True, kw_only=True)
class BoxPseudoConfig(BoxPseudoOptions, DataInput, StageOutput):
    """Pseudo labels (palette PNGs) from boxes with A2GNN; the folder feeds `weakseg train-seg --labels`."""

    method: str = "a2gnn"
    """a method of task box (weakseg.methods.METHODS)"""
    cams: Path | None = None
    """folder of ``<image_id>.npz`` CAMs (make-cams) for CAM seeds and the box ∩ CAM baseline; None = box-only"""
    seed: int = 0

    def check(self) -> None:
        if self.boxes not in BOX_SOURCES:
            raise ConfigError(f"boxes={self.boxes!r}; valid: {', '.join(BOX_SOURCES)}")
        if self.seeds not in ("cam", "box"):
            raise ConfigError(f"seeds={self.seeds!r}; valid: cam, box")
        if self.cams is not None and not is_done(self.cams):
            raise DataError(f"CAM folder {self.cams} has no DONE marker: run (or finish) `weakseg make-cams`")


def split_boxes(ds: SegDataset, source: str, jitter: float, seed: int) -> tuple[list[tuple[Box, ...]], str]:
    """The boxes of every record and where they came from (the records' annotations or the masks)."""
    if source == "auto":
        source = "records" if any(r.boxes for r in ds.records) else "simulate"
    if source == "records":
        return [tuple(r.boxes) for r in ds.records], "annotations of the dataset"
    boxes = []
    for i in range(len(ds)):
        mask = ds.load_mask(i)
        if mask is None:
            raise DataError(f"image {ds[i].image_id!r} has no mask to simulate boxes from; give a dataset with boxes")
        boxes.append(simulate_boxes(mask, seed=seed + i, jitter=jitter))
    return boxes, f"simulated from the masks (jitter {jitter}, seed {seed})"


def load_cams(folder: Path | None, image_id: str, labels: tuple[int, ...]) -> dict[int, np.ndarray] | None:
    """``{class: float32 [H, W]}`` of an image's own classes from ``<folder>/<image_id>.npz`` (None: no folder)."""
    if folder is None:
        return None
    path = Path(folder) / f"{image_id}.npz"
    if not path.is_file():
        raise DataError(f"no CAM file for image {image_id!r}: {path} is missing; rerun make-cams")
    z = load_npz(path)
    cams, classes = z["cams"].astype(np.float32), z["classes"].astype(np.int64).reshape(-1)
    return {int(c): cams[k] for k, c in enumerate(classes) if int(c) in labels}


def _box_classes(boxes: tuple[Box, ...]) -> tuple[int, ...]:
    return tuple(sorted({b.cls for b in boxes}))


def train_box_affinity(cfg: BoxPseudoConfig, method: A2GNNMethod, ds: SegDataset, boxes, device) -> torch.nn.Module:
    """Train (or reload) the affinity network on the box seeds into ``OUT/aff``."""
    c = method.cfg
    out = Path(cfg.out) / "aff"
    net = method.build(create_backbone(cfg.backbone, cfg.weights, 8, cfg.pretrained), ds.num_classes)
    if is_done(out):
        load_model(out / "model.safetensors", net)
        return net.to(device).eval()

    def target(i: int, size: tuple[int, int]) -> np.ndarray:
        image = ds.load_image(i)
        cams = load_cams(cfg.cams, ds[i].image_id, _box_classes(boxes[i]))
        return method.seeds(image, boxes[i], cams)

    train = DenseTrainConfig(epochs=c.aff_epochs, batch_size=c.aff_batch, lr=c.aff_lr)
    train_set = TargetImages(ds, target, train_transform(c.aff_crop, (0.7, 1.3)))
    log.info("box-pseudo: training the affinity network (%d images, %d epochs)", len(ds), c.aff_epochs)
    losses = train_dense(net, train_set, net.param_groups(), lambda n, b, e: method.affinity_step(n, *b), train,
                         out, device, cfg.seed)  # fmt: skip
    mark_done(out, {"final_losses": losses})
    return net.eval()


def make_box_pseudo(cfg: BoxPseudoConfig) -> dict:
    """Write A2GNN pseudo labels for the split; returns the metrics (also in ``metrics.json``)."""
    cfg.check()
    method = create_method(cfg.method, cfg.preset, cfg.set)
    if not isinstance(method, A2GNNMethod):
        raise ConfigError(f"method {cfg.method!r} is not a box method; use a2gnn")
    out = Path(cfg.out)
    ds = open_dataset(cfg.data, split=cfg.split, fmt=cfg.fmt)
    if cfg.limit:
        ds = _first(ds, cfg.limit)
    if len(ds) == 0:
        raise DataError(f"split {cfg.split!r} of {cfg.data} has no images")
    record = {**stage_record(cfg), "method_config": stage_record(method.cfg, drop=())}
    status = begin_stage(out, "box-pseudo", record, overwrite=cfg.overwrite)
    if status == "complete" and (out / "metrics.json").is_file():
        return load_json(out / "metrics.json")
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    boxes, box_source = split_boxes(ds, cfg.boxes, cfg.jitter, cfg.seed)
    listing = {r.image_id: [[*b.as_tuple(), b.cls] for b in bx] for r, bx in zip(ds.records, boxes, strict=True)}
    save_json(out / "boxes.json", listing)
    t0 = time.perf_counter()
    net = train_box_affinity(cfg, method, ds, boxes, device)
    t_aff = time.perf_counter() - t0

    todo = [i for i in range(len(ds)) if not (out / f"{ds[i].image_id}.png").is_file()]
    t1 = time.perf_counter()
    chunk = method.cfg.batch_images
    for start in progress(range(0, len(todo), chunk), "A2GNN pseudo labels", (len(todo) + chunk - 1) // chunk):
        idx = todo[start : start + chunk]
        items = []
        for i in idx:
            rec = ds[i]
            cams = load_cams(cfg.cams, rec.image_id, _box_classes(boxes[i]))
            items.append(method.prepare(net, rec.image_id, ds.load_image(i), boxes[i], cams, cfg.seed * 100003 + i))
        for it, label in zip(items, method.label_batch(items, net.output_stride), strict=True):
            save_mask_png(out / f"{it.image_id}.png", label)
    t_label = time.perf_counter() - t1
    report = score(cfg, ds, boxes, out)
    report |= {
        "boxes": box_source,
        "seeds": "CAM + colour agreement" if cfg.cams is not None else "box-only (central ellipse + colour)",
        "num_images": len(ds),
        "labelled_now": len(todo),
        "seconds_affinity": round(t_aff, 2),
        "seconds_labels": round(t_label, 2),
        "images_per_second_labels": round(len(todo) / t_label, 3) if todo and t_label > 0 else None,
    }
    save_json(out / "metrics.json", report)
    mark_done(out, {"images": len(ds)})
    log.info("box-pseudo: %d images; mIoU %s (box-fill %s)", len(ds), report.get("miou"), report.get("box_fill_miou"))
    return report


def _first(ds: SegDataset, n: int) -> SegDataset:
    """The dataset restricted to its first ``n`` records (same loaders)."""
    ds.records = ds.records[:n]
    ds._index = {r.image_id: i for i, r in enumerate(ds.records)}
    return ds


def score(cfg: BoxPseudoConfig, ds: SegDataset, boxes, out: Path) -> dict:
    """mIoU of the written labels, of the box-fill and box ∩ CAM baselines, and the seeds' precision."""
    names = segmentation_class_names(ds.class_names)
    k = len(names)
    cms = {name: ConfusionMatrix(names) for name in ("a2gnn", "box_fill", "box_cam", "seeds")}
    with_gt = 0
    method = create_method(cfg.method, cfg.preset, cfg.set)
    for i in range(len(ds)):
        gt = ds.load_mask(i)
        if gt is None:
            continue
        with_gt += 1
        rec = ds[i]
        h, w = gt.shape
        label = read_mask_png(out / f"{rec.image_id}.png")
        cms["a2gnn"].matrix += confusion(gt, np.where(label == IGNORE, 0, label).astype(np.uint8), k)
        cms["box_fill"].matrix += confusion(gt, box_fill(boxes[i], h, w), k)
        cams = load_cams(cfg.cams, rec.image_id, _box_classes(boxes[i]))
        if cams is not None:
            cams = {c: _fit(m, h, w) for c, m in cams.items()}
            cms["box_cam"].matrix += confusion(gt, box_cam_label(boxes[i], cams, h, w, cfg.cam_threshold), k)
        seeds = method.seeds(ds.load_image(i), boxes[i], cams)
        cms["seeds"].matrix += confusion(np.where(seeds == IGNORE, IGNORE, gt).astype(np.uint8), seeds, k)
    if not with_gt:
        return {"miou": None, "masks_read": None, "note": "no masks: no scores"}
    a2 = cms["a2gnn"].metrics()
    report = {
        "miou": a2.to_dict()["miou"],
        "box_fill_miou": cms["box_fill"].metrics().to_dict()["miou"],
        "box_cam_miou": cms["box_cam"].metrics().to_dict()["miou"] if cfg.cams is not None else None,
        "box_cam_threshold": cfg.cam_threshold if cfg.cams is not None else None,
        "seeds_miou_labelled": cms["seeds"].metrics().to_dict()["miou"],
        "per_class": a2.to_dict()["per_class"],
        "masks_read": f"ground-truth masks of split {cfg.split!r} of {cfg.data} (scores only)",
        "num_with_ground_truth": with_gt,
        "table": a2.table(),
    }
    return report


def _fit(m: np.ndarray, h: int, w: int) -> np.ndarray:
    if m.shape == (h, w):
        return m
    t = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None]
    return torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
