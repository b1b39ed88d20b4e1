"""The inputs and outputs every stage config shares, declared once (stage configs inherit them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, kw_only=True)
class DataInput:
    """The dataset split a stage reads."""

    data: Path
    """dataset root"""
    fmt: str = "auto"
    """dataset format: auto, voc, coco, yolo or folder"""
    split: str = "train"


@dataclass(frozen=True, kw_only=True)
class StageOutput:
    """The folder a stage writes (config.json first, its files, DONE last) and where it computes."""

    out: Path
    """output folder"""
    device: str = "auto"
    """auto (CUDA when visible, by LOCAL_RANK under torchrun), cpu, cuda or cuda:N"""
    overwrite: bool = False
    """rebuild the folder when it holds outputs of another configuration (otherwise refused)"""
