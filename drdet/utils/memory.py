"""Memory of processes as Linux accounts it (/proc), and handing freed heap back to the system.

- PSS (proportional set size): the pages a process maps, each shared page divided by the number
  of processes that map it; the PSS of all processes adds up to the memory they use together.
- USS (unique set size): the pages only this process maps (private clean + private dirty): what
  the system gets back when it exits. A DataLoader worker's USS grows as it copies pages of
  the parent it was forked from ("copy on write"; see drdet.data.flat).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os

MIB = 1024 * 1024


def smaps_rollup(pid: int | str = "self") -> dict[str, int]:
    """{field: bytes} of /proc/<pid>/smaps_rollup (e.g. "Rss", "Pss", "Private_Dirty",
    "Anonymous"; Linux 4.14+). Raises OSError when the process is gone or not readable."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return fields


def pss_mib(pid: int | str = "self") -> float:
    """The process's proportional set size in MiB."""
    return smaps_rollup(pid)["Pss"] / MIB


def uss_mib(pid: int | str = "self") -> float:
    """The process's unique set size (private clean + private dirty pages) in MiB."""
    fields = smaps_rollup(pid)
    return (fields["Private_Clean"] + fields["Private_Dirty"]) / MIB


def child_pids(pid: int) -> list[int]:
    """The pids of the processes whose parent is `pid` (its direct children), sorted; read from
    every /proc/<n>/stat (/proc/<pid>/task/*/children is not on every kernel)."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            # "pid (command) state ppid ...": the command may hold spaces and parentheses
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                children.append(int(entry))
    return sorted(children)


def release_free_heap() -> bool:
    """Ask the C library to give the free memory at the top and in the holes of its heap back
    to the system (glibc's malloc_trim(0)); returns whether it could be called.

    After a large parse is freed (a COCO json: millions of small objects), glibc keeps the
    freed chunks for reuse; a process that forks DataLoader workers afterwards would carry
    them as its own memory (measured: 135 MiB after a COCO-train-sized file)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False
    trim(0)
    return True
