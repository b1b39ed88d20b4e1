"""CAM math (normalisation, view fusion), seeds, and the train-cls → make-cams → eval-cams stages end to end."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from weakseg.cams.cam import View, apply_view, average_normalized, fuse_views, make_views, normalize_cams, undo_view
from weakseg.cams.seeds import seeds_from_cams
from weakseg.data.registry import open_dataset
from weakseg.engine.artifacts import is_done, load_json, load_npz
from weakseg.errors import ConfigError
from weakseg.methods.cam import CamMethod
from weakseg.stages.eval_cams import EvalCamsConfig, eval_cams
from weakseg.stages.make_cams import MakeCamsConfig, make_cams
from weakseg.stages.train_cls import TrainClsConfig, load_classifier, train_cls

pytestmark = pytest.mark.usefixtures("one_thread")


def test_normalize_cams_by_hand():
    cams = torch.tensor([[[-1.0, 2.0], [4.0, 1.0]], [[-3.0, -1.0], [0.0, -2.0]]])
    out = normalize_cams(cams)
    torch.testing.assert_close(out[0], torch.tensor([[0.0, 0.5], [1.0, 0.25]]), atol=1e-4, rtol=1e-4)
    assert torch.equal(out[1], torch.zeros(2, 2))  # nowhere positive: stays zero, no NaN
    batched = normalize_cams(cams[None].repeat(3, 1, 1, 1))
    torch.testing.assert_close(batched[2], out)


def test_views_and_fusion():
    assert make_views((1.0, 0.5), True) == [View(1.0), View(0.5), View(1.0, True), View(0.5, True)]
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    assert apply_view(x, View(0.5, True), 32).shape == (2, 3, 16, 16)
    sq = torch.rand(2, 3, 8, 8)
    assert torch.equal(apply_view(sq, View(1.0, True), 8), sq.flip(-1))
    m = torch.zeros(1, 4, 4)
    m[0, 1, 0] = 2.0  # left side
    flipped = m.flip(-1)
    fused = fuse_views([m, flipped, -m], [False, True, False], (4, 4))
    torch.testing.assert_close(fused, 2 * m)  # flip undone; negative map removed by the ReLU
    assert undo_view(m[None], False, (8, 8)).shape == (1, 1, 8, 8)
    avg = average_normalized([m, 4 * m, torch.zeros(1, 4, 4)])
    torch.testing.assert_close(avg.amax(), torch.tensor(1.0), atol=1e-4, rtol=0)


def test_seeds_from_cams():
    cams = np.array([[[0.9, 0.2], [0.1, 0.5]], [[0.3, 0.8], [0.05, 0.5]]], np.float16)
    seeds = seeds_from_cams(cams, np.array([4, 1]), 0.25)
    assert seeds.tolist() == [[5, 2], [0, 5]]  # tie 0.5/0.5 → the first class; 0.1 < t → background
    assert seeds_from_cams(np.zeros((0, 2, 3)), np.zeros(0), 0.1).tolist() == [[0, 0, 0]] * 2


def _cls_cfg(root, out, method, *overrides, **kw):
    return TrainClsConfig(
        data=root, out=out, method=method, backbone="tiny", preset="tiny", set=overrides, device="cpu", **kw
    )


@pytest.fixture(scope="module")
def trained(synth_root, tmp_path_factory):
    """cam and mcis classifiers trained for 1 epoch with the tiny preset (seconds)."""
    base = tmp_path_factory.mktemp("cls")
    return {m: train_cls(_cls_cfg(synth_root, base / m, m, "epochs=1", "batch_size=8")) for m in ("cam", "mcis")}


def test_train_cls_outputs(trained, synth_dataset):
    for method, out in trained.items():
        assert is_done(out) and (out / "model.safetensors").is_file() and any((out / "tb").iterdir())
        meta = load_json(out / "config.json")
        rec = meta["record"]
        assert meta["stage"] == "train-cls" and meta["preset"] == "tiny"
        assert meta["num_classes"] == synth_dataset.num_classes and meta["images"] == len(synth_dataset)
        assert rec["method"] == method and rec["class_names"] == list(synth_dataset.class_names)
        assert rec["method_config"]["input_size"] == 64 and rec["method_config"]["epochs"] == 1  # preset + --set
        assert rec["method_config"]["batch_size"] == 8 and rec["backbone"] == "tiny" and "extra" not in rec
        net, m, meta2 = load_classifier(out)
        assert net.num_classes == synth_dataset.num_classes and not net.training
        assert m.name == method and m.cfg.epochs == 1 and meta2 == meta


@pytest.mark.parametrize("method", ["cam", "mcis"])
def test_make_and_eval_cams(trained, synth_root, tmp_path, method):
    cfg = MakeCamsConfig(
        cls_dir=trained[method], data=synth_root, out=tmp_path / "cams", split="val", scales=(1.0, 0.5),
        set=("test_partners=2",) if method == "mcis" else (),
        device="cpu",
    )  # fmt: skip
    make_cams(cfg)
    assert is_done(cfg.out)
    record = load_json(cfg.out / "config.json")["record"]
    assert record["method"] == method and record["scales"] == [1.0, 0.5]
    if method == "mcis":  # --set reaches the method's prediction options (the tiny preset has 1 partner)
        assert record["method_config"]["test_partners"] == 2
    else:
        with pytest.raises(ConfigError, match="no option 'test_partners'"):
            make_cams(dataclasses.replace(cfg, out=tmp_path / "x", set=("test_partners=2",)))
    val = open_dataset(synth_root, "val")
    for i, rec in enumerate(val.records):
        z = load_npz(cfg.out / f"{rec.image_id}.npz")
        h, w = val.load_image(i).shape[:2]
        assert z["cams"].dtype == np.float16 and z["cams"].shape == (len(rec.labels), h, w)
        assert z["classes"].dtype == np.int16 and z["classes"].tolist() == list(rec.labels)
        assert 0 <= z["cams"].min() and z["cams"].max() <= 1
    res = eval_cams(
        EvalCamsConfig(cams=cfg.out, data=synth_root, split="val", thresholds=(0.1, 0.3), out=tmp_path / "e.json")
    )
    assert set(res["per_threshold"]) == {"0.1", "0.3"} and res["best_threshold"] in (0.1, 0.3)
    assert res["best_miou"] == max(res["per_threshold"].values())
    assert res["metrics"]["per_class"].keys() == {"background", *val.class_names}
    assert load_json(tmp_path / "e.json")["best_miou"] == res["best_miou"]


def val_labels(root, image_id):
    val = open_dataset(root, "val")
    return next(r.labels for r in val.records if r.image_id == image_id)


def test_make_cams_resumes_and_handles_empty_labels(trained, synth_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    csv = root / "cls_labels.csv"
    val_ids = (root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    first, second = val_ids[:2]
    rows = [f"{first}," if line.startswith(f"{first},") else line for line in csv.read_text().splitlines()]
    csv.write_text("\n".join(rows) + "\n")  # the first val image now has no labels
    out = tmp_path / "cams"
    cfg = MakeCamsConfig(
        cls_dir=trained["mcis"], data=root, out=out, split="val", scales=(1.0,), flip=False, device="cpu"
    )
    out.mkdir()
    (out / "stray.txt").write_text("x")
    with pytest.raises(ConfigError, match="holds no config.json"):  # never writes into a folder it did not make
        make_cams(cfg)
    (out / "stray.txt").unlink()
    make_cams(cfg)
    assert load_npz(out / f"{first}.npz")["cams"].shape[0] == 0
    # an interrupted run: no DONE, one file missing, one "already written"
    from weakseg.engine.artifacts import save_npz

    (out / "DONE").unlink()
    (out / f"{first}.npz").unlink()
    sentinel = np.full((1, 2, 2), 0.5, np.float16)
    save_npz(out / f"{second}.npz", cams=sentinel, classes=np.zeros(1, np.int16))
    make_cams(cfg)
    assert is_done(out) and load_npz(out / f"{first}.npz")["cams"].shape[0] == 0
    assert np.array_equal(load_npz(out / f"{second}.npz")["cams"], sentinel)  # skipped, not recomputed
    mtime = (out / f"{first}.npz").stat().st_mtime_ns
    make_cams(cfg)  # DONE: nothing rewritten
    assert (out / f"{first}.npz").stat().st_mtime_ns == mtime
    # other scales or method options: refused, or rebuilt with overwrite
    for other in (dataclasses.replace(cfg, scales=(1.0, 0.5)), dataclasses.replace(cfg, set=("test_partners=0",))):
        with pytest.raises(ConfigError, match="another configuration"):
            make_cams(other)
    make_cams(dataclasses.replace(cfg, set=("test_partners=0",), overwrite=True))
    assert is_done(out) and load_npz(out / f"{second}.npz")["cams"].shape[0] == len(val_labels(root, second))
    assert load_json(out / "config.json")["record"]["method_config"]["test_partners"] == 0


def test_train_cls_resume_skips_finished_epochs(trained, synth_root, monkeypatch, caplog):
    out = trained["cam"]
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    assert train_cls(_cls_cfg(synth_root, out, "cam", "epochs=1", "batch_size=8")) == out  # DONE: skipped
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime
    (out / "DONE").unlink()
    calls = []
    orig = CamMethod.step
    monkeypatch.setattr(CamMethod, "step", lambda self, *a: calls.append(1) or orig(self, *a))
    with caplog.at_level("INFO"):
        train_cls(_cls_cfg(synth_root, out, "cam", "epochs=1", "batch_size=8"))
    assert calls == [] and is_done(out) and "resuming from epoch 1" in caplog.text
    # one more epoch: only the new one runs (no DONE to remove: more epochs extend a complete run)
    train_cls(_cls_cfg(synth_root, out, "cam", "epochs=2", "batch_size=8"))
    assert len(calls) == 5 and is_done(out)  # 40 images / 8 per step, epoch 2 only
    assert load_json(out / "config.json")["record"]["method_config"]["epochs"] == 2
    # other hyper-parameters in the same folder are refused, naming what differs
    with pytest.raises(ConfigError, match=r"another configuration \(differs in: method_config\.input_size\)"):
        train_cls(_cls_cfg(synth_root, out, "cam", "epochs=2", "batch_size=8", "input_size=48"))
    assert is_done(out) and len(calls) == 5


def test_checkpoint_mismatch_is_a_clear_error(trained, tmp_path):
    bad = tmp_path / "cls"
    shutil.copytree(trained["cam"], bad)
    meta = load_json(bad / "config.json")
    meta["record"]["class_names"] = meta["record"]["class_names"][:3]  # a 3-class network
    (bad / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="does not match"):
        load_classifier(bad)
    (bad / "config.json").write_text(json.dumps({"method": "cam", "hparams": {}}))  # an older version's config
    with pytest.raises(ConfigError, match="retrain"):
        load_classifier(bad)
    with pytest.raises(ConfigError, match="no trained classifier"):
        load_classifier(tmp_path / "nothing")


def test_extra_data_folder_must_exist(synth_root, tmp_path):
    # extra data itself is tested in test_extra.py
    with pytest.raises(ConfigError, match="folder not found"):
        train_cls(_cls_cfg(synth_root, tmp_path / "x", "mcis", "extra=web:/x"))


def test_cam_grid(trained, synth_root, tmp_path):
    from PIL import Image

    from weakseg.viz.overlay import cam_overlay, render_cam_grid

    cfg = MakeCamsConfig(
        cls_dir=trained["cam"], data=synth_root, out=tmp_path / "c", split="val", scales=(1.0,), device="cpu"
    )
    png = render_cam_grid(make_cams(cfg), synth_root, "val", tmp_path / "grid.png", n=3)
    im = Image.open(png)
    assert im.height == 3 * 128 and im.width > 3 * 128
    img = np.zeros((4, 4, 3), np.uint8)
    hot = cam_overlay(img, np.ones((2, 2)))
    assert hot.shape == (4, 4, 3) and hot[..., 0].min() > 0 and hot[..., 2].max() == 0  # 1.0 → red
