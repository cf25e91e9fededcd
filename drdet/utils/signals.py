"""A stop request by SIGINT/SIGTERM that the training loop polls between iterations."""

from __future__ import annotations

import signal


class StopRequest:
    """SIGINT/SIGTERM handler, as a context manager: the loop finishes its iteration, saves a
    checkpoint and returns; a second signal stops at once. The previous handlers come back on
    exit. Calling the object tells whether a stop was requested; `signum` is the signal that
    asked for it and `exit_status` the status a stopped command exits with, 128 + signum (130
    for SIGINT, 143 for SIGTERM, as a shell reports a process killed by it), so that a scheduler
    can tell a stopped run from a finished one."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self.signum: int | None = None
        self._previous = {}

    def __enter__(self) -> StopRequest:
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second signal: stop now
            raise KeyboardInterrupt
        self.requested = True
        self.signum = signum

    @property
    def exit_status(self) -> int:
        """128 + the signal number once a stop was requested, else 0."""
        return 128 + int(self.signum) if self.requested and self.signum is not None else 0

    def __call__(self) -> bool:
        return self.requested
