"""PNG plots for sequence regression, gradient norms and gradient flow (matplotlib, Agg).

    plot_fit          prediction vs truth over one window, and the training MSE per iteration
    plot_forecast     warm-up, free-running forecast and the truth
    plot_grad_norms   per-step global gradient norm before/after clipping, with the threshold
    plot_gradflow     ||dh_T/dh_t|| against the lag T - t (log scale), and the spectrum of W_hh
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    _pyplot().close(fig)
    return path


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
    plt = _pyplot()
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
    return _save(fig, path)


def plot_forecast(t_warm: np.ndarray, warm: np.ndarray, warm_pred: np.ndarray | None,
                  t_fc: np.ndarray, forecast: np.ndarray, path: str | Path, *,
                  t_truth: np.ndarray | None = None, truth: np.ndarray | None = None,
                  one_step: np.ndarray | None = None, title: str = "",
                  xlabel: str = "t", ylabel: str = "value") -> Path:
    """The warm-up values (and the model's one-step predictions over them), then the
    free-running forecast (each prediction fed back as the next input) against the truth."""
    plt = _pyplot()
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
    return _save(fig, path)


def read_step_records(metrics_path: str | Path) -> list[dict]:
    """The ``{"kind": "step", ...}`` lines of a metrics.jsonl file, in order."""
    records = []
    with Path(metrics_path).open(encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                rec = json.loads(line)
                if rec.get("kind") == "step":
                    records.append(rec)
    return records


def _infer_threshold(steps: list[dict]) -> float | None:
    """Norm clipping leaves every clipped step at the threshold: use it when they agree."""
    after = [float(r["grad_norm_clipped"]) for r in steps if r.get("clipped")]
    if after and max(after) - min(after) <= 1e-4 * max(after):
        return max(after)
    return None


def plot_grad_norms(step_records: Iterable[dict], path: str | Path, *,
                    threshold: float | None = None, title: str = "") -> Path:
    """Per-step global gradient norm before and after clipping (log scale) and the threshold.

    ``step_records``: the ``{"kind": "step", "grad_norm", "grad_norm_clipped", "clipped"}``
    records a trainer writes to metrics.jsonl (other kinds are skipped; records without a kind
    are taken as steps). The x axis counts steps across epochs. Without ``threshold`` it is
    inferred from norm clipping (every clipped step ends exactly at it); with value clipping
    (a per-element bound) pass none and no line is drawn.
    """
    steps = [r for r in step_records if r.get("kind", "step") == "step"]
    if not steps:
        raise ValueError("expected step records with grad_norm, got none")
    before = np.array([float(r["grad_norm"]) for r in steps])
    after = np.array([float(r.get("grad_norm_clipped", r["grad_norm"])) for r in steps])
    fired = np.array([bool(r.get("clipped", False)) for r in steps])
    if threshold is None:
        threshold = _infer_threshold(steps)
    x = np.arange(1, len(steps) + 1)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=120)
    if np.array_equal(before, after):
        ax.semilogy(x, before, color="tab:blue", lw=0.8, label="global norm (never clipped)")
    else:
        ax.semilogy(x, before, color="tab:orange", lw=0.8, label="before clipping")
        ax.semilogy(x, after, color="tab:blue", lw=0.8, label="after clipping")
    if fired.any():
        ax.semilogy(x[fired], before[fired], "x", color="tab:red", ms=3,
                    label=f"clipped ({int(fired.sum())} of {fired.size} steps)")
    if threshold is not None:
        ax.axhline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:g}")
    epochs = [r.get("epoch") for r in steps]
    if any(e is not None for e in epochs) and len(set(epochs)) > 1:
        starts = [i + 1 for i in range(1, len(epochs)) if epochs[i] != epochs[i - 1]]
        if len(starts) <= 50:
            for s in starts:
                ax.axvline(s, color="0.85", lw=0.6, zorder=0)
    ax.set_xlabel("step")
    ax.set_ylabel("global gradient norm")
    ax.set_title(title or "gradient norm per step")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_gradflow(flows: list, path: str | Path, *, title: str = "") -> Path:
    """Left: ||dh_T/dh_t||_2 against the lag k = T - t (log scale), the geometric mean over the
    sequences with a min-max band; dashed: the bound ||W_hh||_2^k of each RNN; dotted: the
    LSTM's whole-state norm ||dh_T/d(h_t, c_t)||_2. Right: the singular values of W_hh (every
    gate block for the gated cells)."""
    plt = _pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120,
                                  gridspec_kw={"width_ratios": [2.2, 1]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    tiny = 1e-300
    for i, f in enumerate(flows):
        c = colors[i % len(colors)]
        k = f.lags
        ax.semilogy(k, np.maximum(f.typical(), tiny), "-", color=c, lw=1.6, label=f.label)
        if f.spectral.shape[0] > 1:
            ax.fill_between(k, np.maximum(f.spectral.min(axis=0), tiny),
                            np.maximum(f.spectral.max(axis=0), tiny), color=c, alpha=0.15, lw=0)
        if f.cell == "rnn":
            sig = f.weights["h"]["singular_values"][0]
            ax.semilogy(k, np.maximum(sig ** k.astype(float), tiny), "--", color=c, lw=0.8,
                        alpha=0.8)
        if f.state_spectral is not None:
            ax.semilogy(k, np.maximum(f.typical("state_spectral"), tiny), ":", color=c, lw=1.2,
                        label=f"{f.label}: d h_T / d(h_t, c_t)")
        for j, (name, w) in enumerate(f.weights.items()):
            sv = np.asarray(w["singular_values"])
            ax2.plot(np.arange(1, sv.size + 1), sv, "-", color=c, lw=1.2 if j == 0 else 0.7,
                     alpha=1.0 if j == 0 else 0.6,
                     label=f"{f.label}" if len(f.weights) == 1 else f"{f.label} [{name}]")
    ax.set_xlabel("lag k = T - t")
    ax.set_ylabel(r"$\|\partial h_T / \partial h_t\|_2$")
    ax.set_title(title or "gradient flow through time (dashed: RNN bound ||W_hh||^k)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    ax2.axhline(1.0, color="k", lw=0.8, ls="--")
    ax2.set_xlabel("index")
    ax2.set_ylabel("singular value")
    ax2.set_title("singular values of W_hh")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=6)
    return _save(fig, path)
