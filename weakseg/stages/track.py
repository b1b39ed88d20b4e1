"""Stages of the ``video`` task (FTMU): ``train-proposer``, ``train-agent``, ``track``.

- ``train-proposer``: the class-agnostic box-conditioned mask network (:class:`weakseg.methods.ftmu.BoxMaskNet`)
  on instance crops of a YOLO-segmentation folder (coco128-seg) and of synthetic videos
  (:mod:`weakseg.data.synthetic_video`); reads instance masks (this is the proposer's own supervision, as
  FTMU's COCO-trained YOLACT). Writes ``model.safetensors``, ``metrics.json``, ``tb/``, ``state/``, ``DONE``.
- ``train-agent``: the actor–critic template-update agent by A2C on synthetic videos and DAVIS training
  sequences (their masks give the IoU rewards). Writes ``agent.safetensors``, ``curve.json`` (per episode:
  video, mean IoU, update rate, losses), ``DONE``.
- ``track``: first-frame box → masks on DAVIS sequences for every tracker mode (box-only, no-update,
  always-update, agent, mask propagation); J, F, J&F (:mod:`weakseg.eval.video`, frames 1..T−2) and
  frames/s per mode, the proposer's bare forward time per frame, and PNG masks of one mode.
  Writes ``metrics.json``, ``masks/<mode>/<sequence>/<frame>.png``, ``DONE``. Masks are read only to score.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from weakseg.config import apply_overrides
from weakseg.data.davis import is_davis, list_sequences, load_clip, open_sequence
from weakseg.data.images import load_rgb
from weakseg.data.palette import save_mask_png
from weakseg.data.synthetic_video import PRESETS as VIDEO_PRESETS
from weakseg.data.synthetic_video import TARGET, make_videos, write_davis
from weakseg.data.yolo import rasterise
from weakseg.data.yolo import scan as yolo_scan
from weakseg.engine.artifacts import load_json, mark_done, save_json
from weakseg.engine.checkpoint import load_model, save_model
from weakseg.engine.dense import DenseTrainConfig, train_dense
from weakseg.engine.device import resolve_device, seed_everything
from weakseg.engine.stage import begin_stage, stage_record
from weakseg.errors import ConfigError, DataError, unknown_name
from weakseg.eval.video import sequence_scores
from weakseg.methods import create_method
from weakseg.methods.base import method_from_record
from weakseg.methods.ftmu import (
    MODES,
    ActorCritic,
    BoxMaskNet,
    FTMUMethod,
    Instance,
    MaskRCNNProposer,
    ProposerCrops,
    Tracker,
    agent_optimizers,
    crop_box,
    crop_frames,
    proposer_step,
    train_agent_episode,
)
from weakseg.refine.tracking import mask_box
from weakseg.stages.io import StageOutput

log = logging.getLogger(__name__)

PROPOSER, AGENT = "model.safetensors", "agent.safetensors"


def ftmu_method(name: str, preset: str, overrides: tuple[str, ...] = ()) -> FTMUMethod:
    method = create_method(name, preset, overrides)
    if not isinstance(method, FTMUMethod):
        raise ConfigError(f"method {name!r} does not run the video task; its methods: ftmu")
    return method


# ---------------------------------------------------------------------------- train-proposer


@dataclass(frozen=True)
class TrainProposerOptions:
    """Proposer training options (nested as ``proposer`` in ``weakseg run --task video``)."""

    preset: str = "cpu"
    """FTMU preset: cpu (minutes on 2 cores), paper (GPU sizes), tiny (tests)"""
    set: tuple[str, ...] = field(default_factory=tuple)
    """KEY=VALUE overrides of the FTMU config, e.g. proposer_steps=300 crop_size=64"""
    coco: Path | None = None
    """YOLO-segmentation folder of real instances (e.g. coco128-seg); None = synthetic shapes only"""
    synth_videos: int = 40
    """synthetic videos whose frames add instances (target, distractor and occluder objects)"""
    synth_every: int = 3
    """take every n-th frame of each synthetic video"""
    workers: int = 0
    """DataLoader worker processes"""


@dataclass(frozen=True, kw_only=True)
class TrainProposerConfig(TrainProposerOptions, StageOutput):
    """Train FTMU's class-agnostic box-conditioned mask proposer. Writes OUT/model.safetensors, metrics.json, DONE."""

    method: str = "ftmu"
    seed: int = 0


