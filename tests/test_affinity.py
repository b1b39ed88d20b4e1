"""AffinityNet (PSA): pair offsets, pair labels, affinities, loss, transition matrix, random walk,
seed labels; the train-aff stage (tiny backbone, resume, skip) and the pseudo stage's rw refiner."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from weakseg.errors import ConfigError, DataError
from weakseg.refine.affinity import (
    AffinityTargets,
    affinity_loss,
    affinity_targets,
    downsample_label,
    neighbour_offsets,
    pair_affinity,
    random_walk,
    seed_label,
    transition_matrix,
)

# --- pure functions on tiny tensors -----------------------------------------------------------------


def test_neighbour_offsets_half_plane():
    assert neighbour_offsets(1) == [(0, 1), (1, 0)]
    assert neighbour_offsets(2) == [(0, 1), (0, 2), (1, -1), (1, 0), (1, 1), (2, 0)]
    for r in (3, 5):
        offs = neighbour_offsets(r)
        disc = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if 0 < dy * dy + dx * dx <= r * r]
        assert len(offs) == len(disc) // 2 == len(set(offs))
        assert not any((-dy, -dx) in offs for dy, dx in offs)  # each unordered pair once
    with pytest.raises(ValueError):
        neighbour_offsets(0)


def test_affinity_targets_hand_computed():
    label = torch.tensor(
        [
            [[0, 0, 1], [0, 255, 2]],
            [[2, 2, 1], [0, 255, 1]],
        ]
    )
    t = affinity_targets(label, neighbour_offsets(1))  # offsets (0, 1) then (1, 0)
    z = [[0, 0, 0], [0, 0, 0]]
    # image 0, offset (0,1): (0,0)-(0,1) bg-bg; (0,1)-(0,2) bg-class; row 1 touches 255; column 2 leaves the map
    # image 0, offset (1,0): (0,0)-(1,0) bg-bg; (0,1)-(1,1) unknown; (0,2)-(1,2) class 1 vs 2; row 1 leaves
    bg = [[[[1, 0, 0], z[0]], [[1, 0, 0], z[0]]], [z, z]]
    # image 1, offset (0,1): (0,0)-(0,1) same class 2; (0,1)-(0,2) 2 vs 1; offset (1,0): (0,0)-(1,0) 2 vs bg,
    # (0,2)-(1,2) same class 1
    fg = [[z, z], [[[1, 0, 0], z[0]], [[0, 0, 1], z[0]]]]
    neg = [[[[0, 1, 0], z[0]], [[0, 0, 1], z[0]]], [[[0, 1, 0], z[0]], [[1, 0, 0], z[0]]]]
    assert torch.equal(t.bg_pos, torch.tensor(bg, dtype=torch.bool))
    assert torch.equal(t.fg_pos, torch.tensor(fg, dtype=torch.bool))
    assert torch.equal(t.neg, torch.tensor(neg, dtype=torch.bool))


def test_pair_affinity_hand_computed_and_identical_features():
    f = torch.tensor([[[[0.0, 1.0, 3.0]], [[0.0, 3.0, 3.0]]]])  # [B=1, D=2, h=1, w=3]
    aff = pair_affinity(f, [(0, 1), (0, 2), (1, 0)])
    # (0,1): mean(|0-1|, |0-3|) = 2, mean(|1-3|, |3-3|) = 1; (0,2): mean(3, 3) = 3; (1,0) leaves the map
    expected = torch.tensor([[[[math.exp(-2), math.exp(-1), 0.0]], [[math.exp(-3), 0, 0]], [[0.0, 0, 0]]]])
    torch.testing.assert_close(aff, expected)
    same = torch.ones(2, 4, 3, 3)
    aff = pair_affinity(same, neighbour_offsets(1))
    t = affinity_targets(torch.zeros(2, 3, 3, dtype=torch.long), neighbour_offsets(1))
    assert torch.all(aff[t.bg_pos] == 1.0) and t.bg_pos.sum() == 2 * 2 * 6


def test_affinity_loss_hand_computed_and_empty_terms():
    eps = 1e-5
    aff = torch.tensor([0.5, 0.9, 0.2, 0.4]).view(1, 4, 1, 1)
    m = lambda *v: torch.tensor(v, dtype=torch.bool).view(1, 4, 1, 1)  # noqa: E731
    t = AffinityTargets(bg_pos=m(1, 0, 0, 0), fg_pos=m(0, 1, 0, 0), neg=m(0, 0, 1, 1))
    bg, fg = -math.log(0.5 + eps), -math.log(0.9 + eps)
    neg = (-math.log(1 - 0.2 + eps) - math.log(1 - 0.4 + eps)) / 2
    assert affinity_loss(aff, t).item() == pytest.approx(bg / 4 + fg / 4 + neg / 2, rel=1e-6)
    only_bg = AffinityTargets(m(1, 0, 0, 0), m(0, 0, 0, 0), m(0, 0, 0, 0))
    assert affinity_loss(aff, only_bg).item() == pytest.approx(bg / 4, rel=1e-6)  # empty terms add 0


def test_transition_matrix_hand_computed():
    f = torch.tensor([[[0.0, 1.0, 3.0]]])  # [D=1, h=1, w=3]
    a01, a12, a02 = math.exp(-1), math.exp(-2), math.exp(-3)
    adj = torch.tensor([[1, a01**2, a02**2], [a01**2, 1, a12**2], [a02**2, a12**2, 1]])
    torch.testing.assert_close(transition_matrix(f, radius=2, beta=2.0), adj / adj.sum(1, keepdim=True))
    t = transition_matrix(f, radius=1, beta=1.0)  # (0, 2) is out of reach at radius 1
    assert t[0, 2] == 0 and t[2, 0] == 0
    torch.testing.assert_close(t.sum(1), torch.ones(3))


def test_random_walk_spreads_inside_a_block_not_across_a_cut():
    f = torch.tensor([[[0.0, 0.0, 0.0, 1000.0, 1000.0]]])  # blocks {0, 1, 2} | {3, 4}: affinity exp(-1000) = 0
    t = transition_matrix(f, radius=1, beta=8.0)
    scores = torch.zeros(2, 1, 5)
    scores[0, 0, 0] = 1.0  # a seed of class 0 in the left block...
    scores[1, 0, 4] = 1.0  # ...and of class 1 in the right one
    for method in ("steps", "power", "auto"):
        out = random_walk(scores, t, iters=256, method=method)
        # every cell of a block tends to the degree-weighted mean of its seeds (degrees with self loops:
        # 2, 3, 2 | 2, 2): left (2 * 1 + 3 * 0 + 2 * 0) / 7, right (2 * 0 + 2 * 1) / 4; nothing crosses the cut
        torch.testing.assert_close(out[0, 0], torch.tensor([2 / 7, 2 / 7, 2 / 7, 0, 0]), atol=1e-5, rtol=0)
        torch.testing.assert_close(out[1, 0], torch.tensor([0, 0, 0, 0.5, 0.5]), atol=1e-5, rtol=0)
    assert torch.equal(random_walk(scores, t, iters=0), scores)
    with pytest.raises(ValueError):
        random_walk(scores, t, method="jacobi")


def test_random_walk_methods_agree_and_one_step_is_a_weighted_mean():
    torch.manual_seed(0)
    f = torch.randn(3, 4, 5)
    t = transition_matrix(f, radius=2, beta=1.0)
    x = torch.rand(3, 4, 5)
    one = random_walk(x, t, iters=1)
    torch.testing.assert_close(one.reshape(3, -1), x.reshape(3, -1) @ t.T)
    torch.testing.assert_close(random_walk(x, t, 37, "power"), random_walk(x, t, 37, "steps"), atol=1e-5, rtol=1e-4)
    probs = x / x.sum(0, keepdim=True)  # distributions stay distributions
    torch.testing.assert_close(random_walk(probs, t, 16).sum(0), torch.ones(4, 5))


def test_seed_label_thresholds_and_classes():
    cams = torch.tensor([[[0.9, 0.5, 0.1, 0.2, 0.85]], [[0.2, 0.95, 0.05, 0.6, 0.1]]])
    label = seed_label(cams, [3, 7], fg_threshold=0.8, bg_threshold=0.3)
    # max 0.9 (class 3) -> 4; 0.95 (class 7) -> 8; 0.1 -> bg; 0.6 in between -> 255; 0.85 -> 4
    assert label.tolist() == [[4, 8, 0, 255, 4]]
    ignore = torch.tensor([[False, False, False, False, True]])
    assert seed_label(cams, [3, 7], 0.8, 0.3, ignore=ignore).tolist() == [[4, 8, 0, 255, 255]]
    assert seed_label(torch.zeros(0, 2, 2), [], 0.8, 0.3).tolist() == [[0, 0], [0, 0]]
    with pytest.raises(ValueError):
        seed_label(cams, [3, 7], fg_threshold=0.3, bg_threshold=0.8)


def test_downsample_label_takes_cell_centres():
    label = torch.arange(16).view(1, 4, 4)
    assert downsample_label(label, (2, 2)).tolist() == [[[5, 7], [13, 15]]]
    assert downsample_label(label, (4, 4)).dtype == label.dtype


# --- the train-aff stage and the rw refiner on the tiny synthetic set ----------------------------------


def _write_soft_cams(ds, folder: Path) -> Path:
    """Ground-truth-like CAMs: each labelled class's mask, blurred (soft edges, values in [0, 1])."""
    from weakseg.engine.artifacts import mark_done, save_npz

    for i, rec in enumerate(ds.records):
        gt = torch.from_numpy(ds.load_mask(i).astype(np.int64))
        masks = torch.stack([(gt == c + 1).float() for c in rec.labels])[None]
        cams = F.avg_pool2d(masks, 7, stride=1, padding=3, count_include_pad=False)[0]
        save_npz(
            folder / f"{rec.image_id}.npz", cams=cams.numpy().astype(np.float16), classes=np.array(rec.labels, np.int16)
        )
    mark_done(folder)
    return folder


