"""Stage ``train-cls``: train a CAM or MCIS classifier on image-level labels.

Writes into ``out``: ``config.json`` (the resolved config: stage options, preset hyper-parameters,
class names, extra data), ``model.safetensors``, ``tb/`` (tensorboard), ``state/`` (per-epoch state for
resuming with :func:`weakseg.engine.trainer.fit`) and ``DONE`` last. A complete folder is skipped; an
interrupted one resumes from its last finished epoch.

Extra data (``--extra single:DIR[:RATIO]``, ``--extra web:DIR[:RATIO]``; MCIS settings 2 and 3) is
described in :mod:`weakseg.methods.extra`.

Under torchrun, ``batch_size`` is the *global* batch: each of the ``W`` processes takes ``batch_size / W``
items of every batch (so it must divide), and the items are seeded by their place in the epoch, so a
run on ``W`` processes follows the single-process run (up to float rounding; see ``docs/real-size.md``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weakseg.engine import dist
from weakseg.engine.artifacts import is_done, load_json, mark_done, save_json
from weakseg.engine.checkpoint import load_model
from weakseg.engine.device import resolve_device, seed_everything
from weakseg.engine.trainer import LoopConfig, fit, step_lr
from weakseg.errors import ConfigError, DataError
from weakseg.methods.cam import CamNet, ClsHParams, check_hparams, get_preset
from weakseg.methods.registry import Method, get_method

log = logging.getLogger(__name__)

CONFIG = "config.json"
MODEL = "model.safetensors"


@dataclass(frozen=True)
class TrainClsConfig:
    """Train the classifier whose CAMs seed the pseudo labels (plain CAM or MCIS)."""

    data: Path
    """dataset root"""
    out: Path
    """output folder (config.json, model.safetensors, tb/, state/, DONE)"""
    method: str = "mcis"
    """cam or mcis"""
    fmt: str = "auto"
    split: str = "train"
    backbone: str = "efficientnet-lite0"
    """efficientnet-lite0, tiny, or timm:<name> (with --weights)"""
    weights: Path | None = None
    """backbone weights file (.safetensors or .pth); default: the backbone's own ImageNet weights"""
    preset: str = "cpu"
    """hyper-parameter preset: paper (the MCIS recipe, GPU), cpu (minutes on 2 cores), cpu192 (cpu at input 192,
    no self-pair copy: what run/demo use), tiny (tests)"""
    epochs: int | None = None
    """None = the preset's"""
    batch_size: int | None = None
    """pairs (mcis) or images (cam) per step, over all torchrun processes together; None = the preset's"""
    input_size: int | None = None
    """side of the square training input; None = the preset's"""
    output_stride: int | None = None
    """backbone output stride (8 or 16); None = the preset's"""
    grad_clip: float | None = None
    """clip the total gradient norm (0 = off); None = the preset's"""
    seed: int = 0
    device: str = "auto"
    amp: str = "off"
    workers: int = 0
    """DataLoader worker processes"""
    extra: tuple[str, ...] = field(default_factory=tuple)
    """extra training data for mcis, one or more entries: single:DIR[:RATIO] (clean single-label images) or
    web:DIR[:RATIO] (noisy web images); RATIO = extra pairs per main pair in each epoch (default 0.5)"""
    web_warmup: int = 1
    """web noise filter: 0-based epoch from which web pairs are scored by the co-attention classifier"""
    web_threshold: float = 0.5
    """web noise filter: a web pair whose query-class co-attention probability is below this is down-weighted"""
    web_weight: float = 0.0
    """web noise filter: weight of a down-weighted web pair (0 drops it, 1 turns the filter off)"""


def resolve_hparams(cfg: TrainClsConfig) -> ClsHParams:
    """The preset's hyper-parameters with the config's overrides applied."""
    hp = get_preset(cfg.preset)
    names = ("epochs", "batch_size", "input_size", "output_stride", "grad_clip")
    overrides = {k: getattr(cfg, k) for k in names if getattr(cfg, k) is not None}
    hp = dataclasses.replace(hp, **overrides)
    check_hparams(hp)
    return hp


