"""The settings of ``bptt sine`` and ``bptt series``: plain dataclasses (no NumPy), so the
command line can read their defaults without loading the models."""

from __future__ import annotations

from dataclasses import dataclass

from .. import ranges as R
from ..dictconfig import DictConfig


@dataclass
class SineConfig(DictConfig):
    # -- data: the seed's windows ----------------------------------------------------------
    points: int = 20                  # points per window (19 inputs, 19 targets)
    span: float = 10.0                # a window covers linspace(s, s + span, points)
    starts: int = 3                   # s = randint(starts): 0, 1 or 2
    # -- model -----------------------------------------------------------------------------
    cell: str = "rnn"
    hidden_size: int = 10
    num_layers: int = 1
    nonlinearity: str = "tanh"
    init: str = "torch"               # torch.nn.RNN's U(-1/sqrt(H), 1/sqrt(H)), as the seed
    # -- optimisation ----------------------------------------------------------------------
    iterations: int = 5000
    optimizer: str = "adam"
    lr: float = 1e-3
    clip: float | None = None
    clip_mode: str = "norm"
    carry_state: bool = True
    # -- engine and run --------------------------------------------------------------------
    engine: str = "numpy"
    device: str | None = None
    dtype: str = "float32"
    seed: int = 0
    out: str = "runs/sine"
    log_every: int = 100
    forecast_steps: int = 60
    # -- scoring ---------------------------------------------------------------------------
    warmup: int = 3                   # predictions the headline MSE leaves out: one value does
    #                                   not fix a sine's phase, and the state comes from another
    #                                   window; the whole-window MSE is reported beside it

    @property
    def batch_shape(self) -> tuple[int, int]:
        """(windows, time steps) of one training step."""
        return 1, self.points - 1


@dataclass
class SeriesConfig(DictConfig):
    # -- data ------------------------------------------------------------------------------
    csv: str = ""
    column: str = ""
    window: int = 20                  # points per training window (window - 1 predictions)
    val_frac: float = 0.2             # the last fraction of the series, held out
    # -- model -----------------------------------------------------------------------------
    cell: str = "rnn"
    hidden_size: int = 32
    num_layers: int = 1
    nonlinearity: str = "tanh"
    init: str = "torch"
    # -- optimisation ----------------------------------------------------------------------
    iterations: int = 2000
    batch_size: int = 16
    optimizer: str = "adam"
    lr: float = 3e-3
    clip: float | None = None
    clip_mode: str = "norm"
    carry_state: bool = False         # random windows: each starts from zeros
    # -- engine and run --------------------------------------------------------------------
    engine: str = "numpy"
    device: str | None = None
    dtype: str = "float32"
    seed: int = 0
    out: str = "runs/series"
    log_every: int = 100
    forecast_steps: int = 60          # past the end of the series, when val_frac = 0

    @property
    def batch_shape(self) -> tuple[int, int]:
        """(windows, time steps) of one training step."""
        return self.batch_size, self.window - 1


# The range of every number setting, checked by the jobs and where the command line parses it.
REGRESSION_RANGES = {
    "hidden_size": R.COUNT, "num_layers": R.COUNT, "iterations": R.COUNT, "lr": R.POSITIVE,
    "clip": R.THRESHOLD, "seed": R.SEED, "log_every": R.COUNT, "forecast_steps": R.COUNT,
}
SINE_RANGES = {**REGRESSION_RANGES, "warmup": R.COUNT0}        # < points - 1: checked by the job
SERIES_RANGES = {
    **REGRESSION_RANGES, "window": R.Range(int, lo=2, about="an input and its next value"),
    "val_frac": R.Range(float, lo=0, hi=1, hi_open=True,
                        about="the validation fraction, held out"),
    "batch_size": R.COUNT,
}
