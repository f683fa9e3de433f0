r"""Layer normalisation over the last axis, the piece the layer-normalised cells (``lnlstm``,
``lngru``) share (docs/bptt_layernorm.md, "The layer norm and its backward").

Forward, over the N features of every row (biased variance, as torch.nn.LayerNorm):

    LN(x) = (x - mean(x)) * rstd,      rstd = 1 / sqrt(var(x) + eps)

When x is a product ``a W^T`` the centring is folded into the weights: ``x - mean(x) = a W~^T``
with ``W~ = W - mean over W's N rows`` (:func:`centred`), so the cells normalise ``a W~^T`` by
:func:`scale` alone, and a product's gradient through W~ comes back to W by centring it too
(the centring is its own transpose). Backward of the scaling, y = x * rstd with x centred:

    dx = rstd * (dy - y * mean(dy * y))

(the term ``- mean(dy)`` of the full layer norm's backward is what the centring's own backward
adds: :func:`centred` of a weight gradient, or a cell state's explicit ``- mean``).
"""

from __future__ import annotations

import numpy as np

EPS = 1e-5
"""Added to the variance, as torch.nn.LayerNorm's default."""


def centred(w: np.ndarray) -> np.ndarray:
    """``w`` minus its mean over axis 0 (a fresh array): for a weight (N, K), the product
    ``a centred(w)^T`` is ``a w^T`` centred over its N features; for a weight's gradient, the
    centring's backward."""
    return w - w.mean(axis=0)


def scale(x: np.ndarray) -> np.ndarray:
    """Scale every row of a centred ``x`` to unit mean square, in place: ``x *= rstd``; return
    rstd = 1 / sqrt(mean(x^2) + eps), shape (..., 1)."""
    rstd = rowdot(x, x)[..., None]                       # N var(x)
    rstd /= x.shape[-1]
    rstd += EPS
    np.sqrt(rstd, out=rstd)
    np.divide(1.0, rstd, out=rstd)
    x *= rstd
    return rstd


def normalize(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = LN(x)`` over the last axis (``out`` may be ``x``); return rstd, (..., 1)."""
    np.subtract(x, np.mean(x, axis=-1, keepdims=True), out=out)
    return scale(out)


def scale_backward(dy: np.ndarray, y: np.ndarray, tmp: np.ndarray | None = None) -> np.ndarray:
    """``dy - y * mean(dy * y)`` in ``dy``'s memory (returned): the backward of :func:`scale`
    but for the factor rstd, which the caller applies where it is cheapest. ``tmp`` (``dy``'s
    shape) spares a temporary."""
    m = rowdot(dy, y)[..., None]
    m /= y.shape[-1]
    dy -= np.multiply(y, m, out=tmp)
    return dy


def affine(y: np.ndarray, gain: np.ndarray, bias: np.ndarray | None,
           out: np.ndarray | None = None) -> np.ndarray:
    """``y * gain + bias`` (the bias when there is one), into ``out`` when given."""
    out = np.multiply(y, gain, out=out)
    if bias is not None:
        out += bias
    return out


def rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``sum(a * b)`` over the last axis, (...), broadcasting the leading axes: one batched
    product, without the elementwise product's temporary."""
    return np.matmul(a[..., None, :], b[..., :, None])[..., 0, 0]


def gain_and_input_grads_(dy: np.ndarray, y: np.ndarray, rstd: np.ndarray, gain: np.ndarray,
                          work: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ``y * gain`` with y the scaled centred product (T, B, N): ``(dgain, dx~)``,
    ``dgain = sum dy y`` over all rows and ``dx~ = rstd (dy gain - y mean(dy gain y))`` per
    row, made in ``work`` (``y``'s shape, returned as dx~) with no other (T, B, N) temporary:
    large temporaries are fresh memory, each a few page faults per kilobyte. ``dy`` becomes
    ``dy * gain`` (in place)."""
    N = y.shape[-1]
    rows = np.multiply(dy, y, out=work).reshape(-1, N)  # dy y, every row
    dgain = rows.sum(axis=0)                            # dg = sum_t sum_b dy_t y_t
    m = (rows @ gain).reshape(*y.shape[:-1], 1)         # N mean(dy gain y), per row
    m /= N
    np.multiply(y, m, out=work)
    dy *= gain
    np.subtract(dy, work, out=work)                     # dy gain - y mean(dy gain y)
    work *= rstd
    return dgain, work


def column_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``sum(a * b)`` over every axis but the last, (N,): a gain's gradient over all steps and
    rows."""
    N = a.shape[-1]
    return np.einsum("mn,mn->n", a.reshape(-1, N), b.reshape(-1, N))