def _shard(items: list, rank: int, world: int) -> list:
    """Every ``world``-th item from ``rank``, padded so that all ranks get the same count."""
    if world == 1 or not items:
        return items
    per_rank = -(-len(items) // world)
    items = items + items[: per_rank * world - len(items)]
    return items[rank::world]


def local_batch_size(batch_size: int, world: int) -> int:
    """Each process's share of the global ``batch_size`` under ``world`` processes (must divide)."""
    if batch_size % world:
        lo, hi = batch_size - batch_size % world, batch_size + world - batch_size % world
        raise ConfigError(
            f"batch size {batch_size} (the global batch) does not split evenly over {world} processes; "
            f"use --batch-size {lo or hi} or {hi}"
        )
    return batch_size // world


class _Seeded(torch.utils.data.Dataset):
    """Item ``k`` of ``inner`` loaded with the RNG seeded from ``(*seed, keys[k])`` (jitter independent of rank)."""

    def __init__(self, inner, keys: list[int], seed: tuple[int, ...]):
        self.inner, self.keys, self.seed = inner, keys, seed

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, k: int):
        from weakseg.data.extra import item_seed

        with item_seed(*self.seed, self.keys[k]):
            return self.inner[k]


def _make_loader(method: Method, ds, hp: ClsHParams, cfg: TrainClsConfig, extras: list | None = None):
    """``(make(epoch) -> DataLoader, steps per epoch)``; this rank's share of every global batch."""
    from weakseg.data.extra import MixedPairDataset, MixedPairSampler, collate_mixed
    from weakseg.data.transforms import LabelledImages

    extras = extras or []
    rank, world = dist.rank(), dist.world_size()
    local = local_batch_size(hp.batch_size, world)
    if method.paired:
        sampler = MixedPairSampler(
            [r.labels for r in ds.records],
            ds.num_classes,
            [(ex.labels, ex.spec.ratio) for ex in extras],
            batch_size=hp.batch_size,
            seed=cfg.seed,
            rank=rank,
            world_size=world,
            names=[f"--extra {ex.kind}:{ex.spec.root}" for ex in extras],
        )

        def make(epoch: int):
            batches = sampler.batches(epoch)
            refs = [r for b in batches for r in b]
            starts = np.cumsum([0] + [len(b) for b in batches]).tolist()
            index = [list(range(a, b)) for a, b in zip(starts[:-1], starts[1:], strict=True)]
            data = MixedPairDataset(ds, extras, refs, hp.input_size, hp.self_pairs, hp.jitter, (cfg.seed, epoch))
            return torch.utils.data.DataLoader(
                data, batch_sampler=index, num_workers=cfg.workers, collate_fn=collate_mixed
            )

        return make, len(sampler)

    n_items = -(-len(ds) // world)

    def make(epoch: int):
        order = np.random.default_rng((cfg.seed, epoch)).permutation(len(ds)).tolist()
        positions = _shard(list(range(len(ds))), rank, world)  # each item's place in the epoch seeds its jitter
        data = LabelledImages(ds, [order[k] for k in positions], hp.input_size, hp.jitter)
        data = _Seeded(data, positions, (cfg.seed, epoch))
        return torch.utils.data.DataLoader(data, batch_size=local, shuffle=False, num_workers=cfg.workers)

    return make, math.ceil(n_items / local)


def _check_resume(out: Path, info: dict[str, Any]) -> None:
    """Refuse to resume a saved state trained with another method/backbone/classes/hyper-parameters."""
    if not (out / "state" / "train_state.json").is_file() or not (out / CONFIG).is_file():
        return
    old = load_json(out / CONFIG)
    for key in ("method", "backbone", "class_names", "hparams", "extra"):
        a, b = old.get(key), info[key]
        if key == "hparams" and isinstance(a, dict):  # more (or fewer) epochs may continue a run
            a = _roundtrip({"h": ClsHParams.from_dict(a)})["h"]  # options added since then take their defaults
            a, b = {k: v for k, v in a.items() if k != "epochs"}, {k: v for k, v in b.items() if k != "epochs"}
        if key == "extra":  # runs written before extra data existed had none
            a, b = a or [], b or []
        if a != b:
            raise ConfigError(
                f"{out} holds a partly trained classifier with another {key} ({old.get(key)!r}); "
                "use another --out folder or delete this one"
            )


def train_cls(cfg: TrainClsConfig) -> Path:
    """Train the classifier described by ``cfg``; returns ``cfg.out``. Skips a complete folder."""
    from weakseg.backbones import create_backbone
    from weakseg.data.registry import open_dataset

    out = Path(cfg.out)
    if is_done(out):
        log.info("train-cls: %s is complete (DONE exists); skipping", out)
        return out
    from weakseg.data.extra import open_extra, parse_extra
    from weakseg.methods.extra import WebFilter, extra_step

    method = get_method(cfg.method)
    specs = [parse_extra(e) for e in cfg.extra]
    if specs and not method.paired:
        raise ConfigError(f"--extra needs a method that trains on pairs (mcis); {method.name!r} does not")
    web = WebFilter(cfg.web_warmup, cfg.web_threshold, cfg.web_weight)
    hp = resolve_hparams(cfg)
    device = resolve_device(cfg.device)
    dist.init_distributed(device)
    ds = open_dataset(cfg.data, cfg.split, cfg.fmt)
    labelled = sum(1 for r in ds.records if r.labels)
    if len(ds) == 0 or labelled == 0:
        raise DataError(f"split {cfg.split!r} of {cfg.data} has no labelled images to train a classifier on")
    extras = [open_extra(spec, ds.class_names) for spec in specs]

    seed_everything(cfg.seed)
    backbone = create_backbone(cfg.backbone, cfg.weights, hp.output_stride, pretrained=True)
    net = method.build(backbone, ds.num_classes, hp)
    info = {
        "stage": "train-cls",
        "config": cfg,
        "method": method.name,
        "backbone": cfg.backbone,
        "class_names": list(ds.class_names),
        "num_classes": ds.num_classes,
        "preset": cfg.preset,
        "hparams": hp.to_dict(),
        "images": len(ds),
        "labelled_images": labelled,
        "extra": [ex.describe() for ex in extras],
    }
    if any(ex.kind == "web" for ex in extras):
        info["web_filter"] = dataclasses.asdict(web)
    info = _roundtrip(info)
    _check_resume(out, info)
    if dist.is_main():
        save_json(out / CONFIG, info)

    optimizer = torch.optim.SGD(
        net.parameter_groups(hp),
        lr=hp.lr,
        momentum=hp.momentum,
        weight_decay=hp.weight_decay,
        nesterov=hp.nesterov,
    )
    make_loader, steps = _make_loader(method, ds, hp, cfg, extras)
    log.info(
        "train-cls: %s on %d images (%d labelled)%s, %d epochs × %d steps, input %d, backbone %s",
        method.name, len(ds), labelled, "".join(f" + {ex.kind} {len(ex.ds)}" for ex in extras),
        hp.epochs, steps, hp.input_size, cfg.backbone,
    )  # fmt: skip
    if extras:
        step_fn = lambda m, b, e: extra_step(m, b, e, hp, web)  # noqa: E731
    else:
        step_fn = lambda m, b, e: method.step(m, b, e, hp)  # noqa: E731
    means = fit(
        net,
        step_fn,
        make_loader,
        optimizer,
        step_lr(steps, hp.lr_milestones, hp.lr_gamma),
        LoopConfig(epochs=hp.epochs, seed=cfg.seed, amp=cfg.amp, grad_clip=hp.grad_clip),
        out,
        device,
        log_dir=out / "tb",
        steps_per_epoch=steps,
    )
    if dist.is_main():
        mark_done(out, {"epochs": hp.epochs, "last_epoch_losses": means})
    dist.barrier()
    return out


def _roundtrip(info: dict[str, Any]) -> dict[str, Any]:
    """``info`` as it reads back from JSON (tuples → lists, paths → str), for comparisons."""
    import json

    info = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in info.items()}
    return json.loads(json.dumps(info, default=str))


def load_classifier(cls_dir: str | Path, device: torch.device | str = "cpu") -> tuple[CamNet, dict[str, Any]]:
    """Rebuild a trained classifier from ``cls_dir/config.json`` + ``model.safetensors`` (eval mode).

    Returns the network and the saved config (``method``, ``backbone``, ``class_names``, ``hparams``...).
    """
    from weakseg.backbones import create_backbone

    cls_dir = Path(cls_dir)
    if not (cls_dir / CONFIG).is_file() or not (cls_dir / MODEL).is_file():
        raise ConfigError(f"{cls_dir} holds no trained classifier (config.json + model.safetensors); run train-cls")
    meta = load_json(cls_dir / CONFIG)
    hp = ClsHParams.from_dict(meta["hparams"])
    method = get_method(meta["method"])
    backbone = create_backbone(meta["backbone"], None, hp.output_stride, pretrained=False)
    net = method.build(backbone, int(meta["num_classes"]), hp)
    load_model(cls_dir / MODEL, net)
    return net.to(device).eval(), meta
