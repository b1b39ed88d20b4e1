"""The shared CLIP image core used by CLIP-ES CAMs, WeCLIP and the PI-CLIP few-shot priors.

Three things live here, in one place so that no method carries its own patched copy of CLIP:

- **Loading by path** (:func:`load_clip`): OpenAI's ``ViT-B-16.pt`` (a TorchScript archive or a plain state dict,
  the file every CLIP-ES-derived repo loads) and open_clip checkpoints (``.pt``/``.bin``/``.safetensors`` with the
  open_clip model name given by the user). Nothing is ever downloaded: a missing file is a
  :class:`~weakseg.errors.ConfigError` that says where to get it.
- **Tiny random CLIPs** (:class:`TinyClipConfig`, :func:`tiny_clip`) for tests and for the later "embedded CLIP"
  pretraining: the real BPE tokenizer and vocabulary, a narrow ViT and text tower.
- **A dense ViT wrapper** (:class:`ClipVisual`) over open_clip's ``VisionTransformer`` (OpenAI layout: ``conv1``,
  ``class_embedding``, ``positional_embedding``, ``ln_pre``, ``transformer.resblocks``, ``ln_post``, ``proj``):
  any input size whose sides are multiples of the patch size (the patch position embeddings are resampled per
  token grid, as CLIP-ES's ``upsample_pos_emb`` does), the tokens of chosen blocks, each block's head-averaged
  attention map recomputed from its qkv projection, the image embedding and the projected patch tokens.

The text side (prompt sets, class embeddings, their cache) is in :mod:`weakseg.backbones.clip_text`.
``open_clip`` (pip extra ``clip``) is imported inside the functions that need it.

Reference: Lin et al., "CLIP Is Also an Efficient Segmenter" (CLIP-ES), CVPR 2023; Radford et al., "Learning
Transferable Visual Models From Natural Language Supervision", ICML 2021.
"""

from __future__ import annotations

import hashlib
import pickle
import warnings
import weakref
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from weakseg.errors import ConfigError, missing_extra

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "TINY_CLIP_NAME",
    "ClipTokens",
    "ClipVisual",
    "TinyClipConfig",
    "clip_fingerprint",
    "load_clip",
    "read_clip_state_dict",
    "resample_pos_embed",
    "tiny_clip",
    "tokens_to_map",
]

# OpenAI CLIP's pixel statistics (RGB in [0, 1]); every CLIP checkpoint we load was trained with them.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

TINY_CLIP_NAME = "weakseg-tiny"
OPENAI_NAME = "openai"

# Entries of OpenAI's TorchScript state dict (and of a scripted open_clip model) that are not weights.
_NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def import_open_clip():
    """The ``open_clip`` module, or a :class:`~weakseg.errors.MissingExtraError` naming the ``clip`` extra."""
    try:
        import open_clip
    except ImportError as e:
        raise missing_extra("open_clip_torch", "clip", "CLIP models") from e
    return open_clip


# ----------------------------------------------------------------------------------------------------------------
# Tiny random CLIP


