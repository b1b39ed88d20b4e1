"""Extra data for MCIS (settings 2 and 3): extra=... parsing, opening, pair plan, losses, noise filter, training."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from weakseg.data.extra import (
    DEFAULT_RATIO,
    MixedPairDataset,
    MixedPairSampler,
    PairRef,
    collate_mixed,
    open_extra,
    parse_extra,
)
from weakseg.data.labels import write_classes, write_cls_labels
from weakseg.data.recipes import local_batch_size
from weakseg.errors import ConfigError
from weakseg.methods.mcis import extra_step
from weakseg.methods.mcis_extra import WebFilter, extra_pair_loss, query_scores, web_weights
from weakseg.stages.train_cls import TrainClsConfig, train_cls

NAMES = ("disc", "triangle", "ring", "cross", "star", "square", "ellipse", "arrow", "crescent", "hexagon")


pytestmark = pytest.mark.usefixtures("one_thread")


def _folder_set(root: Path, names, labels: dict[str, tuple[int, ...]]) -> Path:
    """A folder-format dataset (images/, labels.csv, classes.txt) of tiny grey images."""
    (root / "images").mkdir(parents=True)
    for image_id in labels:
        Image.new("RGB", (24, 20), (90, 120, 150)).save(root / "images" / f"{image_id}.png")
    write_classes(root / "classes.txt", names)
    write_cls_labels(root / "labels.csv", labels, names)
    return root


# ---------------------------------------------------------------------------- parsing and opening


def test_parse_extra_entries(tmp_path):
    assert parse_extra("single:data/x") == parse_extra(f"single:data/x:{DEFAULT_RATIO}")
    spec = parse_extra("web:/d/web:0.25")
    assert (spec.kind, spec.root, spec.ratio) == ("web", Path("/d/web"), 0.25)
    odd = tmp_path / "a:b"  # an existing folder whose name ends in ':text' is taken whole
    odd.mkdir()
    assert parse_extra(f"single:{odd}").root == odd
    assert parse_extra(f"single:{odd}:2").ratio == 2.0


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ("single", "malformed"),
        (":data/x", "malformed"),
        ("single:", "no folder"),
        ("single::0.5", "no folder"),
        ("web:data/x:abc", "not a number"),
        ("web:data/x:0", "positive"),
        ("web:data/x:-1", "positive"),
        ("web:data/x:nan", "positive"),
        ("imagenet:data/x", "valid kinds: single, web"),
    ],
)
def test_parse_extra_errors(entry, match):
    with pytest.raises(ConfigError, match=match):
        parse_extra(entry)


def test_open_extra_voc_layout_and_errors(synth_root, tmp_path):
    ex = open_extra(parse_extra(f"web:{synth_root / 'extra_web'}"), NAMES)
    assert ex.split == "train" and len(ex.ds) == 8
    assert all(len(ls) == 1 for ls in ex.labels)  # web images are listed under their query class only
    assert ex.labels == [r.labels for r in ex.ds.records]  # same class list: identity map
    with pytest.raises(ConfigError, match="folder not found"):
        open_extra(parse_extra(f"single:{tmp_path / 'nope'}"), NAMES)


def test_open_extra_maps_a_subset_by_name_and_rejects_other_names(tmp_path):
    sub = _folder_set(tmp_path / "sub", ["ring", "disc"], {"a": (0,), "b": (1,), "c": (0, 1)})
    ex = open_extra(parse_extra(f"single:{sub}"), NAMES)
    assert ex.split == "all"  # folder format: no train split
    by_id = dict(zip([r.image_id for r in ex.ds.records], ex.labels, strict=True))
    assert by_id == {"a": (2,), "b": (0,), "c": (0, 2)}
    np.testing.assert_array_equal(ex.label_vector(ex.ds.index_of("c")), np.eye(10, dtype=np.float32)[[0, 2]].sum(0))
    other = _folder_set(tmp_path / "other", ["ring", "zebra", "bus"], {"a": (1,)})
    with pytest.raises(ConfigError, match=r"\['zebra', 'bus'\] are not classes of the main set"):
        open_extra(parse_extra(f"web:{other}"), NAMES)
    empty = _folder_set(tmp_path / "empty", ["ring"], {"a": (), "b": ()})
    with pytest.raises(ConfigError, match="no labelled image"):
        open_extra(parse_extra(f"web:{empty}"), NAMES)


def test_train_cls_extra_errors(synth_root, tmp_path):
    base = dict(data=synth_root, backbone="tiny", preset="tiny", device="cpu")
    with pytest.raises(ConfigError, match="CamConfig has no option 'extra'"):  # extra data needs pairs (mcis)
        train_cls(TrainClsConfig(out=tmp_path / "a", method="cam", set=(f"extra=single:{synth_root / 'extra_single'}",),
                                 **base))  # fmt: skip
    with pytest.raises(ConfigError, match="valid kinds"):
        train_cls(TrainClsConfig(out=tmp_path / "b", set=("extra=video:x",), **base))
    with pytest.raises(ConfigError, match="threshold"):
        train_cls(TrainClsConfig(out=tmp_path / "c", set=("web.threshold=1.5",), **base))
    assert not any((tmp_path / d).exists() for d in "abc")  # refused before anything is written
    with pytest.raises(ConfigError, match="batch_size=4 or 6"):
        local_batch_size(5, 2)
    assert local_batch_size(6, 3) == 2


# ---------------------------------------------------------------------------- the epoch plan

MAIN = [(0,), (0, 1), (1,), (2,), (1, 2), (0,), (2,), (), (1,), (0, 2)]
SINGLE = [(0,), (1,), (2,), (3,), (1,)]  # class 3 has no main image: that image cannot be paired
WEB = [(2,), (0,), (1,)]


def _sampler(**kw) -> MixedPairSampler:
    args = dict(extras=[(SINGLE, 1.0), (WEB, 0.5)], batch_size=3, seed=4)
    return MixedPairSampler(MAIN, 4, **{**args, **kw})


def test_plan_is_deterministic_homogeneous_and_pairs_share_the_query_class():
    s = _sampler()
    assert s.global_batches(2) == _sampler().global_batches(2)
    assert s.global_batches(2) != s.global_batches(3)
    assert s.global_batches(2) != _sampler(seed=5).global_batches(2)
    n_main = sum(1 for ls in MAIN if ls)
    for epoch in range(4):
        batches = s.global_batches(epoch)
        assert len(batches) == len(s)
        assert all(len({r.source for r in b}) == 1 for b in batches)  # one source per batch
        refs = [r for b in batches for r in b]
        assert [r.key for r in refs] == list(range(len(refs)))
        per_source = Counter(r.source for r in refs)
        assert per_source == {0: n_main, 1: n_main, 2: round(0.5 * n_main)}
        for r in refs:
            if r.source == 0:
                assert set(MAIN[r.anchor]) & set(MAIN[r.partner])
                continue
            labels = (SINGLE, WEB)[r.source - 1]
            assert r.query in labels[r.anchor] and r.query in MAIN[r.partner]
        singles = Counter(r.anchor for r in refs if r.source == 1)
        assert 3 not in singles and max(singles.values()) - min(singles.values()) <= 1  # used evenly


def test_plan_shards_by_rank():
    single = _sampler().global_batches(1)
    for world in (2, 3):
        shards = [_sampler(rank=r, world_size=world).batches(1) for r in range(world)]
        assert all(len(sh) == len(single) for sh in shards)
        for i, batch in enumerate(single):
            local = [sh[i] for sh in shards]
            assert len({len(b) for b in local}) == 1  # every rank steps with the same batch size
            together = [r for b in local for r in b]
            assert set(together) == set(batch)  # padding repeats pairs of the batch
            if len(batch) % world == 0:
                assert sorted(together) == sorted(batch)


def test_plan_without_extras_is_the_main_pair_sampler():
    from weakseg.data.pairs import PairSampler

    s = MixedPairSampler(MAIN, 4, batch_size=4, seed=3)
    flat = [(r.anchor, r.partner) for b in s.global_batches(5) for r in b]
    assert flat == PairSampler(MAIN, 4, seed=3).all_pairs(5)


def test_unpairable_extra_set_is_an_error():
    with pytest.raises(ConfigError, match="--extra web:x: none of its labelled images"):
        MixedPairSampler(MAIN, 4, extras=[([(3,), ()], 0.5)], names=["--extra web:x"])


def test_pair_items_are_seeded_by_their_place_in_the_epoch(synth_dataset, synth_root):
    web = open_extra(parse_extra(f"web:{synth_root / 'extra_web'}"), NAMES)
    q = web.labels[0][0]
    partner = next(i for i, r in enumerate(synth_dataset.records) if q in r.labels)
    refs = [PairRef(1, 0, partner, q, key=7), PairRef(0, 0, 1, -1, key=8)]
    data = MixedPairDataset(synth_dataset, [web], refs, 32, ((1.0, True),), seed=(0, 1))
    a = data[0]
    torch.manual_seed(123)  # the global RNG does not matter
    b = data[0]
    torch.testing.assert_close(a["anchor"], b["anchor"])
    assert a["source"] == "web" and a["query"] == q and a["views"] == []
    assert a["label_a"].shape == (10,) and a["label_a"][q] == 1 and a["label_p"][q] == 1
    other = MixedPairDataset(synth_dataset, [web], [refs[0]._replace(key=9)], 32, seed=(0, 1))[0]
    assert not torch.equal(other["anchor"], a["anchor"])  # another place, another jitter
    main = data[1]
    assert main["source"] == "main" and len(main["views"]) == 1
    batch = collate_mixed([a, a])
    assert batch["source"] == "web" and batch["query"].tolist() == [q, q] and batch["anchor"].shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="mixes sources"):
        collate_mixed([a, main])


# ---------------------------------------------------------------------------- losses and the noise filter


def test_web_votes_and_weights_on_a_toy_case():
    co_a = torch.tensor([[4.0, -4.0], [-4.0, 4.0], [0.0, 0.0]])
    co_p = torch.tensor([[2.0, -2.0], [-4.0, -4.0], [0.0, 0.0]])
    query = torch.tensor([0, 0, 1])
    scores = query_scores(co_a, co_p, query)
    expected = 0.5 * (torch.sigmoid(torch.tensor([4.0, -4.0, 0.0])) + torch.sigmoid(torch.tensor([2.0, -4.0, 0.0])))
    torch.testing.assert_close(scores, expected)
    f = WebFilter(warmup=1, threshold=0.5, weight=0.25)
    assert web_weights(scores, 0, f).tolist() == [1.0, 1.0, 1.0]  # warm-up: every pair counts
    assert web_weights(scores, 1, f).tolist() == [1.0, 0.25, 1.0]  # pair 1: neither side sees class 0
    with pytest.raises(ConfigError):
        WebFilter(threshold=2.0)


def test_extra_pair_loss_weights_and_drops_pairs():
    mlsm = torch.nn.functional.multilabel_soft_margin_loss
    g = torch.Generator().manual_seed(0)
    out = {k: torch.randn(3, 4, generator=g, requires_grad=True) for k in ("logits", "logits_p", "co_a", "co_p")}
    ya = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])
    yp = torch.tensor([[1.0, 1, 0, 0], [0, 1, 0, 1], [1, 0, 1, 0]])
    batch = {"label_a": ya, "label_p": yp}
    full = extra_pair_loss(out, batch)
    shared = ya * yp
    plain = mlsm(torch.cat([out["logits"], out["logits_p"]]), torch.cat([ya, yp]))
    co = mlsm(torch.cat([out["co_a"], out["co_p"]]), torch.cat([shared, shared]))
    torch.testing.assert_close(full["loss"], plain + co)  # unit weights: mcis_loss's plain + co terms
    w = torch.tensor([1.0, 0.0, 0.5])
    part = extra_pair_loss(out, batch, w)
    rows = [
        0.5 * (mlsm(out[a][i : i + 1], y[i : i + 1]) + mlsm(out[b][i : i + 1], z[i : i + 1]))
        for i in range(3)
        for a, b, y, z in (("logits", "logits_p", ya, yp), ("co_a", "co_p", shared, shared))
    ]
    per_pair = torch.stack(rows).view(3, 2).sum(1)
    torch.testing.assert_close(part["loss"], (w * per_pair).sum() / 3)  # divided by pairs, not by Σw
    part["loss"].backward()
    assert out["co_a"].grad[1].abs().sum() == 0 and out["logits"].grad[1].abs().sum() == 0  # dropped pair
    assert out["co_a"].grad[2].abs().sum() > 0


def test_extra_step_keys_per_source():
    from weakseg.backbones import create_backbone
    from weakseg.methods.mcis import PRESETS, MCISNet

    hp = PRESETS["tiny"]
    torch.manual_seed(0)
    net = MCISNet(create_backbone("tiny", output_stride=8), 4, hp).train()
    y = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0]])
    batch = {"anchor": torch.rand(2, 3, 32, 32), "partner": torch.rand(2, 3, 32, 32), "label_a": y, "label_p": y}
    web = extra_step(net, {**batch, "views": [], "source": "web", "query": torch.tensor([0, 1])}, 0, hp)
    assert set(web) == {"loss", "web/plain", "web/co", "web/score", "web/kept"}
    single = extra_step(net, {**batch, "views": [], "source": "single", "query": torch.tensor([0, 1])}, 0, hp)
    assert set(single) == {"loss", "single/plain", "single/co"}
    main = extra_step(net, {**batch, "views": [batch["anchor"].flip(-1)], "source": "main"}, 5, hp)
    assert set(main) == {"loss", "main/plain", "main/co", "main/self", "main/contrast"}
    web["loss"].backward()
    assert net.gate.weight.grad is None  # no contrastive branch for extra pairs


# ---------------------------------------------------------------------------- end to end


def _scalars(tb_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_train_cls_with_single_and_web_extras_logs_per_source(synth_root, tmp_path):
    extra = (f"single:{synth_root / 'extra_single'}:0.25", f"web:{synth_root / 'extra_web'}:0.25")
    cfg = TrainClsConfig(
        data=synth_root, out=tmp_path / "cls", backbone="tiny", preset="tiny", device="cpu",
        set=(f"extra={','.join(extra)}", "web.warmup=1"),
    )  # fmt: skip
    out = train_cls(cfg)
    rec = json.loads((out / "config.json").read_text())["record"]
    assert [e["kind"] for e in rec["extra"]] == ["single", "web"] and rec["extra"][1]["ratio"] == 0.25
    assert rec["method_config"]["extra"] == list(extra)
    assert rec["method_config"]["web"] == {"warmup": 1, "threshold": 0.5, "weight": 0.0}
    scalars = _scalars(out / "tb")
    steps_per_epoch = 10 + 3 + 3  # 40 main pairs, 10 single, 10 web, batches of 4
    assert len(scalars["train/loss"]) == 2 * steps_per_epoch
    for key in ("main/plain", "main/co", "main/self", "single/plain", "single/co", "web/plain", "web/co", "web/kept"):
        assert f"train/{key}" in scalars, key
    assert len(scalars["train/web/co"]) == 2 * 3 and len(scalars["train/main/co"]) == 2 * 10
    assert len(scalars["train/main/contrast"]) == 10  # from epoch 1 (the tiny preset), main pairs only
    assert "train/plain" not in scalars and "train/single/contrast" not in scalars
    assert scalars["train/web/kept"][:3] == [1.0, 1.0, 1.0]  # warm-up epoch: no pair filtered
    done = json.loads((out / "DONE").read_text())["last_epoch_losses"]
    assert done["train/web/co"] == pytest.approx(np.mean(scalars["train/web/co"][3:]))  # mean over web steps only
    # resuming with other extra data is refused
    (out / "DONE").unlink()
    with pytest.raises(ConfigError, match=r"differs in: extra, method_config\.extra\)"):
        train_cls(dataclasses.replace(cfg, set=(f"extra={extra[0]}", "web.warmup=1")))


# ---------------------------------------------------------------------------- data check on the extra sets


def test_data_check_works_on_the_extra_sets(synth_root, capsys):
    from weakseg.cli import main
    from weakseg.data.check import ERROR, check_dataset

    web = check_dataset(synth_root / "extra_web")
    assert not [p for p in web if p.severity == ERROR]
    # web labels miss objects: the check reports the classes its masks show beyond the listed query
    assert any(p.kind == "labels_vs_mask" for p in web)
    single = check_dataset(synth_root / "extra_single")
    assert not [p for p in single if p.severity == ERROR]
    assert not any(p.kind == "labels_vs_mask" for p in single)
    for name in ("extra_web", "extra_single"):
        main(["data", "check", "--root", str(synth_root / name)])  # exits only on errors
        assert "0 error(s)" in capsys.readouterr().out
