"""Weak-label readers (boxes, ScribbleSup XML, scribble PNGs, clicks JSON) and the seeded simulators."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from weakseg.data.check import check_dataset
from weakseg.data.dataset import IGNORE, Box, Point, Record
from weakseg.data.simulate import objects_of, simulate_boxes, simulate_points, simulate_scribbles
from weakseg.data.weak_labels import (
    BACKGROUND,
    boxes_to_dense,
    decode_scribbles,
    from_boxes,
    from_record,
    points_to_dense,
    read_points_json,
    read_scribble_png,
    read_scribblesup_xml,
)
from weakseg.errors import DataError

CLASSES = ("aeroplane", "bicycle", "diningtable", "dog")


def _mask() -> np.ndarray:
    """Two dog blobs (one component each), a table rectangle, an ignore strip."""
    m = np.zeros((48, 64), np.uint8)
    yy, xx = np.mgrid[:48, :64]
    m[(yy - 14) ** 2 / 81 + (xx - 16) ** 2 / 144 <= 1] = 4
    m[30:44, 36:60] = 3
    m[36:42, 4:14] = 4
    m[:, 62:] = IGNORE
    return m


# ---------------------------------------------------------------------------- readers


def test_boxes_to_dense_and_from_boxes():
    d = boxes_to_dense([Box(1, 2, 4, 3, 0)], 4, 5)
    expect = np.zeros((4, 5), np.uint8)
    expect[2, 1:4] = IGNORE
    assert np.array_equal(d, expect)
    wl = from_boxes([Box(1, 2, 4, 3, 0)], 4, 5)
    assert wl.boxes == (Box(1, 2, 4, 3, 0),) and wl.labelled_fraction == pytest.approx(17 / 20)
    with pytest.raises(DataError, match="ann.xml.*outside"):
        from_boxes([Box(0, 0, 9, 3, 0)], 4, 5, "ann.xml")


SCRIBBLESUP = """<annotation><filename>x.jpg</filename><size><width>20</width><height>10</height></size>
<segmented>1</segmented>
<polygon><tag>background</tag><point><X>0</X><Y>0</Y></point><point><X>19</X><Y>0</Y></point></polygon>
<polygon><tag>table</tag><point><X>2</X><Y>5</Y></point><point><X>10</X><Y>5</Y></point></polygon>
<polygon><tag>dog</tag><point><X>15</X><Y>8</Y></point></polygon>
<polygon><tag>sky</tag><point><X>0</X><Y>9</Y></point><point><X>3</X><Y>9</Y></point></polygon>
</annotation>"""


def test_scribblesup_xml(tmp_path):
    p = tmp_path / "x.xml"
    p.write_text(SCRIBBLESUP)
    with pytest.raises(DataError, match="x.xml.*'sky'.*unknown="):
        read_scribblesup_xml(p, CLASSES)
    d = read_scribblesup_xml(p, CLASSES, width=1, unknown="ignore").dense
    assert d.shape == (10, 20)
    assert (d[0] == 0).all()  # background polyline
    assert (d[5, 2:11] == 3).all() and d[5, 1] == IGNORE and d[5, 11] == IGNORE  # 'table' → diningtable = 2
    assert d[8, 15] == 4 and d[9, 0] == IGNORE
    assert int((d != IGNORE).sum()) == 20 + 9 + 1
    d3 = read_scribblesup_xml(p, CLASSES, width=3, unknown="background").dense
    assert (d3[4:7, 3:10] == 3).all() and d3[9, 1] == 0  # 3 px wide; 'sky' drawn as background
    bad = tmp_path / "bad.xml"
    bad.write_text("<annotation><polygon>")
    with pytest.raises(DataError, match="bad.xml"):
        read_scribblesup_xml(bad, CLASSES)
    nosize = tmp_path / "nosize.xml"
    nosize.write_text("<annotation></annotation>")
    with pytest.raises(DataError, match="size"):
        read_scribblesup_xml(nosize, CLASSES)
    assert read_scribblesup_xml(nosize, CLASSES, size=(4, 3)).dense.shape == (3, 4)


def test_scribble_png_encodings(tmp_path):
    raw = np.array([[0, 1, 2], [2, 0, 0]], np.uint8)
    sduts = decode_scribbles(raw, "sduts", 1)
    assert np.array_equal(sduts, [[255, 1, 0], [0, 255, 255]])
    p = tmp_path / "s.png"
    Image.fromarray(raw).save(p)
    assert np.array_equal(read_scribble_png(p, "sduts", 1).dense, sduts)
    assert np.array_equal(read_scribble_png(p, "voc", 4).dense, raw)
    with pytest.raises(DataError, match="s.png.*outside 0..1 and 255.*'sduts'"):
        read_scribble_png(p, "voc", 1)  # an S-DUTS file read as VOC: value 2 is not a class
    voc = tmp_path / "v.png"
    Image.fromarray(np.array([[255, 3]], np.uint8)).save(voc)
    with pytest.raises(DataError, match="v.png.*outside 0, 1, 2"):
        read_scribble_png(voc, "sduts", 1)
    with pytest.raises(DataError, match="3x2 but the image is 4x2"):
        read_scribble_png(p, "sduts", 1, size=(4, 2))
    with pytest.raises(ValueError, match="valid: voc, sduts"):
        decode_scribbles(raw, "rgb", 1)
    assert raw[0, 0] == 0  # input untouched


def test_points_json_and_dense(tmp_path):
    p = tmp_path / "clicks.json"
    p.write_text(json.dumps({"a": [{"x": 2, "y": 1, "cls": "dog"}, {"x": 0, "y": 0, "cls": "background"},
                                   {"x": 4, "y": 3, "cls": 1, "rank": 2}], "b": []}))  # fmt: skip
    pts = read_points_json(p, CLASSES)
    assert pts == {"a": (Point(2, 1, 3), Point(0, 0, BACKGROUND), Point(4, 3, 1)), "b": ()}
    d = points_to_dense(pts["a"], 4, 5)
    assert d[1, 2] == 4 and d[0, 0] == 0 and d[3, 4] == 2 and int((d != IGNORE).sum()) == 3
    d1 = points_to_dense([Point(2, 2, 0)], 5, 5, radius=1)
    assert int((d1 == 1).sum()) == 5  # a plus-shaped disc of radius 1
    with pytest.raises(DataError, match="clicks.json.*outside the 5x4"):
        points_to_dense([Point(5, 0, 0)], 4, 5, path=p)
    for bad, match in ((["x"], "one object"), ({"a": [{"x": 1}]}, "click 1 of image 'a'"),
                       ({"a": [{"x": 1, "y": 1, "cls": "cat"}]}, "unknown class 'cat'"),
                       ({"a": [{"x": 1, "y": 1, "cls": 9}]}, "-1..3")):  # fmt: skip
        p.write_text(json.dumps(bad))
        with pytest.raises(DataError, match=match):
            read_points_json(p, CLASSES)


def test_from_record_merges_scribbles_points_boxes(tmp_path):
    s = tmp_path / "s.png"
    sc = np.full((4, 6), IGNORE, np.uint8)
    sc[0, 0] = 2
    Image.fromarray(sc).save(s)
    rec = Record("x", tmp_path / "x.jpg", (1,), boxes=(Box(0, 0, 3, 2, 1),), scribbles=s, points=(Point(5, 3, 3),))
    wl = from_record(rec, 4, 6, len(CLASSES))
    expect = np.zeros((4, 6), np.uint8)
    expect[0:2, 0:3] = IGNORE
    expect[0, 0] = 2
    expect[3, 5] = 4
    assert np.array_equal(wl.dense, expect) and wl.boxes == rec.boxes
    assert (from_record(Record("y", s, ()), 2, 2, 4).dense == IGNORE).all()


# ---------------------------------------------------------------------------- simulators


def test_objects_components_and_instances():
    m = _mask()
    objs = objects_of(m)
    assert [o.cls for o in objs] == [2, 3, 3]
    inst = np.zeros(m.shape, np.int32)
    inst[m == 4] = 7  # one instance holding both dog blobs
    inst[m == 3] = 2
    objs = objects_of(m, inst)
    assert [o.cls for o in objs] == [2, 3] and int(objs[1].pixels.sum()) == int((m == 4).sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_boxes_tight_contain_objects_and_jitter_bounded(seed):
    m = _mask()
    tight = simulate_boxes(m, seed=seed)
    objs = objects_of(m)
    assert len(tight) == len(objs)
    for b, o in zip(tight, objs, strict=True):
        inside = np.zeros(m.shape, bool)
        inside[b.y0 : b.y1, b.x0 : b.x1] = True
        assert b.cls == o.cls and not (o.pixels & ~inside).any()  # contains the object
        assert o.pixels[b.y0].any() and o.pixels[b.y1 - 1].any() and o.pixels[:, b.x0].any()  # and is tight
        assert o.pixels[:, b.x1 - 1].any()
    j = 0.1
    jit = simulate_boxes(m, seed=seed, jitter=j)
    assert jit == simulate_boxes(m, seed=seed, jitter=j)
    assert len(jit) == len(tight)
    for b, t in zip(jit, tight, strict=True):
        dx, dy = round(j * t.width) + 0.5, round(j * t.height) + 0.5
        assert abs(b.x0 - t.x0) <= dx and abs(b.x1 - t.x1) <= dx and abs(b.y0 - t.y0) <= dy and abs(b.y1 - t.y1) <= dy
        assert b.problem(*m.shape) is None
    assert any(b != t for s in range(5) for b, t in zip(simulate_boxes(m, s, 0.1), tight, strict=True))


def test_boxes_drop_small_and_instances():
    m = np.zeros((10, 10), np.uint8)
    m[2, 2] = 1
    m[5:9, 5:9] = 1
    assert simulate_boxes(m) == (Box(5, 5, 9, 9, 0),)
    assert len(simulate_boxes(m, min_size=1)) == 2
    inst = (m > 0).astype(np.int32)  # both pieces one instance: one box around both
    assert simulate_boxes(m, instances=inst) == (Box(2, 2, 9, 9, 0),)


@pytest.mark.parametrize("seed", [0, 3])
def test_scribbles_inside_objects_within_budget(seed):
    m = _mask()
    before = m.copy()
    s = simulate_scribbles(m, seed=seed, width=3, length=0.8)
    assert np.array_equal(m, before)
    assert np.array_equal(s, simulate_scribbles(m, seed=seed, width=3, length=0.8))
    known = s != IGNORE
    assert (s[known] == m[known]).all()  # every scribble pixel carries the mask's label
    assert set(np.unique(s).tolist()) == {0, 3, 4, IGNORE}  # every object and the background got one
    for o in objects_of(m):
        assert (s[o.pixels] == o.cls + 1).any()
    budget = 0.02
    sb = simulate_scribbles(m, seed=seed, budget=budget)
    assert 0 < int((sb != IGNORE).sum()) <= budget * int((m != IGNORE).sum())
    assert (sb[sb != IGNORE] == m[sb != IGNORE]).all()
    assert int((simulate_scribbles(m, seed=seed, budget=25) != IGNORE).sum()) <= 25
    dropped = simulate_scribbles(m, seed=seed, drop=1.0)
    assert set(np.unique(dropped).tolist()) == {0, IGNORE}
    fg_only = simulate_scribbles(m, seed=seed, background=False)
    assert not (fg_only == 0).any()


def test_scribbles_keep_margin_from_border():
    m = np.zeros((40, 40), np.uint8)
    m[5:35, 5:35] = 1
    s = simulate_scribbles(m, seed=0, width=1, margin=4, background=False)
    ys, xs = np.nonzero(s == 1)
    assert len(ys) > 10 and ys.min() >= 9 and ys.max() <= 30 and xs.min() >= 9 and xs.max() <= 30  # 4 px clear


@pytest.mark.parametrize("seed", [0, 5])
def test_points_inside_away_from_border(seed):
    m = _mask()
    pts = simulate_points(m, seed=seed, k=3, margin=2, background=4)
    assert pts == simulate_points(m, seed=seed, k=3, margin=2, background=4)
    assert len(pts) == 3 * len(objects_of(m)) + 4
    for p in pts:
        v = m[p.y, p.x]
        assert v == (0 if p.cls == BACKGROUND else p.cls + 1)
        yy, xx = np.mgrid[:48, :64]
        disc = (yy - p.y) ** 2 + (xx - p.x) ** 2 <= 2**2
        assert (m[disc] == v).all()  # more than `margin` px from the object's border
    centre = simulate_points(m, mode="centre")
    assert Point(16, 14, 3) in centre  # the ellipse's centre is its deepest pixel
    thin = np.zeros((5, 9), np.uint8)
    thin[2, 1:8] = 1  # one pixel thick: clicks fall back to its pixels
    assert all(p.y == 2 and 1 <= p.x < 8 for p in simulate_points(thin, k=4, margin=3))


def test_data_check_reports_bad_scribbles(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "scribbles").mkdir()
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    (tmp_path / "labels.csv").write_text("image_id,labels\na,cat\nb,dog\nc,cat\nd,dog\n")
    for name in "abcd":
        Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "images" / f"{name}.png")
    good = np.full((6, 8), IGNORE, np.uint8)
    good[1, 1:4] = 1
    Image.fromarray(good).save(tmp_path / "scribbles" / "a.png")
    Image.fromarray(np.array([[0, 1, 2, 7]] * 6, np.uint8)).resize((8, 6)).save(tmp_path / "scribbles" / "b.png")
    Image.fromarray(good[:5]).save(tmp_path / "scribbles" / "c.png")
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "scribbles" / "d.png")
    found = {p.kind: p for p in check_dataset(tmp_path) if "scribble" in p.kind}
    assert set(found) == {"scribble_values", "scribble_size", "bad_scribbles"}
    assert found["scribble_values"].path.endswith("b.png") and "S-DUTS" in found["scribble_values"].fix
    assert found["scribble_size"].path.endswith("c.png") and found["bad_scribbles"].path.endswith("d.png")
