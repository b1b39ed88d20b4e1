"""Segmenters: every architecture at 64x64, transforms, the loss, a tiny training + evaluation, prediction."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from weakseg.errors import ConfigError
from weakseg.seg.models import SEGMENTERS, create_segmenter

COCO_IMAGES = Path(__file__).resolve().parents[2] / "shared/data/coco128-seg/images"


@pytest.mark.parametrize("arch", sorted(SEGMENTERS))
def test_forward_shapes_every_arch(arch):
    torch.manual_seed(0)
    model = create_segmenter(arch, num_classes=4, encoder_weights=None)
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 64)).shape == (2, 4, 64, 64)
        # any size: padded to the stride inside, logits cropped back to the input
        assert model(torch.rand(1, 3, 50, 37)).shape == (1, 4, 50, 37)
    model.train()
    out = model(torch.rand(2, 3, 64, 64))
    out.mean().backward()
    enc, dec = model.param_groups()
    assert enc and dec
    assert all(p.grad is not None for p in dec)


def test_unknown_arch_lists_names():
    with pytest.raises(ConfigError, match="deeplabv3plus, largefov, tiny"):
        create_segmenter("unet9000", 3)


def test_deeplabv3plus_encoder_gets_imagenet_weights():
    random_init = create_segmenter("deeplabv3plus", 3, encoder_weights=None)
    pretrained = create_segmenter("deeplabv3plus", 3, encoder_weights="imagenet")
    a = random_init.net.encoder.model.conv_stem.weight
    b = pretrained.net.encoder.model.conv_stem.weight
    assert not torch.allclose(a, b)
    # ImageNet BatchNorm statistics are not the fresh (0, 1) ones
    assert not torch.allclose(pretrained.net.encoder.model.bn1.running_var, torch.ones(32))


def test_encoder_weights_from_a_user_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    src = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    path = tmp_path / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    for arch in ("deeplabv3plus", "largefov"):
        model = create_segmenter(arch, 3, encoder_weights=path)
        stem = model.net.encoder.model.conv_stem if arch == "deeplabv3plus" else model.net.backbone.net.conv_stem
        torch.testing.assert_close(stem.weight, src.conv_stem.weight)
    with pytest.raises(ConfigError):
        create_segmenter("deeplabv3plus", 3, encoder_weights=tmp_path / "missing.safetensors")


def test_segmenter_save_load_roundtrip(tmp_path):
    from weakseg.seg.models import SegmenterInfo, load_segmenter, save_segmenter

    model = create_segmenter("tiny", 3).eval()
    save_segmenter(tmp_path, model, SegmenterInfo("tiny", 3, ("background", "a", "b")))
    loaded, info = load_segmenter(tmp_path)
    assert info.class_names == ("background", "a", "b")
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_train_transform_pads_masks_with_ignore():
    from weakseg.data.joint_transforms import apply_joint, train_transform

    random.seed(0)
    torch.manual_seed(0)
    image = np.zeros((40, 30, 3), np.uint8)
    image[10:20, 5:15] = 200
    mask = np.zeros((40, 30), np.uint8)
    mask[10:20, 5:15] = 3
    t = train_transform(64, scale_range=(1.0, 1.0), flip=False)
    img, m = apply_joint(t, image, mask)
    assert img.shape == (3, 64, 64) and img.dtype == torch.float32 and float(img.max()) <= 1.0
    assert m.shape == (64, 64) and m.dtype == torch.int64
    assert (m == 255).sum() == 64 * 64 - 40 * 30  # everything outside the image is ignore
    assert set(torch.unique(m).tolist()) == {0, 3, 255}
    # image and mask moved together: the bright pixels are exactly the class-3 pixels
    assert torch.equal(img[0] > 0.5, m == 3)


def test_train_transform_scales_jointly():
    from weakseg.data.joint_transforms import apply_joint, train_transform

    image = np.zeros((32, 32, 3), np.uint8)
    image[:16] = 255
    mask = np.zeros((32, 32), np.uint8)
    mask[:16] = 1
    for seed in range(5):
        random.seed(seed)
        torch.manual_seed(seed)
        img, m = apply_joint(train_transform(48, scale_range=(0.5, 2.0)), image, mask)
        valid = m != 255
        # nearest-neighbour mask vs bilinear image: they agree away from the edge between halves
        agree = (img[0] > 0.5) == (m == 1)
        assert agree[valid].float().mean() > 0.9
        assert set(torch.unique(m).tolist()) <= {0, 1, 255}


def test_seg_loss_ignores_255():
    from weakseg.losses import partial_cross_entropy as seg_loss

    logits = torch.zeros(1, 3, 1, 2)
    logits[0, 1, 0, 0] = 10.0  # pixel 0: confident class 1
    target = torch.tensor([[[1, 255]]])
    loss = seg_loss(logits, target)
    expected = torch.nn.functional.cross_entropy(logits[..., :1], target[..., :1])
    torch.testing.assert_close(loss, expected)
    # the ignored pixel's logits get no gradient
    logits.requires_grad_(True)
    seg_loss(logits, target).backward()
    assert torch.all(logits.grad[..., 1] == 0) and torch.any(logits.grad[..., 0] != 0)
    # all pixels ignored: zero, not NaN
    assert seg_loss(torch.randn(2, 3, 4, 4), torch.full((2, 4, 4), 255)).item() == 0.0


def test_tiny_train_and_eval(synth_root, tmp_path):
    from weakseg.engine.artifacts import is_done, load_json
    from weakseg.engine.dense import DenseTrainConfig
    from weakseg.stages.eval_seg import EvalSegConfig, eval_seg
    from weakseg.stages.train_seg import TrainSegConfig, train_seg

    out = tmp_path / "seg"
    cfg = TrainSegConfig(
        data=synth_root, out=out, supervision="full", arch="tiny", train=DenseTrainConfig(epochs=1, batch_size=8),
        crop=64, device="cpu",
    )  # fmt: skip
    assert train_seg(cfg) == out
    assert is_done(out) and (out / "model.safetensors").is_file()
    assert (out / "DONE").stat().st_mtime_ns >= (out / "model.safetensors").stat().st_mtime_ns
    meta = load_json(out / "config.json")
    assert meta["stage"] == "train-seg" and meta["arch"] == "tiny" and meta["num_classes"] == 11
    assert meta["record"]["supervision"] == "full" and meta["record"]["train"]["epochs"] == 1
    assert any((out / "tb").iterdir())
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    assert train_seg(cfg) == out and (out / "model.safetensors").stat().st_mtime_ns == mtime  # complete: skipped

    res = eval_seg(EvalSegConfig(seg_dir=out, data=synth_root, out=tmp_path / "eval", split="val", device="cpu"))
    assert res["per_class"] and list(res["per_class"])[0] == "background"
    assert 0.0 <= res["miou"] <= 1.0
    assert "mean" in res["table"]
    assert load_json(tmp_path / "eval" / "metrics.json")["miou"] == res["miou"]
    assert res["scales"] == [1.0, 1.5] and res["flip"]  # the default test-time views
    preds = sorted((tmp_path / "eval" / "pred").glob("*.png"))
    assert len(preds) == res["num_images"] == 16


def test_train_on_pseudo_labels_and_resume(synth_root, tmp_path):
    """supervision=pseudo reads the label PNGs; an interrupted run resumes from its saved epoch."""
    from weakseg.data.palette import save_mask_png
    from weakseg.data.registry import open_dataset
    from weakseg.engine.artifacts import load_json, mark_done
    from weakseg.engine.dense import DenseTrainConfig
    from weakseg.errors import DataError
    from weakseg.stages.train_seg import TrainSegConfig, train_seg

    ds = open_dataset(synth_root, "train")
    labels = tmp_path / "pseudo"
    for i, rec in enumerate(ds.records):
        save_mask_png(labels / f"{rec.image_id}.png", ds.load_mask(i))
    cfg = TrainSegConfig(
        data=synth_root, out=tmp_path / "seg", labels=labels, arch="tiny", train=DenseTrainConfig(epochs=2), crop=48
    )
    with pytest.raises(DataError, match="DONE"):
        train_seg(cfg)  # the pseudo stage is not complete
    mark_done(labels)
    from dataclasses import replace

    train_seg(replace(cfg, train=DenseTrainConfig(epochs=1)))
    with pytest.raises(ConfigError, match=r"another configuration \(differs in: train\.epochs\)"):
        train_seg(cfg)
    # an interrupted 2-epoch run: state after epoch 1, no DONE -> the rerun trains epoch 2 only
    out2 = tmp_path / "seg2"
    train_seg(replace(cfg, out=out2))
    (out2 / "DONE").unlink()
    state = load_json(out2 / "state" / "train_state.json")
    state["progress"]["epoch"] = 1
    from weakseg.engine.artifacts import save_json

    save_json(out2 / "state" / "train_state.json", state)
    train_seg(replace(cfg, out=out2))
    assert load_json(out2 / "state" / "train_state.json")["progress"]["epoch"] == 2
    assert (out2 / "DONE").is_file()


def test_predict_masks_scales_and_flip():
    from weakseg.seg.predict import predict_masks

    torch.manual_seed(0)
    model = create_segmenter("tiny", 3).eval()
    image = np.random.default_rng(0).integers(0, 255, (45, 61, 3), dtype=np.uint8)
    probs, mask = predict_masks(model, image, scales=(0.5, 1.0, 1.5), flip=True)
    assert probs.shape == (3, 45, 61) and mask.shape == (45, 61) and mask.dtype == np.uint8
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(mask, probs.argmax(0))
    # flip averaging makes the prediction of a mirrored image the mirror of the prediction
    p1, _ = predict_masks(model, image, flip=True)
    p2, _ = predict_masks(model, np.ascontiguousarray(image[:, ::-1]), flip=True)
    np.testing.assert_allclose(p1, p2[:, :, ::-1], atol=1e-5)


def test_predict_on_a_real_photo(tmp_path):
    if not COCO_IMAGES.is_dir():
        pytest.skip(f"{COCO_IMAGES} not present")
    from PIL import Image

    from weakseg.data.images import load_rgb
    from weakseg.seg.models import SegmenterInfo, save_segmenter
    from weakseg.stages.predict import PredictConfig, predict_images

    photo = sorted(COCO_IMAGES.glob("*.jpg"))[0]
    seg_dir = tmp_path / "seg"
    save_segmenter(seg_dir, create_segmenter("tiny", 3), SegmenterInfo("tiny", 3, ("background", "a", "b")))
    written = predict_images(PredictConfig(seg_dir=seg_dir, images=(photo,), out=tmp_path / "pred", device="cpu"))
    assert written == [tmp_path / "pred" / f"{photo.stem}.png"]
    h, w = load_rgb(photo).shape[:2]
    with Image.open(written[0]) as m:
        assert m.mode == "P" and m.size == (w, h)
        assert np.asarray(m).max() < 3
    with Image.open(tmp_path / "pred" / f"{photo.stem}_overlay.png") as o:
        assert o.size == (w, h) and o.mode == "RGB"
