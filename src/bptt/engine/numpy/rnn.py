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
"""

from __future__ import annotations

import numpy as np

from .common import (
    bptt_loop,
    check_nonlinearity,
    check_sequence,
    check_state,
    check_truncate,
    project_inputs,
    project_inputs_backward,
    recurrent_weight_grad,
)

GATES = 1


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
    h0 = check_state(h0, B, H, weight_hh.dtype)
    biases = [b for b in (bias_ih, bias_hh) if b is not None]
    bias = sum(biases[1:], biases[0]) if biases else None   # b_ih + b_hh: one add for all t

    hs = project_inputs(x, weight_ih, bias)              # (T, B, H): x_t W_ih^T + b, all t
    w_hh_t = weight_hh.T
    h = h0
    for t in range(T):
        z = hs[t]
        z += h @ w_hh_t                                  # z_t = x_t W_ih^T + b + h_{t-1} W_hh^T
        if nonlinearity == "tanh":
            np.tanh(z, out=z)                            # h_t = tanh(z_t), in place
        else:
            np.maximum(z, 0, out=z)                      # h_t = relu(z_t), in place
        h = z
    cache = (x, h0, hs, weight_ih, weight_hh, (bias_ih is not None, bias_hh is not None),
             nonlinearity)
    return hs, hs[-1], cache


def backward(
    dhs: np.ndarray | None,
    dh_n: np.ndarray | None,
    cache: tuple,
    truncate: int | None = None,
) -> tuple[np.ndarray | None, np.ndarray, dict[str, np.ndarray]]:
    """BPTT from upstream gradients on every output ``dhs`` (T, B, H) and on ``h_n`` (B, H).

    Returns ``(dx, dh0, grads)``: dx (T, B, I) (None for token-id input), dh0 (B, H), and grads
    with keys ``weight_ih, weight_hh`` (+ ``bias_ih, bias_hh`` when the layer has biases).
    ``truncate=k`` lets the loss at step t reach back through at most k recurrent steps
    (see :func:`bptt.engine.numpy.common.bptt_loop`).
    """
    x, h0, hs, weight_ih, weight_hh, has_bias, nonlinearity = cache
    check_truncate(truncate)
    T, B, H = hs.shape
    if dh_n is None:
        dh_n = np.zeros((B, H), dtype=hs.dtype)

    def step(t: int, dstate: tuple) -> tuple[np.ndarray, tuple]:
        (dh,) = dstate                                   # (A, B, H): dh_t by age
        if nonlinearity == "tanh":
            dz = dh * (1.0 - hs[t] * hs[t])              # dz_t = dh_t * (1 - h_t^2)
        else:
            dz = dh * (hs[t] > 0)                        # dz_t = dh_t * [h_t > 0]
        return dz, (dz @ weight_hh,)                     # dh_{t-1} = dz_t W_hh

    dz, (dh0,) = bptt_loop(step, dhs, (dh_n,), T, truncate)

    grads = {"weight_hh": recurrent_weight_grad(dz, hs, h0)}  # dW_hh = sum_t dz_t^T h_{t-1}
    dx, grads["weight_ih"] = project_inputs_backward(dz, x, weight_ih)  # dW_ih = sum dz_t^T x_t
    if any(has_bias):
        db = dz.sum(axis=(0, 1))                         # db_ih = db_hh = sum_t sum_b dz_t
        for key, present in zip(("bias_ih", "bias_hh"), has_bias, strict=True):
            if present:
                grads[key] = db.copy()
    return dx, dh0, grads
