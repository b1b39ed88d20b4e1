"""Shared fixtures: a tiny synthetic dataset (generated once per session) and the coco128-seg sample."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

COCO128 = Path(__file__).resolve().parents[2] / "shared/data/coco128-seg"


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a tiny synthetic VOC-layout dataset: 40 train / 16 val at 96 px, small extra sets."""
    from weakseg.data.synthetic import SynthConfig, generate

    out = tmp_path_factory.mktemp("synth") / "data"
    cfg = SynthConfig(out=out, size="tiny", n_train=40, n_val=16, n_single=8, n_web=8, min_side=96, max_side=96)
    return generate(cfg)


@pytest.fixture(scope="session")
def synth_dataset(synth_root: Path):
    """The train split of ``synth_root`` (a VOCDataset)."""
    from weakseg.data.voc import VOCDataset

    return VOCDataset(synth_root, "train")


@pytest.fixture(scope="session")
def coco128_root() -> Path:
    if not (COCO128 / "images").is_dir():
        pytest.skip(f"{COCO128} not present")
    return COCO128


@pytest.fixture(scope="module")
def one_thread():
    """Small inputs: one torch thread is as fast, and two stall each other on a busy 2-core machine.

    Modules of small-tensor tests opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
