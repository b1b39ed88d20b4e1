"""CLIP text classifiers: class names with synonyms × prompt templates (+ background words) → ``[K, E]``.

A :class:`PromptSet` names the rows of a classifier: one row per class (its phrases, e.g. synonyms) and one per
background word. :func:`text_embeddings` encodes every ``template.format(phrase)`` of a row with CLIP's text tower,
L2-normalises each, averages them and re-normalises (the ``zeroshot_classifier`` of CLIP-ES, WeCLIP and PI-CLIP),
so the result is ``float32 [K, E]`` with unit rows: ``K = len(classes) + len(background)``.

CLIP-ES puts its "synonyms" inside one phrase (``'person with clothes,people,human'`` is a single prompt); the
``clip_es_*`` presets keep that literal phrase so the embeddings match. Listing synonyms as separate phrases
(``{"person": ("person", "people", "human")}``) averages them instead.

:class:`TextEmbeddingCache` keeps the embeddings in memory, keyed by (text-tower fingerprint, prompt set), and
optionally as ``text_<key>.safetensors`` files in a run folder.

Presets (facts from CLIP-ES's ``clip_text.py``, CVPR 2023; WeCLIP and SDS reuse them; PI-CLIP's templates from its
``PI_CLIP.py``): :data:`VOC_CLIP_ES_PHRASES`, :data:`COCO_CLIP_ES_PHRASES`, :data:`VOC_BACKGROUND_WORDS` (25),
:data:`COCO_BACKGROUND_WORDS` (23), :data:`CLIP_ES_TEMPLATES`, :data:`PI_CLIP_TEMPLATE`,
:data:`PI_CLIP_WITHOUT_TEMPLATE`, :data:`PHOTO_TEMPLATES`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from weakseg.backbones.clip import clip_fingerprint, import_open_clip
from weakseg.errors import ConfigError, unknown_name

__all__ = [
    "CLIP_ES_TEMPLATES",
    "COCO_BACKGROUND_WORDS",
    "COCO_CLIP_ES_PHRASES",
    "PHOTO_TEMPLATES",
    "PI_CLIP_TEMPLATE",
    "PI_CLIP_WITHOUT_TEMPLATE",
    "PROMPT_PRESETS",
    "VOC_BACKGROUND_WORDS",
    "VOC_CLIP_ES_PHRASES",
    "PromptSet",
    "TextEmbeddingCache",
    "prompt_preset",
    "text_embeddings",
]

CLIP_ES_TEMPLATES: tuple[str, ...] = ("a clean origami {}.",)
"""The single template of CLIP-ES, WeCLIP and SDS."""

PI_CLIP_TEMPLATE = "a photo of {}."
"""PI-CLIP's foreground row for a class."""
PI_CLIP_WITHOUT_TEMPLATE = "a photo without {}."
"""PI-CLIP's background row for a class (one per class, instead of background words)."""

PHOTO_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a cropped photo of a {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
    "a close-up photo of a {}.",
)
"""A short ensemble of generic photo templates, for prompt-ensembling experiments."""

VOC_BACKGROUND_WORDS: tuple[str, ...] = (
    "ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water", "river", "sea", "railway",
    "railroad", "keyboard", "helmet", "cloud", "house", "mountain", "ocean", "road", "rock", "street", "valley",
    "bridge", "sign",
)  # fmt: skip
"""CLIP-ES's 25 background categories for PASCAL VOC."""

COCO_BACKGROUND_WORDS: tuple[str, ...] = tuple(w for w in VOC_BACKGROUND_WORDS if w not in ("keyboard", "sign"))
"""CLIP-ES's 23 background categories for COCO (the VOC list without keyboard and sign, both COCO classes)."""

