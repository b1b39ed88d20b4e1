"""One trainer for dense-prediction networks (the segmenter, AffinityNet, and any per-pixel model).

Given a dataset of ``(image, target)`` items, the model's two parameter groups (pretrained encoder,
new layers) and a loss ``step_fn``, :func:`train_dense` builds the optimiser (AdamW or SGD with
momentum; the new layers at ``head_lr_mult`` × ``lr``), the poly learning-rate decay (power 0.9) over
all steps, a seeded shuffling loader (a ``DistributedSampler`` under torchrun) and runs
:func:`weakseg.engine.trainer.fit` (state every epoch, resume, TensorBoard in ``out/tb``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from weakseg.engine import dist
from weakseg.engine.trainer import LoopConfig, StepFn, fit, poly_lr
from weakseg.errors import ConfigError, unknown_name

OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class DenseTrainConfig:
    """Optimisation of a dense-prediction network."""

    epochs: int = 8
    batch_size: int = 8
    """images per step over all torchrun processes together"""
    optimizer: str = "adamw"
    """adamw, or sgd (momentum 0.9, the DeepLab recipe; give it a larger lr, e.g. 0.01)"""
    lr: float = 1e-3
    """learning rate of the pretrained encoder / backbone"""
    head_lr_mult: float = 10.0
    """the new layers (decoder, head) learn at this multiple of ``lr``"""
    weight_decay: float = 1e-4
    amp: str = "off"
    """off, bf16 or fp16 (CUDA only)"""
    workers: int = 0
    """data-loading processes"""

    def check(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise unknown_name("optimizer", self.optimizer, OPTIMIZERS)
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError(f"need epochs >= 1, batch_size >= 1 and lr > 0; got {self.epochs}, {self.batch_size}, "
                              f"{self.lr}")  # fmt: skip


def train_dense(
    model: torch.nn.Module,
    train_set: Dataset,
    groups: tuple[Sequence[torch.nn.Parameter], Sequence[torch.nn.Parameter]],
    step_fn: StepFn,
    cfg: DenseTrainConfig,
    out: str | Path,
    device: torch.device,
    seed: int = 0,
) -> dict[str, float]:
    """Train ``model`` on ``train_set`` (resuming from ``out/state``); returns the last epoch's mean losses.

    ``seed`` seeds each epoch's shuffling (and, through :func:`weakseg.engine.trainer.fit`, its augmentation).
    ``groups``: (encoder parameters, new-layer parameters). Batches drop the last partial one: BatchNorm
    (and DeepLab's image pooling) cannot train on a batch of one.
    """
    cfg.check()
    out = Path(out)
    batch_size = min(cfg.batch_size, len(train_set))  # type: ignore[arg-type]
    world = dist.world_size()
    steps_per_epoch = max(1, len(train_set) // (batch_size * world))  # type: ignore[arg-type]

    def make_loader(epoch: int) -> DataLoader:
        sampler = None
        if world > 1:
            from torch.utils.data.distributed import DistributedSampler

            sampler = DistributedSampler(train_set, shuffle=True, seed=seed, drop_last=True)
            sampler.set_epoch(epoch)
        return DataLoader(
            train_set,
            batch_size=batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            generator=torch.Generator().manual_seed(seed + epoch),
            drop_last=True,
            num_workers=cfg.workers,
            persistent_workers=False,
        )

    encoder, new = groups
    param_groups = [{"params": list(encoder), "lr": cfg.lr}, {"params": list(new), "lr": cfg.head_lr_mult * cfg.lr}]
    if cfg.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(param_groups, momentum=0.9, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.AdamW(param_groups, weight_decay=cfg.weight_decay)
    return fit(
        model,
        step_fn,
        make_loader,
        optimizer,
        poly_lr(cfg.epochs * steps_per_epoch),
        LoopConfig(epochs=cfg.epochs, seed=seed, amp=cfg.amp),
        out,
        device,
        log_dir=out / "tb",
        steps_per_epoch=steps_per_epoch,
    )
