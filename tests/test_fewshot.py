"""Few-shot segmentation (issue 19): synthetic classes, episodes, the pure maths, the methods."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from weakseg.data.registry import open_dataset
from weakseg.data.synthetic import SynthConfig, class_names, generate

# sha256 of every file (relative path + bytes, sorted) of `SynthConfig(size="tiny")` and of a smaller config,
# computed with the generator at commit d2e4215 (before the n_classes option existed).
TINY_HASH = "343919d86b52104dc1d12a755174bed8d70288b1381b60238313a78ed809a00f"
SMALLER = dict(size="tiny", n_train=6, n_val=3, n_single=3, n_web=3, seed=3)
SMALLER_HASH = "f16a728c0417d7fbedf7a29bfc200987a09d07a21546592aed9272fc54093b6f"


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("kw,expected", [(dict(size="tiny"), TINY_HASH), (SMALLER, SMALLER_HASH)])
def test_existing_synthetic_presets_are_byte_identical(tmp_path, kw, expected):
    root = generate(SynthConfig(out=tmp_path / "s", **kw), workers=1)
    assert tree_hash(root) == expected


def test_synthetic_twenty_classes(tmp_path):
    root = generate(SynthConfig(out=tmp_path / "s", size="tiny", n_train=40, n_val=0, n_single=0, n_web=0,
                                n_classes=20), workers=1)  # fmt: skip
    ds = open_dataset(root, "train")
    assert ds.class_names == class_names(20) and ds.class_names[10] == "pale disc"
    seen = {c for r in ds.records for c in r.labels}
    assert max(seen) >= 10  # the new classes are drawn
    for i in range(len(ds)):
        mask = ds.load_mask(i)
        values = set(np.unique(mask).tolist()) - {0, 255}
        assert values == {c + 1 for c in ds.records[i].labels}