@dataclass(frozen=True)
class TinyClipConfig:
    """A small open_clip ViT CLIP with OpenAI's layout (QuickGELU, 64-wide attention heads, causal text tower).

    Heads are ``width // 64`` in both towers, as in OpenAI's checkpoints, so a tiny model saved as a plain state
    dict loads back through the OpenAI path of :func:`load_clip` too. The vocabulary stays at the real BPE
    tokenizer's 49,408 entries (open_clip's tokenizer cannot be shrunk), so the token embedding dominates the
    ~4 M parameters of the default.
    """

    embed_dim: int = 64
    """Width of the joint image-text embedding space."""
    image_size: int = 64
    """Native input side in pixels; the native token grid is ``image_size / patch_size`` per side."""
    patch_size: int = 16
    """Side of one image patch (= one token) in pixels."""
    vision_width: int = 128
    """Width of the ViT tokens (2 heads of 64)."""
    vision_layers: int = 4
    """Number of ViT blocks."""
    text_width: int = 64
    """Width of the text transformer (1 head of 64)."""
    text_layers: int = 2
    """Number of text transformer blocks."""
    context_length: int = 77
    """Text tokens per prompt (CLIP's 77)."""
    vocab_size: int = 49408
    """BPE vocabulary size; must match open_clip's tokenizer."""

    def model_cfg(self) -> dict[str, Any]:
        """The open_clip model config (the layout of open_clip's ``model_configs/*.json``)."""
        return {
            "embed_dim": self.embed_dim,
            "quick_gelu": True,
            "vision_cfg": {
                "image_size": self.image_size,
                "patch_size": self.patch_size,
                "width": self.vision_width,
                "layers": self.vision_layers,
                "head_width": 64,
            },
            "text_cfg": {
                "context_length": self.context_length,
                "vocab_size": self.vocab_size,
                "width": self.text_width,
                "heads": max(1, self.text_width // 64),
                "layers": self.text_layers,
            },
        }


def _build_clip(model_cfg: Mapping[str, Any]) -> nn.Module:
    """An open_clip ``CLIP`` with random weights from a model config dict; fp32, eval mode, no download."""
    open_clip = import_open_clip()
    cfg = dict(model_cfg)
    vision = open_clip.CLIPVisionCfg(**cfg.pop("vision_cfg"))
    text = open_clip.CLIPTextCfg(**cfg.pop("text_cfg"))
    try:
        model = open_clip.CLIP(vision_cfg=vision, text_cfg=text, **cfg)
    except TypeError as e:
        raise ConfigError(f"invalid open_clip model config {dict(model_cfg)!r}: {e}") from e
    return model.float().eval()


def tiny_clip(seed: int = 0, config: TinyClipConfig | Mapping[str, Any] | None = None) -> nn.Module:
    """A randomly initialised open_clip ``CLIP`` built from ``config``: a :class:`TinyClipConfig` (default) or an
    open_clip model config dict (``embed_dim``, ``vision_cfg``, ``text_cfg``, ...; e.g. with a ``ls_init_value``).

    Deterministic for a given ``seed``; the global RNG state is left as it was. Returned in eval mode, fp32, CPU.
    """
    config = config or TinyClipConfig()
    cfg = config.model_cfg() if isinstance(config, TinyClipConfig) else config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build_clip(cfg)


# ----------------------------------------------------------------------------------------------------------------
# Loading by path


def _missing_weights_message(path: Path, model_name: str | None) -> str:
    if model_name in (None, OPENAI_NAME):
        where = (
            "download ViT-B-16.pt from OpenAI's CLIP release (the URL is listed in _MODELS of clip/clip.py in "
            "github.com/openai/CLIP) and pass --clip-weights PATH"
        )
    else:
        where = (
            f"download the open_clip checkpoint of {model_name!r} (open_clip_pytorch_model.bin or "
            "open_clip_model.safetensors from the model's Hugging Face page) and pass --clip-weights PATH"
        )
    return f"CLIP weights file not found: {path}; {where}. weakseg never downloads weights."


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip whose record holds ``code/`` (``torch.save`` zips have only data)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(name.split("/")[1:2] == ["code"] for name in z.namelist())


def read_clip_state_dict(path: str | Path, model_name: str | None = None) -> dict[str, torch.Tensor]:
    """The weights in a CLIP checkpoint file as a flat ``{name: tensor}`` dict (not yet cast).

    Accepts a TorchScript archive (OpenAI's JIT ``ViT-B-16.pt``: ``torch.jit.load`` on the CPU, then its
    ``state_dict``), a ``.safetensors`` file, or a ``torch.save`` file read with ``weights_only=True`` (a bare state
    dict or one under ``"state_dict"``, with DDP's ``module.`` prefix removed). ``model_name`` only shapes the
    error message of a missing file.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(_missing_weights_message(path, model_name))
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path), device="cpu")
        elif _is_torchscript(path):
            with warnings.catch_warnings():
                # OpenAI ships TorchScript; torch's deprecation notice is not something the user can act on
                warnings.simplefilter("ignore", FutureWarning)
                sd = torch.jit.load(str(path), map_location="cpu").state_dict()
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, ValueError, EOFError, pickle.UnpicklingError) as e:
        raise ConfigError(f"{path} is not a readable CLIP checkpoint ({type(e).__name__}: {e})") from e
    if isinstance(sd, Mapping) and isinstance(sd.get("state_dict"), Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConfigError(f"{path} holds no CLIP state dict (expected a mapping of parameter names to tensors)")
    sd = {k: v for k, v in sd.items() if k not in _NON_WEIGHT_KEYS}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _openai_model_cfg(sd: Mapping[str, torch.Tensor], path: Path) -> dict[str, Any]:
    """The model config implied by the shapes of an OpenAI-layout ViT CLIP state dict.

    OpenAI's checkpoints do not store their config; as in OpenAI's ``build_model`` the sizes are read off the
    tensors, heads are ``width // 64`` and the activation is QuickGELU.
    """
    needed = (
        "visual.proj",
        "visual.conv1.weight",
        "visual.positional_embedding",
        "text_projection",
        "positional_embedding",
        "token_embedding.weight",
        "ln_final.weight",
    )
    missing = [k for k in needed if k not in sd]
    if missing:
        hint = (
            " (a ResNet CLIP: only ViT CLIPs are supported)"
            if "visual.layer1.0.conv1.weight" in sd
            else "; for an open_clip checkpoint pass its model name, e.g. ViT-B-16"
        )
        raise ConfigError(f"{path} is not an OpenAI-layout ViT CLIP state dict: no {', '.join(missing)}{hint}")
    width, _, patch, _ = sd["visual.conv1.weight"].shape
    grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    if grid * grid + 1 != sd["visual.positional_embedding"].shape[0]:
        raise ConfigError(f"{path}: the visual position embedding is not a square grid plus a class token")

    def n_blocks(prefix: str) -> int:
        return len({k[len(prefix) :].split(".")[0] for k in sd if k.startswith(prefix)})

    text_width = sd["ln_final.weight"].shape[0]
    return {
        "embed_dim": sd["text_projection"].shape[1],
        "quick_gelu": True,
        "vision_cfg": {
            "image_size": patch * grid,
            "patch_size": patch,
            "width": width,
            "layers": n_blocks("visual.transformer.resblocks."),
            "head_width": 64,
        },
        "text_cfg": {
            "context_length": sd["positional_embedding"].shape[0],
            "vocab_size": sd["token_embedding.weight"].shape[0],
            "width": text_width,
            "heads": max(1, text_width // 64),
            "layers": n_blocks("transformer.resblocks."),
        },
    }


def _named_model_cfg(model_name: str) -> dict[str, Any]:
    if model_name == TINY_CLIP_NAME:
        return TinyClipConfig().model_cfg()
    if model_name.startswith(("hf-hub:", "local-dir:")):
        raise ConfigError(
            f"model name {model_name!r}: weakseg loads CLIP weights only from a file path; give the open_clip "
            "architecture name (e.g. ViT-B-16) and the checkpoint file"
        )
    open_clip = import_open_clip()
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        names = [TINY_CLIP_NAME, OPENAI_NAME, *open_clip.list_models()]
        raise ConfigError(f"unknown open_clip model {model_name!r}; valid names: {', '.join(names)}")
    if "timm_model_name" in cfg.get("vision_cfg", {}) or "hf_model_name" in cfg.get("text_cfg", {}):
        raise ConfigError(
            f"open_clip model {model_name!r} has a timm or Hugging Face tower; weakseg's CLIP core supports the "
            "OpenAI-layout ViT CLIPs (e.g. ViT-B-16, ViT-L-14)"
        )
    cfg.pop("custom_text", None)
    return cfg


def load_clip(
    path: str | Path, model_name: str | None = None, *, model_cfg: Mapping[str, Any] | TinyClipConfig | None = None
) -> nn.Module:
    """Load a CLIP from a weights file: an open_clip ``CLIP`` in eval mode, fp32, on the CPU.

    - ``model_name=None`` (or ``"openai"``): an OpenAI checkpoint such as ``ViT-B-16.pt`` (TorchScript archive or
      plain state dict); the architecture is read off the tensor shapes, with QuickGELU as OpenAI trained it.
    - ``model_name="ViT-B-16"`` (any open_clip architecture name): an open_clip checkpoint (``.pt``, ``.bin`` or
      ``.safetensors``) for that architecture. open_clip's plain ``ViT-B-16`` uses GELU; OpenAI weights loaded
      under an open_clip name need the ``-quickgelu`` variant (``ViT-B-16-quickgelu``) or ``model_name=None``.
    - ``model_name="weakseg-tiny"`` or ``model_cfg=`` (an open_clip config dict or a :class:`TinyClipConfig`):
      a checkpoint of a model built by :func:`tiny_clip` or trained from such a config.

    Nothing is downloaded. Raises :class:`ConfigError` for a missing or unreadable file, an unknown name, or
    weights that do not fit the architecture. Devices and precision are the caller's (``engine/``) business.
    """
    path = Path(path)
    sd = read_clip_state_dict(path, model_name)
    if model_cfg is not None:
        cfg = model_cfg.model_cfg() if isinstance(model_cfg, TinyClipConfig) else dict(model_cfg)
    elif model_name in (None, OPENAI_NAME):
        cfg = _openai_model_cfg(sd, path)
    else:
        cfg = _named_model_cfg(model_name)
    model = _build_clip(cfg)
    target = model.state_dict()
    if "logit_scale" in sd and "logit_scale" in target:
        sd["logit_scale"] = sd["logit_scale"].reshape(target["logit_scale"].shape)
    missing = sorted(set(target) - set(sd))
    unexpected = sorted(set(sd) - set(target))
    wrong = sorted(k for k in set(sd) & set(target) if sd[k].shape != target[k].shape)
    if missing or unexpected or wrong:
        label = model_name or ("the given model_cfg" if model_cfg is not None else "OpenAI layout")
        parts = [
            f"{what}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        ]
        raise ConfigError(
            f"{path} does not fit the CLIP architecture {label!r} ({'; '.join(parts)}); "
            "check the model name given with the weights"
        )
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()})
    return model.eval()


# Memo of fingerprints: model -> (parameter versions, digest); recomputed when any parameter is changed in place.
_FINGERPRINTS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, ...], str]] = weakref.WeakKeyDictionary()


def clip_fingerprint(model: nn.Module, exclude_prefixes: Iterable[str] = ()) -> str:
    """A short hex digest of a model's weights (names, shapes, dtypes and bytes), for cache keys.

    ``exclude_prefixes`` drops parts that cannot change the cached value, e.g. ``("visual.",)`` for text
    embeddings (which also skips hashing the image tower). Memoised per model until a weight is modified in place.
    """
    excl = tuple(exclude_prefixes)
    items = [(k, v) for k, v in model.state_dict(keep_vars=True).items() if not k.startswith(excl)]
    versions = (hash(excl), *(v._version for _, v in items))
    memo = _FINGERPRINTS.get(model)
    if memo is not None and memo[0] == versions:
        return memo[1]
    h = hashlib.blake2b(digest_size=12)
    for k, v in items:
        t = v.detach().to("cpu").contiguous()
        h.update(f"{k}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    digest = h.hexdigest()
    _FINGERPRINTS[model] = (versions, digest)
    return digest


# ----------------------------------------------------------------------------------------------------------------
# Dense ViT wrapper


def resample_pos_embed(
    pos_embed: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], mode: str = "bicubic"
) -> torch.Tensor:
    """Resample ``[1 + gh*gw, D]`` position embeddings (class token first) to a ``new_grid`` token grid.

    The class token's embedding is kept; the patch embeddings are interpolated as a ``[D, gh, gw]`` image
    (``align_corners=False``). At ``new_grid == old_grid`` the input is returned unchanged.
    Returns ``[1 + h*w, D]``.
    """
    if tuple(new_grid) == tuple(old_grid):
        return pos_embed
    gh, gw = old_grid
    cls, patches = pos_embed[:1], pos_embed[1:]
    if patches.shape[0] != gh * gw:
        raise ValueError(f"position embedding has {patches.shape[0]} patch rows, not {gh}x{gw}")
    grid = patches.reshape(1, gh, gw, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(new_grid), mode=mode, align_corners=False)
    patches = grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1).to(pos_embed.dtype)
    return torch.cat([cls, patches], dim=0)


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Patch tokens ``[B, 1+N, D]`` (class token first) or ``[B, N, D]`` → feature map ``[B, D, h, w]``."""
    h, w = grid
    if tokens.shape[1] == h * w + 1:
        tokens = tokens[:, 1:]
    if tokens.shape[1] != h * w:
        raise ValueError(f"{tokens.shape[1]} tokens do not fill a {h}x{w} grid")
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


@dataclass(frozen=True)
class ClipTokens:
    """Output of :meth:`ClipVisual.forward_tokens`.

    ``tokens[i]`` is the output of block ``layers[i]``, ``[B, 1+N, D]`` (class token first, then the patches in
    row-major ``h × w`` order). ``attn[i]`` is block ``attn_layers[i]``'s head-averaged attention
    ``[B, 1+N, 1+N]`` (rows: queries, softmax over the last dim). Block indices are 0-based.
    """

    tokens: tuple[torch.Tensor, ...]
    layers: tuple[int, ...]
    attn: tuple[torch.Tensor, ...]
    attn_layers: tuple[int, ...]
    grid: tuple[int, int]

    def token_map(self, layer: int) -> torch.Tensor:
        """The patch tokens of block ``layer`` as ``[B, D, h, w]``; a negative ``layer`` counts from the end of
        :attr:`layers` (``-1``: the last block kept)."""
        index = self.layers.index(layer if layer >= 0 else self.layers[layer])
        return tokens_to_map(self.tokens[index], self.grid)


def _check_block(block: nn.Module, index: int) -> None:
    attn = getattr(block, "attn", None)
    ok = (
        isinstance(attn, nn.MultiheadAttention)
        and attn.in_proj_weight is not None
        and attn.bias_k is None
        and not attn.add_zero_attn
        and all(hasattr(block, n) for n in ("ln_1", "ln_2", "mlp"))
        and not hasattr(block, "ln_1_kv")
    )
    if not ok:
        raise ConfigError(
            f"CLIP block {index} ({type(block).__name__}) is not an OpenAI-layout residual attention block "
            "(ln_1 → nn.MultiheadAttention with packed in_proj → ln_2 → mlp); this CLIP variant is not supported"
        )


def _layer_scale(block: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """open_clip's optional LayerScale (``ls_1``/``ls_2``, ``nn.Identity`` when off); absent in older layouts."""
    scale = getattr(block, name, None)
    return x if scale is None else scale(x)


class ClipVisual(nn.Module):
    """Dense access to a CLIP ViT image tower (open_clip ``VisionTransformer``, OpenAI layout).

    Input ``x``: float ``[B, 3, H, W]`` RGB in ``[0, 1]`` (normalised here with :data:`CLIP_MEAN`/:data:`CLIP_STD`
    unless ``normalize_input=False``), ``H`` and ``W`` multiples of the patch size, any aspect ratio. The token grid
    is ``h × w = H/p × W/p`` and ``N = h·w``. The patch position embeddings are resampled to each grid
    (``pos_interp``: ``"bicubic"`` by default; CLIP-ES's ``upsample_pos_emb`` uses ``"bilinear"``) and cached per
    grid while the weights are frozen.

    With ``freeze=True`` (default) every weight has ``requires_grad=False`` and the tower stays in eval mode, so
    nothing that trains on top of it can change it. Gradients still flow to the *inputs* of blocks whose input
    requires grad, which is what CLIP-ES's GradCAM on the last block needs (see :meth:`run_blocks`).
    """

    def __init__(
        self, model: nn.Module, freeze: bool = True, normalize_input: bool = True, pos_interp: str = "bicubic"
    ):
        super().__init__()
        visual = getattr(model, "visual", model)
        if pos_interp not in ("bicubic", "bilinear", "nearest"):
            raise ConfigError(f"pos_interp {pos_interp!r}: use 'bicubic', 'bilinear' (CLIP-ES) or 'nearest'")
        needed = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post", "proj")
        missing = [n for n in needed if getattr(visual, n, None) is None]
        if missing:
            raise ConfigError(
                f"{type(visual).__name__} is not an OpenAI-layout CLIP ViT (no {', '.join(missing)}); "
                "ClipVisual supports open_clip's VisionTransformer"
            )
        if getattr(visual, "attn_pool", None) is not None:
            raise ConfigError("CLIP towers with attentional pooling (CoCa) are not supported by ClipVisual")
        for i, block in enumerate(visual.transformer.resblocks):
            _check_block(block, i)
        self.visual = visual
        self.blocks = visual.transformer.resblocks
        # open_clip 3.x runs its blocks batch-first; OpenAI's code (and older open_clip releases) sequence-first
        self.batch_first: bool = bool(self.blocks[0].attn.batch_first)
        self.patch_size: int = visual.conv1.kernel_size[0]
        self.width: int = visual.conv1.out_channels
        self.embed_dim: int = visual.proj.shape[1]
        self.num_heads: int = self.blocks[0].attn.num_heads
        n_pos = visual.positional_embedding.shape[0] - 1
        grid = tuple(getattr(visual, "grid_size", ()))
        if len(grid) != 2 or grid[0] * grid[1] != n_pos:
            side = round(n_pos**0.5)
            grid = (side, side)
        self.native_grid: tuple[int, int] = (int(grid[0]), int(grid[1]))
        self.pool_type: str = getattr(visual, "pool_type", "tok")
        self.final_ln_after_pool: bool = bool(getattr(visual, "final_ln_after_pool", False))
        self.normalize_input = normalize_input
        self.pos_interp = pos_interp
        self.frozen = freeze
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self._pos_cache: dict[tuple, tuple[tuple[int, int], torch.Tensor]] = {}
        if freeze:
            self.visual.requires_grad_(False)
            self.visual.eval()

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def train(self, mode: bool = True) -> ClipVisual:
        super().train(mode)
        if self.frozen:
            self.visual.eval()
        return self

    # -- embedding ---------------------------------------------------------------------------------------------

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """The token grid ``(h, w)`` of an ``height × width`` input; both must be multiples of the patch size."""
        p = self.patch_size
        if height % p or width % p or height <= 0 or width <= 0:
            raise ConfigError(
                f"CLIP input size {height}x{width} is not a multiple of the patch size {p}; "
                f"resize or crop the images to multiples of {p}"
            )
        return height // p, width // p

    def pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        """Position embeddings ``[1 + h*w, D]`` for a token grid; the original parameter at the native grid."""
        pe = self.visual.positional_embedding
        if tuple(grid) == self.native_grid:
            return pe
        if pe.requires_grad and torch.is_grad_enabled():
            return resample_pos_embed(pe, self.native_grid, grid, self.pos_interp)
        key = (tuple(grid), pe.device, pe.dtype, self.pos_interp)
        # the parameter's version counter and storage change when the weights are reloaded or edited in place
        stamp = (pe._version, pe.data_ptr())
        hit = self._pos_cache.get(key)
        if hit is None or hit[0] != stamp:
            with torch.no_grad():
                hit = (stamp, resample_pos_embed(pe.detach(), self.native_grid, grid, self.pos_interp))
            self._pos_cache[key] = hit
        return hit[1]

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Image ``[B, 3, H, W]`` → input tokens of block 0 ``[B, 1+N, D]`` (after ``ln_pre``) and the grid."""
        v = self.visual
        grid = self.grid_size(x.shape[-2], x.shape[-1])
        if self.normalize_input:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        x = v.conv1(x.to(v.conv1.weight.dtype))  # [B, D, h, w]
        x = x.flatten(2).transpose(1, 2)  # [B, N, D]
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed(grid).to(x.dtype)
        return v.ln_pre(x), grid

    # -- blocks --------------------------------------------------------------------------------------------------

    def _block_with_attn(self, block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One residual block computed by hand from its modules, returning its head-averaged attention too.

        Same math as ``nn.MultiheadAttention``: q, k, v from the packed ``in_proj``, softmax(q kᵀ / √d_head) per
        head, heads concatenated, ``out_proj``. The softmax runs in fp32 and the maps are returned in fp32.
        """
        attn: nn.MultiheadAttention = block.attn
        b, n, d = x.shape
        heads = attn.num_heads
        y = block.ln_1(x)  # a module call, so hooks on ln_1 (GradCAM's activations) still fire
        q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, heads, d // heads).transpose(1, 2) for t in (q, k, v))  # [B, H, L, d_h]
        scores = (q.float() * (d // heads) ** -0.5) @ k.float().transpose(-2, -1)
        probs = scores.softmax(dim=-1)  # [B, H, L, L]
        out = (probs.to(v.dtype) @ v).transpose(1, 2).reshape(b, n, d)
        x = x + _layer_scale(block, "ls_1", attn.out_proj(out))
        x = x + _layer_scale(block, "ls_2", block.mlp(block.ln_2(x)))
        return x, probs.mean(dim=1)

    def _block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.batch_first:
            return block(x)
        return block(x.transpose(0, 1)).transpose(0, 1)

    def run_blocks(
        self, x: torch.Tensor, start: int = 0, stop: int | None = None, attn: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run blocks ``start .. stop-1`` on tokens ``[B, 1+N, D]``; returns the output tokens and, with
        ``attn=True``, the head-averaged attention ``[B, 1+N, 1+N]`` of each block run.

        CLIP-ES/WeCLIP split: run blocks ``0 .. L-2`` under ``torch.no_grad()``, then
        ``run_blocks(t.detach().requires_grad_(), start=L-1)`` so the last block alone builds a graph.
        """
        stop = self.num_layers if stop is None else stop
        maps: list[torch.Tensor] = []
        for block in self.blocks[start:stop]:
            if attn:
                x, a = self._block_with_attn(block, x)
                maps.append(a)
            else:
                x = self._block(block, x)
        return x, maps

    def forward_tokens(
        self, x: torch.Tensor, layers: int | Sequence[int] | None = None, attn: bool | Sequence[int] = False
    ) -> ClipTokens:
        """Tokens (and attention maps) of chosen blocks for images ``[B, 3, H, W]``.

        ``layers``: 0-based block indices whose output tokens ``[B, 1+N, D]`` to keep (negative counts from the
        last block; ``None`` = every block). ``attn``: ``True`` for the attention map of every block that is run,
        or a sequence of block indices. Blocks after the last one asked for are not run.
        """
        n = self.num_layers

        def norm(indices: Iterable[int]) -> tuple[int, ...]:
            out = []
            for i in indices:
                j = i + n if i < 0 else i
                if not 0 <= j < n:
                    raise ValueError(f"block index {i} out of range for a {n}-block CLIP")
                out.append(j)
            return tuple(sorted(set(out)))

        keep = norm(range(n) if layers is None else [layers] if isinstance(layers, int) else layers)
        attn_keep = norm(attn) if attn and attn is not True else ()
        stop = max(keep + attn_keep, default=-1) + 1
        if attn is True:
            attn_keep = tuple(range(stop))
        tokens, grid = self.embed(x)
        kept: list[torch.Tensor] = []
        maps: list[torch.Tensor] = []
        for i in range(stop):
            if i in attn_keep:
                tokens, a = self._block_with_attn(self.blocks[i], tokens)
                maps.append(a)
            else:
                tokens = self._block(self.blocks[i], tokens)
            if i in keep:
                kept.append(tokens)
        return ClipTokens(tuple(kept), keep, tuple(maps), attn_keep, grid)

    # -- projections ---------------------------------------------------------------------------------------------

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """``ln_post`` then ``proj`` on every token: ``[..., D]`` → ``[..., E]`` (the joint image-text space).

        On the last block's patch tokens this gives CLIP-ES/WeCLIP's dense image features.
        """
        return self.visual.ln_post(tokens) @ self.visual.proj

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final tokens ``[B, 1+N, D]`` → image embedding ``[B, E]`` the way the checkpoint was trained
        (``ln_post`` of the class token → ``proj`` for OpenAI CLIP; patch mean for ``pool_type='avg'``)."""
        v = self.visual
        if self.pool_type == "avg":
            pooled_raw = tokens[:, 1:].mean(dim=1)
        elif self.pool_type == "tok":
            pooled_raw = tokens[:, 0]
        else:
            raise ConfigError(f"CLIP pool type {self.pool_type!r} gives no single image embedding")
        if self.final_ln_after_pool:
            return v.ln_post(pooled_raw) @ v.proj
        normed = v.ln_post(tokens)
        pooled = normed[:, 1:].mean(dim=1) if self.pool_type == "avg" else normed[:, 0]
        return pooled @ v.proj

    def image_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` → image embeddings ``[B, E]`` (not L2-normalised)."""
        tokens, _ = self.run_blocks(self.embed(x)[0])
        return self.pool(tokens)

    def patch_embeddings(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images ``[B, 3, H, W]`` → projected patch tokens of the last block ``[B, N, E]`` and the grid."""
        tokens, grid = self.embed(x)
        tokens, _ = self.run_blocks(tokens)
        return self.project(tokens[:, 1:]), grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.image_embedding(x)
