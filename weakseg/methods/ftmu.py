"""FTMU: box-initialised video object segmentation by template matching and a learned template-update agent.

Paper: Sun, Xiao, Lim, Zhang, Zhao, "Fast Template Matching and Update for Video Object Tracking and
Segmentation", CVPR 2020 (arXiv 2004.07538). Clean-room from the paper's description and
``/shared/method-notes`` §4 (the official repository has no licence: nothing is copied from it).

Per frame ``t ≥ 1`` and target (:class:`Tracker`):

1. **search region**: the template box enlarged by ``search_ratio`` per side
   (:func:`~weakseg.refine.tracking.search_region`);
2. **candidates**: an instance-mask *proposer* segments instances in the region. No COCO-pretrained instance
   segmenter can be downloaded here, so the default proposer is :class:`BoxMaskNet`, a class-agnostic
   box-conditioned mask network (crop around a box → the mask of the object the box frames), run on boxes
   placed over the region (:func:`~weakseg.refine.tracking.candidate_boxes`), its masks de-duplicated by
   mask NMS to ``top_k`` instances; :class:`MaskRCNNProposer` uses a torchvision Mask R-CNN from user weights;
3. **matching**: the candidate with the highest mask IoU with the template mask (fast), or — after
   ``appearance_after`` consecutive "keep" actions, until the next update — the one whose masked-crop
   embedding is most cosine-similar to the template's (our reading of "matching chosen from the action
   history", method notes §4.1);
4. **agent**: an actor–critic MLP on ``s = [φ(crop), φ(crop ⊙ mask)]`` (φ: global-average-pooled backbone
   features; plus three scalars, see :func:`agent_state`) picks **update** (the template becomes the matched
   prediction) or **keep**. The frame's output is the matched candidate whatever the action.
5. **learning** (A2C, :func:`train_agent_episode`): reward ``100 · IoU(pred, gt)³``, returns with γ = 0.99,
   advantage ``R − V``; the proposer and φ stay frozen.

Baselines of the same tracker (``mode``): ``box`` (the box propagated by IoU matching, output filled),
``no-update`` (frame-0 template forever), ``always-update``, ``agent``, and ``propagate`` (no candidates and
no matching: the proposer run once on the previous mask's box, i.e. mask propagation).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from torchvision.ops import roi_align

from weakseg.backbones import Backbone, create_backbone
from weakseg.engine.checkpoint import load_weights_file
from weakseg.errors import ConfigError, missing_extra, unknown_name
from weakseg.losses.dice import dice_loss
from weakseg.methods.base import Method, register_method
from weakseg.refine.tracking import (
    a2c_losses,
    candidate_boxes,
    discounted_returns,
    enlarge_box,
    fill_box,
    iou_reward,
    mask_box,
    mask_iou,
    mask_nms,
    match_by_appearance,
    match_by_iou,
    search_region,
)

MODES = ("box", "no-update", "always-update", "agent", "propagate")
UPDATE, KEEP = 0, 1  # the agent's actions (FTMU's order)


@dataclass(frozen=True)
class FTMUConfig:
    """Every knob of FTMU: proposer, tracker and agent."""

    # ---- proposer (box-conditioned mask network)
    backbone: str = "efficientnet-lite0"
    """proposer encoder (a weakseg backbone name; φ of the agent's state is its pooled output)"""
    encoder_stride: int = 16
    """output stride of the proposer's encoder (8 or 16)"""
    frozen_stages: int = 4
    """encoder stages kept at their ImageNet weights (EfficientNet-Lite0 has 7; the tiny backbone needs 0)"""
    crop_size: int = 64
    """side (px) of the square crop the proposer sees"""
    context: float = 0.25
    """the crop is the box enlarged by this × its width (height) on each side"""
    proposer_steps: int = 400
    """proposer training steps"""
    proposer_batch: int = 12
    proposer_lr: float = 1e-3
    """AdamW learning rate of the encoder (the decoder learns at 10×)"""
    box_jitter: float = 0.15
    """training boxes: centre shifted by N(0, jitter) × size, size scaled by exp(N(0, jitter))"""
    min_instance_px: int = 64
    """instances smaller than this (px, after the image is read at ``image_side``) are not trained on"""
    image_side: int = 320
    """training images are read with their longer side at most this (px)"""
    # ---- tracker
    search_ratio: float = 0.4
    """search region = template box enlarged by this × its size per side (FTMU default 0.4)"""
    shifts: tuple[float, ...] = (-0.3, 0.0, 0.3)
    """candidate boxes: the template box moved by these × its size in x and y (every pair)"""
    scales: tuple[float, ...] = (0.75, 1.33)
    """candidate boxes: the template box rescaled by these about its centre"""
    top_k: int = 5
    """instances kept after mask NMS (FTMU keeps YOLACT's top 5)"""
    nms_iou: float = 0.7
    """mask IoU above which a lower-scored candidate is a duplicate"""
    threshold: float = 0.5
    """probability threshold of a mask"""
    appearance_after: int = 3
    """switch to appearance matching after this many consecutive "keep" actions (0: IoU matching only)"""
    # ---- agent
    hidden: int = 256
    """width of the actor's and critic's first hidden layer (the second is hidden / 4)"""
    gamma: float = 0.99
    lr_actor: float = 1e-4
    lr_critic: float = 5e-4
    reward_scale: float = 100.0
    """reward = scale × IoU^power (FTMU: 100 · IoU³)"""
    reward_power: float = 3.0
    return_norm: float = 100.0
    """returns are divided by this in the losses (keeps the critic's targets near 1)"""
    episodes: int = 120
    """A2C episodes (one episode = one training video, one target)"""
    entropy: float = 0.01
    """entropy bonus weight (keeps the policy from collapsing early)"""

    def check(self) -> None:
        if self.crop_size < 16 or self.crop_size % 8:
            raise ConfigError(f"crop_size must be a multiple of 8 and >= 16, got {self.crop_size}")
        if self.top_k < 1 or not 0 < self.threshold < 1 or self.search_ratio < 0:
            raise ConfigError("need top_k >= 1, 0 < threshold < 1 and search_ratio >= 0")


PRESETS = {
    "cpu": FTMUConfig(),
    # the paper's agent sizes and learning rates (ResNet-50 φ of 2,048 channels, MLP 4096→2048→512→2);
    # the proposer is still ours
    "paper": FTMUConfig(
        hidden=2048, lr_actor=1e-6, lr_critic=5e-6, entropy=0.0, episodes=20000, crop_size=128, proposer_steps=20000
    ),  # fmt: skip
    "tiny": FTMUConfig(
        backbone="tiny",
        frozen_stages=0,
        crop_size=32,
        proposer_steps=2,
        proposer_batch=4,
        hidden=16,
        episodes=2,
        image_side=96,
        min_instance_px=16,
    ),  # fmt: skip
}


# ---------------------------------------------------------------------------- crops


def crop_box(box: np.ndarray, context: float) -> np.ndarray:
    """The crop window of a box: the box enlarged by ``context`` × its size per side (not cut to the frame)."""
    b = np.asarray(box, np.float32).copy()
    b[2], b[3] = max(b[2], b[0] + 1), max(b[3], b[1] + 1)  # at least one pixel
    return enlarge_box(b, context)


def crop_frames(frame: torch.Tensor, windows: np.ndarray, size: int) -> torch.Tensor:
    """Bilinear crops ``[K, C, size, size]`` of ``frame [C, H, W]`` over ``windows [K, 4]`` (outside = 0)."""
    rois = torch.as_tensor(np.asarray(windows, np.float32), device=frame.device)
    rois = torch.cat([rois.new_zeros(len(rois), 1), rois], 1)
    return roi_align(frame[None], rois, (size, size), spatial_scale=1.0, sampling_ratio=2, aligned=True)


def paste_masks(probs: torch.Tensor, windows: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    """Crop probabilities ``[K, S, S]`` over ``windows [K, 4]`` back into frame coordinates → ``[K, H, W]``."""
    h, w = shape
    out = probs.new_zeros(len(probs), h, w)
    for k, win in enumerate(np.asarray(windows, np.float64)):
        x0, y0 = max(0, int(math.floor(win[0]))), max(0, int(math.floor(win[1])))
        x1, y1 = min(w, int(math.ceil(win[2]))), min(h, int(math.ceil(win[3])))
        if x1 <= x0 or y1 <= y0:
            continue
        xs = (torch.arange(x0, x1, device=probs.device, dtype=probs.dtype) + 0.5 - win[0]) / (win[2] - win[0]) * 2 - 1
        ys = (torch.arange(y0, y1, device=probs.device, dtype=probs.dtype) + 0.5 - win[1]) / (win[3] - win[1]) * 2 - 1
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)[None]
        out[k, y0:y1, x0:x1] = F.grid_sample(probs[k][None, None], grid, align_corners=False)[0, 0]
    return out


# ---------------------------------------------------------------------------- the proposer


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class BoxMaskNet(nn.Module):
    """Class-agnostic box-conditioned mask network: a crop around a box → the mask of the object it frames.

    The box is always the central ``1 / (1 + 2·context)`` of the crop (as a Mask R-CNN mask head sees its
    RoI); a convolutional net hardly knows where it is in its input, so the decoder is also given the box as a
    map (1 inside, 0 outside) at every scale. ``forward(crops [B, 3, S, S] in [0, 1])`` →
    ``(logits [B, 1, S, S], φ [B, C])``, φ = the encoder's global-average-pooled output. The decoder fuses the
    encoder's map with a stride-4 branch on the pixels (the encoder gives no intermediate maps).
    """

    def __init__(self, backbone: Backbone, context: float = 0.25, width: int = 64):
        super().__init__()
        self.backbone = backbone
        self.context = context
        self.reduce = nn.Sequential(nn.Conv2d(backbone.out_channels, width, 1), nn.ReLU(inplace=True))
        self.deep = nn.Sequential(_conv(width + 1, width), _conv(width, width))
        self.shallow = nn.Sequential(_conv(4, 24, 2), _conv(24, 24), _conv(24, 32, 2), _conv(32, 32))
        self.head = nn.Sequential(_conv(width + 32 + 1, 48), _conv(48, 32), nn.Conv2d(32, 1, 1))

    def box_map(self, like: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``[B, 1, h, w]``: 1 over the box's place in the crop (cell centres inside it), 0 elsewhere."""
        lo, hi = self.context / (1 + 2 * self.context), (1 + self.context) / (1 + 2 * self.context)
        ys = (torch.arange(size[0], device=like.device, dtype=like.dtype) + 0.5) / size[0]
        xs = (torch.arange(size[1], device=like.device, dtype=like.dtype) + 0.5) / size[1]
        m = ((ys >= lo) & (ys <= hi))[:, None] & ((xs >= lo) & (xs <= hi))[None, :]
        return m.to(like.dtype).expand(like.shape[0], 1, *size)

    @property
    def out_channels(self) -> int:
        return self.backbone.out_channels

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        """φ ``[B, C]`` of crops ``[B, 3, S, S]``."""
        return self.backbone(crops).mean((2, 3))

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.backbone(crops)
        d = self.deep(torch.cat([self.reduce(f), self.box_map(crops, f.shape[-2:])], 1))
        s = self.shallow(torch.cat([crops, self.box_map(crops, crops.shape[-2:])], 1))
        d = F.interpolate(d, size=s.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.head(torch.cat([d, s, self.box_map(crops, s.shape[-2:])], 1))
        logits = F.interpolate(logits, size=crops.shape[-2:], mode="bilinear", align_corners=False)
        return logits, f.mean((2, 3))

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        enc = [p for p in self.backbone.parameters() if p.requires_grad]
        new = [p for n, p in self.named_parameters() if not n.startswith("backbone.")]
        return enc, new


def build_proposer(cfg: FTMUConfig, pretrained: bool = True) -> BoxMaskNet:
    """The proposer of ``cfg`` (ImageNet weights when the backbone has them; early stages frozen)."""
    pretrained = pretrained and cfg.backbone != "tiny"
    backbone = create_backbone(cfg.backbone, output_stride=cfg.encoder_stride, pretrained=pretrained)
    backbone.freeze_early(cfg.frozen_stages)
    return BoxMaskNet(backbone, cfg.context)


def proposer_loss(logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """BCE + soft Dice of mask logits ``[B, 1, S, S]`` against a binary ``target [B, S, S]``."""
    bce = F.binary_cross_entropy_with_logits(logits[:, 0], target)
    p = logits[:, 0].sigmoid()
    d = dice_loss(torch.stack([1 - p, p], 1), target.long())
    return {"loss": bce + d, "bce": bce.detach(), "dice": d.detach()}


@dataclass(frozen=True)
class Instance:
    """One training instance: an image ``uint8 [H, W, 3]`` and its object's ``bool [H, W]`` mask."""

    image: np.ndarray
    mask: np.ndarray


class ProposerCrops(Dataset):
    """Training crops of the proposer: for instance ``i``, a jittered box of its mask → ``(crop, target)``.

    ``crop float [3, S, S]`` in [0, 1] over :func:`crop_box` of the jittered box (flipped at random), ``target
    float [S, S]``: the instance's mask in the crop (other objects are background). Randomness comes from
    torch's global generator (seeded per epoch by the training loop).
    """

    def __init__(self, instances: Sequence[Instance], cfg: FTMUConfig):
        self.instances, self.cfg = list(instances), cfg
        self.boxes = [mask_box(inst.mask) for inst in self.instances]

    def __len__(self) -> int:
        return len(self.instances)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        c, inst, box = self.cfg, self.instances[i], self.boxes[i]
        j = torch.randn(4).numpy() * c.box_jitter
        w, h = box[2] - box[0], box[3] - box[1]
        cx, cy = (box[0] + box[2]) / 2 + j[0] * w, (box[1] + box[3]) / 2 + j[1] * h
        w, h = w * math.exp(j[2]), h * math.exp(j[3])
        window = crop_box(np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]), c.context)
        img = torch.tensor(inst.image).permute(2, 0, 1).float() / 255
        both = torch.cat([img, torch.from_numpy(inst.mask)[None].float()])
        crop = crop_frames(both, window[None], c.crop_size)[0]
        if torch.rand(()) < 0.5:
            crop = crop.flip(-1)
        return crop[:3], (crop[3] > 0.5).float()


def proposer_step(net: nn.Module, batch: Any, epoch: int) -> dict[str, torch.Tensor]:
    crops, target = batch
    logits, _ = net(crops)
    return proposer_loss(logits, target)


class MaskRCNNProposer:
    """Candidates from a torchvision Mask R-CNN (ResNet-50 FPN) with user weights, class ignored.

    ``weights``: a ``.safetensors``/``.pth`` state dict of ``maskrcnn_resnet50_fpn`` (e.g. torchvision's
    COCO file, converted). ``__call__(frame [3, H, W], region [4], top_k)`` → ``(masks float [N, H, W],
    scores [N])`` of the detections inside the search region, best first.
    """

    def __init__(self, weights: str | Path | None, device: torch.device):
        if weights is None or not Path(weights).is_file():
            raise ConfigError(
                f"Mask R-CNN proposer: weights file {weights!r} not found; download torchvision's "
                "maskrcnn_resnet50_fpn COCO weights on a machine with internet access and pass their path "
                "(--set proposer_weights=/path/maskrcnn_resnet50_fpn.pth), or use the default box-mask proposer"
            )
        try:
            from torchvision.models.detection import maskrcnn_resnet50_fpn
        except ImportError as e:  # pragma: no cover - torchvision ships with the core install
            raise missing_extra("torchvision", "dev", "the Mask R-CNN proposer") from e
        self.net = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
        self.net.load_state_dict(load_weights_file(weights))
        self.net.eval().to(device)

    @torch.no_grad()
    def __call__(self, frame: torch.Tensor, region: np.ndarray, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        x0, y0 = int(region[0]), int(region[1])
        x1, y1 = max(x0 + 1, int(math.ceil(region[2]))), max(y0 + 1, int(math.ceil(region[3])))
        det = self.net([frame[:, y0:y1, x0:x1]])[0]
        masks = frame.new_zeros(len(det["masks"][:top_k]), *frame.shape[-2:])
        masks[:, y0:y1, x0:x1] = det["masks"][:top_k, 0]
        return masks, det["scores"][:top_k]


# ---------------------------------------------------------------------------- the agent


class ActorCritic(nn.Module):
    """FTMU's policy: actor MLP ``state → hidden → hidden/4 → 2`` (update, keep) and a critic of the same shape → 1."""

    def __init__(self, state_dim: int, hidden: int):
        super().__init__()

        def mlp(out: int) -> nn.Sequential:
            return nn.Sequential(nn.Linear(state_dim, hidden), nn.ReLU(), nn.Linear(hidden, max(1, hidden // 4)),
                                 nn.ReLU(), nn.Linear(max(1, hidden // 4), out))  # fmt: skip

        self.actor, self.critic = mlp(2), mlp(1)

    def forward(self, state: torch.Tensor) -> tuple[torch.distributions.Categorical, torch.Tensor]:
        return torch.distributions.Categorical(logits=self.actor(state)), self.critic(state)[..., 0]


N_EXTRAS = 3


def agent_state(phi_crop: torch.Tensor, phi_masked: torch.Tensor, iou_template: float, score: float,
                area_ratio: float) -> torch.Tensor:  # fmt: skip
    """State ``[2C + 3]``: L2-normalised φ(crop) and φ(crop ⊙ mask) (FTMU's state), plus three scalars we add —
    the matched candidate's mask IoU with the template, its proposer score and ``|log(area / template area)|``
    (clipped to 3) — which tell the agent how far the prediction moved from the template."""
    extras = phi_crop.new_tensor([iou_template, score, min(3.0, abs(math.log(max(area_ratio, 1e-6))))])
    return torch.cat([F.normalize(phi_crop, dim=0), F.normalize(phi_masked, dim=0), extras])


# ---------------------------------------------------------------------------- the tracker


@dataclass
class Template:
    mask: np.ndarray  # bool [H, W]
    box: np.ndarray  # float [4]
    emb: torch.Tensor | None  # φ(crop ⊙ mask) [C], for appearance matching


@dataclass
class TrackResult:
    """Masks ``bool [T, H, W]`` of one target plus, per frame ``t ≥ 1``, what the tracker did."""

    masks: np.ndarray
    actions: list[int] = field(default_factory=list)  # UPDATE / KEEP per frame (always/no-update: implied)
    matching: list[str] = field(default_factory=list)  # "iou" / "appearance" / "none" per frame
    template_iou: list[float] = field(default_factory=list)  # matched candidate vs template mask IoU
    rewards: list[float] = field(default_factory=list)  # with gt only
    log_probs: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    entropies: list[torch.Tensor] = field(default_factory=list)
    seconds: float = 0.0  # wall time of frames 1..T-1 (frame 0's template included)


class Tracker:
    """Runs one target through a video (see the module docstring); ``mode`` ∈ :data:`MODES`."""

    def __init__(self, proposer: BoxMaskNet, cfg: FTMUConfig, device: torch.device, agent: ActorCritic | None = None,
                 maskrcnn: MaskRCNNProposer | None = None):  # fmt: skip
        self.proposer, self.cfg, self.device, self.agent, self.maskrcnn = proposer, cfg, device, agent, maskrcnn
        self.proposer.eval()

    # -- proposer on boxes
    @torch.no_grad()
    def segment(self, frame: torch.Tensor, boxes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                         torch.Tensor]:  # fmt: skip
        """Proposer on ``boxes [K, 4]`` → ``(probs [K, H, W] in frame coordinates, scores [K], φ [K, C],
        crop-space masked crops [K, 3, S, S])``; a candidate's score is its mean probability over its mask."""
        c = self.cfg
        windows = np.stack([crop_box(b, c.context) for b in boxes])
        crops = crop_frames(frame, windows, c.crop_size)
        logits, phi = self.proposer(crops)
        p = logits[:, 0].sigmoid()
        on = p > c.threshold
        scores = (p * on).sum((1, 2)) / on.sum((1, 2)).clamp_min(1)
        masked = crops * on[:, None]
        return paste_masks(p, windows, frame.shape[-2:]), scores, phi, masked

    @torch.no_grad()
    def embed(self, masked: torch.Tensor) -> torch.Tensor:
        return self.proposer.embed(masked)

    def candidates(self, frame: torch.Tensor, template: Template) -> dict[str, Any]:
        """Instances in the search region: ``masks bool [N, H, W]``, ``scores [N]``, ``phi [N, C]``, ``masked``."""
        c = self.cfg
        shape = tuple(frame.shape[-2:])
        region = search_region([template.box], c.search_ratio, shape)
        if self.maskrcnn is not None:
            probs, scores = self.maskrcnn(frame, region, c.top_k)
            masks = (probs > c.threshold).cpu().numpy()
            keep = [i for i in range(len(masks)) if masks[i].any()]
            boxes = np.stack([mask_box(masks[i]) for i in keep]) if keep else np.zeros((0, 4), np.float32)
            if not keep:
                return {"masks": masks[:0], "scores": scores[:0], "phi": None, "masked": None}
            _, _, phi, masked = self.segment(frame, boxes)  # φ from the box-mask network's encoder
            return {"masks": masks[keep], "scores": scores[keep], "phi": phi, "masked": masked}
        boxes = candidate_boxes(template.box, region, c.shifts, c.scales)
        probs, scores, phi, masked = self.segment(frame, boxes)
        masks = (probs > c.threshold).cpu().numpy()
        keep = mask_nms(masks, scores.cpu().numpy(), c.nms_iou, c.top_k)
        return {"masks": masks[keep], "scores": scores[keep], "phi": phi[keep], "masked": masked[keep]}

    def _frame(self, image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1).float() / 255

    def run(self, frames: np.ndarray, box0: np.ndarray, mode: str = "agent", gt: np.ndarray | None = None,
            sample: bool = False) -> TrackResult:  # fmt: skip
        """Track the object framed by ``box0`` through ``frames uint8 [T, H, W, 3]``.

        ``gt bool [T, H, W]`` (training): per-frame rewards. ``sample``: the agent samples its actions (training)
        instead of taking the most likely one; log-probabilities, values and entropies are kept with gradients.
        """
        if mode not in MODES:
            raise unknown_name("tracker mode", mode, MODES)
        if mode == "agent" and self.agent is None:
            raise ConfigError("mode 'agent' needs a trained agent (train-agent's folder); other modes need none")
        c = self.cfg
        T, H, W = frames.shape[:3]
        out = np.zeros((T, H, W), bool)
        res = TrackResult(out)
        start = time.perf_counter()
        frame = self._frame(frames[0])
        probs, _, _, masked = self.segment(frame, np.asarray(box0, np.float32)[None])
        m0 = probs[0].cpu().numpy() > c.threshold
        if not m0.any():
            m0 = fill_box(box0, (H, W))
        need_emb = mode == "agent" and c.appearance_after > 0
        template = Template(m0, mask_box(m0), self.embed(masked)[0] if need_emb else None)
        out[0] = fill_box(box0, (H, W)) if mode == "box" else m0
        prev, keeps = m0, 0
        for t in range(1, T):
            frame = self._frame(frames[t])
            if mode == "propagate":
                box = mask_box(prev)
                box = template.box if box is None else box
                probs, _, _, _ = self.segment(frame, box[None])
                pred = probs[0].cpu().numpy() > c.threshold
                pred = pred if pred.any() else prev
                out[t], prev = pred, pred
                template = Template(pred, mask_box(pred), None)
                continue
            cand = self.candidates(frame, template)
            if len(cand["masks"]) == 0:  # nothing found: keep the last prediction (never abort the sequence)
                out[t] = out[t - 1]
                res.matching.append("none")
                continue
            use_app = need_emb and keeps >= c.appearance_after
            if use_app:
                embs = self.embed(cand["masked"])
                i, _ = match_by_appearance(template.emb, embs)
            else:
                i, _ = match_by_iou(template.mask, cand["masks"])
            res.matching.append("appearance" if use_app else "iou")
            pred = cand["masks"][i]
            iou_t = float(mask_iou(pred[None], template.mask[None])[0, 0])
            res.template_iou.append(iou_t)
            out[t] = fill_box(mask_box(pred), (H, W)) if mode == "box" else pred
            if gt is not None:
                res.rewards.append(iou_reward(pred, gt[t], c.reward_scale, c.reward_power))
            if mode == "agent":
                emb_masked = embs[i] if use_app else self.embed(cand["masked"][i : i + 1])[0]
                area_ratio = (pred.sum() + 1) / (template.mask.sum() + 1)
                state = agent_state(cand["phi"][i], emb_masked, iou_t, float(cand["scores"][i]), float(area_ratio))
                with torch.set_grad_enabled(sample):
                    dist, value = self.agent(state)
                    action = dist.sample() if sample else dist.probs.argmax()
                if sample:
                    res.log_probs.append(dist.log_prob(action))
                    res.values.append(value)
                    res.entropies.append(dist.entropy())
                action = int(action)
                if action == UPDATE:
                    template = Template(pred, mask_box(pred), emb_masked)
                    keeps = 0
                else:
                    keeps += 1
            else:
                action = KEEP if mode == "no-update" else UPDATE
                if action == UPDATE:
                    template = Template(pred, mask_box(pred), None)
            res.actions.append(action)
        res.seconds = time.perf_counter() - start
        return res


def train_agent_episode(tracker: Tracker, optimizers: Sequence[torch.optim.Optimizer], frames: np.ndarray,
                        gt: np.ndarray, box0: np.ndarray) -> dict[str, float]:  # fmt: skip
    """One A2C episode: track with sampled actions, returns from the IoU rewards, one step of actor and critic.

    Returns the episode's mean IoU-reward, update rate and losses (empty dict: no decision was taken)."""
    c = tracker.cfg
    res = tracker.run(frames, box0, "agent", gt=gt, sample=True)
    if not res.log_probs:
        return {}
    # rewards of frames where the agent acted (a frame with no candidate has neither)
    returns = discounted_returns(res.rewards, c.gamma) / c.return_norm
    losses = a2c_losses(torch.stack(res.log_probs), torch.stack(res.values), returns, torch.stack(res.entropies))
    loss = losses["actor"] + losses["critic"] - c.entropy * losses["entropy"]
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    for opt in optimizers:
        opt.step()
    return {
        "reward": float(np.mean(res.rewards)),
        "iou": float(np.mean([(r / c.reward_scale) ** (1 / c.reward_power) for r in res.rewards])),
        "update_rate": float(np.mean([a == UPDATE for a in res.actions])),
        "actor": float(losses["actor"].detach()),
        "critic": float(losses["critic"].detach()),
        "entropy": float(losses["entropy"].detach()),
    }


def agent_optimizers(agent: ActorCritic, cfg: FTMUConfig) -> list[torch.optim.Optimizer]:
    """FTMU's two Adam optimisers (actor, critic)."""
    return [torch.optim.Adam(agent.actor.parameters(), lr=cfg.lr_actor),
            torch.optim.Adam(agent.critic.parameters(), lr=cfg.lr_critic)]  # fmt: skip


@register_method
class FTMUMethod(Method):
    """FTMU on the ``video`` task; hooks used by ``train-proposer``, ``train-agent`` and ``track``."""

    name = "ftmu"
    task = "video"
    description = "FTMU: template matching + actor-critic template update, first-frame box -> masks (video)"
    paper = "Sun et al., CVPR 2020"
    Config = FTMUConfig
    presets = PRESETS

    @property
    def epochs(self) -> int:
        return 1

    def build_proposer(self, pretrained: bool = True) -> BoxMaskNet:
        return build_proposer(self.cfg, pretrained)

    def build_agent(self, proposer: BoxMaskNet) -> ActorCritic:
        return ActorCritic(2 * proposer.out_channels + N_EXTRAS, self.cfg.hidden)

    def with_overrides(self, **kw: Any) -> FTMUMethod:
        return FTMUMethod(dataclasses.replace(self.cfg, **kw))
