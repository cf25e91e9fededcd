"""Checkpointing, distributed helpers, logging and metrics."""
from .checkpoint import (Checkpointer, get_rng_state, load_checkpoint_file, load_model_state,
                         set_rng_state, unwrap_model)
from .comm import (all_gather, gather, get_local_rank, get_rank, get_world_size, init_distributed,
                   is_main_process, reduce_dict, synchronize)
from .io import atomic_open, atomic_write, atomic_write_json, atomic_write_text
from .logger import setup_logger
from .metric_logger import (JSONLinesWriter, MetricLogger, SmoothedValue, TensorboardWriter,
                            max_memory_mb)
