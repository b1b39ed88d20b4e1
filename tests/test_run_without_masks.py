"""`weakseg run` on image-level labels alone (the normal WSSS case): no masks, or a few calibration masks."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from weakseg.data.registry import open_dataset
from weakseg.data.synthetic import SynthConfig, generate
from weakseg.engine.artifacts import is_done, load_json
from weakseg.engine.dense import DenseTrainConfig
from weakseg.errors import DataError
from weakseg.eval.metrics import segmentation_class_names
from weakseg.pipeline import RunConfig, run
from weakseg.refine.pseudo import BG_OFFSET, MASK_FREE_BG_THRESHOLD, choose_bg_threshold
from weakseg.stages.eval_cams import EvalCamsConfig, eval_cams
from weakseg.stages.eval_seg import EvalSegOptions
from weakseg.stages.make_cams import MakeCamsOptions
from weakseg.stages.train_cls import TrainClsOptions
from weakseg.stages.train_seg import TrainSegOptions

CLS = ("epochs=1", "input_size=48")


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    """A small synthetic VOC-layout dataset with masks (24 train / 8 val, 64 px)."""
    out = tmp_path_factory.mktemp("nomask") / "voc"
    return generate(SynthConfig(out=out, size="tiny", n_train=24, n_val=8, n_single=0, n_web=0, min_side=64,
                                max_side=64))  # fmt: skip


@pytest.fixture(scope="module")
def folder(voc: Path) -> Path:
    """The same images in the folder format with image-level labels only: images/, labels.csv, classes.txt, splits/."""
    root = voc.parent / "folder"
    (root / "images").mkdir(parents=True)
    (root / "splits").mkdir()
    for split in ("train", "val"):
        ids = (voc / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
        for i in ids:
            shutil.copy(voc / "JPEGImages" / f"{i}.jpg", root / "images" / f"{i}.jpg")
        (root / "splits" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    shutil.copy(voc / "cls_labels.csv", root / "labels.csv")
    shutil.copy(voc / "classes.txt", root / "classes.txt")
    assert not open_dataset(root, "train").has_masks
    return root


def _config(out: Path, data: Path) -> RunConfig:
    return RunConfig(
        out=out,
        data=data,
        method="cam",
        device="cpu",
        report_images=2,
        cls=TrainClsOptions(preset="tiny", backbone="tiny", set=CLS),
        cams=MakeCamsOptions(scales=(1.0,), flip=False),
        seg=TrainSegOptions(arch="tiny", pretrained=False, train=DenseTrainConfig(epochs=1), crop=64),
        eval_seg=EvalSegOptions(scales=(1.0,), flip=False),
    )


@pytest.fixture(scope="module")
def maskless_run(one_thread, folder: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "nomask"
    run(_config(out, folder))
    return out


def test_run_on_image_level_labels_alone_writes_a_segmenter(maskless_run, folder):
    out = maskless_run
    for stage in ("cls", "cams", "pseudo", "seg", "eval/seg"):
        assert is_done(out / stage), stage
    assert (out / "seg" / "model.safetensors").is_file()
    assert not (out / "eval" / "cams.json").exists()  # nothing to sweep
    summary = load_json(out / "summary.json")
    assert summary["seeds"]["miou"] is None and "no masks" in summary["seeds"]["skipped"]
    assert summary["pseudo"]["bg_threshold"] == MASK_FREE_BG_THRESHOLD
    assert summary["pseudo"]["bg_threshold_source"].startswith("mask-free default")
    assert summary["pseudo"]["miou"] is None and summary["pseudo"]["masks_read"] is None
    assert summary["segmenter"]["miou"] is None and "no masks" in summary["segmenter"]["note"]
    preds = sorted(p.stem for p in (out / "eval" / "seg" / "pred").glob("*.png"))
    assert preds == sorted(r.image_id for r in open_dataset(folder, "val").records)
    assert len(list((out / "pseudo").glob("*.png"))) == 24
    report = (out / "report.html").read_text()
    assert "mask-free default" in report and "<img" in report
    assert "Per-class IoU" not in report  # nothing was scored


def _calib_folder(voc: Path, dest: Path, n: int = 8) -> list[str]:
    ids = (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[::3][:n]
    dest.mkdir(parents=True, exist_ok=True)
    for i in ids:
        shutil.copy(voc / "SegmentationClass" / f"{i}.png", dest / f"{i}.png")
    return ids


def test_run_with_calibration_masks_tunes_the_threshold_on_them(folder, voc, tmp_path):
    calib = tmp_path / "calib"
    ids = _calib_folder(voc, calib)
    out = tmp_path / "calib-run"
    cmd = [sys.executable, "-m", "weakseg", "run", "--out", str(out), "--data", str(folder), "--method", "cam",
           "--device", "cpu", "--report-images", "1", "--cls.preset", "tiny", "--cls.backbone", "tiny",
           "--cls.set", *CLS, "--cams.scales", "1.0", "--cams.no-flip", "--seg.arch", "tiny", "--seg.no-pretrained",
           "--seg.train.epochs", "1", "--seg.crop", "64", "--eval-seg.scales", "1.0", "--eval-seg.no-flip",
           "--eval-cams.calib", str(calib)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    seeds = load_json(out / "eval" / "cams.json")
    assert seeds["mask_source"] == "calib" and seeds["images"] == 8 and sorted(seeds["mask_ids"]) == sorted(ids)
    assert "8 calibration masks" in seeds["masks_read"]
    summary = load_json(out / "summary.json")
    assert sorted(summary["seeds"]["mask_ids"]) == sorted(ids)
    expected = round(max(0.05, seeds["best_threshold"] - BG_OFFSET), 2)
    assert summary["pseudo"]["bg_threshold"] == expected
    assert summary["pseudo"]["bg_threshold_source"].startswith(f"tuned on 8 calibration masks of {calib}")
    assert is_done(out / "seg") and summary["segmenter"]["miou"] is None
    assert "8 calibration masks" in (out / "report.html").read_text()


def test_calibration_masks_must_name_images_of_the_split(maskless_run, folder, voc, tmp_path):
    calib = tmp_path / "calib"
    _calib_folder(voc, calib, n=2)
    (calib / "not_an_image.png").write_bytes((calib / next(calib.iterdir()).name).read_bytes())
    cfg = EvalCamsConfig(cams=maskless_run / "cams", data=folder, calib=calib)
    with pytest.raises(DataError, match="not_an_image.png.*name no image"):
        eval_cams(cfg)
    with pytest.raises(DataError, match="no masks.*--calib"):
        eval_cams(EvalCamsConfig(cams=maskless_run / "cams", data=folder))


def test_labels_csv_is_the_only_label_source(folder):
    """The fixture really is mask-free: labels come from labels.csv rows, one per image."""
    with open(folder / "labels.csv") as f:
        rows = list(csv.reader(f))[1:]
    ds = open_dataset(folder, "train")
    assert len(rows) == 32 and len(ds) == 24 and all(ds.load_mask(i) is None for i in range(len(ds)))
    assert len(segmentation_class_names(ds.class_names)) == 11


def test_choose_bg_threshold_says_where_it_came_from():
    sweep = {"best_threshold": 0.6, "best_miou": 0.5, "split": "train", "mask_source": "split"}
    assert choose_bg_threshold(None, sweep) == (0.45, "tuned on the train masks: the seed sweep's best 0.6 - 0.15")
    calib = {**sweep, "mask_source": "calib", "masks_read": "8 calibration masks of c/"}
    assert choose_bg_threshold(None, calib)[1].startswith("tuned on 8 calibration masks of c/")
    low = choose_bg_threshold(None, {**sweep, "best_threshold": 0.1})
    assert low[0] == 0.05 and low[1].endswith("(at least 0.05)")
    free = (MASK_FREE_BG_THRESHOLD, "mask-free default 0.45 (no masks to tune it on)")
    assert choose_bg_threshold(None, None) == free
    assert choose_bg_threshold(None, {"best_threshold": 0.6, "best_miou": None})[0] == MASK_FREE_BG_THRESHOLD
    assert choose_bg_threshold(0.3, sweep) == (0.3, "given (bg_threshold)")
