"""What a checkpoint file is, told from its bytes without unpickling anything: a zip archive
(torch.save since PyTorch 1.6), a pickle (torch's legacy format, or a plain pickle such as
Detectron's .pkl), or something else; and whether it is complete. Used to say what is wrong when
a file does not load (:func:`load_error`)."""

from __future__ import annotations

import os
import pickletools
from typing import BinaryIO

from drdet.utils.errors import CheckpointError

ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = 0x80
# torch's legacy (non-zip) format: five pickles (magic number, protocol, sys info, the data,
# the storage keys) followed by the raw storages.
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PICKLES = 5


def file_kind(path: str) -> str:
    """ "empty", "zip", "pickle" (complete), "damaged pickle" or "other", from the file's bytes."""
    with open(path, "rb") as f:
        head = f.read(4)
        if not head:
            return "empty"
        if head == ZIP_MAGIC:
            return "zip"
        f.seek(0)
        if head[0] == PICKLE_PROTO:
            return "pickle" if _pickles_complete(f) else "damaged pickle"
        # Protocols 0 and 1 have no header: it is a pickle only when its opcodes parse.
        return "pickle" if _pickles_complete(f) else "other"


def _pickles_complete(f: BinaryIO) -> bool:
    """True when the pickle(s) at the start of `f` parse up to their STOP opcode (torch's legacy
    format: all five of its pickles). Only reads opcodes; nothing is unpickled."""
    try:
        first = list(pickletools.genops(f))
    except ValueError:
        return False
    values = [arg for _, arg, _ in first]
    if TORCH_LEGACY_MAGIC not in values:
        return True
    try:
        for _ in range(_LEGACY_PICKLES - 1):
            for _ in pickletools.genops(f):
                pass
    except ValueError:
        return False
    return True


def _head(path: str, size: int = 16) -> bytes:
    with open(path, "rb") as f:
        return f.read(size)


def not_a_checkpoint(path: str) -> CheckpointError | None:
    """The error for a file that is not a PyTorch checkpoint at all (empty, text...), or None
    when it is a zip archive or a pickle. Checked before torch.load, which gives unhelpful
    errors on such files (a KeyError or IndexError from its unpickler)."""
    kind = file_kind(path)
    size = os.path.getsize(path)
    if kind == "empty":
        return CheckpointError(
            f"{path} is empty (0 bytes): not a PyTorch checkpoint (zip or legacy pickle)"
        )
    if kind == "other":
        return CheckpointError(
            f"{path} ({size} bytes) is not a PyTorch checkpoint (zip or "
            f"legacy pickle): it starts with {_head(path)!r}"
        )
    if kind == "damaged pickle":
        return damaged(path, "its pickle data ends early or is corrupt")
    return None


def damaged(path: str, reason: str) -> CheckpointError:
    """The error for a truncated or damaged checkpoint file (no unpickling would help)."""
    size = os.path.getsize(path)
    return CheckpointError(
        f"{path} ({size} bytes) is truncated or damaged: {reason}. Use "
        "another copy of it (or, for a training run, an earlier checkpoint)"
    )


def holds_objects(err: BaseException) -> bool:
    """True when torch.load(weights_only=True) failed because the file holds pickled Python
    objects (a legacy pickle), not because it is damaged."""
    return "Weights only load failed" in str(err)


def load_error(path: str, err: BaseException) -> CheckpointError:
    """The error to raise when torch.load(`path`, weights_only=True) raised `err` on a file that
    is a zip archive or a complete pickle (see :func:`not_a_checkpoint`) and the caller did not
    allow unpickling."""
    if not holds_objects(err):
        return damaged(path, f"torch.load failed: {_first_sentence(err)}")
    return CheckpointError(
        f"cannot load {path} with torch.load(weights_only=True): it holds pickled Python "
        "objects, and unpickling can execute arbitrary code. "
        "If you trust the file, load it with allow_pickle=True (--allow-pickle in the tools; "
        "Checkpointer.load(path, allow_pickle=True)), or convert it once to a file of "
        f"tensors only. Reason: {_first_line(err)}"
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _first_sentence(err: BaseException) -> str:
    line = _first_line(err)
    return line.split(". ")[0].rstrip(".")
