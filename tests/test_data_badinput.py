"""Odd and broken inputs: each is either loaded correctly or rejected with a message naming the file."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from weakseg.data.check import ERROR, WARNING, check_dataset, format_problems
from weakseg.data.folder import FolderDataset
from weakseg.data.images import image_size, load_mask, load_rgb, probe_image
from weakseg.data.labels import write_classes
from weakseg.data.palette import mask_to_png
from weakseg.data.voc import VOCDataset
from weakseg.errors import DataError


def _rgb(h: int = 16, w: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _save(im: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kw)
    return path


def _jpeg_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


# ---------------------------------------------------------------------------- images


def test_truncated_jpeg_is_an_error_naming_the_file(tmp_path):
    p = tmp_path / "cut_photo.jpg"
    p.write_bytes(_jpeg_bytes(_rgb(64, 64))[:400])
    with pytest.raises(DataError, match="cut_photo.jpg.*truncated"):
        load_rgb(p)


def test_zero_byte_and_non_image_files(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.jpg is empty \(0 bytes\)"):
        load_rgb(tmp_path / "empty.jpg")
    (tmp_path / "notes.jpg").write_text("not an image at all")
    with pytest.raises(DataError, match=r"notes\.jpg is not an image"):
        load_rgb(tmp_path / "notes.jpg")
    with pytest.raises(DataError, match="absent.jpg"):
        load_rgb(tmp_path / "absent.jpg")


def test_png_saved_as_jpg_loads_and_is_flagged(tmp_path):
    arr = _rgb()
    p = _save(Image.fromarray(arr), tmp_path / "fake.jpg", format="PNG")
    np.testing.assert_array_equal(load_rgb(p), arr)  # lossless: the content decides, not the suffix
    assert probe_image(p).format == "PNG"


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    cmyk = Image.new("CMYK", (10, 6), (0, 255, 255, 0))  # pure red in print colours
    p = _save(cmyk, tmp_path / "print.jpg", quality=95)
    out = load_rgb(p)
    assert out.shape == (6, 10, 3) and out.dtype == np.uint8
    assert out[..., 0].mean() > 200 and out[..., 1].mean() < 60 and out[..., 2].mean() < 60


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half fully transparent
    out = load_rgb(_save(Image.fromarray(rgba), tmp_path / "a.png"))
    assert out[0, 0].tolist() == [200, 0, 0] and out[3, 3].tolist() == [255, 255, 255]
    la = np.zeros((4, 4, 2), np.uint8)
    la[..., 0] = 50
    la[:, :2, 1] = 255
    out = load_rgb(_save(Image.fromarray(la), tmp_path / "la.png"))
    assert out[0, 0].tolist() == [50, 50, 50] and out[0, 3].tolist() == [255, 255, 255]


def test_palette_and_grayscale_and_bilevel(tmp_path):
    p = Image.frombytes("P", (2, 2), bytes([0, 1, 1, 0]))
    p.putpalette([10, 20, 30, 200, 100, 0] + [0] * 762)
    out = load_rgb(_save(p, tmp_path / "p.png"))
    assert out[0, 0].tolist() == [10, 20, 30] and out[0, 1].tolist() == [200, 100, 0]
    g = load_rgb(_save(Image.fromarray(np.full((3, 5), 77, np.uint8)), tmp_path / "g.png"))
    assert g.shape == (3, 5, 3) and (g == 77).all()
    b = load_rgb(_save(Image.new("1", (4, 2), 1), tmp_path / "b.png"))
    assert (b == 255).all()


def test_16bit_grayscale_is_scaled_by_the_full_range(tmp_path):
    a = np.array([[0, 257 * 100], [65535, 257 * 10]], np.uint16)
    p = _save(Image.fromarray(a), tmp_path / "depth.png")
    with Image.open(p) as im:
        assert im.mode.startswith("I")
    out = load_rgb(p)
    assert out[..., 0].tolist() == [[0, 100], [255, 10]]


def test_exif_rotation_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)  # stored: left half red, right half blue
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    p = _save(Image.fromarray(arr), tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    out = load_rgb(p)
    assert out.shape == (40, 20, 3)
    assert image_size(p) == (20, 40)
    assert out[2, 10, 0] > 200 and out[-3, 10, 2] > 200  # the stored left (red) is now on top


def test_extreme_sizes(tmp_path):
    assert load_rgb(_save(Image.new("RGB", (1, 1), (1, 2, 3)), tmp_path / "dot.png")).tolist() == [[[1, 2, 3]]]
    wide = load_rgb(_save(Image.new("RGB", (8000, 100), (9, 9, 9)), tmp_path / "wide.jpg"))
    assert wide.shape == (100, 8000, 3)
    problems = check_dataset(_folder(tmp_path / "ds", {"wide": Image.new("RGB", (8000, 100))}))
    assert any(p.kind == "odd_size" and "wide" in p.path for p in problems)


# ---------------------------------------------------------------------------- masks


def test_mask_modes(tmp_path):
    m = np.array([[0, 1], [255, 3]], np.uint8)
    assert (load_mask(_save(mask_to_png(m), tmp_path / "p.png")) == m).all()
    assert (load_mask(_save(Image.fromarray(m), tmp_path / "l.png")) == m).all()
    assert (load_mask(_save(Image.fromarray(m.astype(np.uint16)), tmp_path / "ok16.png")) == m).all()
    with pytest.raises(DataError, match=r"big16\.png.*0\.\.255"):
        load_mask(_save(Image.fromarray(np.array([[0, 300]], np.uint16)), tmp_path / "big16.png"))
    with pytest.raises(DataError, match=r"colour\.png.*mode 'RGB'"):
        load_mask(_save(Image.fromarray(_rgb()), tmp_path / "colour.png"))


# ---------------------------------------------------------------------------- datasets


def _folder(root: Path, images: dict[str, Image.Image], labels: str | None = None, names=("cat", "dog")) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    for stem, im in images.items():
        _save(im, root / "images" / f"{stem}.{'png' if im.mode in ('RGBA', 'LA', 'P') else 'jpg'}")
    write_classes(root / "classes.txt", list(names))
    rows = labels if labels is not None else "".join(f"{s},cat\n" for s in images)
    (root / "labels.csv").write_text("image_id,labels\n" + rows)
    return root


def test_missing_image_in_split_file(tmp_path):
    root = _folder(tmp_path, {"a": Image.new("RGB", (8, 8))})
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("a\nlost_one\n")
    with pytest.raises(DataError, match=r"lost_one.*splits/train\.txt"):
        FolderDataset(root, "train")
    voc = tmp_path / "voc"
    (voc / "ImageSets/Segmentation").mkdir(parents=True)
    (voc / "JPEGImages").mkdir()
    (voc / "ImageSets/Segmentation/train.txt").write_text("2007_000001\n")
    with pytest.raises(DataError, match=r"2007_000001\.jpg.*train\.txt"):
        VOCDataset(voc, "train")


def test_label_csv_with_bom_crlf_unknown_class_and_duplicates(tmp_path):
    root = _folder(tmp_path, {"a": Image.new("RGB", (8, 8)), "b": Image.new("RGB", (8, 8))}, labels="")
    (root / "labels.csv").write_bytes("\ufeffimage_id,labels\r\na,cat dog\r\nb,\r\n".encode())
    ds = FolderDataset(root)
    assert [r.labels for r in ds.records] == [(0, 1), ()]
    (root / "labels.csv").write_text("image_id,labels\na,cat\nb,zebra\na,dog\n")
    with pytest.raises(DataError) as e:
        FolderDataset(root)
    msg = str(e.value)
    assert "labels.csv" in msg and "'zebra'" in msg and "line 3" in msg and "cat, dog" in msg
    assert "lines 2, 4" in msg


def test_non_utf8_file_name(tmp_path):
    root = _folder(tmp_path, {"ok": Image.new("RGB", (8, 8))})
    raw = os.path.join(os.fsencode(root / "images"), b"caf\xe9.jpg")
    try:
        with open(raw, "wb") as f:
            f.write(_jpeg_bytes(_rgb(8, 8)))
    except OSError:
        pytest.skip("this file system refuses non-UTF-8 names")
    with pytest.raises(DataError, match=r"caf\\xe9\.jpg"):
        FolderDataset(root)
    problems = check_dataset(root)
    assert any(p.kind == "non_utf8_name" and "caf\\xe9.jpg" in p.path for p in problems)
    format_problems(problems).encode("utf-8")  # printable


def test_empty_dataset(tmp_path):
    root = _folder(tmp_path, {})
    with pytest.raises(DataError, match="no usable image"):
        FolderDataset(root)
    assert [p.kind for p in check_dataset(root) if p.severity == ERROR] == ["empty_dataset"]


def test_check_lists_every_problem_in_one_pass(tmp_path):
    images = {
        "good": Image.fromarray(_rgb(16, 16)),
        "cmyk": Image.new("CMYK", (16, 16)),
        "rgba": Image.new("RGBA", (16, 16)),
        "gray": Image.new("L", (16, 16)),
        "nolabel": Image.new("RGB", (16, 16)),
    }
    rows = "good,cat\ncmyk,cat\nrgba,cat\ngray,cat zebra\ngood,cat\ntrunc,cat\nzero,cat\nfake,\nbadmask,\nbigmask,\n"
    root = _folder(tmp_path, images, labels=rows, names=("cat", "dog", "bird"))
    img = root / "images"
    (img / "trunc.jpg").write_bytes(_jpeg_bytes(_rgb(64, 64))[:300])
    (img / "zero.jpg").write_bytes(b"")
    _save(Image.fromarray(_rgb(16, 16)), img / "fake.jpg", format="PNG")
    _save(Image.fromarray(_rgb(16, 16)), img / "badmask.jpg")
    _save(Image.fromarray(_rgb(16, 16)), img / "bigmask.jpg")
    (root / "masks").mkdir()
    mask_to_png(np.zeros((10, 16), np.uint8)).save(root / "masks" / "badmask.png")  # wrong size
    mask_to_png(np.full((16, 16), 9, np.uint8)).save(root / "masks" / "bigmask.png")  # class 8 of 3
    (root / "splits").mkdir()
    (root / "splits" / "val.txt").write_text("good\nvanished\n")

    problems = check_dataset(root)
    kinds = {(p.kind, Path(p.path).name, p.severity) for p in problems}
    expected = {
        ("truncated_image", "trunc.jpg", ERROR),
        ("empty_file", "zero.jpg", ERROR),
        ("wrong_extension", "fake.jpg", WARNING),
        ("image_mode", "cmyk.jpg", WARNING),
        ("image_mode", "rgba.png", WARNING),
        ("image_mode", "gray.jpg", WARNING),
        ("mask_size", "badmask.png", ERROR),
        ("mask_values", "bigmask.png", ERROR),
        ("labels_unknown_class", "labels.csv", ERROR),
        ("labels_duplicate", "labels.csv", ERROR),
        ("no_labels", "nolabel.jpg", WARNING),
        ("missing_file", "vanished.jpg", ERROR),
        ("no_object", "fake.jpg", WARNING),
    }
    assert expected <= kinds, expected - kinds
    no_pos = {p.message for p in problems if p.kind == "class_without_images"}
    assert any("'dog'" in m for m in no_pos) and any("'bird'" in m for m in no_pos)
    assert not any("'cat'" in m for m in no_pos)
    table = format_problems(problems, root)
    assert table.splitlines()[0].startswith(f"{sum(p.severity == ERROR for p in problems)} error(s)")
    assert "trunc.jpg" in table and "fix:" in table
    # the loader refuses the same dataset, naming the first problems
    with pytest.raises(DataError, match="labels.csv"):
        FolderDataset(root)


def test_check_on_clean_synthetic_has_no_errors(synth_root):
    problems = check_dataset(synth_root)
    assert [p for p in problems if p.severity == ERROR] == []
    assert format_problems([]) == "no problems found"
