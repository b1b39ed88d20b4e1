"""report.html: legend, per-class CAMs, threshold sweep and loss plots, per-class IoU bars, masks read."""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from weakseg.data.palette import PALETTE, save_mask_png
from weakseg.data.voc import VOCDataset
from weakseg.engine.artifacts import save_json, save_npz
from weakseg.viz.report import read_scalars, svg_plot, write_report


def _write_tb(folder: Path, tags: dict[str, list[float]]) -> None:
    w = SummaryWriter(str(folder))
    for tag, values in tags.items():
        for step, v in enumerate(values):
            w.add_scalar(tag, v, step)
    w.close()


def _fake_run(run: Path, data: Path, zero_cams: bool = False) -> VOCDataset:
    """A run folder as the stages leave it: CAMs, pseudo labels, evaluations, tensorboard logs."""
    train, val = VOCDataset(data, "train"), VOCDataset(data, "val")
    for i, rec in enumerate(train.records):
        gt = train.load_mask(i)
        cams = np.stack([(gt == c + 1).astype(np.float32) * (0 if zero_cams else 1) for c in rec.labels])
        save_npz(run / "cams" / f"{rec.image_id}.npz", cams=cams.astype(np.float16),
                 classes=np.asarray(rec.labels, np.int16))  # fmt: skip
        save_mask_png(run / "pseudo" / f"{rec.image_id}.png", gt)
    for i, rec in enumerate(val.records):
        save_mask_png(run / "eval" / "seg" / "pred" / f"{rec.image_id}.png", val.load_mask(i))
    names = ["background", *train.class_names]
    per_class = {n: {"iou": 0.5 + 0.04 * k, "precision": 0.6, "recall": 0.7} for k, n in enumerate(names)}
    metrics = {"miou": 0.61, "mean_precision": 0.6, "mean_recall": 0.7, "per_class": per_class}
    save_json(run / "eval" / "cams.json", {
        "per_threshold": {f"{t:g}": 0.3 + 0.2 * t - 0.2 * t * t for t in np.arange(0.05, 1.0, 0.05).round(2)},
        "best_threshold": 0.5, "best_miou": 0.35, "metrics": metrics, "split": "train", "mask_source": "calib",
        "masks_read": "8 calibration masks of /somewhere/calib", "mask_ids": ["a"],
    })  # fmt: skip
    save_json(run / "pseudo" / "metrics.json", {**metrics, "ignored_fraction": 0.05, "scored": {"miou": 0.7},
              "bg_threshold": 0.35, "bg_threshold_source": "tuned on 8 calibration masks of /somewhere/calib",
              "masks_read": None})  # fmt: skip
    save_json(run / "eval" / "seg" / "metrics.json", {**metrics, "split": "val",
              "masks_read": "ground-truth masks of split 'val'"})  # fmt: skip
    save_json(run / "summary.json", {"task": "tags", "supervision": "image-level labels", "method": "cam",
                                     "timings_s": {"cls": 3.0, "seg": 2.0}})  # fmt: skip
    _write_tb(run / "cls" / "tb", {"train/loss": [0.7, 0.5, 0.4, 0.3], "train/lr": [0.1] * 4})
    _write_tb(run / "seg" / "tb", {"train/loss": [2.0, 1.0, 0.8]})
    return train


@pytest.fixture(scope="module")
def report(synth_root, tmp_path_factory) -> tuple[str, VOCDataset]:
    run = tmp_path_factory.mktemp("report") / "run"
    train = _fake_run(run, synth_root)
    return write_report(run, synth_root, n_images=3).read_text(), train


def test_legend_names_every_class_with_its_palette_colour(report):
    text, train = report
    legend = text[text.index("<h2>Classes</h2>") : text.index("<h2>mIoU")]
    for c, name in enumerate(["background", *train.class_names]):
        colour = "#{:02x}{:02x}{:02x}".format(*PALETTE[c])
        assert f"background:{colour}'></span>{name}<" in legend, name
    assert "ignore (255)" in legend and "CAM 0" in legend


def test_gallery_shows_one_cam_per_labelled_class(report):
    text, train = report
    gallery = text[text.index("Gallery: train") : text.index("Gallery: val")]
    rows = gallery.split("<div class='row'>")[1:]
    assert len(rows) == 3
    for i, row in zip((0, 20, 39), rows, strict=True):  # _pick(40, 3)
        labels = [train.class_names[c] for c in train[i].labels]
        assert re.findall(r"CAM ([a-z]+)<", row) == labels
        assert row.count("<img") == 1 + len(labels) + 2  # image, CAMs, pseudo label, ground truth
    assert "Every CAM shown is zero" not in text


def test_plots_bars_and_masks_read(report):
    text, _ = report
    plots = text[text.index("<h2>Plots</h2>") : text.index("<h2>Per-class IoU")]
    assert plots.count("<svg") == 3 and plots.count("<polyline") == 3
    assert "Seed mIoU vs background threshold" in plots and "best 0.5" in plots and "pseudo bg 0.35" in plots
    assert "Classifier training loss" in plots and "Segmenter training loss" in plots
    bars = text[text.index("<h2>Per-class IoU") :]
    assert bars.count("class='bar' style='width:75px") == 3  # background 0.5 x 150 px, in the three stages
    table = html.unescape(text[text.index("<h2>mIoU per stage") : text.index("<h2>Plots")])
    assert "8 calibration masks of /somewhere/calib" in table and "ground-truth masks of split 'val'" in table
    assert "<td class='l w'>none</td>" in table  # the pseudo labels read no masks
    assert "tuned on 8 calibration masks" in text


def test_zero_cams_are_flagged(synth_root, tmp_path):
    _fake_run(tmp_path / "run", synth_root, zero_cams=True)
    assert "Every CAM shown is zero" in write_report(tmp_path / "run", synth_root, n_images=2).read_text()


def test_read_scalars_and_svg_plot(tmp_path):
    _write_tb(tmp_path / "tb", {"train/loss": [3.0, 2.0, 1.0], "train/grad_norm": [1.0] * 3})
    assert read_scalars(tmp_path / "tb") == {"train/loss": [(0, 3.0), (1, 2.0), (2, 1.0)]}
    assert read_scalars(tmp_path / "absent") == {}
    svg = svg_plot({"a": [(0, 0), (10, 1)]}, "t", "x", "y", width=200, height=100, ylim=(0, 1))
    # plot box: x 48..188, y 26..64; (0, 0) is its bottom-left corner and (10, 1) its top-right one
    assert "points='48.0,64.0 188.0,26.0'" in svg
    assert svg_plot({}, "t", "x", "y") == ""