@pytest.fixture(scope="module")
def soft_cams(synth_root, tmp_path_factory) -> Path:
    from weakseg.data.registry import open_dataset

    return _write_soft_cams(open_dataset(synth_root, "train"), tmp_path_factory.mktemp("softcams"))


def _aff_config(synth_root, cams, out):
    from weakseg.engine.dense import DenseTrainConfig
    from weakseg.stages.train_aff import TrainAffinityConfig

    return TrainAffinityConfig(
        cams=cams,
        data=synth_root,
        out=out,
        backbone="tiny",
        pretrained=False,
        dim=16,
        radius=2,
        fg_threshold=0.7,
        bg_threshold=0.3,
        # 40 steps: enough for the random tiny net to tell the synthetic textures apart
        train=DenseTrainConfig(epochs=8, batch_size=8, lr=1e-2),
        crop=64,
        device="cpu",
    )


@pytest.fixture(scope="module")
def trained_aff(synth_root, soft_cams, tmp_path_factory) -> Path:
    from weakseg.stages.train_aff import train_affinity

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("aff") / "aff"
    return train_affinity(_aff_config(synth_root, soft_cams, out))


def test_train_affinity_writes_model_and_skips_when_done(synth_root, soft_cams, trained_aff):
    from weakseg.engine.artifacts import is_done, load_json
    from weakseg.refine.affinity_net import load_affinity_net
    from weakseg.stages.train_aff import train_affinity

    out = trained_aff
    assert is_done(out) and (out / "model.safetensors").is_file() and any((out / "tb").iterdir())
    assert (out / "DONE").stat().st_mtime_ns >= (out / "model.safetensors").stat().st_mtime_ns
    meta = load_json(out / "config.json")
    assert meta["stage"] == "train-aff" and meta["radius"] == 2 and meta["backbone"] == "tiny"
    assert meta["record"]["backbone"] == "tiny" and meta["record"]["train"]["epochs"] == 8
    assert (meta["record"]["fg_threshold"], meta["record"]["bg_threshold"]) == (0.7, 0.3)
    losses = load_json(out / "DONE")["final_losses"]
    assert {"train/loss", "train/bg_pos", "train/fg_pos", "train/neg"} <= set(losses)
    net, _ = load_affinity_net(out)
    assert net(torch.rand(1, 3, 96, 96)).shape == (1, 16, 12, 12)  # stride 8
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    assert train_affinity(_aff_config(synth_root, soft_cams, out)) == out  # complete: skipped
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime
    with pytest.raises(ConfigError, match=r"another configuration \(differs in: radius\)"):
        train_affinity(replace(_aff_config(synth_root, soft_cams, out), radius=3))


