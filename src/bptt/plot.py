"""Plots as PNG files (matplotlib's Agg backend: no screen needed)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import sys

    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # a session's own backend (a notebook's) stays
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_perplexity(metrics: list[dict], path: str | Path) -> Path:
    """Perplexity against epoch, training (and validation when recorded), like the book's."""
    plt = _pyplot()
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
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
