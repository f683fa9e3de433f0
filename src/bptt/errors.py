"""What the training jobs (language model, sine, series) share about stopping early (the
divergence error and the Ctrl-C flag), and the error of a feature whose optional dependency is
not installed (``MissingExtra``, raised by :func:`require`)."""

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


class MissingExtra(ImportError):
    """An optional dependency a feature needs is not installed; the message names the extra to
    install (``pip install 'bptt[torch]'``). ``bptt`` prints it as one line and exits 2."""


def has_module(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module blocked
        return False


def require(module: str, extra: str, feature: str):
    """Import and return ``module``, or raise :class:`MissingExtra` naming ``extra``: the
    package ``bptt[extra]`` installs it, and ``feature`` is what needed it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtra(
            f"expected {module.split('.')[0]} installed for {feature}, got {e}; install it with "
            f"pip install 'bptt[{extra}]'"
        ) from None
