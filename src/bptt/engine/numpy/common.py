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
    if np.issubdtype(x.dtype, np.integer):
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


def project_inputs(x: np.ndarray, weight_ih: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """All steps at once: ``x_t W_ih^T + bias`` for every t.  (T, B, G*H), a fresh array."""
    T, B = x.shape[:2]
    if np.issubdtype(x.dtype, np.integer):
        out = weight_ih.T[x]  # (T, B, GH): one-hot times W_ih^T is a column gather
    else:
        out = (x.reshape(T * B, -1).astype(weight_ih.dtype, copy=False) @ weight_ih.T)
        out = out.reshape(T, B, -1)
    if bias is not None:
        out += bias
    return out


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
        ids = x.reshape(-1)
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
        dW_t = np.zeros((weight_ih.shape[1], GH), dtype=dz.dtype)
        dW_t[sorted_ids[starts]] = np.add.reduceat(dz2[order], starts, axis=0)
        return None, dW_t.T.copy()
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


def check_truncate(truncate: int | None) -> None:
    if truncate is not None and (not isinstance(truncate, int | np.integer) or truncate < 0):
        raise ValueError(f"expected bptt_truncate None or an integer >= 0, got {truncate!r}")


def bptt_loop(step, dhs: np.ndarray | None, dstate_n: tuple, T: int,
              truncate: int | None) -> tuple[np.ndarray, tuple]:
    """The backward recursion through time, shared by every cell; returns ``(dz, dstate_0)``.

    ``step(t, dstate) -> (dz_t, dstate_{t-1})`` is the cell's one-step backward: linear in the
    state gradients ``dstate`` (a tuple: ``(dh,)``, or ``(dh, dc)`` for the LSTM), each of shape
    (A, B, H). ``dz_t`` (A, B, G*H) is the gradient of the step's pre-activations.

    Without truncation A = 1 and ``dh_t = dL_t/dh_t + dh_{t+1} -> h_t`` is passed straight along.

    With ``truncate = k`` the gradient of the loss at step t may cross at most k recurrent
    transitions (h_t -> h_{t-1} -> ... -> h_{t-k}; it reaches z_{t-k} but not h_{t-k-1}).
    The pending gradients are kept by age a = transitions already crossed (A = k + 1 slots):
    a step moves age a to a + 1 and drops age k, so each loss term is cut at its own horizon in
    one batched product per step instead of one per loss term (docs/bptt.md, "Truncation").
    """
    A = 1 if truncate is None else truncate + 1
    state = []
    for ds in dstate_n:
        s = np.zeros((A, *ds.shape), dtype=ds.dtype)
        s[0] += ds
        state.append(s)
    dz = None
    for t in reversed(range(T)):
        if dhs is not None:
            state[0][0] += dhs[t]                    # dh_t += dL/dh_t (age 0)
        g, prev = step(t, tuple(state))
        if dz is None:
            dz = np.empty((T, *g.shape[1:]), dtype=g.dtype)
        dz[t] = g[0] if A == 1 else g.sum(axis=0)    # dz_t: all ages together
        if truncate is None:
            state = list(prev)
        else:                                        # age a -> a + 1, age k dropped
            state = []
            for p in prev:
                s = np.zeros_like(p)
                s[1:] = p[:-1]
                state.append(s)
    return dz, tuple(s.sum(axis=0) if A > 1 else s[0] for s in state)
