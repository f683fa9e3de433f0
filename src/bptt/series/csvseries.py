"""``bptt series``: the sine experiment for any real-valued series read from a CSV column.

The series is split in time: the first part trains, the last ``val_frac`` validates (nothing
is shuffled across the split). Values are normalised by the training part's mean and standard
deviation, z = (x - mean) / std; both are stored in the checkpoint's config and undone for every
number reported "in original units" and for the plots.

Training draws ``batch_size`` windows of ``window`` consecutive points from the training part
each iteration (inputs the first window - 1, targets the next value at every step), as the
sine experiment does. Evaluation runs the trained model over the whole series from a zero state,
predicting each next value from the true past (teacher forcing): the training MSE is over the
targets in the training part, the validation MSE over those in the validation part, next to
the persistence baseline (predict that the next value equals the current one). The forecast
warms up on the whole training part and then feeds its own predictions back in, once per
validation point (or ``forecast_steps`` points past the end when there is no validation part).

The CSV needs a header row; the column is picked by name. The delimiter is the first of
``,`` tab ``;`` found in the header (a single column needs none). Blank lines are skipped.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import rundir, training
from .. import tensorboard as tb
from . import core
from .config import SeriesConfig


class SeriesError(ValueError):
    """A CSV file or series that cannot be used; the message is one line."""


# -- reading ----------------------------------------------------------------------------------
def _delimiter(header_line: str) -> str:
    for d in (",", "\t", ";"):
        if d in header_line:
            return d
    return ","


def read_column(path: str | Path, column: str) -> np.ndarray:
    """The values of column ``column`` of a CSV file with a header row, as float64.

    Raises SeriesError (a ValueError) with one line for a missing or empty file, a missing
    column (listing the columns there are), and an empty, non-numeric or non-finite cell
    (with its data row, file line and value).
    """
    path = Path(path)
    if not path.exists():
        raise SeriesError(f"CSV file {path} does not exist")
    if path.is_dir():
        raise SeriesError(f"expected a CSV file, got the folder {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise SeriesError(f"CSV file {path} is not UTF-8 text (bad byte at offset {e.start})"
                          ) from None
    if not text.strip():
        raise SeriesError(f"CSV file {path} is empty")
    first = next(line for line in text.splitlines() if line.strip())
    reader = csv.reader(io.StringIO(text), delimiter=_delimiter(first))
    try:
        header = next(row for row in reader if any(c.strip() for c in row))
        names = [c.strip() for c in header]
        if column not in names:
            shown = ", ".join(repr(n) for n in names[:20]) + (" ..." if len(names) > 20 else "")
            raise SeriesError(f"column {column!r} not found in {path}; its columns are {shown}")
        idx = names.index(column)
        values: list[float] = []
        for row in reader:
            if not any(c.strip() for c in row):
                continue                                     # a blank line
            where = f"{path} data row {len(values) + 1} (line {reader.line_num})"
            cell = row[idx].strip() if idx < len(row) else ""
            if not cell:
                raise SeriesError(f"{where}: column {column!r} is empty")
            try:
                v = float(cell)
            except ValueError:
                raise SeriesError(f"{where}: column {column!r} holds {cell!r}, not a number"
                                  ) from None
            if not math.isfinite(v):
                raise SeriesError(f"{where}: column {column!r} holds {cell!r}, not a finite "
                                  f"number")
            values.append(v)
    except csv.Error as e:
        raise SeriesError(f"CSV file {path} is malformed at line {reader.line_num}: {e}"
                          ) from None
    return np.array(values, dtype=np.float64)


def _val_count(n: int, val_frac: float) -> int:
    """Validation points: round(val_frac * n), at least one when val_frac > 0."""
    return 0 if val_frac == 0 else max(1, int(round(val_frac * n)))


def min_length(window: int, val_frac: float) -> int:
    """The shortest series whose training part holds one window (and has validation).

    The training part, n - round(val_frac * n), grows by 0 or 1 with each n, so the answer is
    found by bisection: about 40 steps even for a val_frac a hair below 1 (where it is huge)."""
    if not 0.0 <= val_frac < 1.0:
        raise SeriesError(f"expected --val-frac in [0, 1), got {val_frac}")
    lo, hi = window, max(window, math.ceil((window + 1) / (1.0 - val_frac)) + 1)
    while lo < hi:
        mid = (lo + hi) // 2
        if mid - _val_count(mid, val_frac) >= window:
            hi = mid
        else:
            lo = mid + 1
    return lo


# Values whose squares, summed over any series (the variance; the MSE in original units is
# std^2 times the normalised one), stay far inside float64, whose largest value is 1.8e308.
MAX_ABS_VALUE = 1e140


def check_scale(values: np.ndarray, column: str) -> None:
    """Refuse a series whose scale overflows float64 once squared (its variance, its MSE)."""
    big = np.flatnonzero(~(np.abs(values) <= MAX_ABS_VALUE))
    if big.size:
        i = int(big[0])
        raise SeriesError(f"expected values of column {column!r} within +-{MAX_ABS_VALUE:g} "
                          f"(their squares must fit in float64), got {values[i]:g} at data row "
                          f"{i + 1}; rescale the column (e.g. divide it by a power of 10)")


def split_series(values: np.ndarray, val_frac: float, window: int):
    """(training part, validation part): contiguous in time, validation last."""
    if not 0.0 <= val_frac < 1.0:
        raise SeriesError(f"expected --val-frac in [0, 1), got {val_frac}")
    if window < 2:
        raise SeriesError(f"expected --window >= 2 (an input and its next value), got {window}")
    n = len(values)
    need = min_length(window, val_frac)
    if n < need:
        raise SeriesError(f"series too short for --window {window} with --val-frac "
                          f"{val_frac:g}: need at least {need} values, got {n}"
                          + (" (no data rows)" if n == 0 else ""))
    n_val = _val_count(n, val_frac)
    return values[:n - n_val], values[n - n_val:]


# -- training -----------------------------------------------------------------------------------
@dataclass
class SeriesResult:
    out: Path
    n_train: int
    n_val: int
    mean: float
    std: float
    final_mse: float                  # training loss (normalised), mean of the last iterations
    train_mse: float                  # one-step, original units, training targets
    val_mse: float | None             # one-step, original units, validation targets
    val_mse_norm: float | None        # the same, normalised units
    persistence_mse: float | None     # "next = current" on the validation targets
    forecast_mse: float | None        # free-running over the validation part, original units
    seconds: float
    files: dict = field(default_factory=dict)
    iterations: int = 0               # trained (fewer than asked after Ctrl-C)
    interrupted: bool = False


def train_series(cfg: SeriesConfig, *, log=print, overwrite: bool = False,
                 tensorboard: str | Path | bool | None = None) -> SeriesResult:
    """Train on ``cfg.csv``'s column; write series_forecast.png, grad_norms.png, metrics.jsonl
    and last.safetensors (its config holds the normalisation ``mean`` and ``std``).

    A folder that already holds a run is refused, unless ``overwrite``: the earlier run is then
    moved aside once training has run (bptt/rundir.py); the folder is locked meanwhile.
    ``tensorboard``: also write TensorBoard event files, to ``OUT/tensorboard`` (True) or to
    that folder (bptt/tensorboard.py)."""
    core.check_training_args(cfg.iterations, cfg.lr, cfg.clip, cfg.clip_mode, cfg.batch_size,
                             cfg.log_every)
    if cfg.forecast_steps < 1:
        raise SeriesError(f"expected --forecast-steps >= 1, got {cfg.forecast_steps}")
    board = tb.open_log(cfg.out, tensorboard)
    folder = rundir.RunFolder(cfg.out, verb="series", overwrite=overwrite, log=log)
    with folder.locked():
        return _train_series(cfg, log, folder, board)


def _train_series(cfg: SeriesConfig, log, folder: rundir.RunFolder,
                  board: tb.TensorBoardLog | None = None) -> SeriesResult:
    values = read_column(cfg.csv, cfg.column)
    train, val = split_series(values, cfg.val_frac, cfg.window)
    n_train, n_val = len(train), len(val)
    check_scale(values, cfg.column)
    mean, std = float(train.mean()), float(train.std())
    if not std > 0:
        raise SeriesError(f"column {cfg.column!r}: the training part is constant ({mean:g}), "
                          f"nothing to learn")
    z = (values - mean) / std
    z_train = z[:n_train]
    out = Path(cfg.out)
    folder.check()                                    # --out: a file, or a run not to replace

    model = core.build(cfg)
    data_rng = np.random.default_rng([cfg.seed, 1])
    offsets = np.arange(cfg.window)

    def sample(i: int):
        starts = data_rng.integers(0, n_train - cfg.window + 1, size=cfg.batch_size)
        w = z_train[starts[:, None] + offsets]                # (B, window)
        return w[:, :-1, None], w[:, 1:, None]

    if log is not None:
        log(f"series: {cfg.csv} column {cfg.column!r}: {n_train} training and {n_val} "
            f"validation values, mean {mean:.4g}, std {std:.4g}; {model.spec.cell} "
            f"H={model.spec.hidden_size}, engine {model.engine.name}")
    run = core.fit(model.engine, model.params, model.opt, sample, cfg.iterations,
                   clip=cfg.clip, clip_mode=cfg.clip_mode, carry_state=cfg.carry_state,
                   log_every=cfg.log_every, log=log,
                   max_loss=core.DIVERGED_MSE_FACTOR * float(np.mean(z_train[1:] ** 2)),
                   collect=None if board is None else board.collect)
    folder.create()                                   # trained: now the run folder
    core.log_tensorboard(board, run, cfg, model.engine)
    config = {"kind": "series", **cfg.to_dict(), "mean": mean, "std": std,
              "n_train": n_train, "n_val": n_val}
    core.check_stopped(run, cfg, out, model, config, log)

    # -- evaluation: one-step over the whole series, free-running after the training part -----
    scores, curves = _evaluate(cfg, model, values, n_train, mean, std)

    # -- plots ----------------------------------------------------------------------------------
    files = _plots(cfg, run, values, n_train, curves, scores)

    summary = {"n_train": n_train, "n_val": n_val, "mean": mean, "std": std,
               "final_mse": float(run.losses[-cfg.log_every:].mean()), **scores,
               "seconds": run.seconds, "iterations": run.iterations,
               "interrupted": run.interrupted}
    files.update(core.save_run(out, run, model, config, summary))
    core.log_tensorboard(board, run, cfg, model.engine, summary)
    return SeriesResult(out, n_train, n_val, mean, std, summary["final_mse"],
                        scores["train_mse"], scores["val_mse"], scores["val_mse_norm"],
                        scores["persistence_mse"], scores["forecast_mse"], run.seconds, files,
                        run.iterations, run.interrupted)


def _evaluate(cfg: SeriesConfig, model: core.RegressionModel, values: np.ndarray, n_train: int,
              mean: float, std: float) -> tuple[dict, dict]:
    """The trained model's scores (original units unless said): one-step MSE over the training
    and validation targets from a zero state (teacher forcing), the persistence baseline, and
    the free-running forecast from the end of the training part. Returns the scores (None
    without a validation part) and the curves the plot draws, in original units."""
    engine, params = model.engine, model.params
    z = (values - mean) / std
    n_val = len(values) - n_train
    pred, _ = core.one_step(engine, params, z[:-1])           # pred[k] predicts z[k + 1]
    var = std * std
    scores = {"train_mse": float(np.mean((pred[:n_train - 1] - z[1:n_train]) ** 2)) * var,
              "val_mse": None, "val_mse_norm": None, "persistence_mse": None,
              "forecast_mse": None}
    if n_val:
        val_norm = float(np.mean((pred[n_train - 1:] - z[n_train:]) ** 2))
        scores.update(val_mse=val_norm * var, val_mse_norm=val_norm, persistence_mse=float(
            np.mean((z[n_train - 1:-1] - z[n_train:]) ** 2)) * var)
    warm_pred, fc = core.free_run(engine, params, z[:n_train], n_val or cfg.forecast_steps)
    fc_orig = fc * std + mean
    if n_val:
        scores["forecast_mse"] = float(np.mean((fc_orig - values[n_train:]) ** 2))
    return scores, {"one_step": pred * std + mean, "warm_pred": warm_pred * std + mean,
                    "forecast": fc_orig}


def _plots(cfg: SeriesConfig, run: core.Fit, values: np.ndarray, n_train: int, curves: dict,
           scores: dict) -> dict[str, Path]:
    """series_forecast.png (the end of the training part, the forecast after it, against the
    validation part when there is one) and grad_norms.png."""
    from ..plot import plot_grad_norms
    from .plots import plot_forecast

    train = values[:n_train]
    n_val = len(values) - n_train
    steps = n_val or cfg.forecast_steps
    tail = min(n_train, max(3 * cfg.window, steps))
    t_warm = np.arange(n_train - tail, n_train)
    t_fc = np.arange(n_train, n_train + steps)
    title = (f"{cfg.column}, validation MSE: free-running {scores['forecast_mse']:.3g}, "
             f"one-step {scores['val_mse']:.3g}, persistence {scores['persistence_mse']:.3g}"
             if n_val else f"{cfg.column}: free-running forecast of {steps} points past the end")
    files = {}
    files["forecast"] = plot_forecast(
        t_warm, train[-tail:], curves["warm_pred"][-tail:], t_fc, curves["forecast"],
        Path(cfg.out) / "series_forecast.png",
        t_truth=np.arange(n_train - tail, n_train + n_val) if n_val else None,
        truth=values[n_train - tail:] if n_val else None,
        one_step=curves["one_step"][n_train - 1:] if n_val else None,
        title=title, xlabel="row", ylabel=cfg.column)
    files["grad_norms"] = plot_grad_norms(
        run.steps, Path(cfg.out) / "grad_norms.png",
        threshold=training.norm_threshold(cfg.clip, cfg.clip_mode))
    return files
