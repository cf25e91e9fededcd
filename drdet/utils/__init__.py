"""Distributed helpers, atomic file writes, logging and metrics (the bottom layer: imports
nothing else of drdet). Checkpoints are in drdet.checkpoint."""

from .comm import (
    all_gather,
    gather,
    get_local_rank,
    get_rank,
    get_world_size,
    init_distributed,
    is_main_process,
    reduce_dict,
    synchronize,
)
from .io import atomic_open, atomic_write, atomic_write_json, atomic_write_text
from .logger import setup_logger
from .metric_logger import (
    JSONLinesWriter,
    MetricLogger,
    SmoothedValue,
    TensorboardWriter,
    max_memory_mb,
)

__all__ = [
    "JSONLinesWriter",
    "MetricLogger",
    "SmoothedValue",
    "TensorboardWriter",
    "all_gather",
    "atomic_open",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "gather",
    "get_local_rank",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_main_process",
    "max_memory_mb",
    "reduce_dict",
    "setup_logger",
    "synchronize",
]
