r"""GRU layer, one direction, on torch tensors: forward and its hand-written BPTT.

The same equations and structure as :mod:`bptt.engine.numpy.gru` (torch's equations,
docs/bptt_lstm_gru.md, "GRU"), gate slices of width H in torch's order r, z, n. The input part
a_t and the recurrent part s_t of the pre-activations are kept apart, because r multiplies the
n slice of s_t only:

    a_t = x_t W_ih^T + b_ih                   (B, 3H) = [a^r | a^z | a^n]
    s_t = h_{t-1} W_hh^T + b_hh               (B, 3H) = [s^r | s^z | s^n]
    r_t = sigmoid(a^r_t + s^r_t),   u_t = sigmoid(a^z_t + s^z_t)      (u is torch's z gate)
    n_t = tanh(a^n_t + r_t * s^n_t)
    h_t = (1 - u_t) * n_t + u_t * h_{t-1}     h_{-1} = h0

Backward, with dh_t the total gradient reaching h_t; da_t the gradient of the input-side
pre-activation a_t, ds_t that of the recurrent one s_t:

    (1) dh_t     = dL/dh_t + ds_{t+1} W_hh + dh_{t+1} * u_{t+1}
    (2) da^n_t   = dh_t * (1 - u_t) * (1 - n_t^2)
    (3) da^z_t   = dh_t * (h_{t-1} - n_t) * u_t (1 - u_t)
    (4) da^r_t   = da^n_t * s^n_t * r_t (1 - r_t)
    (5) ds_t     = [da^r_t | da^z_t | da^n_t * r_t]
    (6) dW_hh    = sum_t ds_t^T h_{t-1},      db_hh = sum_t sum_b ds_t
    (7) dW_ih    = sum_t da_t^T x_t,          db_ih = sum_t sum_b da_t
    (8) dx_t     = da_t W_ih,                 dh0 = ds_0 W_hh + dh_0 * u_0

da_t and ds_t are dh_t times factors that do not depend on the gradient; those are computed for
every step at once before the loop (K for da, K_s for ds), so a step is three element-wise
kernels and one product. The forward keeps all of s_t (the product's output buffer) so that s^n_t
needs no copy.

Truncation (``truncate = k``): both paths from h_t to h_{t-1} (through s_t and through
``u_t * h_{t-1}``) are one recurrent transition, cut together after k of them.

Symbols: T steps, B batch, I input size, H hidden size.
  x   (T, B, I) float, or (T, B) int64 token ids (one-hot input; projected as a gather)
  h0  (B, H) or None (zeros)
  hs  (T, B, H): every hidden state; hs[-1] is h_n
"""

from __future__ import annotations

import torch

from ..layout import check_gate_weights
from .common import (
    bptt_loop,
    check_sequence,
    check_state,
    check_truncate,
    project_inputs,
    project_inputs_backward,
    recurrent_weight_grad,
    shifted,
)

GATES = 3


def _check_weights(weight_ih, weight_hh, bias_ih, bias_hh) -> int:
    """Validate torch-shaped parameters; return H."""
    return check_gate_weights(weight_ih, weight_hh, bias_ih, bias_hh, GATES)