def _resize_long(image: np.ndarray, mask: np.ndarray | None, side: int) -> tuple[np.ndarray, np.ndarray | None]:
    h, w = image.shape[:2]
    s = min(1.0, side / max(h, w))
    if s == 1.0:
        return image, mask
    size = (max(1, round(w * s)), max(1, round(h * s)))
    img = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    return img, None if mask is None else np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))


def coco_instances(root: Path, side: int, min_px: int) -> list[Instance]:
    """One :class:`Instance` per polygon of a YOLO-segmentation folder, images read at ``side`` px (longer side)."""
    s = yolo_scan(root, "all")
    if not s.entries:
        raise DataError(f"{root}: no labelled image found (YOLO segmentation layout: images/, labels/, classes.txt)")
    out = []
    for e in s.entries:
        polys = e.extra or []
        if not polys:
            continue
        img = load_rgb(e.image_path)
        h, w = img.shape[:2]
        small, _ = _resize_long(img, None, side)
        for poly in polys:
            m = rasterise([(0, poly[1])], w, h) > 0
            _, m_small = _resize_long(img, m.astype(np.uint8), side)
            m_small = m_small.astype(bool)
            if m_small.sum() >= min_px:
                out.append(Instance(small, m_small))
    return out


def synthetic_instances(n_videos: int, every: int, seed: int, min_px: int) -> list[Instance]:
    """Instances of the objects (target, distractor, occluder) of ``n_videos`` synthetic videos."""
    out = []
    for v in make_videos(VIDEO_PRESETS["default"], n_videos, seed):
        for t in range(0, len(v.frames), max(1, every)):
            for obj in np.unique(v.masks[t]):
                m = v.masks[t] == obj
                if obj and m.sum() >= min_px:
                    out.append(Instance(v.frames[t], m))
    return out


