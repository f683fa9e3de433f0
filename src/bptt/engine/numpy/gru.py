r"""GRU layer, one direction: forward over a whole sequence and its BPTT (torch's equations).

Forward, in the code's row-vector orientation (docs/bptt_lstm_gru.md, section "GRU"), with the
three gate slices of width H in torch's order r, z, n. The input part a_t and the recurrent part
s_t of the pre-activations are kept apart, because r multiplies the n slice of s_t only:

    a_t = x_t W_ih^T + b_ih                   (B, 3H) = [a^r | a^z | a^n]
    s_t = h_{t-1} W_hh^T + b_hh               (B, 3H) = [s^r | s^z | s^n]
    r_t = sigmoid(a^r_t + s^r_t),   u_t = sigmoid(a^z_t + s^z_t)      (u is torch's z gate)
    n_t = tanh(a^n_t + r_t * s^n_t)
    h_t = (1 - u_t) * n_t + u_t * h_{t-1}     h_{-1} = h0

Backward, with dh_t the total gradient reaching h_t (from the loss at t and from step t+1).
da_t is the gradient of the input-side pre-activation a_t, ds_t that of the recurrent one s_t:

    dh_t     = dL/dh_t + ds_{t+1} W_hh + dh_{t+1} * u_{t+1}
    da^n_t   = dh_t * (1 - u_t) * (1 - n_t^2)
    da^z_t   = dh_t * (h_{t-1} - n_t) * u_t (1 - u_t)
    da^r_t   = da^n_t * s^n_t * r_t (1 - r_t)
    ds_t     = [da^r_t | da^z_t | da^n_t * r_t]
    dW_hh    = sum_t ds_t^T h_{t-1},      db_hh = sum_t sum_b ds_t
    dW_ih    = sum_t da_t^T x_t,          db_ih = sum_t sum_b da_t
    dx_t     = da_t W_ih,                 dh0 = ds_0 W_hh + dh_0 * u_0

Since r_t does not depend on the age of a pending gradient, ds_t is rebuilt from the summed da_t
after the loop (n slice times r_t), so the shared ``bptt_loop`` only has to carry da_t.

Truncation (``truncate = k``): both paths from h_t to h_{t-1} (through s_t and the direct
``u_t * h_{t-1}`` term) are one recurrent transition; the loss at step t reaches a_t .. a_{t-k}
and not h_{t-k-1}, i.e. autograd with h_{t-k-1} detached.

Symbols: T steps, B batch, I input size, H hidden size.
  x   (T, B, I) float, or (T, B) integer token ids (one-hot input; projected as a gather)
  h0  (B, H) or None (zeros)
  hs  (T, B, H): every hidden state; hs[-1] is h_n
"""

from __future__ import annotations

import numpy as np

from .common import (
    bptt_loop,
    check_sequence,
    check_state,
    check_truncate,
    project_inputs,
    project_inputs_backward,
    recurrent_weight_grad,
)

GATES = 3


def _sigmoid_(a: np.ndarray) -> np.ndarray:
    """In place, overflow-free: sigmoid(a) = (1 + tanh(a / 2)) / 2; keeps the dtype."""
    a *= 0.5
    np.tanh(a, out=a)
    a += 1.0
    a *= 0.5
    return a


def _check_weights(weight_ih, weight_hh, bias_ih, bias_hh) -> int:
    """Validate torch-shaped GRU parameters; return H."""
    if weight_hh.ndim != 2 or weight_hh.shape[0] != GATES * weight_hh.shape[1]:
        raise ValueError(
            f"expected weight_hh of shape (3H, H), got {tuple(weight_hh.shape)}"
        )
    H = weight_hh.shape[1]
    if weight_ih.ndim != 2 or weight_ih.shape[0] != GATES * H:
        raise ValueError(
            f"expected weight_ih of shape ({GATES * H}, I), got {tuple(weight_ih.shape)}"
        )
    for name, b in (("bias_ih", bias_ih), ("bias_hh", bias_hh)):
        if b is not None and b.shape != (GATES * H,):
            raise ValueError(f"expected {name} of shape ({GATES * H},), got {tuple(b.shape)}")
    return H


