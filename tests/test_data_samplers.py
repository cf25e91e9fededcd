"""Samplers: determinism, disjoint shards, resume, grouping, inference shards."""

import itertools

import pytest
import torch

from drdet.data.samplers import (
    GroupedBatchSampler,
    InferenceSampler,
    IterationBasedBatchSampler,
    TrainingSampler,
)


def take(iterable, n):
    return list(itertools.islice(iter(iterable), n))


def test_training_stream_is_deterministic_and_epochs_are_permutations():
    a = take(TrainingSampler(13, seed=7), 39)
    assert a == take(TrainingSampler(13, seed=7), 39)
    assert a != take(TrainingSampler(13, seed=8), 39)
    for epoch in range(3):
        assert sorted(a[13 * epoch : 13 * (epoch + 1)]) == list(range(13))
    assert a[:13] != a[13:26]  # a new permutation each epoch
    # Independent reference: a torch generator seeded the same way, randperm per epoch.
    g = torch.Generator().manual_seed(7)
    assert (
        a[:26]
        == torch.randperm(13, generator=g).tolist() + torch.randperm(13, generator=g).tolist()
    )
    assert take(TrainingSampler(5, shuffle=False), 7) == [0, 1, 2, 3, 4, 0, 1]


def test_two_ranks_get_disjoint_shards_covering_the_data():
    size = 10
    full = take(TrainingSampler(size, seed=3), 4 * size)
    r0 = take(TrainingSampler(size, seed=3, rank=0, world_size=2), 2 * size)
    r1 = take(TrainingSampler(size, seed=3, rank=1, world_size=2), 2 * size)
    assert r0 == full[0::2] and r1 == full[1::2]
    for epoch in range(4):  # each epoch: 5 + 5 distinct indices, all 10
        half = size // 2
        e0, e1 = (
            set(r0[epoch * half : (epoch + 1) * half]),
            set(r1[epoch * half : (epoch + 1) * half]),
        )
        assert not e0 & e1 and e0 | e1 == set(range(size))


def _train_batches(start_iter, rank=0, world_size=1, group_ids=None, num_iters=25):
    sampler = TrainingSampler(11, seed=5, rank=rank, world_size=world_size)
    return list(
        IterationBasedBatchSampler(
            GroupedBatchSampler(sampler, group_ids, 3, True), num_iters, start_iter
        )
    )


@pytest.mark.parametrize("group_ids", [None, [0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0]])
def test_resume_from_start_iter_reproduces_the_tail(group_ids):
    full = _train_batches(0, group_ids=group_ids)
    assert len(full) == 25 and all(len(b) == 3 for b in full)
    for start in (1, 7, 24, 25):
        assert _train_batches(start, group_ids=group_ids) == full[start:]
    for rank in (0, 1):
        full_r = _train_batches(0, rank, 2, group_ids)
        assert _train_batches(9, rank, 2, group_ids) == full_r[9:]
    assert len(IterationBasedBatchSampler([[0]] * 30, 25, 7)) == 18


def test_grouped_batches_share_a_group_and_keep_stream_order():
    group_ids = [0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0]
    stream = take(TrainingSampler(11, seed=5), 60)
    batches = take(GroupedBatchSampler(stream, group_ids, 3, drop_uneven=True), 100)
    for batch in batches:
        assert len({group_ids[i] for i in batch}) == 1
    # Reference: the per-group subsequences of the stream, cut into consecutive triples.
    for g in (0, 1):
        sub = [i for i in stream if group_ids[i] == g]
        expected = [sub[k : k + 3] for k in range(0, len(sub) - len(sub) % 3, 3)]
        assert [b for b in batches if group_ids[b[0]] == g] == expected


def test_grouped_finite_sampler_emits_leftovers_unless_dropped():
    batches = list(GroupedBatchSampler(range(7), [0, 1, 0, 1, 0, 0, 1], 2))
    assert batches == [[0, 2], [1, 3], [4, 5], [6]]
    assert list(GroupedBatchSampler(range(7), [0, 1, 0, 1, 0, 0, 1], 2, drop_uneven=True)) == [
        [0, 2],
        [1, 3],
        [4, 5],
    ]
    assert list(GroupedBatchSampler(range(5), None, 2)) == [[0, 1], [2, 3], [4]]
    assert len(GroupedBatchSampler(range(5), None, 2)) == 3


def test_iteration_sampler_errors_on_exhausted_finite_sampler():
    with pytest.raises(RuntimeError, match="ran out"):
        list(IterationBasedBatchSampler(GroupedBatchSampler(range(4), None, 2), 5))
    with pytest.raises(ValueError, match="start_iter"):
        IterationBasedBatchSampler([], 5, 6)


@pytest.mark.parametrize("size, world_size", [(11, 3), (10, 4), (2, 3), (0, 2), (7, 1)])
def test_inference_shards_cover_each_index_exactly_once(size, world_size):
    shards = [list(InferenceSampler(size, r, world_size)) for r in range(world_size)]
    assert list(itertools.chain(*shards)) == list(range(size))  # contiguous, in order, no padding
    lengths = [len(InferenceSampler(size, r, world_size)) for r in range(world_size)]
    assert lengths == [len(s) for s in shards] and max(lengths) - min(lengths) <= 1


def test_bad_sampler_arguments():
    with pytest.raises(ValueError, match="rank"):
        TrainingSampler(5, rank=2, world_size=2)
    with pytest.raises(ValueError, match="non-empty"):
        TrainingSampler(0)
    with pytest.raises(ValueError, match="batch_size"):
        GroupedBatchSampler(range(3), None, 0)
