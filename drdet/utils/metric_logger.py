"""Training metrics: windowed smoothing, the console line, a JSON-lines file and TensorBoard."""

import datetime
import json
import math
import os
from collections import defaultdict, deque

import torch


class SmoothedValue:
    """A series of floats, summarised over the last `window_size` values (median, avg) and
    over all of them (global_avg)."""

    def __init__(self, window_size: int = 20):
        if window_size <= 0:
            raise ValueError(f"window_size must be > 0, got {window_size}")
        self.window: deque = deque(maxlen=window_size)
        self.total = 0.0
        self.count = 0

    def update(self, value: float) -> None:
        value = float(value)
        self.window.append(value)
        self.total += value
        self.count += 1

    @property
    def latest(self) -> float:
        return self.window[-1] if self.window else math.nan

    @property
    def median(self) -> float:
        if not self.window:
            return math.nan
        ordered = sorted(self.window)
        n = len(ordered)
        mid = n // 2
        return ordered[mid] if n % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])

    @property
    def avg(self) -> float:
        return sum(self.window) / len(self.window) if self.window else math.nan

    @property
    def global_avg(self) -> float:
        return self.total / self.count if self.count else math.nan


class MetricLogger:
    """Named SmoothedValues and the console line the trainer logs.

    `update(loss=..., loss_cls=...)` takes floats or scalar tensors (one host sync per call: call it
    once per iteration with everything). Keys "time" and "data" (seconds per iteration) feed the
    ETA; "lr" is printed as is.
    """

    def __init__(self, window_size: int = 20, delimiter: str = "  "):
        self.meters: dict[str, SmoothedValue] = defaultdict(lambda: SmoothedValue(window_size))
        self.delimiter = delimiter

    def update(self, **values) -> None:
        tensors = {k: v for k, v in values.items() if isinstance(v, torch.Tensor)}
        if tensors:  # one device-to-host copy for all tensor values
            host = torch.stack([t.detach().float().reshape(()) for t in tensors.values()]).cpu()
            values.update(zip(tensors, host.tolist()))
        for key, value in values.items():
            if not isinstance(value, (int, float)):
                raise TypeError(
                    f"MetricLogger.update: {key} must be a number or a scalar tensor, "
                    f"got {type(value).__name__}"
                )
            self.meters[key].update(value)

    def latest(self) -> dict[str, float]:
        """The most recent value of every meter."""
        return {k: m.latest for k, m in self.meters.items()}

    def format(self, iteration: int, max_iter: int, max_mem_mb: float | None = None) -> str:
        """ "eta: 0:01:40  iter: 20  loss: 1.2345 (1.3000)  ...  lr: 0.010000  time: 0.5000 (0.5100)
        data: 0.0100 (0.0120)  max mem: 1234M"; each loss shows its median over the window and its
        global average in parentheses, time and data their latest value and window median."""
        parts = []
        if "time" in self.meters:
            seconds = self.meters["time"].global_avg * max(max_iter - iteration, 0)
            parts.append(f"eta: {datetime.timedelta(seconds=int(seconds))}")
        parts.append(f"iter: {iteration}")
        for key, meter in self.meters.items():
            if key in ("time", "data", "lr"):
                continue
            parts.append(f"{key}: {meter.median:.4f} ({meter.global_avg:.4f})")
        if "lr" in self.meters:
            parts.append(f"lr: {self.meters['lr'].latest:.6f}")
        for key in ("time", "data"):
            if key in self.meters:
                m = self.meters[key]
                parts.append(f"{key}: {m.latest:.4f} ({m.median:.4f})")
        if max_mem_mb is not None:
            parts.append(f"max mem: {max_mem_mb:.0f}M")
        return self.delimiter.join(parts)


def max_memory_mb() -> float | None:
    """Peak CUDA memory allocated by this process in MiB; None without CUDA."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / 1024.0 / 1024.0


class JSONLinesWriter:
    """Appends one JSON object per line to a file (e.g. OUTPUT_DIR/metrics.jsonl), flushed after
    every write so that a crash loses nothing already logged. Non-finite floats are written as
    null (JSON has no NaN). `append=False` starts a new file (a fresh run), True continues one
    (a resumed run)."""

    def __init__(self, path: str, append: bool = True):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self._file = open(path, "a" if append else "w")

    def write(self, record: dict) -> None:
        clean = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in record.items()
        }
        self._file.write(json.dumps(clean, sort_keys=True) + "\n")
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> "JSONLinesWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TensorboardWriter:
    """Scalars to TensorBoard when the `tensorboard` package is importable; otherwise every call
    is a no-op and `enabled` is False."""

    def __init__(self, log_dir: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self._writer = None
        else:
            self._writer = SummaryWriter(log_dir=log_dir)

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def write(self, record: dict, step: int) -> None:
        if self._writer is None:
            return
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