def forward(
    x: np.ndarray,
    h0: np.ndarray | None,
    weight_ih: np.ndarray,
    weight_hh: np.ndarray,
    bias_ih: np.ndarray | None = None,
    bias_hh: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Run the layer over ``x``; return ``(hs, h_n, cache)`` with hs (T, B, H), h_n (B, H)."""
    H = _check_weights(weight_ih, weight_hh, bias_ih, bias_hh)
    T, B = check_sequence(x, weight_ih.shape[1])
    dtype = weight_hh.dtype
    h0 = check_state(h0, B, H, dtype)

    gates = project_inputs(x, weight_ih, bias_ih)        # (T, B, 3H): a_t = x_t W_ih^T + b_ih
    hs = np.empty((T, B, H), dtype=dtype)
    s_n = np.empty((T, B, H), dtype=dtype)               # s^n_t, needed by da^r_t
    w_hh_t = weight_hh.T
    h = h0
    for t in range(T):
        a = gates[t]
        s = h @ w_hh_t                                   # s_t = h_{t-1} W_hh^T + b_hh
        if bias_hh is not None:
            s += bias_hh
        a[:, :2 * H] += s[:, :2 * H]
        _sigmoid_(a[:, :2 * H])                          # r_t, u_t = sigmoid(a_t + s_t) (r, z)
        r, u, n = a[:, :H], a[:, H:2 * H], a[:, 2 * H:]
        s_n[t] = s[:, 2 * H:]
        n += r * s_n[t]
        np.tanh(n, out=n)                                # n_t = tanh(a^n_t + r_t * s^n_t)
        h_new = hs[t]
        np.subtract(h, n, out=h_new)
        h_new *= u
        h_new += n                                       # h_t = n_t + u_t * (h_{t-1} - n_t)
        h = h_new
    cache = (x, h0, gates, s_n, hs, weight_ih, weight_hh,
             bias_ih is not None, bias_hh is not None)
    return hs, hs[-1], cache


def backward(
    dhs: np.ndarray | None,
    dh_n: np.ndarray | None,
    cache: tuple,
    truncate: int | None = None,
) -> tuple[np.ndarray | None, np.ndarray, dict[str, np.ndarray]]:
    """BPTT from upstream gradients on every output ``dhs`` (T, B, H) and on ``h_n`` (B, H).

    Returns ``(dx, dh0, grads)``: dx (T, B, I) (None for token-id input), dh0 (B, H), and grads
    with keys ``weight_ih, weight_hh`` (+ ``bias_ih``, ``bias_hh`` for the biases the layer has).
    ``truncate=k`` lets the loss at step t reach back through at most k recurrent steps
    (module docstring and :func:`bptt.engine.numpy.common.bptt_loop`).
    """
    x, h0, gates, s_n, hs, weight_ih, weight_hh, has_bias_ih, has_bias_hh = cache
    check_truncate(truncate)
    T, B, H = hs.shape
    if dh_n is None:
        dh_n = np.zeros((B, H), dtype=hs.dtype)

    def step(t: int, dstate: tuple) -> tuple[np.ndarray, tuple]:
        (dh,) = dstate                                   # (A, B, H): dh_t by age
        gt = gates[t]
        r, u, n = gt[:, :H], gt[:, H:2 * H], gt[:, 2 * H:]
        h_prev = h0 if t == 0 else hs[t - 1]
        da = np.empty((*dh.shape[:2], GATES * H), dtype=dh.dtype)
        da_n = da[..., 2 * H:]
        # da^n_t = dh_t * (1 - u_t) * (1 - n_t^2)
        np.multiply(dh, (1.0 - u) * (1.0 - n * n), out=da_n)
        # da^z_t = dh_t * (h_{t-1} - n_t) * u_t (1 - u_t)
        da[..., H:2 * H] = dh * ((h_prev - n) * u * (1.0 - u))
        # da^r_t = da^n_t * s^n_t * r_t (1 - r_t)
        da[..., :H] = da_n * (s_n[t] * r * (1.0 - r))
        ds = da.copy()
        ds[..., 2 * H:] *= r                             # ds_t = [da^r_t | da^z_t | da^n_t r_t]
        return da, (ds @ weight_hh + dh * u,)            # dh_{t-1} = ds_t W_hh + dh_t * u_t

    da, (dh0,) = bptt_loop(step, dhs, (dh_n,), T, truncate)
    ds = da.copy()
    ds[..., 2 * H:] *= gates[..., :H]                    # ds_t = [da^r_t | da^z_t | da^n_t r_t]

    grads = {"weight_hh": recurrent_weight_grad(ds, hs, h0)}  # dW_hh = sum_t ds_t^T h_{t-1}
    dx, grads["weight_ih"] = project_inputs_backward(da, x, weight_ih)  # dW_ih = sum da_t^T x_t
    if has_bias_ih:
        grads["bias_ih"] = da.sum(axis=(0, 1))           # db_ih = sum_t sum_b da_t
    if has_bias_hh:
        grads["bias_hh"] = ds.sum(axis=(0, 1))           # db_hh = sum_t sum_b ds_t
    return dx, dh0, grads