def forward(
    x: torch.Tensor,
    h0: torch.Tensor | None,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None = None,
    bias_hh: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """Run the layer over ``x``; return ``(hs, h_n, cache)`` with hs (T, B, H), h_n (B, H)."""
    H = _check_weights(weight_ih, weight_hh, bias_ih, bias_hh)
    T, B = check_sequence(x, weight_ih.shape[1])
    h0 = check_state(h0, B, weight_hh)

    gates = project_inputs(x, weight_ih, bias_ih)        # (T, B, 3H): a_t = x_t W_ih^T + b_ih
    s_all = weight_hh.new_empty((T, B, GATES * H))       # s_t for every t
    hs = weight_hh.new_empty((T, B, H))
    w_hh_t = weight_hh.t()
    h = h0
    for t in range(T):
        a, s = gates[t], s_all[t]
        if bias_hh is None:
            torch.mm(h, w_hh_t, out=s)                   # s_t = h_{t-1} W_hh^T
        else:
            torch.addmm(bias_hh, h, w_hh_t, out=s)       # s_t = h_{t-1} W_hh^T + b_hh
        a[:, :2 * H].add_(s[:, :2 * H]).sigmoid_()       # r_t, u_t = sigmoid(a_t + s_t) (r, z)
        r, u, n = a[:, :H], a[:, H:2 * H], a[:, 2 * H:]
        n.addcmul_(r, s[:, 2 * H:]).tanh_()              # n_t = tanh(a^n_t + r_t * s^n_t)
        h_new = hs[t]
        torch.sub(h, n, out=h_new)
        h_new.mul_(u).add_(n)                            # h_t = n_t + u_t * (h_{t-1} - n_t)
        h = h_new
    cache = (x, h0, gates, s_all, hs, weight_ih, weight_hh,
             bias_ih is not None, bias_hh is not None)
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
    the loss at step t reach back through at most k recurrent steps.
    """
    x, h0, gates, s_all, hs, weight_ih, weight_hh, has_bias_ih, has_bias_hh = cache
    check_truncate(truncate)
    T, B, H = hs.shape
    r, u, n = gates[..., :H], gates[..., H:2 * H], gates[..., 2 * H:]
    u = u.contiguous()

    # da_t = dh_t * K_t and ds_t = dh_t * Ks_t, the factors for every step at once
    K = gates.new_empty((T, B, GATES, H))
    k_n = K[:, :, 2]
    torch.mul(1.0 - u, 1.0 - n * n, out=k_n)             # (1 - u_t)(1 - n_t^2)            (2)
    torch.mul(shifted(h0, hs) - n, u * (1.0 - u), out=K[:, :, 1])  # (h_{t-1}-n_t) u_t(1-u_t) (3)
    torch.mul(k_n, s_all[..., 2 * H:] * r * (1.0 - r), out=K[:, :, 0])  # .. s^n_t r_t(1-r_t) (4)
    Ks = K.clone()
    Ks[:, :, 2].mul_(r)                                  # [.. | .. | (2) * r_t]           (5)
    ds_buf = None

    def step(t: int, dstate: tuple, g: torch.Tensor) -> None:
        nonlocal ds_buf
        (dh,) = dstate                                   # (A, B, H): dh_t by age          (1)
        A = dh.shape[0]
        if ds_buf is None:
            ds_buf = dh.new_empty((A, B, GATES * H))
        dh4 = dh.unsqueeze(2)
        torch.mul(dh4, K[t], out=g.view(A, B, GATES, H))  # da_t = [da^r|da^z|da^n]   (2)-(4)
        torch.mul(dh4, Ks[t], out=ds_buf.view(A, B, GATES, H))  # ds_t                    (5)
        dh.mul_(u[t])                                    # dh_t * u_t
        dh.view(-1, H).addmm_(ds_buf.view(-1, GATES * H), weight_hh)  # + ds_t W_hh -> dh_{t-1} (1)

    da, (dh0,) = bptt_loop(step, dhs, (dh_n,), hs, GATES * H, truncate)
    ds = da.clone()
    ds[..., 2 * H:].mul_(r)                              # ds_t = [da^r | da^z | da^n r_t]  (5)

    grads = {"weight_hh": recurrent_weight_grad(ds, hs, h0)}  # dW_hh = sum ds_t^T h_{t-1} (6)
    dx, grads["weight_ih"] = project_inputs_backward(da, x, weight_ih, need_dx)  # (7), (8)
    if has_bias_ih:
        grads["bias_ih"] = da.sum(dim=(0, 1))            # db_ih = sum_t sum_b da_t        (7)
    if has_bias_hh:
        grads["bias_hh"] = ds.sum(dim=(0, 1))            # db_hh = sum_t sum_b ds_t        (6)
    return dx, dh0, grads
