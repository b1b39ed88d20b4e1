"""A short, readable training loop shared by every stage that trains a network.

The loop knows nothing about methods: a method gives a ``step_fn(model, batch, epoch) -> losses``
(a dict of scalar tensors; ``"loss"`` is back-propagated, the rest are logged) and a
``make_loader(epoch)`` that returns the epoch's batches. Each epoch is seeded by ``seed + epoch``,
so a run resumed at an epoch boundary reproduces an uninterrupted run exactly. State is saved
after every epoch (safetensors + JSON) and restored on restart; the weights after chosen epochs
can be kept as snapshots (:func:`snapshot_name`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from weakseg.engine import dist
from weakseg.engine.checkpoint import load_training_state, save_model, save_training_state
from weakseg.engine.device import autocast, grad_scaler, seed_everything, to_device

log = logging.getLogger(__name__)

StepFn = Callable[[torch.nn.Module, Any, int], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class LoopConfig:
    epochs: int
    seed: int = 0
    amp: str = "off"
    grad_clip: float = 0.0
    progress: bool = True


def poly_lr(total_steps: int, power: float = 0.9) -> Callable[[int], float]:
    return lambda step: (1 - min(step, total_steps - 1) / max(total_steps, 1)) ** power


def step_lr(steps_per_epoch: int, milestones: tuple[int, ...], gamma: float = 0.1) -> Callable[[int], float]:
    return lambda step: gamma ** sum(step >= m * steps_per_epoch for m in milestones)


def snapshot_name(epoch: int) -> str:
    """File name of the weights after ``epoch`` finished epochs (1-based): ``epoch_<n>.safetensors``."""
    return f"epoch_{epoch}.safetensors"


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = g.setdefault("initial_lr", g["lr"]) * factor


class _TBLogger:
    def __init__(self, log_dir: Path | None):
        self.writer = None
        if log_dir is not None and dist.is_main():
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir))

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _progress(it: Iterable, total: int, desc: str, enabled: bool) -> Iterator:
    if not (enabled and dist.is_main()):
        yield from it
        return
    from tqdm.auto import tqdm

    yield from tqdm(it, total=total, desc=desc, leave=False, dynamic_ncols=True)


def fit(
    model: torch.nn.Module,
    step_fn: StepFn,
    make_loader: Callable[[int], Iterable],
    optimizer: torch.optim.Optimizer,
    lr_factor: Callable[[int], float],
    cfg: LoopConfig,
    out_dir: str | Path,
    device: torch.device,
    log_dir: str | Path | None = None,
    steps_per_epoch: int | None = None,
    snapshot_epochs: Collection[int] = (),
) -> dict[str, float]:
    """Train ``model`` for ``cfg.epochs``, resuming from ``out_dir`` when it holds a saved state.

    Writes ``out_dir/model.safetensors`` (final weights; the raw module, not the DDP wrapper) and, after
    each epoch ``n`` (1-based) of ``snapshot_epochs``, ``out_dir/epoch_<n>.safetensors``.
    Returns the last epoch's mean losses.
    """
    out_dir = Path(out_dir)
    state_dir = out_dir / "state"
    model.to(device)
    start_epoch, step = 0, 0
    progress = load_training_state(state_dir, model, optimizer)
    if progress is not None:
        start_epoch, step = int(progress["epoch"]), int(progress["step"])
        log.info("resuming from epoch %d (step %d)", start_epoch, step)
    net = dist.wrap_model(model, device)
    scaler = grad_scaler(device, cfg.amp)
    tb = _TBLogger(Path(log_dir) if log_dir else None)
    means: dict[str, float] = {}
    for epoch in range(start_epoch, cfg.epochs):
        seed_everything(cfg.seed + epoch)
        net.train()
        loader = make_loader(epoch)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}  # per key: a step function may log some keys only on some steps
        total = steps_per_epoch if steps_per_epoch is not None else _len_or_none(loader)
        for batch in _progress(loader, total, f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress):
            set_lr(optimizer, lr_factor(step))
            batch = to_device(batch, device)
            with autocast(device, cfg.amp):
                losses = step_fn(net, batch, epoch)
            loss = losses["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch}, step {step}; lower the lr")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            # the gradient norm is logged on every step (a diverging run shows up there first); clipped when asked
            scaler.unscale_(optimizer)
            max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            scaler.step(optimizer)
            scaler.update()
            values = {f"train/{k}": float(v.detach()) for k, v in losses.items()}
            values["train/grad_norm"] = float(grad_norm)
            values["train/lr"] = optimizer.param_groups[0]["lr"]
            tb.scalars(values, step)
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            step += 1
        means = {k: v / counts[k] for k, v in sums.items()}
        if dist.is_main():
            log.info("epoch %d/%d: %s", epoch + 1, cfg.epochs, _fmt(means))
            if epoch + 1 in snapshot_epochs:  # before the state: a resumed run never skips a snapshot
                save_model(out_dir / snapshot_name(epoch + 1), model)
            save_training_state(state_dir, model, optimizer, {"epoch": epoch + 1, "step": step})
        dist.barrier()
    if dist.is_main():
        save_model(out_dir / "model.safetensors", model)
    tb.close()
    dist.barrier()
    return means


def _len_or_none(x: Iterable) -> int | None:
    try:
        return len(x)  # type: ignore[arg-type]
    except TypeError:
        return None


def _fmt(values: dict[str, float]) -> str:
    return " ".join(f"{k.removeprefix('train/')}={v:.4f}" for k, v in values.items() if math.isfinite(v))
