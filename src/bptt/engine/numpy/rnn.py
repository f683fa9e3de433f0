r"""Vanilla (Elman) RNN layer, one direction: forward over a whole sequence and its BPTT.

Forward, in the code's row-vector orientation (docs/bptt.md, section "RNN"):

    z_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh        (B, H)
    h_t = f(z_t),   f = tanh or relu,   h_{-1} = h0

Backward, with dh_t the total gradient reaching h_t (from the loss at t and from step t+1):

    dh_t     = dL/dh_t + dz_{t+1} W_hh
    dz_t     = dh_t * f'(z_t)           f'(z) = 1 - h_t^2 (tanh),  [h_t > 0] (relu)
    dW_hh    = sum_t dz_t^T h_{t-1}
    dW_ih    = sum_t dz_t^T x_t
    db_ih    = db_hh = sum_t sum_b dz_t
    dx_t     = dz_t W_ih,     dh0 = dz_0 W_hh

Symbols: T steps, B batch, I input size, H hidden size.
  x   (T, B, I) float, or (T, B) integer token ids (one-hot input; projected as a gather)
  h0  (B, H) or None (zeros)
  hs  (T, B, H): every hidden state; hs[-1] is h_n

Speed (docs/performance.md): the states live in one (T + 1, B, H) buffer whose row 0 is h0, so
the input projection is written straight into it, each step overwrites its row in place
(``np.matmul(..., out=)``, ``np.tanh(..., out=)``: nothing is allocated per step), and
h_{t-1} for every t is a contiguous view for the one dW_hh product. The backward pass runs in
chunks of steps (all T when T*B is small, as in the book's model): per chunk one product for
each weight gradient, and memory beyond the states is two chunk-sized buffers, not (T, B, H)
arrays. The upstream gradient may be given lazily, chunk by chunk, so a model's head never
materialises dL/dh for the whole sequence.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .common import (
    check_nonlinearity,
    check_sequence,
    check_state,
    effective_truncate,
    project_inputs,
    token_weight_grad_,
)

GATES = 1

CHUNK_ROWS = 1024
"""Rows (steps x batch) per backward chunk: enough for efficient weight-gradient products, few
enough that the chunk buffers stay small next to the states of a long sequence. A sequence of
at most ``4 * CHUNK_ROWS`` rows (the book's 35 x 32) is one chunk."""

Upstream = Callable[[int, int, np.ndarray], None]
"""``upstream(s, e, out)`` writes dL/dh_t for steps s..e-1 into ``out`` (e - s, B, H)."""


def forward(
    x: np.ndarray,
    h0: np.ndarray | None,
    weight_ih: np.ndarray,
    weight_hh: np.ndarray,
    bias_ih: np.ndarray | None = None,
    bias_hh: np.ndarray | None = None,
    nonlinearity: str = "tanh",
) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Run the layer over ``x``; return ``(hs, h_n, cache)`` with hs (T, B, H), h_n (B, H)."""
    check_nonlinearity(nonlinearity)
    H = weight_hh.shape[1]
    if weight_hh.shape != (H, H) or weight_ih.ndim != 2 or weight_ih.shape[0] != H:
        raise ValueError(
            f"expected weight_hh (H, H) and weight_ih (H, I) with one H, got "
            f"{tuple(weight_hh.shape)} and {tuple(weight_ih.shape)}"
        )
    T, B = check_sequence(x, weight_ih.shape[1])
    dtype = weight_hh.dtype
    h0 = check_state(h0, B, H, dtype)
    bias = None
    for b in (bias_ih, bias_hh):                         # b_ih + b_hh: one add for all t
        if b is not None:
            bias = b if bias is None else bias + b

    states = np.empty((T + 1, B, H), dtype=dtype)        # states[0] = h0, states[t + 1] = h_t
    states[0] = h0
    hs = states[1:]
    project_inputs(x, weight_ih, bias, out=hs)           # (T, B, H): x_t W_ih^T + b, all t
    w_hh_t = weight_hh.T
    rec = np.empty((B, H), dtype=dtype)
    for t in range(T):
        z = hs[t]
        np.matmul(states[t], w_hh_t, out=rec)
        z += rec                                         # z_t = x_t W_ih^T + b + h_{t-1} W_hh^T
        if nonlinearity == "tanh":
            np.tanh(z, out=z)                            # h_t = tanh(z_t), in place
        else:
            np.maximum(z, 0, out=z)                      # h_t = relu(z_t), in place
    cache = (x, states[0], hs, weight_ih, weight_hh, (bias_ih is not None, bias_hh is not None),
             nonlinearity, states)
    return hs, hs[-1], cache


def step(
    x: np.ndarray,
    h: np.ndarray,
    weight_ih: np.ndarray,
    weight_hh: np.ndarray,
    bias_ih: np.ndarray | None = None,
    bias_hh: np.ndarray | None = None,
    nonlinearity: str = "tanh",
) -> np.ndarray:
    """One step, no checks and no cache (generation): h_t (B, H) from x_t and h_{t-1} (B, H).

    ``x`` is (B,) token ids or (B, I) features. The same operations, in the same order, as one
    step of :func:`forward`.
    """
    if x.dtype.kind in "iu":
        z = weight_ih.T[x]                               # one-hot x_t W_ih^T: a row gather
    else:
        z = x.astype(weight_ih.dtype, copy=False) @ weight_ih.T
    if bias_ih is not None:
        z += bias_ih if bias_hh is None else bias_ih + bias_hh
    elif bias_hh is not None:
        z += bias_hh
    z += h @ weight_hh.T                                 # z_t = x_t W_ih^T + b + h_{t-1} W_hh^T
    if nonlinearity == "tanh":
        return np.tanh(z, out=z)
    return np.maximum(z, 0, out=z)


def _chunk_steps(T: int, B: int) -> int:
    return T if T * B <= 4 * CHUNK_ROWS else max(1, CHUNK_ROWS // B)


def backward(
    dhs: np.ndarray | Upstream | None,
    dh_n: np.ndarray | None,
    cache: tuple,
    truncate: int | None = None,
) -> tuple[np.ndarray | None, np.ndarray, dict[str, np.ndarray]]:
    """BPTT from upstream gradients on every output ``dhs`` (T, B, H) and on ``h_n`` (B, H).

    Returns ``(dx, dh0, grads)``: dx (T, B, I) (None for token-id input), dh0 (B, H), and grads
    with keys ``weight_ih, weight_hh`` (+ ``bias_ih, bias_hh`` when the layer has biases).
    ``truncate=k`` lets the loss at step t reach back through at most k recurrent steps
    (see :func:`bptt.engine.numpy.common.bptt_loop`).

    ``dhs`` may also be a function ``dhs(s, e, out)`` writing dL/dh_t of steps s..e-1 into
    ``out`` (e - s, B, H), called once per chunk from the last chunk to the first: a model's
    head then never materialises dL/dh for the whole sequence (:class:`NumpyEngine`).
    """
    x, _, hs, weight_ih, weight_hh, has_bias, nonlinearity, states = cache
    T, B, H = hs.shape
    k = effective_truncate(truncate, T)
    dtype = hs.dtype
    token_input = np.issubdtype(x.dtype, np.integer)
    chunk = _chunk_steps(T, B)

    dW_hh = np.zeros((H, H), dtype=dtype)
    dW_ih_t = np.zeros((weight_ih.shape[1], H), dtype=dtype) if token_input else None
    dW_ih = None if token_input else np.zeros((H, weight_ih.shape[1]), dtype=dtype)
    dx = None if token_input else np.empty(x.shape, dtype=dtype)
    db = np.zeros(H, dtype=dtype)
    dz_buf = np.empty((chunk, B, H), dtype=dtype)        # dL/dh_t in, dz_t out, per chunk
    act_buf = np.empty((chunk, B, H), dtype=dtype)       # f'(z_t) for the chunk's steps
    if k is None:                                        # dh_t flowing back: (B, H)
        dh = np.zeros((B, H), dtype=dtype) if dh_n is None else dh_n.astype(dtype, copy=True)
    else:                                                # by age: (k + 1, B, H), two in turn
        A = k + 1
        cur = np.zeros((A, B, H), dtype=dtype)           # (A, B, H): dh_t by age
        nxt = np.zeros((A, B, H), dtype=dtype)
        by_age = np.empty((A, B, H), dtype=dtype)
        if dh_n is not None:
            cur[0] = dh_n

    for s in reversed(range(0, T, chunk)):
        e = min(s + chunk, T)
        n = e - s
        dz, act = dz_buf[:n], act_buf[:n]
        if dhs is None:
            dz.fill(0)
        elif callable(dhs):
            dhs(s, e, dz)
        else:
            dz[...] = dhs[s:e]
        # f'(z_t) for the chunk's steps, the factor of dz_t = dh_t * f'(z_t):
        if nonlinearity == "tanh":
            np.multiply(hs[s:e], hs[s:e], out=act)
            np.subtract(1.0, act, out=act)               # dz_t = dh_t * (1 - h_t^2)
        else:
            np.sign(hs[s:e], out=act)                    # dz_t = dh_t * [h_t > 0]
        for j in reversed(range(n)):
            if k is None:
                dz[j] += dh                              # dh_t += dL/dh_t (age 0)
                dz[j] *= act[j]                          # dz_t = dh_t * f'(z_t)
                np.matmul(dz[j], weight_hh, out=dh)      # dh_{t-1} = dz_t W_hh
            else:
                cur[0] += dz[j]                          # dh_t += dL/dh_t (age 0)
                np.multiply(cur, act[j], out=by_age)     # dz_t = dh_t * f'(z_t), by age
                np.sum(by_age, axis=0, out=dz[j])        # dz_t: all ages together
                if k:                                    # dh_{t-1} = dz_t W_hh (ages 0..k-1)
                    np.matmul(by_age[:k].reshape(k * B, H), weight_hh,
                              out=nxt[1:].reshape(k * B, H))
                nxt[0] = 0                               # age a -> a + 1, age k dropped
                cur, nxt = nxt, cur
        # this chunk's share of the weight gradients: one product each
        rows = dz.reshape(n * B, H)
        dW_hh += rows.T @ states[s:e].reshape(n * B, H)  # dW_hh = sum_t dz_t^T h_{t-1}
        if token_input:
            token_weight_grad_(dW_ih_t, x[s:e].reshape(-1), rows)  # dW_ih = sum_t dz_t^T x_t
        else:
            xs = x[s:e].reshape(n * B, -1).astype(dtype, copy=False)
            dW_ih += rows.T @ xs
            np.matmul(rows, weight_ih, out=dx[s:e].reshape(n * B, -1))  # dx_t = dz_t W_ih
        db += rows.sum(axis=0)                           # db_ih = db_hh = sum_t sum_b dz_t

    dh0 = dh if k is None else cur.sum(axis=0)
    grads = {"weight_hh": dW_hh,
             "weight_ih": np.ascontiguousarray(dW_ih_t.T) if token_input else dW_ih}
    for key, present in zip(("bias_ih", "bias_hh"), has_bias, strict=True):
        if present:
            grads[key] = db.copy()
    return dx, dh0, grads