def test_train_affinity_resumes_from_last_epoch(synth_root, soft_cams, tmp_path):
    from weakseg.engine.artifacts import load_json, save_json
    from weakseg.stages.train_aff import train_affinity

    out = tmp_path / "aff"
    cfg = _aff_config(synth_root, soft_cams, out)
    cfg = replace(cfg, train=replace(cfg.train, epochs=2, batch_size=20), crop=32)  # 2 steps/epoch
    train_affinity(cfg)
    # an interrupted run: DONE gone, the saved state after epoch 1 (step marked 100 to see what reruns)
    (out / "DONE").unlink()
    state = load_json(out / "state" / "train_state.json")
    state["progress"] = {"epoch": 1, "step": 100}
    save_json(out / "state" / "train_state.json", state)
    train_affinity(cfg)
    assert load_json(out / "state" / "train_state.json")["progress"] == {"epoch": 2, "step": 102}  # epoch 2 only
    assert (out / "DONE").is_file()


def test_train_affinity_config_errors(synth_root, soft_cams, tmp_path):
    from weakseg.stages.train_aff import train_affinity

    cfg = _aff_config(synth_root, soft_cams, tmp_path / "aff")
    with pytest.raises(ConfigError, match="bg_threshold <= fg_threshold"):
        train_affinity(replace(cfg, fg_threshold=0.2))
    with pytest.raises(ConfigError, match="unknown backbone"):
        train_affinity(replace(cfg, backbone="resnet-9000"))
    (tmp_path / "cams").mkdir()
    with pytest.raises(DataError, match="DONE"):
        train_affinity(replace(cfg, cams=tmp_path / "cams"))


