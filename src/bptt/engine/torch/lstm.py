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

from typing import NamedTuple

import torch

from ...cells import LSTM as KIND
from .. import kernel
from ..layout import check_gate_weights, sum_biases
from ..recursion import bptt_loop, effective_truncate
from .common import (
    OPS,
    PRECISIONS,  # noqa: F401 (the precisions this cell implements: bptt.engine.torch.stack)
    check_sequence,
    check_state_parts,
    input_step,
    kernel_views,
    linear,
    low_dtype,
    pack,
    project_inputs,
    project_inputs_backward,
    recurrent_weight_grad,
    shifted,
)

GATES = KIND.num_gates


class Cache(NamedTuple):
    """What :func:`forward` keeps for :func:`backward`."""

    x: torch.Tensor            # (T, B, I) floats or (T, B) int64 token ids
    h0: torch.Tensor           # (B, H)
    c0: torch.Tensor           # (B, H)
    gates: torch.Tensor        # (T, B, 4H): [i_t | f_t | g_t | o_t], after their activations
    cs: torch.Tensor           # (T, B, H): c_t
    tanh_cs: torch.Tensor      # (T, B, H): tanh(c_t)
    hs: torch.Tensor           # (T, B, H): h_t
    weight_ih: torch.Tensor    # (4H, I)
    weight_hh: torch.Tensor    # (4H, H)
    has_bias_ih: bool
    has_bias_hh: bool
    precision: str = "fp32"    # fp32 | bf16: the products' operands


def forward(
    x: torch.Tensor,
    state0: tuple[torch.Tensor | None, torch.Tensor | None] | None,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None = None,
    bias_hh: torch.Tensor | None = None,
    precision: str = "fp32",
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], Cache]:
    """Run the layer over ``x``; return ``(hs, (h_n, c_n), cache)``, hs (T, B, H)."""
    low = low_dtype(precision)
    H = check_gate_weights(KIND, weight_ih, weight_hh, bias_ih, bias_hh)
    T, B = check_sequence(x, weight_ih.shape[1])
    h0, c0 = check_state_parts(KIND, state0, B, weight_hh)

    # x_t W_ih^T + b, all t
    gates = project_inputs(x, weight_ih, sum_biases(bias_ih, bias_hh), precision)
    hs = weight_hh.new_empty((T, B, H))
    cs = weight_hh.new_empty((T, B, H))
    tanh_cs = weight_hh.new_empty((T, B, H))
    views = kernel_views(gates, h0, hs, c0, cs, tanh_cs, weight_hh, precision=precision)
    if views is not None:                                # the loop below, compiled
        g, h0v, hsv, c0v, csv, tcv, w = views
        kernel.forward(KIND, g, h0v, hsv, w, c0=c0v, cs=csv, tanh_cs=tcv, precision=precision)
    else:
        w = weight_hh.t() if low is None else pack(weight_hh.to(low), B)
        h, c = h0, c0
        for t in range(T):
            h, c = _cell(gates[t], h, c, w, low, out=(hs[t], cs[t], tanh_cs[t]))
    cache = Cache(x=x, h0=h0, c0=c0, gates=gates, cs=cs, tanh_cs=tanh_cs, hs=hs,
                  weight_ih=weight_ih, weight_hh=weight_hh, has_bias_ih=bias_ih is not None,
                  has_bias_hh=bias_hh is not None, precision=precision)
    return hs, (hs[-1], cs[-1]), cache


