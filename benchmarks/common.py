"""Helpers shared by the benchmark scripts (run them from the repository root: ``python benchmarks/X.py``)."""

from __future__ import annotations

from pathlib import Path


def seed_miou(
    cls_dir: Path,
    data: Path,
    cams: Path,
    seed: int,
    device: str,
    scales: tuple[float, ...] = (1.0, 0.5, 1.5),
    partners_per_class: int = 0,
    self_pairs: bool = False,
) -> tuple[float, float]:
    """Make CAMs of the train split with a trained classifier and score them: (best seed mIoU %, its threshold)."""
    from weakseg.cams.evaluate import EvalCamsConfig, eval_cams
    from weakseg.cams.make import MakeCamsConfig, make_cams

    make_cams(
        MakeCamsConfig(
            cls_dir=cls_dir,
            data=data,
            out=cams,
            split="train",
            scales=scales,
            partners_per_class=partners_per_class,
            self_pairs=self_pairs,
            seed=seed,
            device=device,
        )
    )
    r = eval_cams(EvalCamsConfig(cams=cams, data=data, split="train", out=cams.with_suffix(".json")))
    return 100 * r["best_miou"], r["best_threshold"]