def test_pseudo_rw_config_errors(tmp_path, trained_aff):
    from weakseg.stages.pseudo import PseudoConfig

    cfg = PseudoConfig(cams=tmp_path, data=tmp_path, out=tmp_path, bg_threshold=0.3)
    with pytest.raises(ConfigError, match="crf, none, par, rw"):
        replace(cfg, refiner="grabcut").resolved()
    with pytest.raises(ConfigError, match="train-aff"):
        replace(cfg, refiner="rw").resolved()
    with pytest.raises(ConfigError, match="only used by the 'rw' refiner"):
        replace(cfg, affinity=trained_aff).resolved()
    with pytest.raises(ConfigError, match="rw_beta"):
        replace(cfg, refiner="rw", affinity=trained_aff, rw_beta=0.0).resolved()
    assert replace(cfg, refiner="rw", affinity=trained_aff).resolved().refiner == "rw"


def test_pseudo_rw_refuses_an_unfinished_affinity_folder(synth_root, soft_cams, tmp_path):
    from weakseg.stages.pseudo import PseudoConfig, make_pseudo

    (tmp_path / "aff").mkdir()
    cfg = PseudoConfig(
        cams=soft_cams, data=synth_root, out=tmp_path / "p", bg_threshold=0.4, refiner="rw", affinity=tmp_path / "aff"
    )
    with pytest.raises(DataError, match="train-aff"):
        make_pseudo(cfg)


def test_pseudo_rw_end_to_end(synth_root, soft_cams, trained_aff, tmp_path, monkeypatch):
    """rw labels from GT-like CAMs score far above chance; the AffinityNet is loaded once per process."""
    from weakseg.data.palette import read_mask_png
    from weakseg.data.registry import open_dataset
    from weakseg.engine.artifacts import load_json
    from weakseg.stages import pseudo
    from weakseg.stages.pseudo import PseudoConfig, make_pseudo

    loads = []
    real = pseudo.load_affinity_net
    monkeypatch.setattr(pseudo, "load_affinity_net", lambda *a, **k: loads.append(a) or real(*a, **k))
    pseudo._AFFINITY.clear()
    cfg = PseudoConfig(
        cams=soft_cams,
        data=synth_root,
        out=tmp_path / "pseudo",
        background="threshold",
        bg_threshold=0.4,
        refiner="rw",
        affinity=trained_aff,
        ignore_margin=0.1,  # the stage's default when the figures below were measured
        rw_iters=32,  # PSA's 256 steps leak more through a 3-second tiny net (measured: mIoU 0.48 vs 0.70)
    )
    m = make_pseudo(cfg)
    ds = open_dataset(synth_root, "train")
    assert m["written"] == len(ds) and len(loads) == 1
    chance = 1 / (ds.num_classes + 1)
    assert m["miou"] > 0.5 > 5 * chance  # measured 0.70 (no refiner: 0.98; uniform affinities: 0.10)
    saved = load_json(tmp_path / "pseudo" / "config.json")["record"]
    assert saved["refiner"] == "rw" and saved["rw_iters"] == 32 and saved["affinity"] == str(trained_aff)
    for rec in ds.records:
        values = set(np.unique(read_mask_png(tmp_path / "pseudo" / f"{rec.image_id}.png")).tolist())
        assert values <= {0, 255, *(c + 1 for c in rec.labels)}
    # the other refiners' saved configs do not grow the rw keys (folders made before rw stay valid)
    none_cfg = replace(cfg, out=tmp_path / "none", refiner="none", affinity=None)
    make_pseudo(none_cfg)
    assert "rw_beta" not in load_json(tmp_path / "none" / "config.json")["record"]
    assert "par_iters" not in load_json(tmp_path / "none" / "config.json")["record"]
    assert "par_iters" not in saved


