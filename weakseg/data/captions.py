"""Captions made from image-level labels, to train a toy CLIP on a labelled image set.

``"a photo of a star and a ring."``: a template, the names (or synonyms) of some or all of an image's
classes in random order. An image's caption names all its classes with probability ``p_all`` and a random
non-empty subset otherwise, so that single-class prompts ("a photo of a star.") also match multi-class
images at test time, as web captions often name only part of what is shown. Which classes a caption names
is returned with it, for the contrastive loss's match matrix (:mod:`weakseg.losses.contrastive`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of {}.",
    "a picture of {}.",
    "an image with {}.",
    "a drawing of {}.",
    "{}.",
    "there is {} in the picture.",
)
"""Caption patterns with one ``{}`` for the joined class phrases."""

SYNTH_SYNONYMS: dict[str, tuple[str, ...]] = {
    "disc": ("disc", "disk", "circle"),
    "triangle": ("triangle",),
    "ring": ("ring", "annulus", "hoop"),
    "cross": ("cross", "plus sign"),
    "star": ("star", "pentagram"),
    "square": ("square", "box"),
    "ellipse": ("ellipse", "oval"),
    "arrow": ("arrow", "pointer"),
    "crescent": ("crescent", "moon"),
    "hexagon": ("hexagon",),
}
"""Phrases of the synthetic benchmark's classes (:data:`weakseg.data.synthetic.CLASS_NAMES`)."""


def article(phrase: str) -> str:
    """``"a star"``, ``"an arrow"``."""
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def join_phrases(phrases: Sequence[str]) -> str:
    """``["a star"]`` → ``"a star"``; ``["a star", "a ring", "a box"]`` → ``"a star, a ring and a box"``."""
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def make_captions(
    labels: np.ndarray,
    class_names: Sequence[str],
    rng: np.random.Generator,
    synonyms: Mapping[str, Sequence[str]] | None = None,
    templates: Sequence[str] = CAPTION_TEMPLATES,
    p_all: float = 0.5,
) -> tuple[list[str], np.ndarray]:
    """One caption per image from multi-hot ``labels`` ``[B, K]``: ``(captions, named bool [B, K])``.

    ``named[b]`` marks the classes caption ``b`` names (a non-empty subset of the image's labels; all of them
    with probability ``p_all``). ``synonyms``: class name → phrases to draw from (default: the name itself).
    An image without labels gets its template filled with ``"nothing"`` (``"a photo of nothing."``) and names no
    class.
    """
    labels = np.asarray(labels).astype(bool)
    syn = synonyms or {}
    captions: list[str] = []
    named = np.zeros_like(labels)
    for b, row in enumerate(labels):
        present = np.flatnonzero(row)
        template = templates[int(rng.integers(len(templates)))]
        if present.size == 0:
            captions.append(template.format("nothing"))
            continue
        if present.size > 1 and rng.random() >= p_all:
            k = int(rng.integers(1, present.size + 1))
            present = rng.choice(present, size=k, replace=False)
        present = rng.permutation(present)
        phrases = []
        for c in present:
            options = tuple(syn.get(class_names[c], ())) or (class_names[c],)
            phrases.append(article(options[int(rng.integers(len(options)))]))
        named[b, present] = True
        captions.append(template.format(join_phrases(phrases)))
    return captions, named


def caption_match(labels: np.ndarray, named: np.ndarray) -> np.ndarray:
    """``bool [B, T]``: caption ``t`` fits image ``b`` when every class it names is in ``b``'s labels and the
    caption names something, or when both name nothing (an unlabelled image and a "nothing" caption)."""
    labels, named = np.asarray(labels).astype(bool), np.asarray(named).astype(bool)
    covered = ~(named[None, :, :] & ~labels[:, None, :]).any(-1)  # [B, T]: nothing named outside b's labels
    empty_img, empty_cap = ~labels.any(1), ~named.any(1)
    return np.where(empty_cap[None, :], empty_img[:, None], covered)
