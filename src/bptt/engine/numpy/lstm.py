r"""LSTM layer, one direction: forward over a whole sequence and its BPTT (torch's equations).

Forward, in the code's row-vector orientation (docs/bptt_lstm_gru.md, section "LSTM"), with the
four gate slices of width H in torch's order i, f, g, o:

    z_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh         (B, 4H) = [z^i | z^f | z^g | z^o]
    i_t = sigmoid(z^i_t),  f_t = sigmoid(z^f_t),  g_t = tanh(z^g_t),  o_t = sigmoid(z^o_t)
    c_t = f_t * c_{t-1} + i_t * g_t
    h_t = o_t * tanh(c_t)                                    h_{-1} = h0,  c_{-1} = c0

Backward, with dh_t and dc_t the total gradients reaching h_t and c_t (from the loss at t and
from step t+1):

    dh_t     = dL/dh_t + dz_{t+1} W_hh
    dc_t     = dc_{t+1} * f_{t+1} + dh_t * o_t * (1 - tanh(c_t)^2)
    dz^i_t   = dc_t * g_t * i_t (1 - i_t)
    dz^f_t   = dc_t * c_{t-1} * f_t (1 - f_t)
    dz^g_t   = dc_t * i_t * (1 - g_t^2)
    dz^o_t   = dh_t * tanh(c_t) * o_t (1 - o_t)
    dW_hh    = sum_t dz_t^T h_{t-1}
    dW_ih    = sum_t dz_t^T x_t
    db_ih    = db_hh = sum_t sum_b dz_t
    dx_t     = dz_t W_ih,     dh0 = dz_0 W_hh,     dc0 = dc_0 * f_0

Truncation (``truncate = k``): the gradient of the loss at step t crosses at most k recurrent
transitions, and a transition is one step of the pair (h, c): both paths h_t -> h_{t-1} (through
dz_t W_hh) and c_t -> c_{t-1} (through dc_t * f_t) count as one transition and are dropped
together. The loss at t therefore reaches z_t .. z_{t-k} and neither h_{t-k-1} nor c_{t-k-1};
it equals autograd on the graph where the state (h, c) at step t-k-1 is detached. The upstream
gradients on h_n and c_n enter at age 0 of the last step, like the loss at T-1.

Symbols: T steps, B batch, I input size, H hidden size.
  x       (T, B, I) float, or (T, B) integer token ids (one-hot input; projected as a gather)
  state0  None (zeros) or the pair (h0, c0), each (B, H)
  hs      (T, B, H): every hidden state; hs[-1] is h_n
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

GATES = 4


def _sigmoid_(a: np.ndarray) -> np.ndarray:
    """In place, overflow-free: sigmoid(a) = (1 + tanh(a / 2)) / 2; keeps the dtype."""
    a *= 0.5
    np.tanh(a, out=a)
    a += 1.0
    a *= 0.5
    return a


def _check_weights(weight_ih, weight_hh, bias_ih, bias_hh) -> int:
    """Validate torch-shaped LSTM parameters; return H."""
    if weight_hh.ndim != 2 or weight_hh.shape[0] != GATES * weight_hh.shape[1]:
        raise ValueError(
            f"expected weight_hh of shape (4H, H), got {tuple(weight_hh.shape)}"
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


def _check_state_pair(state0, batch: int, hidden: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """The initial (h0, c0), each (B, H) of ``dtype``; zeros when ``state0`` is None."""
    if state0 is None:
        return (np.zeros((batch, hidden), dtype=dtype), np.zeros((batch, hidden), dtype=dtype))
    if not isinstance(state0, tuple | list) or len(state0) != 2:
        got = (
            f"a single array of shape {tuple(state0.shape)}"
            if isinstance(state0, np.ndarray)
            else f"{type(state0).__name__}"
            + (f" of length {len(state0)}" if isinstance(state0, tuple | list) else "")
        )
        raise ValueError(
            f"expected the LSTM state as a pair (h0, c0) of ({batch}, {hidden}) arrays, got {got}"
        )
    h0 = check_state(state0[0], batch, hidden, dtype, name="h0")
    c0 = check_state(state0[1], batch, hidden, dtype, name="c0")
    return h0, c0


def forward(
    x: np.ndarray,
    state0: tuple[np.ndarray, np.ndarray] | None,
    weight_ih: np.ndarray,
    weight_hh: np.ndarray,
    bias_ih: np.ndarray | None = None,
    bias_hh: np.ndarray | None = None,
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], tuple]:
    """Run the layer over ``x``; return ``(hs, (h_n, c_n), cache)``, hs (T, B, H)."""
    H = _check_weights(weight_ih, weight_hh, bias_ih, bias_hh)
    T, B = check_sequence(x, weight_ih.shape[1])
    dtype = weight_hh.dtype
    h0, c0 = _check_state_pair(state0, B, H, dtype)
    bias = None
    for b in (bias_ih, bias_hh):
        if b is not None:
            bias = b if bias is None else bias + b

    gates = project_inputs(x, weight_ih, bias)           # (T, B, 4H): x_t W_ih^T + b, all t
    hs = np.empty((T, B, H), dtype=dtype)
    cs = np.empty((T, B, H), dtype=dtype)
    tanh_cs = np.empty((T, B, H), dtype=dtype)
    w_hh_t = weight_hh.T
    h, c = h0, c0
    for t in range(T):
        z = gates[t]
        z += h @ w_hh_t                                  # z_t = x_t W_ih^T + b + h_{t-1} W_hh^T
        _sigmoid_(z[:, :2 * H])                          # i_t, f_t = sigmoid(z^i_t, z^f_t)
        np.tanh(z[:, 2 * H:3 * H], out=z[:, 2 * H:3 * H])  # g_t = tanh(z^g_t)
        _sigmoid_(z[:, 3 * H:])                          # o_t = sigmoid(z^o_t)
        i, f, g, o = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
        c = cs[t]
        np.multiply(f, c0 if t == 0 else cs[t - 1], out=c)
        c += i * g                                       # c_t = f_t * c_{t-1} + i_t * g_t
        np.tanh(c, out=tanh_cs[t])
        h = hs[t]
        np.multiply(o, tanh_cs[t], out=h)                # h_t = o_t * tanh(c_t)
    cache = (x, h0, c0, gates, cs, tanh_cs, hs, weight_ih, weight_hh,
             bias_ih is not None, bias_hh is not None)
    return hs, (hs[-1], cs[-1]), cache


def backward(
    dhs: np.ndarray | None,
    dstate_n: tuple[np.ndarray | None, np.ndarray | None] | None,
    cache: tuple,
    truncate: int | None = None,
) -> tuple[np.ndarray | None, tuple[np.ndarray, np.ndarray], dict[str, np.ndarray]]:
    """BPTT from upstream gradients on every output ``dhs`` (T, B, H) and on ``(h_n, c_n)``.

    ``dstate_n`` is None or the pair ``(dh_n, dc_n)``, each (B, H) or None (zeros).
    Returns ``(dx, (dh0, dc0), grads)``: dx (T, B, I) (None for token-id input), and grads with
    keys ``weight_ih, weight_hh`` (+ ``bias_ih``, ``bias_hh`` for the biases the layer has).
    ``truncate=k`` cuts both the h and the c path after k recurrent steps (module docstring and
    :func:`bptt.engine.numpy.common.bptt_loop`).
    """
    (x, h0, c0, gates, cs, tanh_cs, hs, weight_ih, weight_hh,
     has_bias_ih, has_bias_hh) = cache
    check_truncate(truncate)
    T, B, H = hs.shape
    dh_n, dc_n = (None, None) if dstate_n is None else dstate_n
    if dh_n is None:
        dh_n = np.zeros((B, H), dtype=hs.dtype)
    if dc_n is None:
        dc_n = np.zeros((B, H), dtype=hs.dtype)

    def step(t: int, dstate: tuple) -> tuple[np.ndarray, tuple]:
        dh, dc_next = dstate                             # (A, B, H) each: dh_t, dc_{t+1} f_{t+1}
        gt = gates[t]
        i, f, g, o = gt[:, :H], gt[:, H:2 * H], gt[:, 2 * H:3 * H], gt[:, 3 * H:]
        tc = tanh_cs[t]
        c_prev = c0 if t == 0 else cs[t - 1]
        # dc_t = dc_{t+1} * f_{t+1} + dh_t * o_t * (1 - tanh(c_t)^2)
        dc = dc_next + dh * (o * (1.0 - tc * tc))
        dz = np.empty((*dh.shape[:2], GATES * H), dtype=dh.dtype)
        dz[..., :H] = dc * (g * i * (1.0 - i))           # dz^i_t = dc_t * g_t * i_t (1 - i_t)
        dz[..., H:2 * H] = dc * (c_prev * f * (1.0 - f))  # dz^f_t = dc_t * c_{t-1} * f_t (1 - f_t)
        dz[..., 2 * H:3 * H] = dc * (i * (1.0 - g * g))  # dz^g_t = dc_t * i_t * (1 - g_t^2)
        dz[..., 3 * H:] = dh * (tc * o * (1.0 - o))      # dz^o_t = dh_t * tanh(c_t) * o_t (1 - o_t)
        return dz, (dz @ weight_hh, dc * f)              # dh_{t-1} = dz_t W_hh,  dc_t * f_t

    dz, (dh0, dc0) = bptt_loop(step, dhs, (dh_n, dc_n), T, truncate)

    grads = {"weight_hh": recurrent_weight_grad(dz, hs, h0)}  # dW_hh = sum_t dz_t^T h_{t-1}
    dx, grads["weight_ih"] = project_inputs_backward(dz, x, weight_ih)  # dW_ih = sum dz_t^T x_t
    if has_bias_ih or has_bias_hh:
        db = dz.sum(axis=(0, 1))                         # db_ih = db_hh = sum_t sum_b dz_t
        if has_bias_ih:
            grads["bias_ih"] = db
        if has_bias_hh:
            grads["bias_hh"] = db.copy() if has_bias_ih else db
    return dx, (dh0, dc0), grads
