"""Plots as PNG files (matplotlib's Agg backend: no screen needed), for every job.

    plot_perplexity   perplexity against epoch, training and validation (the language model)
    read_step_records the per-step ``{"kind": "step", ...}`` lines of a metrics.jsonl
    plot_grad_norms   per-step global gradient norm before/after clipping, with the threshold
                      (every training job writes it: language model, sine, series)
    plot_gradflow     ||dh_T/dh_t|| against the lag T - t (log scale), and the spectrum of W_hh

``pyplot()`` and ``save_figure()`` are what every plot here and in ``bptt.series.plots`` opens
and closes a figure with.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .cells import get_cell


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported on first use: ``import bptt`` stays light)."""
    import sys

    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # a session's own backend (a notebook's) stays
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Lay out ``fig``, write it to ``path`` (its folder made when missing) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    pyplot().close(fig)
    return path


def plot_perplexity(metrics: list[dict], path: str | Path) -> Path:
    """Perplexity against epoch, training (and validation when recorded), like the book's."""
    plt = pyplot()
    epochs = [m["epoch"] for m in metrics]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.plot(epochs, [m["perplexity"] for m in metrics], label="train")
    if any("val_perplexity" in m for m in metrics):
        ax.plot([m["epoch"] for m in metrics if "val_perplexity" in m],
                [m["val_perplexity"] for m in metrics if "val_perplexity" in m], label="val")
    ax.set_xlabel("epoch")
    ax.set_ylabel("perplexity")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


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
    plt = pyplot()
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
    return save_figure(fig, path)


def plot_gradflow(flows: list, path: str | Path, *, title: str = "") -> Path:
    """Left: ||dh_T/dh_t||_2 against the lag k = T - t (log scale), the geometric mean over the
    sequences with a min-max band; dashed: the bound ||W_hh||_2^k of each RNN; dotted: the
    LSTM's whole-state norm ||dh_T/d(h_t, c_t)||_2. Right: the singular values of W_hh (every
    gate block for the gated cells)."""
    plt = pyplot()
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
        if get_cell(f.cell).num_gates == 1:      # h_t = f(z_t): dh_T/dh_t <= ||W_hh||^k
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
    return save_figure(fig, path)
