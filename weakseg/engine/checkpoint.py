"""Checkpoints as safetensors + JSON: model weights, optimizer state and progress. Never pickle.

A checkpoint folder holds ``model.safetensors`` (weights), ``train_state.safetensors`` (optimizer
tensors, flattened), ``train_state.json`` (epoch, step, optimizer scalars) and ``config.json``.
User-supplied weight files are loaded with :func:`load_weights_file`, which refuses pickles
unless they load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from weakseg.engine.artifacts import atomic_write_bytes, save_json
from weakseg.errors import ConfigError


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def save_model(path: str | Path, model: torch.nn.Module, metadata: dict[str, str] | None = None) -> Path:
    state = {k: v.detach().cpu().contiguous() for k, v in _unwrap(model).state_dict().items()}
    return atomic_write_bytes(path, save(state, metadata=metadata))


def load_model(path: str | Path, model: torch.nn.Module, strict: bool = True) -> torch.nn.Module:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist; train the model first or give the right path")
    state = load_file(str(path))
    own = _unwrap(model).state_dict()
    wrong = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if wrong:
        raise ConfigError(
            f"checkpoint {path} does not match the model: shapes differ for {wrong[:5]}; "
            "was it trained with another backbone or class count?"
        )
    missing, unexpected = _unwrap(model).load_state_dict(state, strict=False)
    if strict and (missing or unexpected):
        raise ConfigError(
            f"checkpoint {path} does not match the model (missing: {list(missing)[:5]}, "
            f"unexpected: {list(unexpected)[:5]}); was it trained with another backbone or class count?"
        )
    return model


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {"param_groups": sd["param_groups"], "state": {}}
    for pid, st in sd["state"].items():
        scalars["state"][str(pid)] = {}
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars["state"][str(pid)][k] = v
    return tensors, scalars


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(pid): dict(st) for pid, st in scalars["state"].items()}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    return {"state": state, "param_groups": scalars["param_groups"]}


def save_training_state(
    folder: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    progress: dict[str, Any],
) -> None:
    """Save weights + optimizer + progress (epoch, step, ...). ``train_state.json`` is written last."""
    folder = Path(folder)
    save_model(folder / "last.safetensors", model)
    tensors, scalars = _flatten_optimizer(optimizer)
    atomic_write_bytes(folder / "optimizer.safetensors", save(tensors))
    save_json(folder / "train_state.json", {"progress": progress, "optimizer": scalars})


def load_training_state(
    folder: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any] | None:
    """Restore the last state saved by :func:`save_training_state`; None when there is none."""
    folder = Path(folder)
    meta_path = folder / "train_state.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    load_model(folder / "last.safetensors", model)
    tensors = load_file(str(folder / "optimizer.safetensors"))
    optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
    return meta["progress"]


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a user-supplied weight file: ``.safetensors``, or a torch file loadable with weights_only=True.

    Arbitrary pickles (which can run code when loaded) are refused with an explanation.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weights file {path} does not exist; give the path of a .safetensors or .pth file")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        obj = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError and friends
        raise ConfigError(
            f"refusing to load {path}: it is not a plain tensor file (torch.load with weights_only=True failed: "
            f"{type(e).__name__}). Only load files you trust; convert it to safetensors first with "
            "safetensors.torch.save_file(state_dict, 'weights.safetensors') in a trusted environment."
        ) from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "module"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"weights file {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}