def _cell(z: torch.Tensor, h: torch.Tensor, c_prev: torch.Tensor, w: torch.Tensor,
          low: torch.dtype | None, out: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """One step in place, returning ``(h_t, c_t)``: ``z`` (B, 4H) holds x_t W_ih^T + b and
    becomes [i_t | f_t | g_t | o_t]; ``out`` = (h_t, c_t, tanh(c_t)) (B, H) each, written;
    ``w`` is W_hh^T, or with ``low`` (bf16) W_hh in bfloat16 (:func:`common.pack` of it)."""
    H = h.shape[1]
    h_new, c, tanh_c = out
    if low is None:
        z.addmm_(h, w)                                   # z_t = x_t W_ih^T + b + h_{t-1} W_hh^T
    else:
        z.add_(linear(h.to(low), w))                     # the same on bfloat16 operands
    z[:, :2 * H].sigmoid_()                              # i_t, f_t = sigmoid(z^i_t, z^f_t)
    z[:, 2 * H:3 * H].tanh_()                            # g_t = tanh(z^g_t)
    z[:, 3 * H:].sigmoid_()                              # o_t = sigmoid(z^o_t)
    i, f, g, o = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
    torch.mul(f, c_prev, out=c)
    c.addcmul_(i, g)                                     # c_t = f_t * c_{t-1} + i_t * g_t
    torch.tanh(c, out=tanh_c)
    torch.mul(o, tanh_c, out=h_new)                      # h_t = o_t * tanh(c_t)
    return h_new, c


def step(x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor], weight_ih: torch.Tensor,
         weight_hh: torch.Tensor, bias_ih: torch.Tensor | None = None,
         bias_hh: torch.Tensor | None = None,
         precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """One step, no checks and no cache (generation): (h_t, c_t) from x_t (B,) int64 token ids
    or (B, I) features and (h_{t-1}, c_{t-1}), (B, H) each; the operations of one step of
    :func:`forward`."""
    h, c = state
    low = low_dtype(precision)
    z = input_step(x, weight_ih, sum_biases(bias_ih, bias_hh), precision)  # x_t W_ih^T + b
    w = weight_hh.t() if low is None else weight_hh.to(low)
    return _cell(z, h, c, w, low, out=tuple(h.new_empty(h.shape) for _ in range(3)))


def _factors(cache: Cache):
    """The factors of (2)-(6) that do not depend on the incoming gradient, for every step at
    once: ``(k_c (T, B, H), coef (T, B, 4, H), f (T, B, H))``."""
    gates, tanh_cs = cache.gates, cache.tanh_cs
    T, B, GH = gates.shape
    H = GH // GATES
    i, f, g, o = gates[..., :H], gates[..., H:2 * H], gates[..., 2 * H:3 * H], gates[..., 3 * H:]
    f = f.contiguous()
    k_c = o * (1.0 - tanh_cs * tanh_cs)                  # o_t (1 - tanh(c_t)^2)          (2)
    coef = gates.new_empty((T, B, GATES, H))
    torch.mul(g, i * (1.0 - i), out=coef[:, :, 0])       # g_t i_t (1 - i_t)              (3)
    c_prev = shifted(cache.c0, cache.cs)
    torch.mul(c_prev, f * (1.0 - f), out=coef[:, :, 1])  # c_{t-1} f_t (1 - f_t)          (4)
    torch.mul(i, 1.0 - g * g, out=coef[:, :, 2])         # i_t (1 - g_t^2)                (5)
    torch.mul(tanh_cs, o * (1.0 - o), out=coef[:, :, 3])  # tanh(c_t) o_t (1 - o_t)       (6)
    return k_c, coef, f


def backward(
    dhs: torch.Tensor | None,
    dstate_n: tuple[torch.Tensor | None, torch.Tensor | None] | None,
    cache: Cache,
    truncate: int | None = None,
    need_dx: bool = True,
) -> tuple[torch.Tensor | None, tuple[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]:
    """BPTT from upstream gradients on every output ``dhs`` (T, B, H) and on ``(h_n, c_n)``.

    ``dhs`` and ``dstate_n`` may be None, and so may either of ``(dh_n, dc_n)``.
    Returns ``(dx, (dh0, dc0), grads)``: dx (T, B, I) (None for token-id input or when not
    ``need_dx``), and grads with keys ``weight_ih, weight_hh`` (+ the biases the layer has).
    ``truncate=k`` cuts both the h and the c path after k recurrent steps.
    """
    T, B, H = cache.hs.shape
    prec, low = cache.precision, low_dtype(cache.precision)

    def step(t: int, dstate: tuple, dz_out: torch.Tensor, prev_out: tuple) -> None:
        dh, dc = dstate                                  # (A, B, H): dh_t, dc_{t+1} f_{t+1}
        dc.addcmul_(dh, k_c[t])                          # dc_t                           (2)
        dz4 = dz_out.view(*dz_out.shape[:2], GATES, H)
        torch.mul(dc.unsqueeze(2), coef[t, :, :3], out=dz4[:, :, :3])  # dz^i, dz^f, dz^g (3-5)
        torch.mul(dh, coef[t, :, 3], out=dz4[:, :, 3])   # dz^o_t                         (6)
        dh_prev, dc_prev = prev_out
        K = dh_prev.shape[0]
        if K and low is None:
            torch.mm(dz_out[:K].view(-1, GATES * H), w,
                     out=dh_prev.view(-1, H))            # dh_{t-1} = dz_t W_hh           (1)
        elif K:                                          # the same on bfloat16 operands  (1)
            dh_prev.view(-1, H).copy_(linear(dz_out[:K].reshape(-1, GATES * H).to(low), w))
        if K:
            torch.mul(dc[:K], f[t], out=dc_prev)         # dc_t f_t, for step t-1         (2)

    dstate_n = check_state_parts(KIND, dstate_n, B, cache.h0, names="d{}_n")
    dz, dstate0 = None, None
    if effective_truncate(truncate, T) is None:
        dz, dstate0 = _compiled_loop(cache, dhs, dstate_n)  # the same steps, compiled
    if dz is None:
        k_c, coef, f = _factors(cache)                   # read by step, as w
        w = (cache.weight_hh if low is None
             else pack(cache.weight_hh.t().contiguous().to(low), B))
        dz, dstate0 = bptt_loop(OPS, step, dhs, dstate_n, T, truncate, GATES * H)

    hs, h0 = cache.hs, cache.h0
    # dW_hh = sum dz_t^T h_{t-1} (7)
    grads = {"weight_hh": recurrent_weight_grad(dz, hs, h0, prec)}
    dx, grads["weight_ih"] = project_inputs_backward(dz, cache.x, cache.weight_ih, need_dx,
                                                     prec)  # (8), (10)
    if cache.has_bias_ih or cache.has_bias_hh:
        db = dz.sum(dim=(0, 1))                          # db_ih = db_hh = sum_t sum_b dz_t (9)
        if cache.has_bias_ih:
            grads["bias_ih"] = db
        if cache.has_bias_hh:
            grads["bias_hh"] = db.clone() if cache.has_bias_ih else db
    return dx, dstate0, grads


def _compiled_loop(cache: Cache, dhs: torch.Tensor | None, dstate_n: tuple):
    """The backward recursion without truncation in the compiled kernel (the steps of
    :func:`backward`'s ``step``, fused): ``(dz (T, B, 4H), (dh0, dc0))``, or ``(None, None)``
    where the kernel does not compute on these tensors (CUDA, a dtype, no kernel)."""
    T, B, H = cache.hs.shape
    dz = cache.gates.new_empty((T, B, GATES * H))
    dh, dc = (d.detach().to(dz.dtype, copy=True).contiguous() for d in dstate_n)
    views = kernel_views(cache.gates, cache.h0, cache.hs, cache.c0, cache.cs, cache.tanh_cs,
                         cache.weight_hh, dz, dh, dc,
                         None if dhs is None else dhs.contiguous(), precision=cache.precision)
    if views is None:
        return None, None
    g, h0, hs, c0, cs, tc, w, dzv, dhv, dcv, dhsv = views
    kernel.backward(KIND, w, dz=dzv, carry_h=dhv, carry_c=dcv, gates=g, h0=h0, hs=hs, c0=c0,
                    cs=cs, tanh_cs=tc, dhs=dhsv, precision=cache.precision)
    return dz, (dh, dc)
