"""Pieces every NumPy cell shares: input and state checks, the input projection, activations,
and :data:`OPS`, NumPy's side of the array operations the engines share (the BPTT loop of
:mod:`bptt.engine.recursion` and the stack of :mod:`bptt.engine.stack`).

Symbols: T sequence length, B batch, I input size, H hidden size, G gates (1 RNN, 3 GRU, 4 LSTM).

The input projection of all T steps is one matrix product before the recurrent loop, and its
weight gradient is one matrix product after the backward loop (docs/bptt.md, "Input projection").
Token inputs (T, B) of integer ids stand for one-hot vectors: ``onehot(x) W_ih^T`` is the column
gather ``W_ih^T[x]`` and its gradient is a segment sum of the rows of dz, never a V-wide product.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ...cells import NONLINEARITIES, CellKind
from ..layout import sequence_groups, state_parts
from ..products import bf16_round, matmul


class NumpyOps:
    """:class:`bptt.engine.protocol.ArrayOps` on NumPy arrays."""

    @staticmethod
    def zeros(like: np.ndarray, shape: tuple) -> np.ndarray:
        return np.zeros(shape, dtype=like.dtype)

    @staticmethod
    def empty(like: np.ndarray, shape: tuple) -> np.ndarray:
        return np.empty(shape, dtype=like.dtype)

    @staticmethod
    def sum_ages(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return np.sum(a, axis=0, out=out)

    @staticmethod
    def flip(x: np.ndarray, batch_sizes: tuple | None = None) -> np.ndarray:
        if batch_sizes is None:
            return x[::-1]                               # a view
        out = x.copy()                                   # each sequence within its length
        for length, r0, r1 in sequence_groups(batch_sizes):
            out[:length, r0:r1] = x[:length, r0:r1][::-1]
        return out

    @staticmethod
    def concat(xs: list) -> np.ndarray:
        return np.concatenate(xs, axis=2)

    @staticmethod
    def stack(xs: list) -> np.ndarray:
        return np.stack(xs)


OPS = NumpyOps()

Upstream = Callable[[int, int, np.ndarray], None]
"""``upstream(s, e, out)`` writes dL/dh_t for steps s..e-1 into ``out`` (e - s, B, H): how a
model's head hands a cell's backward its gradient lazily (``NumpyEngine``)."""


def upstream_array(dhs: np.ndarray | Upstream | None, T: int, B: int, H: int,
                   dtype: np.dtype) -> np.ndarray | None:
    """dL/dh_t of every step, (T, B, H): ``dhs`` itself, or all the rows of an Upstream at once
    (a cell whose backward is not chunked)."""
    if not callable(dhs):
        return dhs
    out = np.empty((T, B, H), dtype=dtype)
    dhs(0, T, out)
    return out


def check_sequence(x: np.ndarray, input_size: int, name: str = "input") -> tuple[int, int]:
    """Validate a time-major input; return (T, B). Token ids (T, B) or features (T, B, I)."""
    if not isinstance(x, np.ndarray):
        raise ValueError(f"expected {name} as a numpy array, got {type(x).__name__}")
    if x.dtype.kind in "iu":                             # integer token ids
        if x.ndim != 2:
            raise ValueError(
                f"expected {name} token ids of shape (T, B), got shape {tuple(x.shape)}"
            )
        if x.size and (x.min() < 0 or x.max() >= input_size):
            raise ValueError(
                f"expected {name} token ids in [0, {input_size}), "
                f"got values in [{x.min()}, {x.max()}]"
            )
    elif x.ndim != 3 or x.shape[2] != input_size:
        raise ValueError(
            f"expected {name} of shape (T, B, {input_size}), got shape {tuple(x.shape)}"
        )
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"expected {name} with T >= 1 and B >= 1, got shape {tuple(x.shape)}")
    return x.shape[0], x.shape[1]


def check_state_parts(kind: CellKind, state0, batch: int, hidden: int | tuple[int, ...],
                      dtype: np.dtype, names: str = "{}0") -> tuple[np.ndarray, ...]:
    """A state as a tuple of (B, S) arrays of ``dtype``, one per state part of ``kind``; zeros
    for a missing part (or when ``state0`` is None). ``hidden``: S for every part, or one size
    per part (the LSTM's projected h and its c). ``names`` names the parts in errors
    (``"{}0"``: h0, c0; ``"d{}_n"``: dh_n, dc_n)."""
    sizes = (hidden,) * len(kind.state) if isinstance(hidden, int | np.integer) else hidden
    if state0 is None:
        return tuple([np.zeros((batch, size), dtype=dtype) for size in sizes])
    out = []
    given = state_parts(kind, state0, batch, sizes[0])
    for p, h, size in zip(kind.state, given, sizes, strict=True):
        if h is None:
            out.append(np.zeros((batch, size), dtype=dtype))
            continue
        h = np.asarray(h)
        if h.shape != (batch, size):
            raise ValueError(f"expected {names.format(p)} of shape ({batch}, {size}), "
                             f"got {tuple(h.shape)}")
        out.append(h.astype(dtype, copy=False))
    return tuple(out)


PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str, weight: np.ndarray) -> None:
    """fp32, or bf16 (bfloat16 products) on float32 weights."""
    if precision not in PRECISIONS:
        raise ValueError(f"expected precision 'fp32' or 'bf16', got {precision!r}")
    if precision == "bf16" and weight.dtype != np.float32:
        raise ValueError(f"expected float32 weights with precision 'bf16' (float32 master "
                         f"weights), got {weight.dtype}")


def check_nonlinearity(nonlinearity: str) -> None:
    if nonlinearity not in NONLINEARITIES:
        expected = " or ".join(repr(n) for n in NONLINEARITIES)
        raise ValueError(f"expected nonlinearity {expected}, got {nonlinearity!r}")


def project_inputs(x: np.ndarray, weight_ih: np.ndarray, bias: np.ndarray | None,
                   out: np.ndarray | None = None, precision: str = "fp32") -> np.ndarray:
    """All steps at once: ``x_t W_ih^T + bias`` for every t.  (T, B, G*H).

    Written into ``out`` (a C-contiguous (T, B, G*H) array of the weight's dtype) when given,
    else into a fresh array: the cells project straight into the buffer their loop then
    overwrites in place, so the forward pass allocates nothing per step. ``precision="bf16"``:
    a float input's product on bfloat16 operands (token ids gather rows: no product).
    """
    T, B = x.shape[:2]
    GH = weight_ih.shape[0]
    if out is None:
        out = np.empty((T, B, GH), dtype=weight_ih.dtype)
    if np.issubdtype(x.dtype, np.integer):
        # one-hot times W_ih^T is a row gather from W_ih^T (V, GH); the ids were validated.
        # A contiguous copy of W_ih^T is cheap when V is small next to T*B and keeps every
        # gathered row one contiguous read; for a large vocabulary, the columns of W_ih are
        # gathered from its rows (each a contiguous read) and transposed into place.
        if weight_ih.shape[1] <= 4 * T * B:
            table = np.ascontiguousarray(weight_ih.T)
            np.take(table, x, 0, out, "clip")  # (T, B, GH): one-hot times W_ih^T is a column gather
        else:
            out.reshape(T * B, GH)[...] = np.take(weight_ih, x.reshape(-1), axis=1).T
    else:
        matmul(x.reshape(T * B, -1).astype(weight_ih.dtype, copy=False), weight_ih.T,
               out.reshape(T * B, GH), precision=precision)
    if bias is not None:
        out += bias
    return out


ONE_HOT_MAX_VOCAB = 256
"""Up to this vocabulary size the token weight gradient is a one-hot product (a (V, N) matrix
of 0/1 times dz: a few FLOPs per element, BLAS speed); above it, a sort and a segment sum."""


def token_weight_grad_(dW: np.ndarray, ids: np.ndarray, dz2: np.ndarray) -> np.ndarray:
    """Accumulate ``dW_ih^T[v] += sum of the rows of dz2 whose token is v``; returns dW.

    ``dW`` (GH, V), torch's layout of dW_ih (its column v is row v of dW_ih^T), ``ids`` (N,)
    token ids, ``dz2`` (N, GH). A small vocabulary (the book's 28 characters) multiplies the
    one-hot matrix of the ids by dz2 -- one product, five times faster than gathering the rows;
    a large one sorts once and segment-sums, then adds the sums into the columns of the tokens
    seen: never a V-wide product, nor a (V, GH) array to transpose.
    """
    V = dW.shape[1]
    if V <= ONE_HOT_MAX_VOCAB:
        one_hot = np.zeros((V, ids.shape[0]), dtype=dz2.dtype)
        one_hot[ids, np.arange(ids.shape[0])] = 1.0
        dW.T[...] += one_hot @ dz2
        return dW
    tokens, sums = token_sums(ids, dz2)
    dW.T[tokens] += sums                  # distinct columns: a plain indexed add is exact
    return dW


def token_sums(ids: np.ndarray, dz2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens, sums)``: the distinct token ids (U,) and, for each, the sum of the rows of
    ``dz2`` (N, GH) carrying it (U, GH): sort once, segment-sum."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    return sorted_ids[starts], np.add.reduceat(dz2[order], starts, axis=0)


def project_inputs_backward(
    dz: np.ndarray, x: np.ndarray, weight_ih: np.ndarray, need_dx: bool = True,
    precision: str = "fp32",
) -> tuple[np.ndarray | None, np.ndarray]:
    """Gradients of :func:`project_inputs`: ``(dx, dW_ih)``; dx is None for token ids.

    dW_ih = sum_t dz_t^T x_t   (one product over all T*B rows)
    dx_t  = dz_t W_ih          (only when ``need_dx``)
    """
    T, B, GH = dz.shape
    dz2 = dz.reshape(T * B, GH)
    if np.issubdtype(x.dtype, np.integer):
        # dW_ih^T[v] = sum of the rows of dz whose token is v
        dW = np.zeros((GH, weight_ih.shape[1]), dtype=dz.dtype)
        return None, token_weight_grad_(dW, x.reshape(-1), dz2)
    x2 = x.reshape(T * B, -1).astype(dz.dtype, copy=False)
    dW = matmul(dz2.T, x2, precision=precision)
    dx = matmul(dz2, weight_ih, precision=precision).reshape(T, B, -1) if need_dx else None
    return dx, dW


def prev_weight_grad(dz: np.ndarray, h_prev: np.ndarray, precision: str = "fp32") -> np.ndarray:
    """dW_hh = sum_t dz_t^T h_{t-1} as ONE product over all T*B rows.

    ``h_prev`` (T, B, H) holds h_{t-1} for every t (h0 first): the cells keep their states in a
    (T + 1, B, H) buffer whose row 0 is h0, so ``h_prev`` is that buffer without its last row,
    contiguous, and the h0 term needs no product of its own.
    """
    GH, H = dz.shape[2], h_prev.shape[2]
    return matmul(dz.reshape(-1, GH).T, h_prev.reshape(-1, H), precision=precision)


def step_product(a: np.ndarray, w_t: np.ndarray, out: np.ndarray, precision: str) -> None:
    """One step's product ``a @ w_t`` into ``out`` in a Python loop; bf16: on bfloat16
    operands (``w_t`` already rounded once by the caller)."""
    if precision == "bf16":
        np.matmul(bf16_round(a), w_t, out=out)
    else:
        np.matmul(a, w_t, out=out)


def sigmoid_(a: np.ndarray) -> np.ndarray:
    """In place, overflow-free: sigmoid(a) = (1 + tanh(a / 2)) / 2; keeps the dtype."""
    a *= 0.5
    np.tanh(a, out=a)
    a += 1.0
    a *= 0.5
    return a
