"""``weakseg fewshot train`` / ``weakseg fewshot eval``: episodic training of a few-shot head on one fold's training
classes, and its class-wise mIoU / FB-IoU on fixed test episodes of the fold's held-out classes.

The backbone is frozen (as in SCL), so each image's mid/high features are computed once per run and kept in memory
(float16); episodes then cost only the heads. Training images are resized to ``input_size``² without augmentation.
The checkpoint kept is the best epoch on *validation* episodes: training classes on images carved from the
training split (``val_fraction``), never the test fold. Evaluation predicts at the feature size and upsamples the
logits to each query's own mask size (the papers' ``ori_resize`` evaluation on original labels).

Folder of ``train``: ``config.json``, ``model.safetensors`` (the head only; the backbone is rebuilt from its name),
``history.json`` (losses and validation mIoU per epoch), ``DONE``. Folder of ``eval``: ``config.json``,
``metrics.json`` (mIoU, FB-IoU, class IoUs, timing), ``episodes.json`` (the exact episodes), ``DONE``.
Methods and maths: :mod:`weakseg.methods.fewshot`, :mod:`weakseg.cams.fewshot`; episodes:
:mod:`weakseg.data.episodes`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save

from weakseg.backbones import create_backbone
from weakseg.config import apply_overrides, config_from_dict
from weakseg.data.episodes import (
    SHABAN_AREA,
    Episode,
    binary_target,
    class_pool,
    dataset_class_index,
    fold_spec,
    sample_episodes,
    save_episodes,
    split_images,
)
from weakseg.data.registry import open_dataset
from weakseg.data.transforms import to_tensor
from weakseg.engine.artifacts import atomic_write_bytes, load_json, mark_done, save_json
from weakseg.engine.checkpoint import load_model, save_model
from weakseg.engine.device import resolve_device, seed_everything
from weakseg.engine.stage import begin_stage, stage_meta, stage_record
from weakseg.errors import ConfigError, unknown_name
from weakseg.eval.fewshot import FewShotMeter
from weakseg.methods.clip_es import file_digest, load_clip_weights, resolve_clip_weights
from weakseg.methods.fewshot import (
    PRESETS,
    ClipPrior,
    EpisodeFeatures,
    FeatureLevels,
    FewShotConfig,
    FewShotNet,
    build_fewshot_net,
)
from weakseg.stages.io import DataInput, StageOutput

log = logging.getLogger(__name__)
MODEL = "model.safetensors"


@dataclass(frozen=True, kw_only=True)
class FewShotTrainConfig(DataInput, StageOutput):
    """Train a few-shot head (prototype or SCL, optionally with PI-CLIP's CLIP prior) on one fold's training classes;
    the checkpoint is picked on validation episodes of the training classes."""

    method: str = "scl"
    """prototype (PANet-style baseline) or scl"""
    preset: str = "cpu"
    """cpu (96 px, 32 channels, 8 epochs), paper (473 px, 256 channels, 200 epochs, SGD) or tiny (tests)"""
    set: tuple[str, ...] = field(default_factory=tuple)
    """KEY=VALUE overrides of the method config, e.g. prior=visual+clip clip_weights=runs/toy-clip epochs=4"""
    backbone: str = "efficientnet-lite0"
    """frozen backbone: efficientnet-lite0 (ImageNet weights) or tiny (random, tests)"""
    weights: Path | None = None
    """backbone weights file (default: the backbone's own)"""
    folds: str = "synthetic-5i"
    """class split: pascal-5i, coco-20i (interleaved, SCL's), coco-20i-contiguous, synthetic-5i, interleaved,
    contiguous, or a JSON file of 4 lists of class indices"""
    fold: int = 0
    """held-out fold (its classes are never a training target nor, by default, in a training image)"""
    novel_pixels: str = "exclude"
    """training images showing a test-fold class: exclude (drop the image), ignore (255) or background (PFENet)"""
    min_area: float = SHABAN_AREA
    """smallest area (fraction of the image) of a class for an image to serve its episodes (2·32·32 / 473²)"""
    seed: int = 0
    feature_cache: Path | None = None
    """folder of cached frozen-backbone features and CLIP priors, shared by runs (keyed by backbone, size, data)"""


@dataclass(frozen=True, kw_only=True)
class FewShotEvalConfig(StageOutput):
    """Class-wise mIoU and FB-IoU of a trained few-shot head on fixed test episodes of its fold's held-out classes."""

    model_dir: Path
    """folder written by `weakseg fewshot train`"""
    data: Path | None = None
    """dataset root (default: the training run's)"""
    fmt: str = "auto"
    split: str = "val"
    """split the test episodes (queries and supports) come from"""
    shots: int = 1
    episodes: int = 1000
    """fixed test episodes (PI-CLIP: 1,000 on PASCAL; SCL: 5,000)"""
    episode_seed: int = 321
    """seed of the test episodes (SCL's seed)"""
    set: tuple[str, ...] = field(default_factory=tuple)
    """KEY=VALUE overrides of inference options, e.g. cross_guided=false"""
    batch_size: int = 16
    """episodes per forward pass"""
    feature_cache: Path | None = None
    """folder of cached frozen-backbone features and CLIP priors, shared by runs (keyed by backbone, size, data)"""


# ---------------------------------------------------------------------------------------------------- features


def _cache_folder(root: Path | None, what: dict) -> Path | None:
    if root is None:
        return None
    key = hashlib.blake2b(json.dumps(what, sort_keys=True, default=str).encode(), digest_size=10).hexdigest()
    folder = Path(root) / key
    folder.mkdir(parents=True, exist_ok=True)
    save_json(folder / "key.json", what)
    return folder


class EpisodeData:
    """Cached features, resized masks and (lazily) CLIP priors of the images of one split.

    ``feature_dir`` / ``prior_dir``: folders (from :func:`_cache_folder`) where features and priors are kept as
    safetensors between runs; None keeps them in memory only.
    """

    def __init__(
        self,
        ds,
        levels: FeatureLevels,
        size: int,
        device: torch.device,
        clip: ClipPrior | None = None,
        feature_dir: Path | None = None,
        prior_dir: Path | None = None,
    ):
        self.ds, self.levels, self.size, self.device, self.clip = ds, levels, size, device, clip
        self.feature_dir, self.prior_dir = feature_dir, prior_dir
        self.mid: dict[int, torch.Tensor] = {}
        self.high: dict[int, torch.Tensor] = {}
        self.masks: dict[int, np.ndarray] = {}
        self.small: dict[int, np.ndarray] = {}
        self.priors: dict[tuple[int, int], torch.Tensor] = {}

    def image(self, i: int) -> torch.Tensor:
        x = to_tensor(self.ds.load_image(i))[None].to(self.device)
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)

    def ensure(self, images: Sequence[int], batch: int = 16) -> None:
        """Compute the features of ``images`` not cached yet."""
        todo = sorted({i for i in images if i not in self.mid})
        if self.feature_dir is not None:
            missing = []
            for i in todo:
                path = self.feature_dir / f"{self.ds.records[i].image_id}.safetensors"
                if path.is_file():
                    t = load_file(str(path))
                    self.mid[i], self.high[i] = t["mid"].to(self.device), t["high"].to(self.device)
                else:
                    missing.append(i)
            todo = missing
        for s in range(0, len(todo), batch):
            ids = todo[s : s + batch]
            mid, high = self.levels(torch.cat([self.image(i) for i in ids]))
            for j, i in enumerate(ids):
                self.mid[i], self.high[i] = mid[j].half(), high[j].half()
                if self.feature_dir is not None:
                    state = {"mid": self.mid[i].cpu().contiguous(), "high": self.high[i].cpu().contiguous()}
                    path = self.feature_dir / f"{self.ds.records[i].image_id}.safetensors"
                    atomic_write_bytes(path, save(state))

    def mask(self, i: int) -> np.ndarray:
        if i not in self.masks:
            self.masks[i] = self.ds.load_mask(i)
        return self.masks[i]

    def small_mask(self, i: int) -> np.ndarray:
        """The mask resized (nearest) to the input size."""
        if i not in self.small:
            m = torch.from_numpy(self.mask(i).astype(np.int64))[None, None].float()
            self.small[i] = F.interpolate(m, size=(self.size, self.size), mode="nearest")[0, 0].byte().numpy()
        return self.small[i]

    def clip_prior(self, i: int, cls: int, extra: Sequence[int] = ()) -> torch.Tensor:
        key = (i, cls)
        if key not in self.priors:
            if self.clip is None:
                raise ConfigError("this run has no CLIP prior (set prior=clip or visual+clip and clip_weights)")
            name = "_".join(str(c) for c in (cls, *extra))
            path = self.prior_dir / f"{self.ds.records[i].image_id}_{name}.safetensors" if self.prior_dir else None
            if path is not None and path.is_file():
                self.priors[key] = load_file(str(path))["prior"].to(self.device)
            else:
                self.priors[key] = self.clip(self.image(i), cls, extra).float().detach()
                if path is not None:
                    atomic_write_bytes(path, save({"prior": self.priors[key].cpu().contiguous()}))
        return self.priors[key]

    def batch(
        self,
        episodes: Sequence[Episode],
        forbidden: Sequence[int] = (),
        novel_pixels: str = "exclude",
        with_clip: bool = False,
        query_targets: bool = True,
        query_labels: bool = False,
    ) -> tuple[EpisodeFeatures, torch.Tensor | None]:
        """Features of a batch of 1-way episodes and (``query_targets``) the queries' targets at the input size."""
        self.ensure([e.query for e in episodes] + [s for e in episodes for s in e.supports[0]])
        dev = self.device

        def target(i: int, c: int) -> torch.Tensor:
            return torch.from_numpy(binary_target(self.small_mask(i), c, forbidden, novel_pixels))

        clip = None
        if with_clip:
            clip = torch.stack(
                [
                    self.clip_prior(e.query, e.cls, sorted(self.ds.records[e.query].labels) if query_labels else ())
                    for e in episodes
                ]
            )[:, None]
        ep = EpisodeFeatures(
            q_mid=torch.stack([self.mid[e.query] for e in episodes]).float(),
            q_high=torch.stack([self.high[e.query] for e in episodes]).float(),
            s_mid=torch.stack([torch.stack([self.mid[s] for s in e.supports[0]]) for e in episodes]).float(),
            s_high=torch.stack([torch.stack([self.high[s] for s in e.supports[0]]) for e in episodes]).float(),
            s_target=torch.stack([torch.stack([target(s, e.cls) for s in e.supports[0]]) for e in episodes]).to(dev),
            clip_prior=clip,
        )
        q = torch.stack([target(e.query, e.cls) for e in episodes]).to(dev) if query_targets else None
        return ep, q


def _open_clip_prior(cfg: FewShotConfig, class_names: Sequence[str], device: torch.device) -> ClipPrior | None:
    if cfg.prior not in ("clip", "visual+clip"):
        return None
    clip = load_clip_weights(cfg.clip_weights, cfg.clip_model)
    return ClipPrior(clip, class_names, cfg).to(device)


def _episode_data(
    ds, levels: FeatureLevels, mcfg: FewShotConfig, device: torch.device, backbone: dict, cache: Path | None
) -> EpisodeData:
    """:class:`EpisodeData` of ``ds`` with the method's CLIP prior and, with ``cache``, the on-disk caches."""
    clip = _open_clip_prior(mcfg, ds.class_names, device)
    data_key = {"data": str(Path(ds.root).resolve()), "split": ds.split, "size": mcfg.input_size}
    feature_dir = _cache_folder(cache, {**data_key, **backbone, "output_stride": mcfg.output_stride})
    prior_dir = None
    if clip is not None:
        path, _ = resolve_clip_weights(mcfg.clip_weights, mcfg.clip_model)
        prior_dir = _cache_folder(cache, {
            **data_key, "clip": str(path.resolve()), "clip_digest": file_digest(path),
            **{k: getattr(mcfg, k) for k in ("clip_input", "clip_template", "clip_without_template",
                                            "clip_attn_layers", "clip_box_threshold")},
        })  # fmt: skip
    return EpisodeData(ds, levels, mcfg.input_size, device, clip, feature_dir, prior_dir)


def _levels(backbone: str, weights: Path | None, cfg: FewShotConfig, device: torch.device) -> FeatureLevels:
    # the frozen backbone is rebuilt from its name at eval time: a random one (``tiny``) must come out the same
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return FeatureLevels(create_backbone(backbone, weights, cfg.output_stride)).to(device).eval()


def evaluate_episodes(
    net: FewShotNet,
    data: EpisodeData,
    episodes: Sequence[Episode],
    classes: Sequence[int],
    with_clip: bool,
    batch_size: int = 16,
    query_labels: bool = False,
) -> dict:
    """:class:`FewShotMeter` result of ``net`` on ``episodes`` (predictions upsampled to each query's mask size)."""
    meter = FewShotMeter(classes, data.ds.class_names)
    net.eval()
    with torch.no_grad():
        for s in range(0, len(episodes), batch_size):
            chunk = episodes[s : s + batch_size]
            ep, _ = data.batch(chunk, with_clip=with_clip, query_targets=False, query_labels=query_labels)
            logits = net.predict(ep)
            for e, lg in zip(chunk, logits, strict=True):
                gt = binary_target(data.mask(e.query), e.cls)
                up = F.interpolate(lg[None], size=gt.shape, mode="bilinear", align_corners=True)
                meter.update(e.cls, gt, up[0].argmax(0).cpu().numpy())
    return meter.result()


# ---------------------------------------------------------------------------------------------------- train


def method_config(preset: str, overrides: Sequence[str]) -> FewShotConfig:
    if preset not in PRESETS:
        raise unknown_name("few-shot preset", preset, PRESETS)
    cfg = apply_overrides(PRESETS[preset], overrides)
    cfg.check()
    return cfg


def fewshot_train(cfg: FewShotTrainConfig) -> Path:
    """Train (or skip a complete folder); returns the output folder."""
    out = Path(cfg.out)
    mcfg = method_config(cfg.preset, cfg.set)
    ds = open_dataset(cfg.data, cfg.split, cfg.fmt)
    spec = fold_spec(cfg.folds, ds.num_classes)
    test_classes, train_classes = spec.test_classes(cfg.fold), spec.train_classes(cfg.fold)
    record = {
        **stage_record(cfg, drop=("device", "overwrite", "out", "set", "preset", "feature_cache")),
        "method_config": mcfg,
        "class_names": list(ds.class_names),
    }
    if begin_stage(out, "fewshot-train", record, overwrite=cfg.overwrite) == "complete":
        return out
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    index = dataset_class_index(ds, cfg.min_area)
    train_imgs, val_imgs = split_images(len(ds), mcfg.val_fraction, cfg.seed)
    pool = class_pool(index, train_classes, train_imgs, test_classes, cfg.novel_pixels)
    val_pool = class_pool(index, train_classes, val_imgs, test_classes, cfg.novel_pixels)
    if not pool:
        raise ConfigError(f"fold {cfg.fold}: no training class has 2+ images in {cfg.data}; use more images")
    val_eps = sample_episodes(val_pool, mcfg.val_episodes, 1, seed=cfg.seed + 1) if val_pool else []
    levels = _levels(cfg.backbone, cfg.weights, mcfg, device)
    backbone = {"backbone": cfg.backbone, "weights": str(cfg.weights) if cfg.weights else None}
    data = _episode_data(ds, levels, mcfg, device, backbone, cfg.feature_cache)
    with_clip = data.clip is not None
    net = build_fewshot_net(cfg.method, levels.mid_channels, mcfg).to(device)
    if mcfg.optimizer == "sgd":
        opt = torch.optim.SGD(net.parameters(), lr=mcfg.lr, momentum=mcfg.momentum, weight_decay=mcfg.weight_decay)
    else:
        opt = torch.optim.AdamW(net.parameters(), lr=mcfg.lr, weight_decay=mcfg.weight_decay)
    steps_per_epoch = math.ceil(mcfg.episodes_per_epoch / mcfg.batch_size)
    total = steps_per_epoch * mcfg.epochs
    history, best, step = [], -1.0, 0
    log.info("fewshot train: %s, fold %d (%s), %d training classes (%d images), %d validation episodes",
             cfg.method, cfg.fold, spec.name, len(pool), len({i for v in pool.values() for i in v}),
             len(val_eps))  # fmt: skip
    for epoch in range(mcfg.epochs):
        episodes = sample_episodes(pool, mcfg.episodes_per_epoch, 1, seed=cfg.seed * 7919 + 1000 + epoch)
        net.train()
        sums: dict[str, float] = {}
        for s in range(0, len(episodes), mcfg.batch_size):
            for g in opt.param_groups:
                g["lr"] = mcfg.lr * (1 - step / total) ** 0.9
            ep, q = data.batch(episodes[s : s + mcfg.batch_size], test_classes, cfg.novel_pixels, with_clip)
            losses = net.loss(ep, q)
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            opt.step()
            step += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
        row = {"epoch": epoch + 1, **{k: v / steps_per_epoch for k, v in sums.items()}}
        if val_eps:
            res = evaluate_episodes(net, data, val_eps, sorted(val_pool), with_clip)
            row |= {"val_miou": res["miou"], "val_fb_iou": res["fb_iou"]}
            if res["miou"] > best:
                best = res["miou"]
                save_model(out / MODEL, net)
                row["kept"] = True
        else:
            save_model(out / MODEL, net)
        history.append(row)
        log.info("epoch %d/%d: %s", epoch + 1, mcfg.epochs, {k: round(v, 4) for k, v in row.items() if k != "kept"})
    save_json(out / "history.json", {
        "history": history, "best_val_miou": best if val_eps else None, "train_seconds": time.perf_counter() - t0,
        "train_classes": list(train_classes), "test_classes": list(test_classes),
        "validation": "1-shot episodes of the training classes on images held out of training (val_fraction)",
    })  # fmt: skip
    mark_done(out, {"method": cfg.method, "fold": cfg.fold})
    return out


# ---------------------------------------------------------------------------------------------------- eval


def load_fewshot(model_dir: Path, device: torch.device, overrides: Sequence[str] = ()):
    """``(net, train record, method config, FeatureLevels)`` of a `fewshot train` folder."""
    meta = stage_meta(model_dir)
    if meta.get("stage") != "fewshot-train":
        raise ConfigError(f"{model_dir} is a {meta.get('stage')!r} folder, not one written by `weakseg fewshot train`")
    rec = meta["record"]
    mcfg = apply_overrides(config_from_dict(FewShotConfig, rec["method_config"]), overrides)
    mcfg.check()
    weights = Path(rec["weights"]) if rec.get("weights") else None
    levels = _levels(rec["backbone"], weights, mcfg, device)
    net = build_fewshot_net(rec["method"], levels.mid_channels, mcfg)
    load_model(Path(model_dir) / MODEL, net)
    return net.to(device).eval(), rec, mcfg, levels


def fewshot_eval(cfg: FewShotEvalConfig) -> dict:
    """Score the test episodes; returns (and writes) the metrics."""
    out = Path(cfg.out)
    device = resolve_device(cfg.device)
    net, rec, mcfg, levels = load_fewshot(cfg.model_dir, device, cfg.set)
    data_root = Path(cfg.data) if cfg.data is not None else Path(rec["data"])
    record = {
        **stage_record(cfg, drop=("device", "overwrite", "out", "batch_size", "feature_cache")),
        "data": str(data_root),
        "train_record": rec,
    }
    if begin_stage(out, "fewshot-eval", record, overwrite=cfg.overwrite) == "complete":
        return load_json(out / "metrics.json")
    ds = open_dataset(data_root, cfg.split, cfg.fmt)
    spec = fold_spec(rec["folds"], ds.num_classes)
    classes = spec.test_classes(rec["fold"])
    index = dataset_class_index(ds, rec["min_area"])
    pool = class_pool(index, classes)
    episodes = sample_episodes(pool, cfg.episodes, cfg.shots, seed=cfg.episode_seed)
    backbone = {"backbone": rec["backbone"], "weights": rec.get("weights")}
    data = _episode_data(ds, levels, mcfg, device, backbone, cfg.feature_cache)
    t0 = time.perf_counter()
    data.ensure([e.query for e in episodes] + [s for e in episodes for s in e.supports[0]])
    t1 = time.perf_counter()
    res = evaluate_episodes(net, data, episodes, sorted(pool), data.clip is not None, cfg.batch_size,
                            query_labels=mcfg.clip_query_classes)  # fmt: skip
    t2 = time.perf_counter()
    res |= {
        "method": rec["method"], "prior": mcfg.prior, "fold": rec["fold"], "folds": spec.name, "shots": cfg.shots,
        "split": cfg.split, "episode_seed": cfg.episode_seed, "cross_guided": mcfg.cross_guided,
        "classes_without_episodes": [ds.class_names[c] for c in classes if c not in pool],
        "feature_seconds": t1 - t0, "episode_seconds": t2 - t1,
    }  # fmt: skip
    save_episodes(out / "episodes.json", episodes)
    save_json(out / "metrics.json", res)
    mark_done(out, {"miou": res["miou"], "fb_iou": res["fb_iou"]})
    log.info("fewshot eval: %s fold %d %d-shot: mIoU %.2f, FB-IoU %.2f (%d episodes)", rec["method"], rec["fold"],
             cfg.shots, 100 * res["miou"], 100 * res["fb_iou"], res["episodes"])  # fmt: skip
    return res