def train_proposer(cfg: TrainProposerConfig) -> Path:
    method = ftmu_method(cfg.method, cfg.preset, cfg.set)
    c = method.cfg
    out = Path(cfg.out)
    record = {**stage_record(cfg), "method_config": c}
    # more steps extend a finished run (the loop resumes from its saved state); ``set`` may differ only by them,
    # since every other override shows up in ``method_config``
    extend = ("method_config.proposer_steps", "set")
    if begin_stage(out, "train-proposer", record, overwrite=cfg.overwrite, may_change=extend) == "complete":
        return out
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    real = coco_instances(Path(cfg.coco), c.image_side, c.min_instance_px) if cfg.coco else []
    synth = synthetic_instances(cfg.synth_videos, cfg.synth_every, 10_000 + cfg.seed, c.min_instance_px)
    data = ProposerCrops(real + synth, c)
    if len(data) == 0:
        raise DataError("no training instance: give --coco DIR or synth_videos > 0")
    log.info("proposer: %d real + %d synthetic instances", len(real), len(synth))
    net = method.build_proposer()
    steps_per_epoch = max(1, len(data) // min(c.proposer_batch, len(data)))
    epochs = max(1, math.ceil(c.proposer_steps / steps_per_epoch))
    t0 = time.perf_counter()
    losses = train_dense(net, data, net.param_groups(), proposer_step,
                         DenseTrainConfig(epochs=epochs, batch_size=c.proposer_batch, lr=c.proposer_lr,
                                          workers=cfg.workers), out, device, cfg.seed)  # fmt: skip
    save_model(out / PROPOSER, net)
    save_json(out / "metrics.json", {"instances_real": len(real), "instances_synthetic": len(synth), "epochs": epochs,
                                     "steps": epochs * steps_per_epoch, "last_epoch_losses": losses,
                                     "seconds": time.perf_counter() - t0})  # fmt: skip
    mark_done(out)
    return out


def load_proposer(folder: str | Path, device: torch.device) -> tuple[FTMUMethod, BoxMaskNet]:
    """The method (with its recorded config) and the trained proposer of a train-proposer folder."""
    folder = Path(folder)
    if not (folder / PROPOSER).is_file():
        raise ConfigError(f"{folder} holds no {PROPOSER}: run train-proposer into it first")
    rec = load_json(folder / "config.json")["record"]
    method = method_from_record(rec["method"], rec["method_config"])
    assert isinstance(method, FTMUMethod)
    net = method.build_proposer(pretrained=False)
    load_model(folder / PROPOSER, net)
    return method, net.to(device).eval()


# ---------------------------------------------------------------------------- train-agent


@dataclass(frozen=True)
class TrainAgentOptions:
    """Agent (A2C) training options (nested as ``agent`` in ``weakseg run --task video``)."""

    set: tuple[str, ...] = field(default_factory=tuple)
    """KEY=VALUE overrides of the FTMU config's tracker/agent knobs, e.g. episodes=200 lr_actor=1e-4"""
    synth_videos: int = 30
    """synthetic training videos (moving, deforming, occluded targets, same-texture distractors)"""
    davis_sequences: tuple[str, ...] = ()
    """DAVIS training sequences (from --data); keep them out of the evaluation sequences"""
    width: int = 240
    """DAVIS frames are read this many px wide"""
    step: int = 2
    """every n-th DAVIS frame"""
    max_frames: int = 30
    """DAVIS frames per episode at most (0 = all)"""


@dataclass(frozen=True, kw_only=True)
class TrainAgentConfig(TrainAgentOptions, StageOutput):
    """Train FTMU's template-update agent by A2C. Writes OUT/agent.safetensors, curve.json, DONE."""

    proposer_dir: Path
    """a train-proposer folder"""
    data: Path | None = None
    """DAVIS root holding the davis_sequences"""
    seed: int = 0


def train_agent(cfg: TrainAgentConfig) -> Path:
    device = resolve_device(cfg.device)
    method, proposer = load_proposer(cfg.proposer_dir, device)
    method = FTMUMethod(apply_overrides(method.cfg, cfg.set))
    c = method.cfg
    out = Path(cfg.out)
    record = {
        **stage_record(cfg),
        "method_config": c,
        "proposer": load_json(Path(cfg.proposer_dir) / "config.json")["record"],
    }
    if begin_stage(out, "train-agent", record, overwrite=cfg.overwrite) == "complete":
        return out
    seed_everything(cfg.seed)
    videos = [(v.name, v.frames, v.masks == TARGET) for v in make_videos(VIDEO_PRESETS["default"], cfg.synth_videos,
                                                                       20_000 + cfg.seed)]  # fmt: skip
    if cfg.davis_sequences:
        if cfg.data is None:
            raise ConfigError("davis_sequences given but no --data (the DAVIS root)")
        for name in cfg.davis_sequences:
            clip = load_clip(open_sequence(cfg.data, name), cfg.width, cfg.step, cfg.max_frames or None)
            for obj in clip.objects:
                videos.append((f"{name}#{obj}", clip.frames, clip.masks == obj))
    if not videos:
        raise ConfigError("no training video: synth_videos > 0 or davis_sequences")
    agent = method.build_agent(proposer).to(device)
    tracker = Tracker(proposer, c, device, agent)
    opts = agent_optimizers(agent, c)
    rng = np.random.default_rng(cfg.seed)
    curve = []
    t0 = time.perf_counter()
    order: list[int] = []
    for ep in range(c.episodes):
        if not order:
            order = rng.permutation(len(videos)).tolist()
        name, frames, gt = videos[order.pop()]
        stats = train_agent_episode(tracker, opts, frames, gt, mask_box(gt[0]))
        curve.append({"episode": ep, "video": name, **stats})
        if ep % 10 == 0:
            log.info("agent episode %d/%d %s: %s", ep + 1, c.episodes, name, stats)
    save_model(out / AGENT, agent)
    save_json(out / "curve.json", {"episodes": curve, "seconds": time.perf_counter() - t0,
                                   "videos": [v[0] for v in videos]})  # fmt: skip
    mark_done(out)
    return out


def load_agent(folder: str | Path, proposer: BoxMaskNet, device: torch.device) -> tuple[FTMUMethod, ActorCritic]:
    folder = Path(folder)
    if not (folder / AGENT).is_file():
        raise ConfigError(f"{folder} holds no {AGENT}: run train-agent into it first")
    rec = load_json(folder / "config.json")["record"]
    method = method_from_record("ftmu", rec["method_config"])
    assert isinstance(method, FTMUMethod)
    agent = method.build_agent(proposer)
    load_model(folder / AGENT, agent)
    return method, agent.to(device).eval()


# ---------------------------------------------------------------------------- track


@dataclass(frozen=True)
class TrackOptions:
    """Tracking / evaluation options (nested as ``track`` in ``weakseg run --task video``)."""

    sequences: tuple[str, ...] = ()
    """evaluation sequences (empty: every sequence of --data not used to train the agent)"""
    modes: tuple[str, ...] = MODES
    """tracker modes to run: box, no-update, always-update, agent, propagate"""
    width: int = 240
    """frames are read (and scored) this many px wide"""
    step: int = 1
    """every n-th frame"""
    max_frames: int = 0
    """frames per sequence at most (0 = all)"""
    save_masks: str = "agent"
    """mode whose masks are written as PNG (empty: none)"""
    proposer_weights: Path | None = None
    """torchvision maskrcnn_resnet50_fpn weights: use Mask R-CNN as the candidate proposer (needs the file)"""


@dataclass(frozen=True, kw_only=True)
class TrackConfig(TrackOptions, StageOutput):
    """First-frame box → masks on DAVIS sequences for each tracker mode; J, F, J&F, frames/s.
    Writes OUT/metrics.json, masks/, DONE."""

    data: Path
    """DAVIS root (JPEGImages/480p, Annotations/480p)"""
    proposer_dir: Path
    agent_dir: Path | None = None
    """a train-agent folder (needed by mode 'agent')"""
    seed: int = 0


def proposer_forward_seconds(proposer: BoxMaskNet, method: FTMUMethod, frame: np.ndarray, box: np.ndarray,
                             device: torch.device, repeats: int = 20) -> float:  # fmt: skip
    """Median wall time (s) of the proposer's bare forward on one crop (batch 1), crop made once."""
    f = torch.from_numpy(np.ascontiguousarray(frame)).to(device).permute(2, 0, 1).float() / 255
    crop = crop_frames(f, crop_box(box, method.cfg.context)[None], method.cfg.crop_size)
    times = []
    with torch.no_grad():
        proposer(crop)
        for _ in range(repeats):
            t = time.perf_counter()
            proposer(crop)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t)
    return float(np.median(times))


