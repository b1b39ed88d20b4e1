"""Loaders of every format, and the registry that picks between them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from weakseg.data.coco import COCODataset
from weakseg.data.folder import FolderDataset
from weakseg.data.images import image_size
from weakseg.data.labels import labels_from_mask, read_cls_labels, write_classes, write_cls_labels
from weakseg.data.palette import mask_to_png
from weakseg.data.registry import FORMATS, detect_format, open_dataset
from weakseg.data.voc import VOC_CLASSES, VOCDataset, build_labels
from weakseg.data.yolo import YOLODataset
from weakseg.errors import ConfigError, DataError, MissingExtraError


def _jpg(path: Path, h: int = 20, w: int = 30, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)


def _mask(h: int = 20, w: int = 30, **boxes: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    for i, (_k, v) in enumerate(boxes.items()):
        m[2 + 5 * i : 6 + 5 * i, 2:10] = v
    return m


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    """VOC 2012 + SBD layout: 4 images; train/val with palette masks, train_aug with L-mode aug masks."""
    root = tmp_path / "VOC2012"
    for i in ("a", "b", "c", "d"):
        _jpg(root / "JPEGImages" / f"{i}.jpg")
    seg = root / "SegmentationClass"
    seg.mkdir(parents=True)
    mask_to_png(_mask(x=1, y=15)).save(seg / "a.png")  # aeroplane, person
    m = _mask(x=12)
    m[0, :] = 255
    mask_to_png(m).save(seg / "b.png")  # cat + ignore
    aug = root / "SegmentationClassAug"
    aug.mkdir()
    for i, v in (("a", 20), ("c", 7), ("d", 3)):
        Image.fromarray(_mask(x=v), mode="L").save(aug / f"{i}.png")
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("a\n")
    (sets / "val.txt").write_text("b\n")
    (sets / "train_aug.txt").write_text(
        "/JPEGImages/a.jpg /SegmentationClassAug/a.png\n/JPEGImages/c.jpg /SegmentationClassAug/c.png\n"
        "/JPEGImages/d.jpg /SegmentationClassAug/d.png\n"
    )
    return root


def test_voc_labels_from_masks_and_train_aug(voc_root):
    train = VOCDataset(voc_root, "train")
    assert train.class_names == VOC_CLASSES and len(train) == 1
    assert train[0].labels == (0, 14)  # aeroplane, person
    assert train.load_mask(0).max() == 15
    val = VOCDataset(voc_root, "val")
    assert val[0].labels == (11,) and 255 in val.load_mask(0)
    aug = VOCDataset(voc_root, "train_aug")
    assert [r.image_id for r in aug.records] == ["a", "c", "d"]
    # train_aug masks come from SegmentationClassAug (a has a tvmonitor there, not aeroplane/person)
    assert [r.labels for r in aug.records] == [(19,), (6,), (2,)]
    assert set(np.unique(aug.load_mask(1))) == {0, 7}
    assert aug.load_image(0).shape == (20, 30, 3)
    assert detect_format(voc_root) == "voc"
    assert len(open_dataset(voc_root, "train_aug")) == 3


def test_voc_build_labels_then_csv_wins(voc_root):
    path = build_labels(voc_root, ["train", "val"])
    assert read_cls_labels(path, VOC_CLASSES) == {"a": (0, 14), "b": (11,)}
    write_cls_labels(path, {"a": (4,), "b": ()}, VOC_CLASSES)  # the CSV overrides the masks
    assert VOCDataset(voc_root, "train")[0].labels == (4,)
    assert VOCDataset(voc_root, "val")[0].labels == ()


def test_voc_missing_image_and_split(voc_root):
    (voc_root / "ImageSets/Segmentation/val.txt").write_text("b\nghost\n")
    with pytest.raises(DataError) as e:
        VOCDataset(voc_root, "val")
    assert "ghost.jpg" in str(e.value) and "val.txt" in str(e.value)
    with pytest.raises(DataError, match=r"trainval\.txt"):
        VOCDataset(voc_root, "trainval")


def test_voc_mask_values_out_of_range_are_an_error_naming_the_file(voc_root):
    mask_to_png(_mask(x=42)).save(voc_root / "SegmentationClass/b.png")
    with pytest.raises(DataError, match="b.png"):
        VOCDataset(voc_root, "val")  # labels computed from the mask at construction


def test_synthetic_is_read_by_voc_loader(synth_root, synth_dataset):
    assert detect_format(synth_root) == "voc"
    assert len(synth_dataset) == 40 and synth_dataset.num_classes == 10
    assert synth_dataset.label_matrix().sum(1).min() >= 1
    assert len(open_dataset(synth_root / "extra_web", "train")) == 8


# ---------------------------------------------------------------------------- COCO


def _coco_json(root: Path) -> None:
    _jpg(root / "val2014" / "COCO_val2014_000000000001.jpg", 20, 30)
    _jpg(root / "val2014" / "COCO_val2014_000000000002.jpg", 20, 30)
    # uncompressed RLE (column-major) of a 20x30 mask: first 5 columns fully on
    rle_counts = [0, 100, 500]
    data = {
        "images": [
            {"id": 1, "file_name": "COCO_val2014_000000000001.jpg", "height": 20, "width": 30},
            {"id": 2, "file_name": "COCO_val2014_000000000002.jpg", "height": 20, "width": 30},
        ],
        "categories": [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
        "annotations": [
            # a big person box and a small car on top of it (drawn later because smaller)
            {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 200.0,
             "segmentation": [[2, 2, 22, 2, 22, 12, 2, 12]], "bbox": [2, 2, 20, 10]},
            {"id": 11, "image_id": 1, "category_id": 3, "iscrowd": 0, "area": 16.0,
             "segmentation": [[4, 4, 8, 4, 8, 8, 4, 8]], "bbox": [3.6, 4.0, 4.8, 4.5]},  # float box: see test_records
            # a crowd region (RLE) of toothbrushes
            {"id": 12, "image_id": 1, "category_id": 90, "iscrowd": 1, "area": 100.0,
             "segmentation": {"size": [20, 30], "counts": rle_counts}, "bbox": [0, 0, 5, 20]},
        ],
    }  # fmt: skip
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(data))


def test_coco_tiny_json(tmp_path):
    pytest.importorskip("pycocotools")
    _coco_json(tmp_path)
    assert detect_format(tmp_path) == "coco"
    ds = open_dataset(tmp_path, "val")
    assert isinstance(ds, COCODataset)
    assert ds.class_names == ("person", "car", "toothbrush")  # contiguous, in category-id order
    assert [r.labels for r in ds.records] == [(0, 1, 2), ()]
    m = ds.load_mask(0)
    assert m.shape == (20, 30)
    assert m[6, 6] == 2  # car over person
    assert m[10, 15] == 1  # person
    assert m[10, 3] == 1  # person wins over crowd
    assert m[15, 2] == 255  # crowd (first 5 columns) where no object lies
    assert m[15, 20] == 0
    assert (ds.load_mask(1) == 0).all()


def test_coco_without_pycocotools_names_the_extra(tmp_path, monkeypatch):
    _coco_json(tmp_path)
    ds = COCODataset(tmp_path, "val")
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    with pytest.raises(MissingExtraError, match=r"weakseg\[coco\]"):
        ds.load_mask(0)


def test_coco_missing_annotations(tmp_path):
    with pytest.raises(DataError, match="instances_train2014.json"):
        COCODataset(tmp_path, "train")


# ---------------------------------------------------------------------------- YOLO


def test_yolo_on_coco128(coco128_root):
    assert detect_format(coco128_root) == "yolo"
    ds = open_dataset(coco128_root, "all")
    assert isinstance(ds, YOLODataset)
    assert len(ds) == 96 and ds.num_classes == 80
    assert sum(1 for r in ds.records if not r.labels) == 2
    for i in range(len(ds)):
        m = ds.load_mask(i)
        w, h = image_size(ds[i].image_path)
        assert m.shape == (h, w)
        assert m.max() <= 80
        assert set(labels_from_mask(m, 80)) <= set(ds[i].labels)
    for i in (0, 50):
        assert ds.load_image(i).shape[:2] == ds.load_mask(i).shape
    labelled = [i for i in range(len(ds)) if ds[i].labels]
    assert np.mean([set(labels_from_mask(ds.load_mask(i), 80)) == set(ds[i].labels) for i in labelled]) > 0.9


def test_yolo_drawing_order_and_split_file(tmp_path):
    _jpg(tmp_path / "images" / "x.jpg", 20, 20)
    _jpg(tmp_path / "images" / "y.jpg", 20, 20)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "x.txt").write_text("0 0 0 1 0 1 1 0 1\n1 0.25 0.25 0.75 0.25 0.75 0.75 0.25 0.75\n")
    write_classes(tmp_path / "classes.txt", ["a", "b"])
    (tmp_path / "val.txt").write_text("images/y.jpg\n")
    ds = YOLODataset(tmp_path, "all")
    m = ds.load_mask(0)
    assert m[10, 10] == 2 and m[1, 1] == 1  # the later polygon is on top
    assert ds[0].labels == (0, 1) and ds[1].labels == ()
    assert [r.image_id for r in YOLODataset(tmp_path, "val").records] == ["y"]
    (tmp_path / "labels" / "y.txt").write_text("5 0 0 1 0 1 1\n")
    with pytest.raises(DataError, match="y.txt"):
        YOLODataset(tmp_path, "all")


# ---------------------------------------------------------------------------- folder


def test_folder_format(tmp_path):
    for n in ("p", "q", "r"):
        _jpg(tmp_path / "images" / f"{n}.png")
    write_classes(tmp_path / "classes.txt", ["cat", "traffic light"])
    (tmp_path / "labels.csv").write_text("image_id,labels\np,cat traffic_light\nq,\n")
    (tmp_path / "masks").mkdir()
    mask_to_png(_mask(c=2)).save(tmp_path / "masks" / "r.png")
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.txt").write_text("p\nr.png\n")
    assert detect_format(tmp_path) == "folder"
    ds = open_dataset(tmp_path, "all")
    assert isinstance(ds, FolderDataset)
    assert [(r.image_id, r.labels) for r in ds.records] == [("p", (0, 1)), ("q", ()), ("r", (1,))]
    assert ds.load_mask(0) is None and ds.load_mask(2).max() == 2
    assert [r.image_id for r in FolderDataset(tmp_path, "train").records] == ["p", "r"]
    with pytest.raises(DataError, match="splits/val.txt"):
        FolderDataset(tmp_path, "val")


# ---------------------------------------------------------------------------- registry


def test_registry_errors(tmp_path, synth_root):
    assert set(FORMATS) == {"voc", "coco", "yolo", "folder"}
    with pytest.raises(ConfigError, match="folder, voc, yolo"):
        open_dataset(synth_root, fmt="pascal")
    with pytest.raises(DataError, match="nowhere"):
        open_dataset(tmp_path / "nowhere")
    (tmp_path / "junk").mkdir()
    with pytest.raises(DataError, match="JPEGImages"):
        open_dataset(tmp_path / "junk")
    with pytest.raises(DataError, match="test.txt"):
        open_dataset(synth_root, "test")
    assert isinstance(open_dataset(synth_root, "val", fmt="voc"), VOCDataset)
