"""The "touches one place" proof: a method defined here, registered here, run through `weakseg run`.

Nothing in the package is edited: the method brings its config + presets, network, optimiser, schedule,
loader recipe, step and CAM prediction hook, and the task recipe runs it end to end on tiny data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from weakseg.backbones import Backbone
from weakseg.data.recipes import image_batches
from weakseg.data.transforms import Jitter, to_tensor
from weakseg.engine.artifacts import load_json
from weakseg.engine.dense import DenseTrainConfig
from weakseg.losses import multilabel_loss
from weakseg.methods import base
from weakseg.methods.base import CamPredictor, Method, register_method
from weakseg.pipeline import RunConfig, run
from weakseg.stages.make_cams import MakeCamsOptions
from weakseg.stages.train_cls import TrainClsOptions
from weakseg.stages.train_seg import TrainSegOptions


@dataclass(frozen=True)
class ToyConfig:
    """A global-max-pooling classifier: its own knobs, nothing shared."""

    input_size: int = 48
    output_stride: int = 8
    epochs: int = 1
    batch_size: int = 8
    lr: float = 1e-2
    jitter: Jitter = field(default_factory=lambda: Jitter(0, 0, 0, 0))


class ToyNet(nn.Module):
    def __init__(self, backbone: Backbone, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Conv2d(backbone.out_channels, num_classes, 1)

    def maps(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maps(x).amax(dim=(2, 3))  # global max pooling


class ToyPredictor(CamPredictor):
    def __init__(self, net: ToyNet, ds, size: int, device: torch.device):
        self.net, self.ds, self.size, self.device = net, ds, size, device

    @torch.no_grad()
    def __call__(self, i: int, classes: Sequence[int]) -> torch.Tensor:
        image = to_tensor(self.ds.load_image(i))[None].to(self.device)
        x = F.interpolate(image, size=(self.size, self.size), mode="bilinear", align_corners=False)
        maps = F.relu(self.net.maps(x)[0, list(classes)])
        maps = maps / maps.flatten(1).amax(1).clamp_min(1e-5)[:, None, None]
        return F.interpolate(maps[None], size=image.shape[-2:], mode="bilinear", align_corners=False)[0].clamp(0, 1)


class ToyMethod(Method):
    name = "toy-gmp"
    task = "tags"
    description = "test-only: global-max-pooling classifier"
    Config = ToyConfig
    presets = {"tiny": ToyConfig()}

    def build(self, backbone: Backbone, num_classes: int) -> nn.Module:
        return ToyNet(backbone, num_classes)

    def optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(net.parameters(), lr=self.cfg.lr)

    def lr_factor(self, steps_per_epoch: int):
        return lambda step: 1.0

    def loader(self, ds, ctx):
        c = self.cfg
        return image_batches(ds, input_size=c.input_size, jitter=c.jitter, batch_size=c.batch_size, seed=ctx.seed,
                             rank=ctx.rank, world=ctx.world, workers=ctx.workers)  # fmt: skip

    def step(self, net: nn.Module, batch: dict, epoch: int) -> dict[str, torch.Tensor]:
        return {"loss": multilabel_loss(net(batch["image"]), batch["label"])}

    def cam_predictor(self, net, ds, views, device, seed) -> CamPredictor:
        return ToyPredictor(net, ds, self.cfg.input_size, device)


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setattr(base, "METHODS", dict(base.METHODS))  # registration is undone after the test
    import weakseg.methods as methods_pkg
    import weakseg.tasks as tasks

    monkeypatch.setattr(methods_pkg, "METHODS", base.METHODS)
    monkeypatch.setattr(tasks, "METHODS", base.METHODS)
    register_method(ToyMethod)
    yield ToyMethod


def test_a_method_defined_outside_the_package_runs_the_whole_pipeline(toy_registered, tmp_path):
    out = tmp_path / "run"
    cfg = RunConfig(
        out=out,
        synth_preset="tiny",
        method="toy-gmp",
        device="cpu",
        report_images=1,
        cls=TrainClsOptions(preset="tiny", backbone="tiny"),
        cams=MakeCamsOptions(scales=(1.0,), flip=False),
        seg=TrainSegOptions(arch="tiny", train=DenseTrainConfig(epochs=1)),
    )
    summary = run(cfg)
    assert summary["method"] == "toy-gmp"
    for stage in ("seeds", "pseudo", "segmenter"):
        assert summary[stage]["miou"] is not None, stage
    record = load_json(out / "cls" / "config.json")["record"]
    assert record["method"] == "toy-gmp" and record["method_config"]["input_size"] == 48
    assert len(list((out / "cams").glob("*.npz"))) == 64 and (out / "report.html").is_file()


def test_an_unregistered_method_is_refused_by_name(tmp_path):
    from weakseg.errors import ConfigError

    with pytest.raises(ConfigError, match="toy-gmp"):
        run(RunConfig(out=tmp_path / "r", synth_preset="tiny", method="toy-gmp", device="cpu"))


def test_task_full_trains_the_segmenter_on_masks_only(tmp_path):
    """`--task full` (what `weakseg demo --full-baseline` runs): no classifier, CAM or pseudo stage."""
    out = tmp_path / "full"
    summary = run(
        RunConfig(
            out=out,
            synth_preset="tiny",
            task="full",
            device="cpu",
            report_images=1,
            seg=TrainSegOptions(arch="tiny", train=DenseTrainConfig(epochs=1)),
        )
    )
    assert summary["task"] == "full" and summary["method"] is None and summary["segmenter"]["miou"] is not None
    assert "seeds" not in summary and not (out / "cls").exists() and not (out / "pseudo").exists()
    assert load_json(out / "seg" / "config.json")["record"]["supervision"] == "full"