# VOC class name -> CLIP-ES prompt phrase (one phrase each; commas inside a phrase are part of the prompt).
VOC_CLIP_ES_PHRASES: dict[str, tuple[str, ...]] = {
    "aeroplane": ("aeroplane",), "bicycle": ("bicycle",), "bird": ("bird avian",), "boat": ("boat",),
    "bottle": ("bottle",), "bus": ("bus",), "car": ("car",), "cat": ("cat",), "chair": ("chair seat",),
    "cow": ("cow",), "diningtable": ("diningtable",), "dog": ("dog",), "horse": ("horse",),
    "motorbike": ("motorbike",), "person": ("person with clothes,people,human",), "pottedplant": ("pottedplant",),
    "sheep": ("sheep",), "sofa": ("sofa",), "train": ("train",), "tvmonitor": ("tvmonitor screen",),
}  # fmt: skip

_COCO_NAMES = (
    "person", "bicycle", "car", "motorbike", "aeroplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "sofa",
    "pottedplant", "bed", "diningtable", "toilet", "tvmonitor", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
# CLIP-ES's replacements for COCO; "sknowboard" is CLIP-ES's spelling, kept so the embeddings match its results.
_COCO_CLIP_ES_RENAMES = {
    "person": "person with clothes,people,human", "bird": "bird avian", "backpack": "backpack,bag",
    "umbrella": "umbrella,parasol", "handbag": "handbag,purse", "tie": "necktie", "snowboard": "sknowboard",
    "baseball glove": "glove", "spoon": "dessertspoon", "chair": "chair seat", "tvmonitor": "tvmonitor screen",
    "remote": "remote control", "hair drier": "hairdrier,blowdrier",
}  # fmt: skip
COCO_CLIP_ES_PHRASES: dict[str, tuple[str, ...]] = {n: (_COCO_CLIP_ES_RENAMES.get(n, n),) for n in _COCO_NAMES}
"""COCO's 80 class names (CLIP-ES order) -> CLIP-ES prompt phrase."""


@dataclass(frozen=True)
class PromptSet:
    """The rows of a CLIP text classifier: classes (each with its phrases), then background words.

    ``templates`` are ``str.format`` patterns with one ``{}``. Every phrase of a row is put in every template;
    a row's embedding is the re-normalised mean of the normalised embeddings of all its prompts.
    """

    classes: tuple[tuple[str, tuple[str, ...]], ...]
    templates: tuple[str, ...]
    background: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.templates:
            raise ConfigError("a CLIP prompt set needs at least one template, e.g. 'a clean origami {}.'")
        for t in self.templates:
            if t.count("{}") != 1:
                raise ConfigError(f"CLIP prompt template {t!r} must contain exactly one '{{}}'")
        names = [n for n, _ in self.classes] + list(self.background)
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ConfigError(f"CLIP prompt rows must have distinct names; repeated: {', '.join(dup)}")
        for name, phrases in self.classes:
            if not phrases:
                raise ConfigError(f"CLIP prompt class {name!r} has no phrases")

    @classmethod
    def build(
        cls,
        classes: Mapping[str, Sequence[str] | str] | Sequence[str],
        templates: Sequence[str] | str = CLIP_ES_TEMPLATES,
        background: Sequence[str] = (),
    ) -> PromptSet:
        """From plain Python values: ``classes`` as a list of names (each its own phrase) or a dict
        ``name -> phrase`` / ``name -> [phrases]``; ``templates`` as one string or a list."""
        if isinstance(classes, Mapping):
            rows = tuple((n, (p,) if isinstance(p, str) else tuple(p)) for n, p in classes.items())
        else:
            rows = tuple((n, (n,)) for n in classes)
        tpl = (templates,) if isinstance(templates, str) else tuple(templates)
        return cls(rows, tpl, tuple(background))

    @property
    def names(self) -> tuple[str, ...]:
        """Row names: the class names, then the background words."""
        return (*(n for n, _ in self.classes), *self.background)

    @property
    def num_classes(self) -> int:
        """Rows ``[0, num_classes)`` are classes; the rest are background words."""
        return len(self.classes)

    def row_prompts(self) -> list[list[str]]:
        """The prompt strings of each row (classes, then background words)."""
        rows = [list(phrases) for _, phrases in self.classes] + [[w] for w in self.background]
        return [[t.format(p) for p in phrases for t in self.templates] for phrases in rows]

    def key(self) -> str:
        """A digest of the rows, phrases and templates (names included: they label the rows)."""
        payload = json.dumps([self.classes, self.templates, self.background], ensure_ascii=False)
        return hashlib.blake2b(payload.encode(), digest_size=12).hexdigest()


PROMPT_PRESETS: dict[str, PromptSet] = {
    "clip_es_voc": PromptSet.build(VOC_CLIP_ES_PHRASES, CLIP_ES_TEMPLATES, VOC_BACKGROUND_WORDS),
    "clip_es_coco": PromptSet.build(COCO_CLIP_ES_PHRASES, CLIP_ES_TEMPLATES, COCO_BACKGROUND_WORDS),
}


def prompt_preset(name: str) -> PromptSet:
    """A named prompt set from :data:`PROMPT_PRESETS`; an unknown name lists the valid ones."""
    if name not in PROMPT_PRESETS:
        raise unknown_name("CLIP prompt preset", name, PROMPT_PRESETS)
    return PROMPT_PRESETS[name]


def _encode(model: nn.Module, prompts: PromptSet, batch_size: int) -> torch.Tensor:
    open_clip = import_open_clip()
    rows = prompts.row_prompts()
    flat = [p for row in rows for p in row]
    context = int(getattr(model, "context_length", 77))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks = []
    try:
        with torch.no_grad():
            for i in range(0, len(flat), batch_size):
                tokens = open_clip.tokenize(flat[i : i + batch_size], context_length=context).to(device)
                chunks.append(F.normalize(model.encode_text(tokens).float(), dim=-1))
    finally:
        model.train(was_training)
    per_prompt = torch.cat(chunks)
    out, start = [], 0
    for row in rows:
        out.append(per_prompt[start : start + len(row)].mean(dim=0))
        start += len(row)
    return F.normalize(torch.stack(out), dim=-1)


class TextEmbeddingCache:
    """Text classifiers kept per (text-tower fingerprint, prompt set): in memory, and in ``folder`` if given.

    Files are ``<folder>/text_<key>.safetensors`` with the row names and templates in the metadata; they are
    written to a temporary name and renamed, so a half-written file is never read.
    """

    def __init__(self, folder: str | Path | None = None):
        self.folder = Path(folder) if folder is not None else None
        self._memory: dict[str, torch.Tensor] = {}

    @staticmethod
    def key(model: nn.Module, prompts: PromptSet) -> str:
        return f"{clip_fingerprint(model, exclude_prefixes=('visual.',))}-{prompts.key()}"

    def path(self, key: str) -> Path | None:
        return None if self.folder is None else self.folder / f"text_{key}.safetensors"

    def get(self, key: str) -> torch.Tensor | None:
        if key in self._memory:
            return self._memory[key]
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return None
            emb = f.get_tensor("embeddings")
        self._memory[key] = emb
        return emb

    def put(self, key: str, emb: torch.Tensor, prompts: PromptSet) -> None:
        emb = emb.detach().to("cpu", torch.float32).contiguous()
        self._memory[key] = emb
        path = self.path(key)
        if path is None:
            return
        from safetensors.torch import save

        meta = {"key": key, "names": json.dumps(prompts.names), "templates": json.dumps(prompts.templates)}
        data = save({"embeddings": emb}, metadata=meta)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def text_embeddings(
    model: nn.Module,
    prompts: PromptSet,
    cache: TextEmbeddingCache | None = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """L2-normalised text classifier ``float32 [K, E]`` of a CLIP model for ``prompts``.

    ``K = prompts.num_classes + len(prompts.background)``; row ``k`` is ``prompts.names[k]``. ``model`` is an
    open_clip ``CLIP`` (anything with ``encode_text`` and ``context_length``); it is run in eval mode without
    gradients and left in the mode it was in. The result is on the model's device.
    """
    if cache is None:
        return _encode(model, prompts, batch_size)
    key = cache.key(model, prompts)
    emb = cache.get(key)
    if emb is None:
        emb = _encode(model, prompts, batch_size)
        cache.put(key, emb, prompts)
    return emb.to(next(model.parameters()).device)
