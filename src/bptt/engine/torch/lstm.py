r"""LSTM layer, one direction, on torch tensors: forward and its hand-written BPTT.

The same equations and structure as :mod:`bptt.engine.numpy.lstm` (torch's equations,
docs/bptt_lstm_gru.md, "LSTM"), gate slices of width H in torch's order i, f, g, o:

    z_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh         (B, 4H) = [z^i | z^f | z^g | z^o]
    i_t = sigmoid(z^i_t),  f_t = sigmoid(z^f_t),  g_t = tanh(z^g_t),  o_t = sigmoid(z^o_t)
    c_t = f_t * c_{t-1} + i_t * g_t
    h_t = o_t * tanh(c_t)                                    h_{-1} = h0,  c_{-1} = c0

Backward, with dh_t and dc_t the total gradients reaching h_t and c_t:

    (1) dh_t     = dL/dh_t + dz_{t+1} W_hh
    (2) dc_t     = dc_{t+1} * f_{t+1} + dh_t * o_t * (1 - tanh(c_t)^2)
    (3) dz^i_t   = dc_t * g_t * i_t (1 - i_t)
    (4) dz^f_t   = dc_t * c_{t-1} * f_t (1 - f_t)
    (5) dz^g_t   = dc_t * i_t * (1 - g_t^2)
    (6) dz^o_t   = dh_t * tanh(c_t) * o_t (1 - o_t)
    (7) dW_hh    = sum_t dz_t^T h_{t-1}
    (8) dW_ih    = sum_t dz_t^T x_t
    (9) db_ih    = db_hh = sum_t sum_b dz_t
    (10) dx_t    = dz_t W_ih,     dh0 = dz_0 W_hh,     dc0 = dc_0 * f_0

The factors of (2)-(6) that do not depend on the incoming gradient are computed for every step
at once before the backward loop, so each step is four element-wise kernels and one product.

Truncation (``truncate = k``): one transition is one step of the pair (h, c); both the h path
(through dz_t W_hh) and the c path (through dc_t * f_t) are cut together after k transitions.

Symbols: T steps, B batch, I input size, H hidden size.
  x       (T, B, I) float, or (T, B) int64 token ids (one-hot input; projected as a gather)
  state0  None (zeros) or the pair (h0, c0), each (B, H) or None (zeros)
  hs      (T, B, H): every hidden state; hs[-1] is h_n
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
    sum_biases,
)

GATES = 4


def _check_weights(weight_ih, weight_hh, bias_ih, bias_hh) -> int:
    """Validate torch-shaped parameters; return H."""
    return check_gate_weights(weight_ih, weight_hh, bias_ih, bias_hh, GATES)


def _check_state_pair(state0, batch: int, like: torch.Tensor):
    """The initial (h0, c0), each (B, H); zeros for a missing one."""
    if state0 is None:
        return check_state(None, batch, like), check_state(None, batch, like)
    if not isinstance(state0, tuple | list) or len(state0) != 2:
        raise ValueError(
            f"expected the LSTM state as a pair (h0, c0) of ({batch}, {like.shape[1]}) tensors, "
            f"got {type(state0).__name__}"
        )
    return (check_state(state0[0], batch, like, name="h0"),
            check_state(state0[1], batch, like, name="c0"))


def forward(
    x: torch.Tensor,
    state0: tuple[torch.Tensor | None, torch.Tensor | None] | None,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None = None,
    bias_hh: torch.Tensor | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], tuple]:
    """Run the layer over ``x``; return ``(hs, (h_n, c_n), cache)``, hs (T, B, H)."""
    H = _check_weights(weight_ih, weight_hh, bias_ih, bias_hh)
    T, B = check_sequence(x, weight_ih.shape[1])
    h0, c0 = _check_state_pair(state0, B, weight_hh)

    gates = project_inputs(x, weight_ih, sum_biases(bias_ih, bias_hh))  # x_t W_ih^T + b, all t
    hs = weight_hh.new_empty((T, B, H))
    cs = weight_hh.new_empty((T, B, H))
    tanh_cs = weight_hh.new_empty((T, B, H))
    w_hh_t = weight_hh.t()
    h, c_prev = h0, c0
    for t in range(T):
        z = gates[t]
        z.addmm_(h, w_hh_t)                              # z_t = x_t W_ih^T + b + h_{t-1} W_hh^T
        z[:, :2 * H].sigmoid_()                          # i_t, f_t = sigmoid(z^i_t, z^f_t)
        z[:, 2 * H:3 * H].tanh_()                        # g_t = tanh(z^g_t)
        z[:, 3 * H:].sigmoid_()                          # o_t = sigmoid(z^o_t)
        i, f, g, o = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
        c = cs[t]
        torch.mul(f, c_prev, out=c)
        c.addcmul_(i, g)                                 # c_t = f_t * c_{t-1} + i_t * g_t
        torch.tanh(c, out=tanh_cs[t])
        h = hs[t]
        torch.mul(o, tanh_cs[t], out=h)                  # h_t = o_t * tanh(c_t)
        c_prev = c
    cache = (x, h0, c0, gates, cs, tanh_cs, hs, weight_ih, weight_hh,
             bias_ih is not None, bias_hh is not None)
    return hs, (hs[-1], cs[-1]), cache


def backward(
    dhs: torch.Tensor | None,
    dstate_n: tuple[torch.Tensor | None, torch.Tensor | None] | None,
    cache: tuple,
    truncate: int | None = None,
    need_dx: bool = True,
) -> tuple[torch.Tensor | None, tuple[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]:
    """BPTT from upstream gradients on every output ``dhs`` (T, B, H) and on ``(h_n, c_n)``.

    ``dhs`` and ``dstate_n`` may be None, and so may either of ``(dh_n, dc_n)``.
    Returns ``(dx, (dh0, dc0), grads)``: dx (T, B, I) (None for token-id input or when not
    ``need_dx``), and grads with keys ``weight_ih, weight_hh`` (+ the biases the layer has).
    ``truncate=k`` cuts both the h and the c path after k recurrent steps.
    """
    (x, h0, c0, gates, cs, tanh_cs, hs, weight_ih, weight_hh,
     has_bias_ih, has_bias_hh) = cache
    check_truncate(truncate)
    T, B, H = hs.shape
    dh_n, dc_n = (None, None) if dstate_n is None else dstate_n

    # the factors of (2)-(6) for every step at once
    i, f, g, o = gates[..., :H], gates[..., H:2 * H], gates[..., 2 * H:3 * H], gates[..., 3 * H:]
    f = f.contiguous()
    k_c = o * (1.0 - tanh_cs * tanh_cs)                  # o_t (1 - tanh(c_t)^2)          (2)
    coef = gates.new_empty((T, B, GATES, H))
    torch.mul(g, i * (1.0 - i), out=coef[:, :, 0])       # g_t i_t (1 - i_t)              (3)
    torch.mul(shifted(c0, cs), f * (1.0 - f), out=coef[:, :, 1])  # c_{t-1} f_t (1 - f_t) (4)
    torch.mul(i, 1.0 - g * g, out=coef[:, :, 2])         # i_t (1 - g_t^2)                (5)
    torch.mul(tanh_cs, o * (1.0 - o), out=coef[:, :, 3])  # tanh(c_t) o_t (1 - o_t)       (6)

    def step(t: int, dstate: tuple, gz: torch.Tensor) -> None:
        dh, dc = dstate                                  # (A, B, H): dh_t, dc_{t+1} f_{t+1}
        dc.addcmul_(dh, k_c[t])                          # dc_t                           (2)
        gz4 = gz.view(*gz.shape[:2], GATES, H)
        torch.mul(dc.unsqueeze(2), coef[t, :, :3], out=gz4[:, :, :3])  # dz^i, dz^f, dz^g (3-5)
        torch.mul(dh, coef[t, :, 3], out=gz4[:, :, 3])   # dz^o_t                         (6)
        torch.mm(gz.view(-1, GATES * H), weight_hh, out=dh.view(-1, H))  # dz_t W_hh     (1)
        dc.mul_(f[t])                                    # dc_t f_t, for step t-1         (2)

    dz, (dh0, dc0) = bptt_loop(step, dhs, (dh_n, dc_n), hs, GATES * H, truncate)

    grads = {"weight_hh": recurrent_weight_grad(dz, hs, h0)}  # dW_hh = sum dz_t^T h_{t-1} (7)
    dx, grads["weight_ih"] = project_inputs_backward(dz, x, weight_ih, need_dx)  # (8), (10)
    if has_bias_ih or has_bias_hh:
        db = dz.sum(dim=(0, 1))                          # db_ih = db_hh = sum_t sum_b dz_t (9)
        if has_bias_ih:
            grads["bias_ih"] = db
        if has_bias_hh:
            grads["bias_hh"] = db.clone() if has_bias_ih else db
    return dx, (dh0, dc0), grads
