"""Per-epoch weight snapshots: the trainer hook, train-cls keeping them, make-cams --epoch using one."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from weakseg.backbones.vgg import TORCHVISION_FILE, make_vgg16_features
from weakseg.engine.artifacts import load_json, load_npz
from weakseg.engine.trainer import LoopConfig, fit, snapshot_name
from weakseg.errors import ConfigError
from weakseg.methods import create_method
from weakseg.stages.make_cams import MakeCamsConfig, make_cams
from weakseg.stages.train_cls import TrainClsConfig, load_classifier, train_cls

pytestmark = pytest.mark.usefixtures("one_thread")


def test_fit_keeps_the_weights_of_the_snapshot_epochs(tmp_path):
    """A linear model stepped once per epoch: the epoch-n snapshot holds the weights after n steps."""
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    seen: list[torch.Tensor] = []

    def step(net, batch, epoch):
        return {"loss": net(batch).pow(2).mean()}

    def make_loader(epoch):
        seen.append(model.weight.detach().clone())  # the weights after `epoch` finished epochs
        return [torch.ones(4, 2)]

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fit(model, step, make_loader, opt, lambda s: 1.0, LoopConfig(epochs=3, progress=False), tmp_path,
        torch.device("cpu"), snapshot_epochs=(1, 3))  # fmt: skip
    assert snapshot_name(2) == "epoch_2.safetensors"
    assert sorted(p.name for p in tmp_path.glob("epoch_*")) == ["epoch_1.safetensors", "epoch_3.safetensors"]
    assert torch.equal(load_file(tmp_path / "epoch_1.safetensors")["weight"], seen[1])
    assert torch.equal(load_file(tmp_path / "epoch_3.safetensors")["weight"], model.weight.detach())
    assert torch.equal(load_file(tmp_path / "model.safetensors")["weight"], model.weight.detach())


def test_snapshots_option_is_checked():
    assert create_method("mcis", "paper").cfg.snapshots == (11,)  # test.sh's pascal_voc_epoch_10.pth (0-based)
    assert create_method("cam", "cpu192").cfg.snapshots == ()
    with pytest.raises(ConfigError, match="snapshots"):
        create_method("mcis", "tiny", ("snapshots=[0]",))


def test_train_cls_keeps_snapshots_and_make_cams_uses_one(synth_root, tmp_path):
    cls = train_cls(TrainClsConfig(
        data=synth_root, out=tmp_path / "cls", method="mcis", backbone="tiny", preset="tiny", device="cpu",
        set=("epochs=2", "batch_size=8", "snapshots=[1]", "test_partners=0"),
    ))  # fmt: skip
    assert (cls / "epoch_1.safetensors").is_file() and not (cls / "epoch_2.safetensors").is_file()
    assert load_json(cls / "DONE")["snapshots"] == [1]
    assert load_json(cls / "config.json")["record"]["method_config"]["snapshots"] == [1]
    final, _, _ = load_classifier(cls)
    first, _, _ = load_classifier(cls, epoch=1)
    pairs = zip(final.state_dict().values(), first.state_dict().values(), strict=True)
    assert any(not torch.equal(a, b) for a, b in pairs)
    with pytest.raises(ConfigError, match=r"no snapshot of epoch 5.*kept: \[1\]"):
        load_classifier(cls, epoch=5)

    def cams(epoch, out):
        cfg = MakeCamsConfig(cls_dir=cls, data=synth_root, out=out, split="val", scales=(1.0,), epoch=epoch,
                             device="cpu")  # fmt: skip
        return make_cams(cfg)

    at1, last = cams(1, tmp_path / "cams1"), cams(None, tmp_path / "cams")
    assert load_json(at1 / "config.json")["record"]["epoch"] == 1
    assert load_json(last / "config.json")["record"]["epoch"] is None
    npz = [n for n in sorted(p.name for p in at1.glob("*.npz")) if load_npz(last / n)["cams"].size]
    assert npz and any(not (load_npz(at1 / n)["cams"] == load_npz(last / n)["cams"]).all() for n in npz)
    with pytest.raises(ConfigError, match="differs in: epoch"):
        cams(None, at1)  # the folder holds the epoch-1 CAMs


@pytest.mark.slow
def test_paper_preset_end_to_end_on_vgg16_d1(synth_root, tmp_path):
    """train-cls --preset paper --backbone vgg16-d1 --weights <torchvision-layout file>, then make-cams --epoch 1."""
    feats, _ = make_vgg16_features(32)
    weights = tmp_path / TORCHVISION_FILE
    torch.save({f"features.{k}": v for k, v in feats.state_dict().items()}, weights)
    cls = train_cls(TrainClsConfig(
        data=synth_root, out=tmp_path / "cls", method="mcis", backbone="vgg16-d1", weights=weights, preset="paper",
        device="cpu", set=("input_size=32", "epochs=2", "batch_size=8", "snapshots=[1]", "lr_milestones=[1]"),
    ))  # fmt: skip
    out = make_cams(MakeCamsConfig(cls_dir=cls, data=synth_root, out=tmp_path / "cams", split="val", epoch=1,
                                   device="cpu"))  # fmt: skip
    rec = load_json(out / "config.json")["record"]
    assert rec["epoch"] == 1 and rec["method_config"]["test_fusion"] == "official"
    assert rec["classifier"]["backbone"] == "vgg16-d1"
