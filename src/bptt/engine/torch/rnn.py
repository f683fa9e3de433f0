r"""Vanilla (Elman) RNN layer, one direction, on torch tensors: forward and its hand-written BPTT.

The same equations and structure as :mod:`bptt.engine.numpy.rnn` (docs/bptt.md, "RNN"), in
the code's row-vector orientation:

    z_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh        (B, H)
    h_t = f(z_t),   f = tanh or relu,   h_{-1} = h0

Backward, with dh_t the total gradient reaching h_t (from the loss at t and from step t+1):

    (1) dh_t     = dL/dh_t + dz_{t+1} W_hh
    (2) dz_t     = dh_t * f'(z_t)         f'(z) = 1 - h_t^2 (tanh),  [h_t > 0] (relu)
    (3) dW_hh    = sum_t dz_t^T h_{t-1}
    (4) dW_ih    = sum_t dz_t^T x_t
    (5) db_ih    = db_hh = sum_t sum_b dz_t
    (6) dx_t     = dz_t W_ih,     dh0 = dz_0 W_hh

The input projection of every step is one product before the loop; the loop does one
``addmm_`` and one in-place activation per step into the preallocated ``hs``. The backward
computes f'(z_t) for all steps at once, then per step one multiply and one product, and (3)-(5)
as single products after the loop.

Symbols: T steps, B batch, I input size, H hidden size.
  x   (T, B, I) float, or (T, B) int64 token ids (one-hot input; projected as a gather)
  h0  (B, H) or None (zeros)
  hs  (T, B, H): every hidden state; hs[-1] is h_n
"""

from __future__ import annotations

import torch

from .common import (
    bptt_loop,
    check_nonlinearity,
    check_sequence,
    check_state,
    check_truncate,
    project_inputs,
    project_inputs_backward,
    recurrent_weight_grad,
    sum_biases,
)

GATES = 1


def forward(
    x: torch.Tensor,
    h0: torch.Tensor | None,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None = None,
    bias_hh: torch.Tensor | None = None,
    nonlinearity: str = "tanh",
) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """Run the layer over ``x``; return ``(hs, h_n, cache)`` with hs (T, B, H), h_n (B, H)."""
    check_nonlinearity(nonlinearity)
    H = weight_hh.shape[1]
    if weight_hh.shape != (H, H) or weight_ih.dim() != 2 or weight_ih.shape[0] != H:
        raise ValueError(
            f"expected weight_hh (H, H) and weight_ih (H, I) with one H, got "
            f"{tuple(weight_hh.shape)} and {tuple(weight_ih.shape)}"
        )
    T, B = check_sequence(x, weight_ih.shape[1])
    h0 = check_state(h0, B, weight_hh)

    hs = project_inputs(x, weight_ih, sum_biases(bias_ih, bias_hh))  # x_t W_ih^T + b, all t
    w_hh_t = weight_hh.t()
    h = h0
    for t in range(T):
        z = hs[t]
        z.addmm_(h, w_hh_t)                              # z_t = x_t W_ih^T + b + h_{t-1} W_hh^T
        if nonlinearity == "tanh":
            z.tanh_()                                    # h_t = tanh(z_t), in place
        else:
            z.relu_()                                    # h_t = relu(z_t), in place
        h = z
    cache = (x, h0, hs, weight_ih, weight_hh, bias_ih is not None, bias_hh is not None,
             nonlinearity)
    return hs, hs[-1], cache


def backward(
    dhs: torch.Tensor | None,
    dh_n: torch.Tensor | None,
    cache: tuple,
    truncate: int | None = None,
    need_dx: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor, dict[str, torch.Tensor]]:
    """BPTT from upstream gradients on every output ``dhs`` (T, B, H) and on ``h_n`` (B, H).

    Either may be None (no gradient there). Returns ``(dx, dh0, grads)``: dx (T, B, I) (None for
    token-id input or when not ``need_dx``), dh0 (B, H), and grads with keys ``weight_ih,
    weight_hh`` (+ ``bias_ih``, ``bias_hh`` for the biases the layer has). ``truncate=k`` lets
    the loss at step t reach back through at most k recurrent steps
    (:func:`bptt.engine.torch.common.bptt_loop`).
    """
    x, h0, hs, weight_ih, weight_hh, has_bias_ih, has_bias_hh, nonlinearity = cache
    check_truncate(truncate)
    H = hs.shape[2]
    if nonlinearity == "tanh":
        fprime = torch.square(hs).neg_().add_(1.0)      # f'(z_t) = 1 - h_t^2, every t at once
    else:
        fprime = (hs > 0).to(hs.dtype)                   # f'(z_t) = [h_t > 0]

    def step(t: int, dstate: tuple, g: torch.Tensor) -> None:
        (dh,) = dstate                                   # (A, B, H): dh_t by age       (1)
        torch.mul(dh, fprime[t], out=g)                  # dz_t = dh_t * f'(z_t)        (2)
        torch.mm(g.view(-1, H), weight_hh, out=dh.view(-1, H))  # dh_{t-1} = dz_t W_hh  (1)

    dz, (dh0,) = bptt_loop(step, dhs, (dh_n,), hs, H, truncate)

    grads = {"weight_hh": recurrent_weight_grad(dz, hs, h0)}  # dW_hh = sum dz_t^T h_{t-1} (3)
    dx, grads["weight_ih"] = project_inputs_backward(dz, x, weight_ih, need_dx)  # dW_ih  (4, 6)
    if has_bias_ih or has_bias_hh:
        db = dz.sum(dim=(0, 1))                          # db_ih = db_hh = sum_t sum_b dz_t (5)
        if has_bias_ih:
            grads["bias_ih"] = db
        if has_bias_hh:
            grads["bias_hh"] = db.clone() if has_bias_ih else db
    return dx, dh0, grads
