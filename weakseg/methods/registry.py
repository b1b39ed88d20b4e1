"""The classifier methods, an explicit registry: ``METHODS = {"cam": ..., "mcis": ...}``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from weakseg.backbones import Backbone
from weakseg.errors import unknown_name
from weakseg.methods.cam import CamNet, ClsHParams, multilabel_loss
from weakseg.methods.mcis import MCISNet, mcis_step


def cam_step(net: nn.Module, batch: dict, epoch: int, hp: ClsHParams) -> dict[str, torch.Tensor]:
    """Plain CAM: multi-label soft-margin loss of the pooled class scores."""
    return {"loss": multilabel_loss(net(batch["image"])["logits"], batch["label"])}


@dataclass(frozen=True)
class Method:
    """A classifier method: how to build its network, whether it trains on pairs, and its step."""

    name: str
    build: Callable[[Backbone, int, ClsHParams], CamNet]
    step: Callable[[nn.Module, dict, int, ClsHParams], dict[str, torch.Tensor]]
    paired: bool
    description: str


METHODS: dict[str, Method] = {
    "cam": Method("cam", CamNet, cam_step, paired=False, description="plain CAM classifier (Zhou et al. 2016)"),
    "mcis": Method(
        "mcis", MCISNet, mcis_step, paired=True, description="MCIS co-attention classifier (Sun et al. ECCV 2020)"
    ),
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise unknown_name("method", name, METHODS)
    return METHODS[name]