def test_pipeline_affinity_thresholds_from_the_seed_sweep(tmp_path, monkeypatch):
    from weakseg import tasks
    from weakseg.engine.dense import DenseTrainConfig
    from weakseg.pipeline import RunConfig
    from weakseg.refine.pseudo import PseudoOptions, background_threshold
    from weakseg.stages.train_aff import TrainAffinityOptions
    from weakseg.tasks import aff_thresholds

    assert aff_thresholds({"best_threshold": 0.7, "best_miou": 0.4}) == {"fg_threshold": 0.8, "bg_threshold": 0.5}
    assert aff_thresholds({"best_threshold": 0.9, "best_miou": 0.4}) == {"fg_threshold": 0.95, "bg_threshold": 0.7}
    assert aff_thresholds({"best_threshold": 0.1, "best_miou": 0.4}) == {"fg_threshold": 0.2, "bg_threshold": 0.05}
    assert aff_thresholds({"best_threshold": None, "best_miou": None}) == {}
    # the pseudo labels' background threshold: best seed threshold - 0.15, at least 0.05; no masks -> an error
    assert background_threshold({"best_threshold": 0.6, "best_miou": 0.5}) == 0.45
    assert background_threshold({"best_threshold": 0.1, "best_miou": 0.5}) == 0.05
    with pytest.raises(ConfigError, match="--bg-threshold"):
        background_threshold({"best_threshold": None, "best_miou": None})
    # the run's aff stage: its own options, the run's seed, thresholds from the seed sweep
    seen = {}
    monkeypatch.setattr(tasks, "train_affinity", lambda cfg: seen.setdefault("aff", cfg))
    monkeypatch.setattr(tasks, "make_pseudo", lambda cfg: seen.setdefault("pseudo", cfg) and {})
    opts = tasks.RunOptions(
        aff=TrainAffinityOptions(backbone="tiny", train=DenseTrainConfig(epochs=1)), pseudo=PseudoOptions(refiner="rw")
    )
    ctx = tasks.RunContext(out=tmp_path, data=tmp_path / "data", method="mcis", opts=opts, seed=3)
    ctx.results["seeds"] = {"best_threshold": 0.6, "best_miou": 1}
    aff_stage = next(st for st in tasks.TASKS["tags"].stages if st.name == "aff")
    assert aff_stage.when(ctx)  # the aff stage runs with the rw refiner only
    assert not aff_stage.when(replace(ctx, opts=tasks.RunOptions()))
    aff_stage.run(ctx)
    aff = seen["aff"]
    assert (aff.backbone, aff.train.epochs, aff.seed, aff.fg_threshold, aff.bg_threshold) == ("tiny", 1, 3, 0.7, 0.4)
    assert (aff.cams, aff.out) == (tmp_path / "cams", tmp_path / "aff")
    assert ctx.summary["aff"] == {"fg_threshold": 0.7, "bg_threshold": 0.4}
    next(st for st in tasks.TASKS["tags"].stages if st.name == "pseudo").run(ctx)
    assert seen["pseudo"].affinity == tmp_path / "aff" and seen["pseudo"].refiner == "rw"
    assert RunConfig().pseudo.refiner == "par"  # the default refiner is unchanged
