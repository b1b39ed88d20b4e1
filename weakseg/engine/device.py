"""Device selection and automatic mixed precision: the only place that knows about CUDA."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from weakseg.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
AMP_MODES = ("off", "bf16", "fp16")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → the local CUDA device (by LOCAL_RANK under torchrun) when present, else CPU."""
    if name not in DEVICES and not name.startswith("cuda:"):
        raise ConfigError(f"unknown device {name!r}; valid: {', '.join(DEVICES)} or cuda:N")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' asked for but no CUDA GPU is visible; use --device cpu or auto")
        name = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return torch.device(name)


def autocast(device: torch.device, amp: str = "off") -> contextlib.AbstractContextManager:
    """Autocast context: bf16/fp16 on CUDA only; CPU always runs in float32."""
    if amp not in AMP_MODES:
        raise ConfigError(f"unknown amp mode {amp!r}; valid: {', '.join(AMP_MODES)}")
    if amp == "off" or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cuda", enabled=(amp == "fp16" and device.type == "cuda"))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def to_device(batch, device: torch.device):
    """Move tensors (possibly nested in dicts/lists/tuples) to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
