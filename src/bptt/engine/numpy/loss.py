"""Losses with their gradients: softmax cross-entropy (mean over rows) and mean squared error.

    p = softmax(s),  L = -(1/N) sum_n log p[n, y_n]     dL/ds = (p - onehot(y)) / N
    L = (1/N) sum (yhat - y)^2                           dL/dyhat = 2 (yhat - y) / N

Symbols: N rows (T*B tokens), V classes, s logits (N, V), y targets (N,) int.
"""

from __future__ import annotations

import numpy as np

from .. import kernel


def softmax_cross_entropy(logits: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of ``logits`` (N, V) against ``targets`` (N,); returns (loss, dlogits).

    Stable for any finite logits: the row maximum is subtracted before exponentiating, and the
    log-probability is ``s - max - log(sum exp(s - max))``, so logits of 1e4 stay finite.
    ``logits`` is left untouched (see :func:`softmax_cross_entropy_` for the in-place form).
    """
    if not isinstance(logits, np.ndarray) or logits.ndim != 2:
        raise ValueError(f"expected logits of shape (N, V), got {tuple(np.shape(logits))}")
    return softmax_cross_entropy_(np.array(logits, dtype=np.result_type(logits, np.float32)),
                                  targets)


def softmax_cross_entropy_(logits: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """:func:`softmax_cross_entropy` computed in place: ``logits`` becomes dL/ds and is returned.

    For the engines, whose logits buffer is their own: over all N = T*B rows at once, and no
    (N, V) array is allocated besides the logits themselves. Same operations, same results.
    """
    if logits.ndim != 2:
        raise ValueError(f"expected logits of shape (N, V), got {tuple(logits.shape)}")
    N, V = logits.shape
    targets = np.asarray(targets).reshape(-1)
    if targets.shape[0] != N:
        raise ValueError(
            f"expected {N} targets for logits {tuple(logits.shape)}, got {targets.shape[0]}"
        )
    if N and (targets.min() < 0 or targets.max() >= V):
        raise ValueError(
            f"expected targets in [0, {V}), got values in [{targets.min()}, {targets.max()}]"
        )
    if kernel.covers(logits) and logits.flags.c_contiguous:
        return kernel.softmax_xent(logits, targets), logits   # the lines below, compiled
    rows = np.arange(N)
    logits -= logits.max(axis=1, keepdims=True)               # s - max: exp never overflows
    shifted_y = logits[rows, targets]                          # (N,) a copy: s[y] - max
    np.exp(logits, out=logits)
    sums = logits.sum(axis=1, keepdims=True)
    logits /= sums                                             # p = softmax(s)
    # log p[y] = (s[y] - max) - log(sum exp(s - max)): tiny probabilities stay exact
    loss = float(-(shifted_y - np.log(sums[:, 0])).mean())
    logits[rows, targets] -= 1.0                               # dL/ds = (p - onehot(y)) / N
    logits /= N
    return loss, logits


def mse(pred: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean squared error over every element; returns (loss, dpred)."""
    if pred.shape != target.shape:
        raise ValueError(
            f"expected target of shape {tuple(pred.shape)}, got {tuple(target.shape)}"
        )
    diff = pred - target
    loss = float(np.mean(diff * diff))
    return loss, diff * (2.0 / diff.size)                       # dL/dyhat = 2 (yhat - y) / N
