"""Pieces every NumPy cell shares: input checks, the input projection, activations, truncation.

Symbols: T sequence length, B batch, I input size, H hidden size, G gates (1 RNN, 3 GRU, 4 LSTM).

The input projection of all T steps is one matrix product before the recurrent loop, and its
weight gradient is one matrix product after the backward loop (docs/bptt.md, "Input projection").
Token inputs (T, B) of integer ids stand for one-hot vectors: ``onehot(x) W_ih^T`` is the column
gather ``W_ih^T[x]`` and its gradient is a segment sum of the rows of dz, never a V-wide product.
"""

from __future__ import annotations

import numpy as np

NONLINEARITIES = ("tanh", "relu")


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


def check_state(h: np.ndarray | None, batch: int, hidden: int, dtype: np.dtype,
                name: str = "h0") -> np.ndarray:
    """Return the initial state as a (B, H) array of ``dtype``; zeros when ``h`` is None."""
    if h is None:
        return np.zeros((batch, hidden), dtype=dtype)
    h = np.asarray(h)
    if h.shape != (batch, hidden):
        raise ValueError(f"expected {name} of shape ({batch}, {hidden}), got {tuple(h.shape)}")
    return h.astype(dtype, copy=False)


def check_nonlinearity(nonlinearity: str) -> None:
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(
            f"expected nonlinearity 'tanh' or 'relu', got {nonlinearity!r}"
        )


def project_inputs(x: np.ndarray, weight_ih: np.ndarray, bias: np.ndarray | None,
                   out: np.ndarray | None = None) -> np.ndarray:
    """All steps at once: ``x_t W_ih^T + bias`` for every t.  (T, B, G*H).

    Written into ``out`` (a C-contiguous (T, B, G*H) array of the weight's dtype) when given,
    else into a fresh array: the cells project straight into the buffer their loop then
    overwrites in place, so the forward pass allocates nothing per step.
    """
    T, B = x.shape[:2]
    GH = weight_ih.shape[0]
    if out is None:
        out = np.empty((T, B, GH), dtype=weight_ih.dtype)
    if np.issubdtype(x.dtype, np.integer):
        # one-hot times W_ih^T is a row gather from W_ih^T (V, GH); the ids were validated.
        # A contiguous copy of W_ih^T is cheap when V is small next to T*B and keeps every
        # gathered row one contiguous read.
        table = weight_ih.T
        if weight_ih.shape[1] <= 4 * T * B:
            table = np.ascontiguousarray(table)
        np.take(table, x, 0, out, "clip")  # (T, B, GH): one-hot times W_ih^T is a column gather
    else:
        np.matmul(x.reshape(T * B, -1).astype(weight_ih.dtype, copy=False), weight_ih.T,
                  out=out.reshape(T * B, GH))
    if bias is not None:
        out += bias
    return out


ONE_HOT_MAX_VOCAB = 256
"""Up to this vocabulary size the token weight gradient is a one-hot product (a (V, N) matrix
of 0/1 times dz: a few FLOPs per element, BLAS speed); above it, a sort and a segment sum."""


def token_weight_grad_(dW_t: np.ndarray, ids: np.ndarray, dz2: np.ndarray) -> np.ndarray:
    """Accumulate ``dW_ih^T[v] += sum of the rows of dz2 whose token is v``; returns dW_t.

    ``dW_t`` (V, GH), ``ids`` (N,) token ids, ``dz2`` (N, GH). A small vocabulary (the book's
    28 characters) multiplies the one-hot matrix of the ids by dz2 -- one product, five times
    faster than gathering the rows; a large one sorts once and segment-sums, never a V-wide
    product.
    """
    V, N = dW_t.shape[0], ids.shape[0]
    if V <= ONE_HOT_MAX_VOCAB:
        one_hot = np.zeros((V, N), dtype=dz2.dtype)
        one_hot[ids, np.arange(N)] = 1.0
        dW_t += one_hot @ dz2
        return dW_t
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    dW_t[sorted_ids[starts]] += np.add.reduceat(dz2[order], starts, axis=0)
    return dW_t


def project_inputs_backward(
    dz: np.ndarray, x: np.ndarray, weight_ih: np.ndarray
) -> tuple[np.ndarray | None, np.ndarray]:
    """Gradients of :func:`project_inputs`: ``(dx, dW_ih)``; dx is None for token ids.

    dW_ih = sum_t dz_t^T x_t   (one product over all T*B rows)
    dx_t  = dz_t W_ih
    """
    T, B, GH = dz.shape
    dz2 = dz.reshape(T * B, GH)
    if np.issubdtype(x.dtype, np.integer):
        # dW_ih^T[v] = sum of the rows of dz whose token is v: sort once, segment-sum.
        dW_t = np.zeros((weight_ih.shape[1], GH), dtype=dz.dtype)
        token_weight_grad_(dW_t, x.reshape(-1), dz2)
        return None, np.ascontiguousarray(dW_t.T)
    x2 = x.reshape(T * B, -1)
    dW = dz2.T @ x2.astype(dz.dtype, copy=False)
    dx = (dz2 @ weight_ih).reshape(T, B, -1)
    return dx, dW


