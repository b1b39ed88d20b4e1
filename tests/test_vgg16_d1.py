"""The VGG-16 "D1" backbone (MCIS reference): strides, the reference's layout, torchvision weights, paper preset."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weakseg.backbones import BACKBONES, create_backbone
from weakseg.backbones.vgg import TORCHVISION_FILE, make_vgg16_features
from weakseg.cams.cam import make_views
from weakseg.errors import ConfigError
from weakseg.methods import create_method
from weakseg.methods.base import LoaderContext

pytestmark = pytest.mark.usefixtures("one_thread")


def _features_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in torchvision's vgg16 layout (features.* plus a stand-in classifier tensor), random values."""
    torch.manual_seed(seed)
    feats, _ = make_vgg16_features(32)
    for m in feats.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.05)
            nn.init.normal_(m.bias, std=0.1)
    state = {f"features.{k}": v for k, v in feats.state_dict().items()}
    return {**state, "classifier.6.weight": torch.zeros(1000, 4)}


@pytest.mark.parametrize("stride", [8, 16, 32])
def test_output_stride(stride):
    assert "vgg16-d1" in BACKBONES
    bb = create_backbone("vgg16-d1", output_stride=stride, pretrained=False).eval()
    with torch.no_grad():
        y = bb(torch.rand(2, 3, 64, 96))
    assert y.shape == (2, 512, 64 // stride, 96 // stride) and bb.out_channels == 512


def test_layout_is_the_references_d1():
    """cfg 'D1' of Classifier/models/vgg.py: pool4 is a 3×3 stride-1 pool, conv5 dilated by 2, no pool5."""
    feats, blocks = make_vgg16_features(8)
    assert len(feats) == 30  # torchvision's 31 layers without pool5
    pool4 = feats[23]
    assert isinstance(pool4, nn.MaxPool2d) and (pool4.kernel_size, pool4.stride, pool4.padding) == (3, 1, 1)
    for i in (24, 26, 28):
        assert feats[i].dilation == (2, 2) and feats[i].padding == (2, 2)
    assert all(feats[i].dilation == (1, 1) for b in blocks[:4] for i in b)
    assert blocks == [[0, 2], [5, 7], [10, 12, 14], [17, 19, 21], [24, 26, 28]]


def test_stride32_equals_torchvision_vgg16(tmp_path):
    """With torchvision's weights file the stride-32 network is torchvision's vgg16().features on [0,1] inputs."""
    torchvision = pytest.importorskip("torchvision")
    state = _features_state()
    path = tmp_path / TORCHVISION_FILE
    torch.save(state, path)
    bb = create_backbone("vgg16-d1", weights=path, output_stride=32).eval()
    vgg = torchvision.models.vgg
    ref = vgg.make_layers(vgg.cfgs["D"]).eval()  # torchvision's vgg16().features, without building its classifier
    ref.load_state_dict({k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")})
    x = torch.rand(1, 3, 64, 64)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(bb(x), ref((x - mean) / std))


def test_weights_file_loads_and_errors_name_the_file(tmp_path, monkeypatch):
    path = tmp_path / TORCHVISION_FILE
    state = _features_state(1)
    torch.save(state, path)
    bb = create_backbone("vgg16-d1", weights=path, output_stride=8)
    assert torch.equal(bb.vgg[28].weight, state["features.28.weight"])
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(ConfigError, match=f"{TORCHVISION_FILE}.*--weights"):
        create_backbone("vgg16-d1", output_stride=8)  # pretrained, no file given, none in torchvision's cache
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / TORCHVISION_FILE)
    cached = create_backbone("vgg16-d1", output_stride=8)  # found in torchvision's cache
    assert torch.equal(cached.vgg[0].weight, state["features.0.weight"])
    bad = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(3, 3, 3, 3)}, bad)
    with pytest.raises(ConfigError, match="not a torchvision VGG-16"):
        create_backbone("vgg16-d1", weights=bad, output_stride=8)
    with pytest.raises(ConfigError, match="output_stride"):
        create_backbone("vgg16-d1", output_stride=4, pretrained=False)


def test_freeze_early():
    bb = create_backbone("vgg16-d1", output_stride=8, pretrained=False)
    bb.freeze_early(2)
    frozen = {n for n, p in bb.named_parameters() if not p.requires_grad}
    assert frozen == {f"vgg.{i}.{w}" for i in (0, 2, 5, 7) for w in ("weight", "bias")}
    with pytest.raises(ConfigError, match="frozen_stages"):
        bb.freeze_early(6)


@pytest.mark.parametrize("method_name", ["mcis", "cam"])
def test_paper_preset_runs_on_vgg16_d1(method_name, synth_dataset):
    """--preset paper on vgg16-d1 (random weights, 32-px inputs): a training step and the CAMs (official fusion)."""
    torch.manual_seed(0)
    method = create_method(method_name, "paper", ("input_size=32", "batch_size=2"))
    cfg = method.cfg
    assert (cfg.output_stride, cfg.head_depth, cfg.head_kernel, cfg.head_channels) == (8, 3, 3, 512)
    backbone = create_backbone("vgg16-d1", None, cfg.output_stride, pretrained=False)
    net = method.build(backbone, synth_dataset.num_classes)
    make_loader, _ = method.loader(synth_dataset, LoaderContext(seed=0))
    batch = next(iter(make_loader(0)))
    opt = method.optimizer(net)
    losses = method.step(net.train(), batch, cfg.epochs - 1)  # the last epoch: every loss term on
    assert torch.isfinite(losses["loss"])
    opt.zero_grad()
    losses["loss"].backward()
    opt.step()
    predictor = method.cam_predictor(net.eval(), synth_dataset, make_views((1.0,), True), torch.device("cpu"), 0)
    i = next(k for k, r in enumerate(synth_dataset.records) if r.labels)
    classes = list(synth_dataset[i].labels)
    cams = predictor(i, classes)
    assert cams.shape == (len(classes), *synth_dataset.load_image(i).shape[:2])
    assert float(cams.min()) >= 0 and float(cams.max()) <= 1
