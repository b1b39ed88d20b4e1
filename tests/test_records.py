"""Wider records: boxes, scribbles, points, groups, videos, volumes; the boxes each loader attaches."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from test_data_loaders import _coco_json, _jpg

from weakseg.data.boxes import boxes_from_mask
from weakseg.data.check import check_dataset
from weakseg.data.coco import COCODataset
from weakseg.data.dataset import Box, Point, Record, check_boxes
from weakseg.data.folder import FolderDataset
from weakseg.data.images import image_size
from weakseg.data.labels import write_classes
from weakseg.data.registry import open_dataset
from weakseg.data.voc import VOC_CLASSES, VOCDataset, read_voc_xml
from weakseg.data.yolo import YOLODataset
from weakseg.errors import DataError

# ---------------------------------------------------------------------------- the record


def test_record_without_new_fields_is_the_old_record():
    r = Record("a", Path("x.jpg"), (1, 3))
    assert [f.name for f in dataclasses.fields(Record)][:3] == ["image_id", "image_path", "labels"]
    assert r == Record(image_id="a", image_path=Path("x.jpg"), labels=(1, 3))
    assert (r.boxes, r.scribbles, r.points) == ((), None, ())
    assert (r.group, r.sequence, r.frame, r.volume, r.slice_index) == (None,) * 5
    assert hash(r) == hash(Record("a", Path("x.jpg"), (1, 3)))
    assert r != Record("a", Path("x.jpg"), (1, 3), boxes=(Box(0, 0, 1, 1, 1),))
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.labels = ()  # type: ignore[misc]


def test_record_holds_every_kind_of_weak_label():
    r = Record(
        "f7",
        Path("v/7.jpg"),
        (0,),
        boxes=(Box(1, 2, 5, 6, 0),),
        scribbles=Path("s/7.png"),
        points=(Point(3, 4, 0),),
        group="cats",
        sequence="v",
        frame=7,
        volume="ct1",
        slice_index=12,
    )
    assert r.boxes[0].as_tuple() == (1, 2, 5, 6) and r.points[0] == Point(3, 4, 0)
    assert (r.group, r.sequence, r.frame, r.volume, r.slice_index) == ("cats", "v", 7, "ct1", 12)


# ---------------------------------------------------------------------------- boxes


def test_box_geometry_and_clip():
    b = Box(2, 3, 7, 5, 1)  # columns 2..6, rows 3..4
    assert (b.width, b.height, b.area) == (5, 2, 10)
    m = np.zeros((10, 10), np.uint8)
    m[b.y0 : b.y1, b.x0 : b.x1] = 1
    assert m.sum() == b.area
    assert Box(-3, -1, 12, 4, 0).clip(h=8, w=10) == Box(0, 0, 10, 4, 0)
    assert Box(12, 0, 15, 4, 0).clip(h=8, w=10).area == 0  # wholly outside: empty
    assert Box(2, 3, 7, 5, 1).clip(8, 10) == b


def test_box_around_a_continuous_extent():
    # pixel i spans [i, i + 1): [3.6, 8.4] x [4.0, 8.5] touches columns 3..8 and rows 4..8
    assert Box.around(3.6, 4.0, 8.4, 8.5, 1) == Box(3, 4, 9, 9, 1)
    assert Box.around(0, 0, 640.0000001, 480, 0) == Box(0, 0, 640, 480, 0)  # float noise forgiven
    assert Box.around(5, 5, 5, 7, 0) == Box(5, 5, 6, 7, 0)  # zero width still covers its pixel
    assert Box.around(5, 5, 3, 7, 0).width < 0  # negative width stays bad


def test_box_checks_name_the_file():
    good = (Box(0, 0, 30, 20, 0), Box(5, 5, 6, 6, 1))
    assert check_boxes(good, h=20, w=30, path="ann/a.xml") == good
    with pytest.raises(DataError, match=r"ann/a\.xml.*outside the 30x20 image"):
        check_boxes([Box(0, 0, 31, 20, 0)], h=20, w=30, path="ann/a.xml")
    with pytest.raises(DataError, match=r"ann/a\.xml.*empty"):
        check_boxes([Box(5, 0, 5, 20, 0)], h=20, w=30, path="ann/a.xml")  # x1 == x0
    with pytest.raises(DataError, match=r"ann/a\.xml.*empty"):
        check_boxes([Box(7, 0, 5, 20, 0)], h=20, w=30, path="ann/a.xml")  # x1 < x0
    with pytest.raises(DataError, match=r"b\.csv.*class 4 outside 0\.\.1"):
        check_boxes([Box(0, 0, 1, 1, 4)], h=20, w=30, path="b.csv", num_classes=2)


def test_boxes_from_mask_one_box_per_class():
    m = np.zeros((10, 12), np.uint8)
    m[1:3, 2:5] = 1  # class 0, first blob
    m[6:8, 9:11] = 1  # class 0, second blob: one box around both
    m[4, 6] = 3  # class 2, one pixel
    m[0, :] = 255  # ignore: no box
    assert boxes_from_mask(m) == (Box(2, 1, 11, 8, 0), Box(6, 4, 7, 5, 2))
    assert boxes_from_mask(m, num_classes=1) == (Box(2, 1, 11, 8, 0),)
    assert boxes_from_mask(np.zeros((4, 4), np.uint8)) == ()


# ---------------------------------------------------------------------------- COCO


def test_coco_boxes_from_xywh(tmp_path):
    _coco_json(tmp_path)
    ds = COCODataset(tmp_path, "val")  # no pycocotools needed: boxes come from the JSON
    person, car = ds.class_names.index("person"), ds.class_names.index("car")
    # [2, 2, 20, 10] -> x 2..22, y 2..12; [3.6, 4.0, 4.8, 4.5] -> x 3.6..8.4 -> 3..9, y 4..8.5 -> 4..9;
    # the crowd annotation's box is left out
    assert ds[0].boxes == (Box(2, 2, 22, 12, person), Box(3, 4, 9, 9, car))
    assert ds[1].boxes == ()


def test_coco_box_outside_the_image_is_an_error_naming_the_file(tmp_path):
    _coco_json(tmp_path)
    p = tmp_path / "annotations" / "instances_val2014.json"
    data = json.loads(p.read_text())
    data["annotations"][0]["bbox"] = [25, 2, 10, 5]  # x1 = 35 > width 30
    p.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"instances_val2014\.json.*annotation 10 of image 1.*outside the 30x20"):
        COCODataset(tmp_path, "val")
    assert any(q.kind == "bad_box" for q in check_dataset(tmp_path, split="val"))


# ---------------------------------------------------------------------------- VOC


def _voc_xml(objects: list[tuple[str, int, int, int, int]], w: int = 30, h: int = 20) -> str:
    objs = "".join(
        f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for n, x0, y0, x1, y1 in objects
    )
    return f"<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objs}</annotation>"


@pytest.fixture
def voc_xml_root(tmp_path: Path) -> Path:
    """A VOC layout with image-level labels in cls_labels.csv; ``a`` has an annotation XML, ``b`` none."""
    for i in ("a", "b"):
        _jpg(tmp_path / "JPEGImages" / f"{i}.jpg", 20, 30)
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Segmentation" / "train.txt").write_text("a\nb\n")
    (tmp_path / "cls_labels.csv").write_text("image_id,labels\na,dog cat\nb,\n")
    (tmp_path / "Annotations").mkdir()
    # 1-based inclusive: dog covers columns 1..10, rows 1..5; cat reaches the last column (30) and row (20)
    xml = _voc_xml([("dog", 1, 1, 10, 5), ("cat", 21, 11, 30, 20)])
    (tmp_path / "Annotations" / "a.xml").write_text(xml)
    return tmp_path


def test_voc_xml_boxes_are_converted_to_0_based_exclusive(voc_xml_root):
    dog, cat = VOC_CLASSES.index("dog"), VOC_CLASSES.index("cat")
    ds = VOCDataset(voc_xml_root, "train")
    # 0-based exclusive: columns 0..9 -> x0 = 0, x1 = 10 (ten columns); rows 0..4 -> y0 = 0, y1 = 5
    assert ds[0].boxes == (Box(0, 0, 10, 5, dog), Box(20, 10, 30, 20, cat))
    assert ds[0].boxes[0].width == 10 and ds[0].boxes[1].clip(20, 30) == ds[0].boxes[1]
    assert ds[1].boxes == ()  # no XML
    boxes, size, problems = read_voc_xml(voc_xml_root / "Annotations" / "a.xml", VOC_CLASSES)
    assert size == (30, 20) and not problems and boxes == list(ds[0].boxes)


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        (("dog", 1, 1, 31, 5), r"a\.xml.*outside the 30x20 image"),  # xmax 31 > width 30
        (("dog", 8, 1, 6, 5), r"a\.xml.*empty"),  # xmax < xmin
        (("unicorn", 1, 1, 5, 5), r"a\.xml.*'unicorn'"),
    ],
)
def test_voc_bad_xml_box_is_an_error_naming_the_file(voc_xml_root, obj, match):
    (voc_xml_root / "Annotations" / "a.xml").write_text(_voc_xml([obj]))
    with pytest.raises(DataError, match=match):
        VOCDataset(voc_xml_root, "train")


def test_voc_without_annotations_has_no_boxes(synth_dataset):
    assert all(r.boxes == () for r in synth_dataset.records)


# ---------------------------------------------------------------------------- YOLO


def test_yolo_polygon_and_detection_line_to_box(tmp_path):
    _jpg(tmp_path / "images" / "x.jpg", 40, 20)  # 40 rows, 20 columns
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "x.txt").write_text(
        "1 0.25 0.25 0.75 0.25 0.75 0.75 0.25 0.75\n"  # x 5..15, y 10..30
        "0 0.5 0.5 0.2 0.4\n"  # detection line cx cy w h: x 8..12, y 12..28
        "0 0.1 0.9 0.33 0.9 0.2 0.97\n"  # triangle: x 2..6.6, y 36..38.8
    )
    write_classes(tmp_path / "classes.txt", ["a", "b"])
    ds = YOLODataset(tmp_path, "all")
    assert ds[0].boxes == (Box(5, 10, 15, 30, 1), Box(8, 12, 12, 28, 0), Box(2, 36, 7, 39, 0))
    m = ds.load_mask(0)
    for b in ds[0].boxes[:2]:  # the rectangles fill their boxes (PIL also draws edges on the boundary)
        assert (m[b.y0 : b.y1, b.x0 : b.x1] > 0).all()
    # class 0 in the drawn mask: the detection rectangle (PIL fills its edge column 12 too) and the triangle
    assert boxes_from_mask(m)[0] == Box(2, 12, 13, 39, 0)


def test_coco128_boxes_lie_inside_their_images(coco128_root):
    ds = open_dataset(coco128_root, "all")
    assert sum(len(r.boxes) for r in ds.records) > 500
    for r in ds.records:
        w, h = image_size(r.image_path)
        assert {b.cls for b in r.boxes} == set(r.labels)
        check_boxes(r.boxes, h, w, r.image_path, ds.num_classes)
        assert all(b.area > 0 for b in r.boxes)


# ---------------------------------------------------------------------------- folder


def _folder(root: Path, boxes_csv: str) -> None:
    _jpg(root / "images" / "p.png", 20, 30)
    _jpg(root / "images" / "q.png", 20, 30)
    write_classes(root / "classes.txt", ["cat", "traffic light"])
    (root / "labels.csv").write_text("image_id,labels\np,cat traffic_light\nq,\n")
    (root / "boxes.csv").write_text(boxes_csv)


def test_folder_boxes_csv_and_scribbles(tmp_path):
    _folder(tmp_path, "image_id,x0,y0,x1,y1,class_name\np,0,0,30,20,cat\np,4,5,9,7,traffic_light\n")
    (tmp_path / "scribbles").mkdir()
    _jpg(tmp_path / "scribbles" / "q.png", 20, 30)  # any PNG: only its path is recorded
    ds = FolderDataset(tmp_path, "all")
    assert ds[0].boxes == (Box(0, 0, 30, 20, 0), Box(4, 5, 9, 7, 1)) and ds[1].boxes == ()
    assert ds[0].scribbles is None and ds[1].scribbles == tmp_path / "scribbles" / "q.png"


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ("p,0,0,31,20,cat", r"boxes\.csv \(image 'p'\).*outside the 30x20 image"),
        ("p,5,0,5,20,cat", r"boxes\.csv \(image 'p'\).*empty"),
        ("p,0,0,5,5,dog", r"boxes\.csv line 2.*'dog'"),
        ("p,0,0,5.5,5,cat", r"boxes\.csv line 2.*whole numbers"),
    ],
)
def test_folder_bad_box_is_an_error_naming_the_file(tmp_path, row, match):
    _folder(tmp_path, f"image_id,x0,y0,x1,y1,class_name\n{row}\n")
    with pytest.raises(DataError, match=match):
        FolderDataset(tmp_path, "all")
