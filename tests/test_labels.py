"""Label files (cls_labels.csv, classes.txt), labels from masks, and the mask palette."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from weakseg.data.labels import (
    labels_from_mask,
    read_classes,
    read_cls_labels,
    scan_cls_labels,
    write_classes,
    write_cls_labels,
)
from weakseg.data.palette import PALETTE, colorize, mask_to_png, overlay, read_mask_png, save_mask_png
from weakseg.errors import DataError

NAMES = ("cat", "dog", "traffic light")


def test_roundtrip_and_format(tmp_path):
    labels = {"img1": (2, 0), "img2": (), "img3": (1, 1)}
    p = write_cls_labels(tmp_path / "cls_labels.csv", labels, NAMES)
    assert p.read_bytes() == b"image_id,labels\nimg1,cat traffic_light\nimg2,\nimg3,dog\n"
    assert read_cls_labels(p, NAMES) == {"img1": (0, 2), "img2": (), "img3": (1,)}
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp file


def test_bom_windows_newlines_blank_lines_and_spaced_names(tmp_path):
    p = tmp_path / "l.csv"
    p.write_bytes("\ufeffimage_id,labels\r\na,cat  dog\r\n\r\nb,traffic light\r\n".encode())
    # "traffic light" with a space reads as two names: 'traffic' and 'light' are unknown
    with pytest.raises(DataError, match="'traffic'"):
        read_cls_labels(p, NAMES)
    p.write_bytes("\ufeffimage_id,labels\r\na,cat  dog\r\n\r\nb,traffic_light\r\n".encode())
    assert read_cls_labels(p, NAMES) == {"a": (0, 1), "b": (2,)}


def test_unknown_names_and_duplicates_are_all_reported(tmp_path):
    p = tmp_path / "cls_labels.csv"
    p.write_text("image_id,labels\na,cat\nb,zebra\na,dog\nc,unicorn cat\na,\n")
    labels, issues = scan_cls_labels(p, NAMES)
    assert labels == {"a": (0,), "b": (), "c": (0,)}
    kinds = sorted((i.kind, i.line) for i in issues)
    assert kinds == [("duplicate", 4), ("unknown_class", 3), ("unknown_class", 5)]
    with pytest.raises(DataError) as e:
        read_cls_labels(p, NAMES)
    msg = str(e.value)
    assert "cls_labels.csv" in msg and "'zebra'" in msg and "'unicorn'" in msg
    assert "lines 2, 4, 6" in msg and "valid names: cat, dog, traffic_light" in msg


def test_bad_header_columns_and_encoding(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("name,tags\na,cat\n")
    with pytest.raises(DataError, match="header"):
        read_cls_labels(p, NAMES)
    p.write_text("image_id,labels\na,cat,dog\n")
    with pytest.raises(DataError, match="3 columns"):
        read_cls_labels(p, NAMES)
    p.write_bytes(b"image_id,labels\na,caf\xe9\n")
    with pytest.raises(DataError, match="not UTF-8"):
        read_cls_labels(p, NAMES)
    p.write_text("")
    with pytest.raises(DataError, match="empty"):
        read_cls_labels(p, NAMES)


def test_classes_txt(tmp_path):
    p = write_classes(tmp_path / "classes.txt", NAMES)
    assert read_classes(p) == NAMES
    p.write_bytes(b"\xef\xbb\xbfcat\r\n  dog \r\n\r\n")
    assert read_classes(p) == ("cat", "dog")
    p.write_text("cat\ndog\ncat\n")
    with pytest.raises(DataError, match="'cat' appears twice"):
        read_classes(p)
    p.write_text("\n")
    with pytest.raises(DataError, match="no class names"):
        read_classes(p)


def test_labels_from_mask():
    m = np.zeros((4, 4), np.uint8)
    m[0, 0] = 3
    m[1, :] = 255
    m[2, :2] = 1
    assert labels_from_mask(m, 3) == (0, 2)
    assert labels_from_mask(m, 3, min_pixels=2) == (0,)
    assert labels_from_mask(np.zeros((2, 2), np.uint8), 3) == ()
    m[3, 3] = 4
    with pytest.raises(ValueError, match=r"\[4\]"):
        labels_from_mask(m, 3)


def test_palette_png_roundtrip(tmp_path):
    assert PALETTE[0].tolist() == [0, 0, 0] and PALETTE[1].tolist() == [128, 0, 0]
    assert PALETTE[15].tolist() == [192, 128, 128] and PALETTE[255].tolist() == [224, 224, 192]
    m = np.array([[0, 1, 2], [20, 255, 80]], np.uint8)
    im = mask_to_png(m)
    assert im.mode == "P" and np.array_equal(np.asarray(im), m)
    p = save_mask_png(tmp_path / "m.png", m)
    assert np.array_equal(read_mask_png(p), m)
    with Image.open(p) as f:
        assert f.mode == "P" and f.convert("RGB").getpixel((2, 0)) == (0, 128, 0)
    assert colorize(m)[1, 1].tolist() == [224, 224, 192]
    img = np.full((2, 3, 3), 100, np.uint8)
    ov = overlay(img, m)
    assert ov[0, 0].tolist() == [100, 100, 100] and ov[0, 1].tolist() != [100, 100, 100]
    with pytest.raises(ValueError):
        mask_to_png(np.zeros((2, 2, 3), np.uint8))