def oracle_box_scores(tracker: Tracker, frames: np.ndarray, gt: np.ndarray, void: np.ndarray) -> dict:
    """J and F of the proposer run on every frame's ground-truth box (empty where the object is absent)."""
    preds = np.zeros_like(gt)
    for t in range(len(frames)):
        box = mask_box(gt[t])
        if box is not None:
            probs, _, _, _ = tracker.segment(tracker._frame(frames[t]), box[None])
            preds[t] = probs[0].cpu().numpy() > tracker.cfg.threshold
    sc = sequence_scores(list(gt), list(preds), list(void))
    return {"j": sc.j_mean, "f": sc.f_mean}


def track(cfg: TrackConfig) -> dict:
    for m in cfg.modes:
        if m not in MODES:
            raise unknown_name("tracker mode", m, MODES)
    device = resolve_device(cfg.device)
    method, proposer = load_proposer(cfg.proposer_dir, device)
    agent, trained_on = None, []
    if cfg.agent_dir is not None:
        method, agent = load_agent(cfg.agent_dir, proposer, device)
        trained_on = load_json(Path(cfg.agent_dir) / "config.json")["record"].get("davis_sequences", [])
    if "agent" in cfg.modes and agent is None:
        raise ConfigError("mode 'agent' needs --agent-dir (a train-agent folder); or drop it from --modes")
    if not is_davis(cfg.data):
        raise DataError(f"{cfg.data} is not a DAVIS folder (JPEGImages/480p/<seq>, Annotations/480p/<seq>)")
    names = list(cfg.sequences) or [s for s in list_sequences(cfg.data) if s not in trained_on]
    overlap = sorted(set(names) & set(trained_on))
    if overlap:
        log.warning("evaluation sequences %s were used to train the agent", overlap)
    out = Path(cfg.out)
    record = {**stage_record(cfg), "method_config": method.cfg}
    if begin_stage(out, "track", record, overwrite=cfg.overwrite) == "complete":
        return load_json(out / "metrics.json")
    seed_everything(cfg.seed)
    maskrcnn = MaskRCNNProposer(cfg.proposer_weights, device) if cfg.proposer_weights is not None else None
    tracker = Tracker(proposer, method.cfg, device, agent, maskrcnn)
    per_seq: dict[str, list[dict]] = {m: [] for m in cfg.modes}
    fwd, oracle = [], []
    for name in names:
        clip = load_clip(open_sequence(cfg.data, name), cfg.width, cfg.step, cfg.max_frames or None)
        void = clip.masks == 255
        for obj in clip.objects:
            gt = clip.masks == obj
            box0 = clip.first_box(obj)
            fwd.append(proposer_forward_seconds(proposer, method, clip.frames[0], box0, device))
            oracle.append(oracle_box_scores(tracker, clip.frames, gt, void) | {"sequence": name, "object": obj})
            for mode in cfg.modes:
                res = tracker.run(clip.frames, box0, mode)
                sc = sequence_scores(list(gt), list(res.masks), list(void))
                row = {"sequence": name, "object": obj, "frames": len(clip.frames), "j": sc.j_mean, "f": sc.f_mean,
                       "jf": sc.jf, "seconds": res.seconds, "fps": len(clip.frames) / res.seconds,
                       "update_rate": float(np.mean([a == 0 for a in res.actions])) if res.actions else None,
                       "appearance_rate": float(np.mean([m == "appearance" for m in res.matching]))
                       if res.matching else None}  # fmt: skip
                per_seq[mode].append(row)
                log.info("%s %s#%d: J %.3f F %.3f (%.1f fps)", mode, name, obj, sc.j_mean, sc.f_mean, row["fps"])
                if mode == cfg.save_masks:
                    for t, fid in enumerate(clip.frame_ids):
                        save_mask_png(
                            out / "masks" / mode / name / f"{fid:05d}.png", res.masks[t].astype(np.uint8) * obj
                        )
    fwd_s = float(np.mean(fwd)) if fwd else float("nan")
    summary = {}
    for mode, rows in per_seq.items():
        frames = sum(r["frames"] for r in rows)
        secs = sum(r["seconds"] for r in rows)
        summary[mode] = {"j": float(np.mean([r["j"] for r in rows])), "f": float(np.mean([r["f"] for r in rows])),
                         "jf": float(np.mean([r["jf"] for r in rows])), "fps": frames / secs,
                         "fps_over_proposer_fps": (frames / secs) * fwd_s,
                         "proposer_forwards_per_frame": (secs / frames) / fwd_s}  # fmt: skip
    oracle_summary = {"j": float(np.mean([r["j"] for r in oracle])), "f": float(np.mean([r["f"] for r in oracle])),
                      "per_sequence": oracle, "note": "the proposer on each frame's ground-truth box (reads the masks "
                      "as input): its quality alone, an upper bound of box-driven tracking, not a method"}  # fmt: skip
    result = {"sequences": names, "agent_trained_on": trained_on, "overlap": overlap, "width": cfg.width,
              "step": cfg.step, "proposer_forward_s": fwd_s, "proposer_fps": 1 / fwd_s, "modes": summary,
              "per_sequence": per_seq, "oracle_box": oracle_summary,
              "masks_read": "DAVIS annotations of the evaluation sequences: to score, frame 0's for its box, and "
              "every frame's box for the oracle-box row only"}  # fmt: skip
    result["table"] = "\n".join(
        [f"{'mode':14s}     J     F   J&F    fps"]
        + [
            f"{m:14s} {100 * s['j']:5.1f} {100 * s['f']:5.1f} {100 * s['jf']:5.1f} {s['fps']:6.1f}"
            for m, s in summary.items()
        ]
    )
    save_json(out / "metrics.json", result)
    mark_done(out)
    return result


def synthetic_davis(folder: str | Path, n: int = 4, seed: int = 0) -> Path:
    """``n`` synthetic videos in the DAVIS layout under ``folder`` (skipped when already there): the video
    task's evaluation data when no DAVIS folder is given."""
    folder = Path(folder)
    if not is_davis(folder):
        for v in make_videos(VIDEO_PRESETS["default"], n, 30_000 + seed):
            write_davis(v, folder)
    return folder
