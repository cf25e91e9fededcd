"""Samplers: an infinite seeded training stream sharded over ranks, aspect-ratio grouped batches,
iteration-based (resumable) batching, and contiguous inference shards.

Training pipeline: TrainingSampler -> GroupedBatchSampler -> IterationBasedBatchSampler.
Every stage is a deterministic function of (seed, rank, world size), so a run resumed at
iteration k with start_iter=k sees exactly the batches k, k+1, ... the uninterrupted run saw.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch.utils.data import Sampler


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"need world_size >= 1 and 0 <= rank < world_size, got rank={rank}, "
            f"world_size={world_size}"
        )


class TrainingSampler(Sampler[int]):
    """Infinite stream of dataset indices for one rank.

    The global stream is the concatenation of permutations of range(size), epoch after epoch,
    drawn from a torch.Generator seeded with `seed` (or range(size) repeated when not `shuffle`).
    Rank r takes the elements r, r + W, r + 2W, ... of it, so the ranks' shards are disjoint and
    together cover the stream; every rank runs the same generator, so no communication is needed.
    """

    def __init__(
        self, size: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True
    ):
        if size < 1:
            raise ValueError(f"TrainingSampler needs a non-empty dataset, got size={size}")
        _check_rank(rank, world_size)
        self.size, self.seed, self.shuffle = size, int(seed), shuffle
        self.rank, self.world_size = rank, world_size

    def _global_stream(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed)
        while True:
            order = (
                torch.randperm(self.size, generator=g) if self.shuffle else torch.arange(self.size)
            )
            yield from order.tolist()

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(self._global_stream(), self.rank, None, self.world_size)


class InferenceSampler(Sampler[int]):
    """Rank r gets the contiguous, non-padded range [r * N // W, (r + 1) * N // W): each index is
    seen by exactly one rank, once (shard sizes differ by at most one)."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        _check_rank(rank, world_size)
        self.begin = size * rank // world_size
        self.end = size * (rank + 1) // world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.begin, self.end))

    def __len__(self) -> int:
        return self.end - self.begin


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches of `batch_size` indices that share a group id (e.g. landscape vs portrait, so a
    padded batch wastes little), in the order the sampler produces them.

    An index waits in its group's buffer until the buffer is full; the batch is then emitted.
    With `group_ids` None all indices form one group (plain batching). When a finite `sampler`
    ends, incomplete buffers are emitted (smallest first index first) unless `drop_uneven`.

    Args:
        sampler: iterable of dataset indices (finite or infinite).
        group_ids: group id of each dataset index, or None.
        batch_size: images per batch on this rank.
    """

    def __init__(
        self,
        sampler: Iterable[int],
        group_ids: Sequence[int] | None,
        batch_size: int,
        drop_uneven: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sampler = sampler
        self.group_ids = None if group_ids is None else list(group_ids)
        self.batch_size = batch_size
        self.drop_uneven = drop_uneven

    def __iter__(self) -> Iterator[list[int]]:
        buffers: dict[int, list[int]] = {}
        for index in self.sampler:
            gid = 0 if self.group_ids is None else self.group_ids[index]
            buf = buffers.setdefault(gid, [])
            buf.append(index)
            if len(buf) == self.batch_size:
                yield buf[:]
                buf.clear()
        if not self.drop_uneven:
            for buf in sorted((b for b in buffers.values() if b), key=lambda b: b[0]):
                yield buf

    def __len__(self) -> int:
        if self.group_ids is not None and not self.drop_uneven:
            raise TypeError("the length of a grouped batch sampler is only known after iterating")
        n = len(self.sampler)  # type: ignore[arg-type]  # TypeError for infinite samplers
        return n // self.batch_size if self.drop_uneven else -(-n // self.batch_size)


class IterationBasedBatchSampler(Sampler[list[int]]):
    """Batches number start_iter .. num_iterations - 1 of `batch_sampler` (which must yield at
    least num_iterations batches, e.g. over a TrainingSampler).

    The first start_iter batches are generated and discarded (indices only, no image is read),
    so a resumed run continues the very sequence of the uninterrupted one.
    """

    def __init__(
        self, batch_sampler: Iterable[list[int]], num_iterations: int, start_iter: int = 0
    ):
        if not 0 <= start_iter <= num_iterations:
            raise ValueError(
                f"need 0 <= start_iter <= num_iterations, got start_iter={start_iter}, "
                f"num_iterations={num_iterations}"
            )
        self.batch_sampler = batch_sampler
        self.num_iterations = num_iterations
        self.start_iter = start_iter

    def __iter__(self) -> Iterator[list[int]]:
        batches = itertools.islice(iter(self.batch_sampler), self.start_iter, self.num_iterations)
        count = self.start_iter
        for batch in batches:
            count += 1
            yield batch
        if count < self.num_iterations:
            raise RuntimeError(
                f"batch sampler ran out after {count} of {self.num_iterations} "
                "batches; use an infinite sampler for training"
            )

    def __len__(self) -> int:
        return self.num_iterations - self.start_iter
