"""Distributed helpers. Every function works, as a no-op where it applies, without torch.distributed
being initialised, so single-process code calls them unconditionally."""

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_MINUTES = 30.0


def is_dist_ready() -> bool:
    """True when torch.distributed is available and a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_ready() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist_ready() else 0


def get_local_rank() -> int:
    """Rank of this process on its machine (torchrun's LOCAL_RANK; 0 when not launched by it)."""
    return int(os.environ.get("LOCAL_RANK", 0)) if is_dist_ready() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def synchronize() -> None:
    """Barrier across all processes; a no-op with one process."""
    if get_world_size() == 1:
        return
    if dist.get_backend() == dist.Backend.NCCL and torch.cuda.is_available():
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def init_distributed(
    backend: str | None = None, timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES
) -> bool:
    """Initialise the default process group from torchrun's environment variables.

    Reads RANK, WORLD_SIZE, LOCAL_RANK (MASTER_ADDR and MASTER_PORT are read by the env://
    rendezvous). Returns False, doing nothing, when WORLD_SIZE is absent or 1. The backend is nccl
    when CUDA is available (and the process is pinned to cuda:LOCAL_RANK), gloo otherwise, unless
    `backend` names one. `timeout_minutes` bounds every collective: when a rank dies or hangs, the
    others raise an error after that long instead of waiting forever.
    """
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size <= 1:
        return False
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise RuntimeError(
                f"init_distributed: WORLD_SIZE={world_size} but {key} is not set; "
                "launch with torchrun"
            )
    if timeout_minutes <= 0:
        raise ValueError(f"timeout_minutes must be > 0, got {timeout_minutes}")
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if backend == "nccl":
        # Without async error handling a dead peer makes NCCL collectives hang past the timeout.
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(minutes=timeout_minutes),
    )
    synchronize()
    return True


def all_gather(obj: Any) -> list[Any]:
    """Gather one picklable object from every rank; returns the list indexed by rank."""
    world_size = get_world_size()
    if world_size == 1:
        return [obj]
    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def gather(obj: Any, dst: int = 0) -> list[Any]:
    """Gather one picklable object from every rank to rank `dst`; other ranks get []."""
    world_size = get_world_size()
    if world_size == 1:
        return [obj]
    out: list[Any] | None = [None] * world_size if get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out if out is not None else []


def reduce_dict(values: dict[str, torch.Tensor], average: bool = True) -> dict[str, torch.Tensor]:
    """Sum (or average, the default) a dict of scalar tensors over all ranks.

    Every rank must pass the same keys (not checked: that would cost one more collective per
    call); values are reduced in float32 on their device (CUDA for nccl). The result holds the
    reduced values on every rank (all ranks call it, and logging happens on rank 0). Used for
    logging losses: the gradients are already averaged by DDP.
    """
    world_size = get_world_size()
    if world_size == 1:
        return dict(values)
    keys = sorted(values)  # same order on every rank
    with torch.no_grad():
        stacked = torch.stack([values[k].detach().reshape(()).float() for k in keys])
        dist.all_reduce(stacked)
        if average:
            stacked /= world_size
    return {k: v for k, v in zip(keys, stacked)}


def check_replicas_identical(module: torch.nn.Module) -> None:
    """Raises RuntimeError when the parameters of `module` differ between ranks (they must not
    under DistributedDataParallel). Compares a float64 checksum per parameter; a no-op for one
    process."""
    if get_world_size() == 1:
        return
    sums = torch.stack([p.detach().double().sum() for p in module.parameters()]).cpu()
    gathered = all_gather(sums)
    for rank, other in enumerate(gathered):
        if not torch.equal(other, gathered[0]):
            names = [
                n for (n, _), a, b in zip(module.named_parameters(), gathered[0], other) if a != b
            ]
            raise RuntimeError(f"Rank {rank}'s parameters differ from rank 0's: {names[:5]}")
