"""PNG plots for sequence regression (matplotlib, Agg); the gradient-norm plot every job
draws is ``bptt.plot.plot_grad_norms``.

    plot_fit          prediction vs truth over one window, and the training MSE per iteration
    plot_forecast     warm-up, free-running forecast and the truth
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..plot import pyplot, save_figure


def _running_mean(values: np.ndarray, width: int) -> np.ndarray:
    """Mean of the last ``width`` values (fewer at the start), at every index."""
    c = np.cumsum(np.r_[0.0, values])
    end = np.arange(1, values.size + 1)
    start = np.maximum(end - width, 0)
    return (c[end] - c[start]) / (end - start)


def plot_fit(t: np.ndarray, truth: np.ndarray, pred: np.ndarray, path: str | Path, *,
             inputs: tuple[np.ndarray, np.ndarray] | None = None,
             losses: np.ndarray | None = None, title: str = "", warmup: int = 0) -> Path:
    """Left: truth (red) and one-step predictions (blue) at the target times ``t``, as the
    seed's plot; the inputs as dots when given; the first ``warmup`` predictions shaded.
    Right: the training MSE per iteration."""
    plt = pyplot()
    panels = 2 if losses is not None and len(losses) else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 3.6), dpi=120, squeeze=False)
    ax = axes[0, 0]
    if inputs is not None:
        ax.plot(inputs[0], inputs[1], "o", color="0.6", ms=3, label="input")
    ax.plot(t, truth, "r-", label="truth (next value)")
    ax.plot(t, pred, "b-", label="prediction")
    if warmup:
        edge = t[warmup - 1] + 0.5 * (t[warmup] - t[warmup - 1]) if warmup < len(t) else t[-1]
        ax.axvspan(t[0] - 0.5 * (t[1] - t[0]), edge, color="0.9", zorder=0,
                   label=f"warm-up ({warmup} not scored)")
    ax.set_xlabel("t")
    ax.set_title(title or "one-step prediction")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if panels == 2:
        ax = axes[0, 1]
        losses = np.asarray(losses, dtype=float)
        it = np.arange(1, losses.size + 1)
        ax.semilogy(it, losses, color="0.75", lw=0.6, label="per iteration")
        ax.semilogy(it, _running_mean(losses, 100), "k-", lw=1.2, label="mean of last 100")
        ax.set_xlabel("iteration")
        ax.set_ylabel("MSE")
        ax.set_title("training MSE")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_forecast(t_warm: np.ndarray, warm: np.ndarray, warm_pred: np.ndarray | None,
                  t_fc: np.ndarray, forecast: np.ndarray, path: str | Path, *,
                  t_truth: np.ndarray | None = None, truth: np.ndarray | None = None,
                  one_step: np.ndarray | None = None, title: str = "",
                  xlabel: str = "t", ylabel: str = "value") -> Path:
    """The warm-up values (and the model's one-step predictions over them), then the
    free-running forecast (each prediction fed back as the next input) against the truth."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=120)
    if t_truth is not None and truth is not None:
        ax.plot(t_truth, truth, "-", color="0.55", lw=1.0, label="truth")
    ax.plot(t_warm, warm, ".", color="k", ms=3, label="warm-up (fed in)")
    if warm_pred is not None:
        ax.plot(t_warm[1:], warm_pred[:-1], "b-", lw=0.9, alpha=0.7,
                label="one-step prediction (warm-up)")
    if one_step is not None:
        ax.plot(t_fc, one_step, "g-", lw=0.9, alpha=0.8, label="one-step prediction")
    ax.plot(t_fc, forecast, "r-", lw=1.4, label="free-running forecast")
    ax.axvline(t_fc[0], color="0.3", ls=":", lw=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or "forecast", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, path)
