"""Atomic file writes: a reader sees the old file or the complete new one, never a partial one;
and the removal of the temporary files that an interrupted write leaves behind."""

import contextlib
import functools
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import IO, Any

TMP_PREFIX = ".tmp-"
_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask (e.g. 0o022), read without changing it: from the "Umask:" line of
    /proc/self/status (Linux 4.7+). Elsewhere os.umask must be set to read it, which briefly
    changes the mode of files other threads create; that is done once per process and the value
    kept (a later os.umask change is then not seen)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    return _umask_by_setting_it()


@functools.cache
def _umask_by_setting_it() -> int:
    with _UMASK_LOCK:
        mask = os.umask(0o077)  # the strictest value while it is being read
        os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside `path` for writing; on a clean exit, flush, fsync and
    os.replace it onto `path` (then fsync the folder). On an exception the temporary file is
    removed and `path` is left untouched. `mode` must be a write mode ("w" or "wb"). The file
    gets the mode a plain open() gives a new file: 0o666 less the process umask (mkstemp's own
    0o600 would make it unreadable to the group)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + os.path.basename(path) + ".", dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_dir(folder)


def _fsync_dir(folder: str) -> None:
    # Makes the rename itself durable; not every platform lets a folder be opened.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str, writer: Callable[[IO], Any], binary: bool = True) -> None:
    """Call writer(file) on a temporary file and move it onto `path` atomically."""
    with atomic_open(path, "wb" if binary else "w") as f:
        writer(f)


def atomic_write_text(path: str, text: str) -> None:
    """Write `text` to `path` atomically."""
    atomic_write(path, lambda f: f.write(text), binary=False)


def atomic_write_json(path: str, obj: Any) -> None:
    """Write `obj` as JSON to `path` atomically."""
    atomic_write(path, lambda f: json.dump(obj, f), binary=False)


def remove_stale_temporary_files(output_dir: str, log: logging.Logger) -> list[str]:
    """Removes the temporary files (".tmp-<name>.<random>") that a run killed while writing a
    checkpoint or another file atomically left in `output_dir` (top level only); the files they
    would have replaced are intact. Call on the main process before the run writes anything.
    Returns the names removed."""
    removed = []
    for name in sorted(os.listdir(output_dir)):
        path = os.path.join(output_dir, name)
        if name.startswith(TMP_PREFIX) and os.path.isfile(path) and not os.path.islink(path):
            os.remove(path)
            removed.append(name)
    if removed:
        log.warning(
            "Removed %d temporary files of an interrupted run from %s: %s",
            len(removed),
            output_dir,
            ", ".join(removed),
        )
    return removed
