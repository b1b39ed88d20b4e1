"""The method plug-in protocol and its registry.

A method is one module that subclasses :class:`Method` and registers itself::

    @register_method
    class MyMethod(Method):
        name = "mine"
        task = "tags"                      # the task recipe it plugs into (weakseg.tasks.TASKS)
        description = "one line for the methods table"
        Config = MyConfig                  # a frozen dataclass of every hyper-parameter
        presets = {"cpu192": MyConfig(), "tiny": MyConfig(epochs=1)}

        def build(self, backbone, num_classes): ...        # the network
        def loader(self, ds, ctx): ...                     # (make_loader(epoch), steps per epoch)
        def step(self, net, batch, epoch): ...             # {"loss": ..., other logged scalars}
        def cam_predictor(self, net, ds, views, device, seed): ...   # prediction hook of "tags" methods

The optimiser and its schedule default to the MCIS/DeepLab convention (:meth:`Method.optimizer`,
SGD with the net's ``parameter_groups``); a method overrides them when its recipe differs. The stages
call only these hooks: no ``isinstance`` dispatch, and nothing method-specific in a shared config.
Hyper-parameters reach a method through its preset plus ``key=value`` overrides
(:func:`apply_overrides`), so a new method never adds a field to a stage's config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from weakseg.backbones import Backbone
from weakseg.config import apply_overrides, config_from_dict
from weakseg.data.dataset import SegDataset
from weakseg.engine.trainer import step_lr
from weakseg.errors import ConfigError, unknown_name

LoaderFactory = tuple[Callable[[int], Iterable], int]
"""``(make_loader(epoch) -> iterable of batches, steps per epoch)``"""


@dataclass(frozen=True)
class LoaderContext:
    """What a method's loader recipe needs besides the dataset: this process's place and the run's seed."""

    seed: int
    rank: int = 0
    world: int = 1
    workers: int = 0


class CamPredictor:
    """Prediction hook of a CAM method: ``predictor(i, classes) -> [K', H, W]`` CAMs in [0, 1] of image ``i``."""

    def __call__(self, i: int, classes: Sequence[int]) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class Method:
    """Base class of a method plug-in (see the module docstring). An instance holds its resolved config."""

    name: ClassVar[str]
    task: ClassVar[str]
    description: ClassVar[str]
    paper: ClassVar[str] = ""
    Config: ClassVar[type]
    presets: ClassVar[dict[str, Any]]

    def __init__(self, config: Any):
        if not isinstance(config, self.Config):
            raise ConfigError(f"method {self.name!r} needs a {self.Config.__name__}, got {type(config).__name__}")
        check = getattr(config, "check", None)
        if check is not None:
            check()
        self.cfg = config

    # ---------------------------------------------------------------- training
    def build(self, backbone: Backbone, num_classes: int) -> nn.Module:
        raise NotImplementedError(f"method {self.name!r} does not define build()")

    def optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        """SGD (momentum, Nesterov, weight decay from the config) over ``net.parameter_groups(cfg)``."""
        c = self.cfg
        return torch.optim.SGD(
            net.parameter_groups(c), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, nesterov=c.nesterov
        )

    def lr_factor(self, steps_per_epoch: int) -> Callable[[int], float]:
        """Learning-rate factor by step; default: ×``lr_gamma`` at each epoch of ``lr_milestones``."""
        return step_lr(steps_per_epoch, tuple(self.cfg.lr_milestones), self.cfg.lr_gamma)

    @property
    def epochs(self) -> int:
        return int(self.cfg.epochs)

    @property
    def grad_clip(self) -> float:
        return float(getattr(self.cfg, "grad_clip", 0.0))

    @property
    def snapshot_epochs(self) -> tuple[int, ...]:
        """Epochs (1-based) after which train-cls also keeps the weights (``cfg.snapshots`` when the config has it)."""
        return tuple(int(e) for e in getattr(self.cfg, "snapshots", ()))

    def loader(self, ds: SegDataset, ctx: LoaderContext) -> LoaderFactory:
        raise NotImplementedError(f"method {self.name!r} does not define loader()")

    def step(self, net: nn.Module, batch: Any, epoch: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError(f"method {self.name!r} does not define step()")

    def describe_data(self) -> dict[str, Any]:
        """Extra training data the method reads (recorded with the run); none by default."""
        return {}

    # ---------------------------------------------------------------- prediction
    def cam_predictor(
        self, net: nn.Module, ds: SegDataset, views: Sequence, device: torch.device, seed: int
    ) -> CamPredictor:
        raise NotImplementedError(f"method {self.name!r} makes no CAMs")


METHODS: dict[str, type[Method]] = {}
"""every registered method by name (filled by :func:`register_method` as the method modules are imported)"""


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: add a :class:`Method` subclass to :data:`METHODS` under ``cls.name``."""
    for attr in ("name", "task", "description", "Config", "presets"):
        if not hasattr(cls, attr):
            raise TypeError(f"method class {cls.__name__} must define {attr!r}")
    if not dataclasses.is_dataclass(cls.Config):
        raise TypeError(f"{cls.__name__}.Config must be a dataclass")
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise ConfigError(f"a method named {cls.name!r} is already registered ({METHODS[cls.name].__qualname__})")
    METHODS[cls.name] = cls
    return cls


def get_method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise unknown_name("method", name, METHODS)
    return METHODS[name]


def create_method(name: str, preset: str, overrides: Sequence[str] = ()) -> Method:
    """The method ``name`` with its preset ``preset`` and ``key=value`` overrides applied."""
    cls = get_method_class(name)
    if preset not in cls.presets:
        raise unknown_name(f"preset of method {name!r}", preset, cls.presets)
    return cls(apply_overrides(cls.presets[preset], overrides))


def method_from_record(name: str, config: dict[str, Any]) -> Method:
    """Rebuild a method from the config dict it saved (keys added since then take their defaults)."""
    cls = get_method_class(name)
    return cls(config_from_dict(cls.Config, config))
