"""`weakseg data check` names files that belong to no image: warnings, errors under --strict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from weakseg.data.check import ERROR, WARNING, check_dataset
from weakseg.data.labels import write_classes
from weakseg.data.yolo import YOLODataset


def _image(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)


def _mask(path: Path, value: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16), value, np.uint8)).save(path)


def _orphans(problems) -> dict[str, str]:
    """``{file name: severity}`` of the orphan findings."""
    return {Path(p.path).name: p.severity for p in problems if p.kind.startswith("orphan")}


@pytest.fixture
def yolo_root(tmp_path: Path) -> Path:
    root = tmp_path / "yolo"
    write_classes(root / "classes.txt", ["a", "b"])
    for name in ("kept", "also"):
        _image(root / "images" / "train" / f"{name}.jpg")
        (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
        (root / "labels" / "train" / f"{name}.txt").write_text("0 0.1 0.1 0.9 0.1 0.5 0.9\n")
    (root / "labels" / "train" / "gone.txt").write_text("1 0.1 0.1 0.9 0.1 0.5 0.9\n")  # its image was deleted
    (root / "labels" / "val").mkdir()
    (root / "labels" / "val" / "kept.txt").write_text("0 0.2 0.2 0.8 0.2 0.5 0.8\n")  # kept.jpg is in train/ only
    return root


def test_yolo_label_files_without_images_are_warnings(yolo_root):
    problems = check_dataset(yolo_root)
    assert _orphans(problems) == {"gone.txt": WARNING, "kept.txt": WARNING}
    gone = next(p for p in problems if p.path.endswith("gone.txt"))
    assert gone.kind == "orphan_label" and "belongs to no image" in gone.message
    assert gone.path.endswith("labels/train/gone.txt")
    assert not any(p.severity == ERROR for p in problems)
    assert len(YOLODataset(yolo_root, "train")) == 2  # loading is not affected


def test_yolo_orphans_are_errors_under_strict(yolo_root):
    problems = check_dataset(yolo_root, strict=True)
    assert _orphans(problems) == {"gone.txt": ERROR, "kept.txt": ERROR}
    (yolo_root / "labels" / "train" / "gone.txt").unlink()
    (yolo_root / "labels" / "val" / "kept.txt").unlink()
    assert _orphans(check_dataset(yolo_root, strict=True)) == {}


def test_check_command_strict_exit_code(yolo_root):
    def check(*extra: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "weakseg", "data", "check", "--root", str(yolo_root), *extra]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    plain = check()
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "orphan_label" in plain.stdout and "gone.txt" in plain.stdout
    strict = check("--strict")
    assert strict.returncode == 1 and "2 error(s)" in strict.stdout


def test_folder_orphans_masks_scribbles_and_csv_rows(tmp_path):
    root = tmp_path / "folder"
    write_classes(root / "classes.txt", ["a", "b"])
    _image(root / "images" / "x.png")
    _mask(root / "masks" / "x.png")
    _mask(root / "masks" / "lost.png")
    _mask(root / "scribbles" / "lost2.png", 255)
    (root / "labels.csv").write_text("image_id,labels\nx,a\nghost,b\nghost2,\n")
    (root / "boxes.csv").write_text("image_id,x0,y0,x1,y1,class_name\nx,0,0,4,4,a\nphantom,0,0,4,4,b\n")
    problems = check_dataset(root)
    assert _orphans(problems) == {"lost.png": WARNING, "lost2.png": WARNING, "labels.csv": WARNING,
                                  "boxes.csv": WARNING}  # fmt: skip
    rows = next(p for p in problems if p.kind == "orphan_rows" and p.path.endswith("labels.csv"))
    assert "2 image id(s)" in rows.message and "'ghost'" in rows.message and "'ghost2'" in rows.message
    assert "'x'" not in rows.message
    assert "'phantom'" in next(p.message for p in problems if p.path.endswith("boxes.csv"))
    assert set(_orphans(check_dataset(root, strict=True)).values()) == {ERROR}


def test_voc_orphans_and_a_clean_dataset_has_none(tmp_path, synth_root):
    assert _orphans(check_dataset(synth_root, split="train")) == {}
    root = tmp_path / "voc"
    write_classes(root / "classes.txt", ["a"])
    _image(root / "JPEGImages" / "i1.jpg")
    _mask(root / "SegmentationClass" / "i1.png")
    _mask(root / "SegmentationClass" / "i2.png")
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("i1\n")
    (root / "cls_labels.csv").write_text("image_id,labels\ni1,a\ni3,a\n")
    problems = check_dataset(root)
    assert _orphans(problems) == {"i2.png": WARNING, "cls_labels.csv": WARNING}
    assert "'i3'" in next(p.message for p in problems if p.kind == "orphan_rows")