def recurrent_weight_grad(dz: np.ndarray, hs: np.ndarray, h0: np.ndarray) -> np.ndarray:
    """dW_hh = sum_t dz_t^T h_{t-1}, as one product over steps 1..T-1 plus the h0 term."""
    T, B, GH = dz.shape
    H = hs.shape[2]
    dW = dz[0].T @ h0
    if T > 1:
        dW += dz[1:].reshape(-1, GH).T @ hs[:-1].reshape(-1, H)
    return dW


def prev_weight_grad(dz: np.ndarray, h_prev: np.ndarray) -> np.ndarray:
    """dW_hh = sum_t dz_t^T h_{t-1} as ONE product over all T*B rows.

    ``h_prev`` (T, B, H) holds h_{t-1} for every t (h0 first): the cells keep their states in a
    (T + 1, B, H) buffer whose row 0 is h0, so ``h_prev`` is that buffer without its last row,
    contiguous, and the h0 term needs no product of its own.
    """
    GH, H = dz.shape[2], h_prev.shape[2]
    return dz.reshape(-1, GH).T @ h_prev.reshape(-1, H)


def check_truncate(truncate: int | None) -> None:
    if truncate is not None and (not isinstance(truncate, int | np.integer) or truncate < 0):
        raise ValueError(f"expected bptt_truncate None or an integer >= 0, got {truncate!r}")


def effective_truncate(truncate: int | None, T: int) -> int | None:
    """``truncate`` as the loop needs it: k >= T cuts nothing (the longest path, from the loss
    at T-1 to h0, crosses T transitions), so it is full BPTT, computed without the k + 1 ages."""
    check_truncate(truncate)
    return None if truncate is None or truncate >= T else int(truncate)


def bptt_loop(step, dhs: np.ndarray | None, dstate_n: tuple, T: int,
              truncate: int | None, width: int) -> tuple[np.ndarray, tuple]:
    """The backward recursion through time, shared by every cell; returns ``(dz, dstate_0)``.

    ``step(t, dstate, dz_out, prev_out)`` is the cell's one-step backward. It reads the state
    gradients ``dstate`` (a tuple: ``(dh,)``, or ``(dh, dc)`` for the LSTM), each of shape
    (A, B, H), writes the gradient of the step's pre-activations ``dz_t`` by age into
    ``dz_out`` (A, B, width), and writes ``dstate_{t-1}`` (linear in ``dstate``) for the first
    K ages into ``prev_out`` (a tuple of (K, B, H) arrays). Nothing is allocated per step: the
    state gradients live in two preallocated buffers used in turn.

    Without truncation A = K = 1 and ``dh_t = dL_t/dh_t + dh_{t+1} -> h_t`` is passed straight
    along; ``dz_out`` is then row t of the result itself.

    With ``truncate = k`` the gradient of the loss at step t may cross at most k recurrent
    transitions (h_t -> h_{t-1} -> ... -> h_{t-k}; it reaches z_{t-k} but not h_{t-k-1}).
    The pending gradients are kept by age a = transitions already crossed (A = k + 1 slots):
    a step moves age a to a + 1 and drops age k (K = k: only ages 0..k-1 are carried back),
    so each loss term is cut at its own horizon in one batched product per step instead of
    one per loss term (docs/bptt.md, "Truncation").
    """
    A = 1 if truncate is None else truncate + 1
    K = 1 if truncate is None else truncate
    dtype = dstate_n[0].dtype
    cur = [np.zeros((A, *ds.shape), dtype=dtype) for ds in dstate_n]
    nxt = [np.zeros((A, *ds.shape), dtype=dtype) for ds in dstate_n]
    for c, ds in zip(cur, dstate_n, strict=True):
        c[0] = ds
    B = dstate_n[0].shape[0]
    dz = np.empty((T, B, width), dtype=dtype)
    by_age = np.empty((A, B, width), dtype=dtype) if A > 1 else None
    for t in reversed(range(T)):
        if dhs is not None:
            cur[0][0] += dhs[t]                      # dh_t += dL/dh_t (age 0)
        out = dz[t][None] if by_age is None else by_age
        step(t, tuple(cur), out, tuple(n[A - K:] for n in nxt))
        if by_age is not None:
            np.sum(by_age, axis=0, out=dz[t])        # dz_t: all ages together
        if truncate is not None:                     # age a -> a + 1, age k dropped
            for n in nxt:                            # (ages 1..k were written by step; the
                n[0] = 0                             # new age 0 starts empty)
        cur, nxt = nxt, cur
    return dz, tuple(c.sum(axis=0) if A > 1 else c[0] for c in cur)


def sigmoid_(a: np.ndarray) -> np.ndarray:
    """In place, overflow-free: sigmoid(a) = (1 + tanh(a / 2)) / 2; keeps the dtype."""
    a *= 0.5
    np.tanh(a, out=a)
    a += 1.0
    a *= 0.5
    return a
