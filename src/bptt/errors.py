"""What the training jobs (language model, sine, series) share about stopping early: the
divergence error and the Ctrl-C flag."""

from __future__ import annotations

import signal


class Diverged(RuntimeError):
    """The loss or the parameters blew up; the last sound state was saved. ``bptt`` exits 3."""


class StopFlag:
    """Ctrl-C sets a flag; a training loop looks at it after each step, stops there and saves
    what it has. A second Ctrl-C raises KeyboardInterrupt at once."""

    def __init__(self) -> None:
        self.stop = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._old = None
        return self

    def _handle(self, signum, frame) -> None:
        if self.stop:  # a second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
