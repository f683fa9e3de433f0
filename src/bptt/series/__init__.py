"""Sequence regression: the seed's sine wave (``bptt sine``) and any real-valued CSV series
(``bptt series``), trained with the hand-written BPTT of any engine; plots in ``plots``.

    config      SineConfig, SeriesConfig (no NumPy: the command line reads their defaults)
    core        the training loop (with bptt.training), one-step predictions, free-running
                forecasts, metrics and checkpoints (bptt.checkpoint files)
    sine        train_sine: the seed's experiment
    csvseries   read_column, split_series, train_series: a CSV column
    plots       fit and forecast plots (the gradient-norm plot is bptt.plot's)

The names below are loaded on first use, so importing the package stays light.
"""

from __future__ import annotations

import importlib

from .config import SeriesConfig, SineConfig

_LAZY = {
    "fit": "core", "free_run": "core", "one_step": "core", "regression_spec": "core",
    "SineResult": "sine", "sine_window": "sine", "train_sine": "sine",
    "SeriesError": "csvseries", "SeriesResult": "csvseries", "read_column": "csvseries",
    "split_series": "csvseries", "train_series": "csvseries",
}

__all__ = ["SeriesConfig", "SineConfig", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
