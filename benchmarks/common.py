"""Helpers shared by the benchmark scripts (run them from the repository root: ``python benchmarks/X.py``)."""

from __future__ import annotations

from pathlib import Path

PLAIN_HEAD = ("test_partners=0", "test_self_pairs=false")
"""``make-cams --set`` of an MCIS classifier for its plain-head CAMs only (no partners, no self-pairs)"""
PAPER_FUSION = ("test_fusion=weakseg", "test_partners=3", "test_self_pairs=true")
"""``make-cams --set`` of an MCIS classifier for weakseg's test-time fusion (plain-head + co-attention CAMs of 3
partners per class + self-pairs), called the paper fusion before the official code's (``test_fusion=official``)
was added"""


def cam_options(method: str, options: tuple[str, ...]) -> tuple[str, ...]:
    """``options`` for a method with test-time pairing options (mcis); none for the others (plain CAM)."""
    return options if method == "mcis" else ()


def seed_miou(
    cls_dir: Path,
    data: Path,
    cams: Path,
    seed: int,
    device: str,
    scales: tuple[float, ...] = (1.0, 0.5, 1.5),
    cam_set: tuple[str, ...] = (),
) -> tuple[float, float]:
    """Make CAMs of the train split with a trained classifier and score them: (best seed mIoU %, its threshold).

    ``cam_set``: ``KEY=VALUE`` overrides of the method's prediction options (``make-cams --set``), e.g.
    :data:`PLAIN_HEAD` or :data:`PAPER_FUSION` for an MCIS classifier.
    """
    from weakseg.stages.eval_cams import EvalCamsConfig, eval_cams
    from weakseg.stages.make_cams import MakeCamsConfig, make_cams

    make_cams(
        MakeCamsConfig(
            cls_dir=cls_dir,
            data=data,
            out=cams,
            split="train",
            scales=scales,
            set=cam_set,
            seed=seed,
            device=device,
        )
    )
    r = eval_cams(EvalCamsConfig(cams=cams, data=data, split="train", out=cams.with_suffix(".json")))
    return 100 * r["best_miou"], r["best_threshold"]


def method_config(cls_dir: Path) -> dict:
    """The resolved hyper-parameters of a classifier trained by ``train-cls`` (its ``config.json`` record)."""
    import json

    return json.loads((cls_dir / "config.json").read_text())["record"]["method_config"]


def training_log(tb_dir: Path, clip: float = 0.0) -> dict:
    """Gradient-norm and loss summary read back from a training run's tensorboard log.

    ``max_grad_norm``, ``clipped_steps`` (norms above ``clip``, when ``clip`` > 0), ``steps`` and the mean
    of the last 20 logged ``train/loss`` values: enough to tell a diverged run from a healthy one.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    ea.Reload()
    tags = ea.Tags()["scalars"]
    out: dict = {}
    if "train/grad_norm" in tags:
        norms = [e.value for e in ea.Scalars("train/grad_norm")]
        out["steps"] = len(norms)
        out["max_grad_norm"] = max(norms)
        if clip > 0:
            out["clipped_steps"] = sum(n > clip for n in norms)
    if "train/loss" in tags:
        loss = [e.value for e in ea.Scalars("train/loss")]
        out["final_loss"] = sum(loss[-20:]) / len(loss[-20:])
    return out


def load_results(out: Path, pattern: str) -> list[dict]:
    """Every ``result.json`` under ``out`` matching ``pattern`` (a glob relative to ``out``), sorted by path."""
    import json

    return [json.loads(p.read_text()) for p in sorted(out.glob(pattern))]


def save_result(path: Path, result: dict) -> None:
    """Write one run's result atomically (a benchmark re-run skips runs that have one)."""
    import json

    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)
