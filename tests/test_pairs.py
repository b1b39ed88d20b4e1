"""Pair sampler: determinism, shared classes, sharding; test-time partners; pair batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from weakseg.data.pairs import PairDataset, PairSampler, class_index, collate_pairs, sample_partners

LABELS = [(0,), (0, 1), (1,), (), (2,), (1, 2), (0,), (3,), (2, 3), ()]
K = 4


def test_partner_shares_a_class_and_unlabelled_are_skipped():
    s = PairSampler(LABELS, K, seed=3)
    for epoch in range(5):
        pairs = s.pairs(epoch)
        anchors = [a for a, _ in pairs]
        assert sorted(anchors) == [i for i, ls in enumerate(LABELS) if ls]  # each labelled image once
        for a, p in pairs:
            assert set(LABELS[a]) & set(LABELS[p]), (a, p)
            assert p != a  # every class here has at least two images


def test_only_member_pairs_with_itself():
    s = PairSampler([(0,), (1,), (1,)], 2, seed=0)
    assert dict(s.pairs(0))[0] == 0


def test_same_seed_same_pairs_other_epoch_or_seed_differs():
    a = PairSampler(LABELS, K, seed=7)
    b = PairSampler(LABELS, K, seed=7)
    assert a.pairs(2) == b.pairs(2)
    assert a.pairs(2) != a.pairs(3)
    assert a.pairs(2) != PairSampler(LABELS, K, seed=8).pairs(2)


def test_partner_choice_is_uniform_over_other_members():
    labels = [(0,)] * 4
    s = PairSampler(labels, 1, seed=0)
    counts = np.zeros((4, 4))
    for e in range(400):
        for a, p in s.pairs(e):
            counts[a, p] += 1
    assert (np.diag(counts) == 0).all()
    off = counts[~np.eye(4, dtype=bool)]
    assert off.min() > 100 and off.max() < 170  # ~133 each


@pytest.mark.parametrize("world", [2, 3, 4])
def test_shards_partition_the_single_process_pairs(world):
    single = PairSampler(LABELS, K, seed=1).pairs(4)
    shards = [PairSampler(LABELS, K, seed=1, rank=r, world_size=world).pairs(4) for r in range(world)]
    flat = [p for sh in shards for p in sh]
    assert sorted(flat) == sorted(single)
    assert len(flat) == len(single)  # disjoint
    assert [len(PairSampler(LABELS, K, seed=1, rank=r, world_size=world)) for r in range(world)] == [
        len(sh) for sh in shards
    ]


def test_even_shards_have_equal_length():
    shards = [PairSampler(LABELS, K, seed=1, rank=r, world_size=3, even=True).pairs(0) for r in range(3)]
    assert len({len(s) for s in shards}) == 1
    assert set(p for s in shards for p in s) == set(PairSampler(LABELS, K, seed=1).pairs(0))


def test_sample_partners_per_class():
    members = class_index(LABELS, K)
    got = sample_partners(LABELS, members, 5, k=3, seed=0)
    assert sorted(got) == [1, 2]
    for c, js in got.items():
        assert len(js) == 3
        assert all(c in LABELS[j] and j != 5 for j in js)
    assert got == sample_partners(LABELS, members, 5, k=3, seed=0)
    assert sample_partners(LABELS, members, 3, k=3) == {}  # no labels: no partners


def test_pair_dataset_and_collate(synth_dataset):
    sampler = PairSampler([r.labels for r in synth_dataset.records], synth_dataset.num_classes, seed=0)
    pairs = sampler.pairs(0)[:3]
    ds = PairDataset(synth_dataset, pairs, 48, self_views=((1.0, True), (0.75, False)))
    batch = collate_pairs([ds[i] for i in range(3)])
    assert batch["anchor"].shape == batch["partner"].shape == (3, 3, 48, 48)
    assert [v.shape for v in batch["views"]] == [(3, 3, 48, 48), (3, 3, 36, 36)]
    assert batch["label_a"].shape == (3, synth_dataset.num_classes)
    assert (batch["label_a"] * batch["label_p"]).sum(1).min() >= 1  # every pair shares a class
    # the flip copy is the un-jittered anchor mirrored
    raw = ds[0]["views"][0].flip(-1)
    from weakseg.data.transforms import load_square

    torch.testing.assert_close(raw, load_square(synth_dataset, pairs[0][0], 48))
