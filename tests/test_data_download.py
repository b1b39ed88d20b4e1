"""Benchmark download: manual placement, safe extraction, count verification, offline instructions."""

from __future__ import annotations

import io
import tarfile
import urllib.error
import zipfile
from pathlib import Path

import pytest

from weakseg.data.download import ARCHIVES, download, safe_extract
from weakseg.errors import ConfigError, DataError

VOC_COUNTS = {"VOCdevkit/VOC2012/JPEGImages": 3, "VOCdevkit/VOC2012/SegmentationClass": 1}


def _tar(path: Path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def _zip(path: Path, files: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)


def _no_network(url: str, target: Path) -> None:
    raise urllib.error.URLError("no route to host")


def _place_voc(dest: Path) -> None:
    base = "VOCdevkit/VOC2012/"
    _tar(
        dest / "VOCtrainval_11-May-2012.tar",
        {
            base + "JPEGImages/a.jpg": b"x",
            base + "JPEGImages/b.jpg": b"x",
            base + "JPEGImages/c.jpg": b"x",
            base + "SegmentationClass/b.png": b"x",
            base + "ImageSets/Segmentation/val.txt": b"b\n",
        },
    )
    _zip(
        dest / "SegmentationClassAug.zip",
        {"SegmentationClassAug/a.png": b"x", "SegmentationClassAug/b.png": b"x", "__MACOSX/._a.png": b"x"},
    )


def test_offline_error_lists_archives_place_and_command(tmp_path):
    with pytest.raises(DataError) as e:
        download("voc", tmp_path / "data", fetch=_no_network)
    msg = str(e.value)
    for a in ARCHIVES["voc"]:
        assert a.filename in msg and a.url in msg
    assert str((tmp_path / "data").resolve()) in msg
    assert "weakseg data download --name voc" in msg
    with pytest.raises(DataError, match="annotations_trainval2014.zip"):
        download("coco", tmp_path / "c", fetch=_no_network)


def test_placed_archives_are_extracted_and_verified(tmp_path):
    _place_voc(tmp_path)
    root = download("voc", tmp_path, expected_counts=VOC_COUNTS, fetch=_no_network)
    assert root == tmp_path / "VOCdevkit/VOC2012"
    assert (root / "JPEGImages/a.jpg").is_file() and (root / "SegmentationClassAug/a.png").is_file()
    assert not (root / "__MACOSX").exists()
    assert (root / "ImageSets/Segmentation/train_aug.txt").read_text() == "a\n"  # aug ids minus val
    # a second run only re-verifies (no extraction, no network)
    (root / "JPEGImages/a.jpg").unlink()
    with pytest.raises(DataError, match=r"holds 2 files, expected 3"):
        download("voc", tmp_path, expected_counts=VOC_COUNTS, fetch=_no_network)


def test_count_check_uses_the_expected_counts(tmp_path):
    _place_voc(tmp_path)
    with pytest.raises(DataError, match=r"JPEGImages holds 3 files, expected 17,125"):
        download("voc", tmp_path, fetch=_no_network)


def test_fetch_is_used_for_missing_archives(tmp_path):
    calls = []

    def fake_fetch(url: str, target: Path) -> None:
        calls.append(url)
        src = tmp_path / "src"
        src.mkdir(exist_ok=True)
        _place_voc(src)
        target.write_bytes((src / target.name).read_bytes())

    download("voc", tmp_path / "d", expected_counts=VOC_COUNTS, fetch=fake_fetch)
    assert calls == [a.url for a in ARCHIVES["voc"]]


def test_unsafe_archives_are_refused(tmp_path):
    _tar(tmp_path / "evil.tar", {"ok.txt": b"1", "../escape.txt": b"2"})
    with pytest.raises(DataError, match=r"\.\./escape\.txt"):
        safe_extract(tmp_path / "evil.tar", tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()
    _zip(tmp_path / "evil.zip", {"/etc/passwd_copy": b"2"})
    with pytest.raises(DataError, match="outside"):
        safe_extract(tmp_path / "evil.zip", tmp_path / "out2")
    with tarfile.open(tmp_path / "link.tar", "w") as tf:
        info = tarfile.TarInfo("innocent")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(DataError, match="innocent"):
        safe_extract(tmp_path / "link.tar", tmp_path / "out3")
    (tmp_path / "junk.tar").write_bytes(b"not an archive")
    with pytest.raises(DataError, match="junk.tar"):
        safe_extract(tmp_path / "junk.tar", tmp_path / "out4")


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(ConfigError, match="coco, voc"):
        download("imagenet", tmp_path)
