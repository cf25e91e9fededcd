"""A stop request by SIGINT/SIGTERM that the training loop polls between iterations."""
import signal


class StopRequest:
    """SIGINT/SIGTERM handler, as a context manager: the loop finishes its iteration, saves a
    checkpoint and returns; a second signal stops at once. The previous handlers come back on
    exit. Calling the object tells whether a stop was requested."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self) -> "StopRequest":
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second signal: stop now
            raise KeyboardInterrupt
        self.requested = True

    def __call__(self) -> bool:
        return self.requested
