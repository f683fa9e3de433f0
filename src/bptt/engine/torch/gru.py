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

Packed sequences (``batch_sizes``, :mod:`bptt.engine.stack`): step t runs the first b_t rows
only; h_n holds each sequence's state at its own last step.

Symbols: T steps, B batch, I input size, H hidden size.
  x       (T, B, I) float, or (T, B) int64 token ids (one-hot input; projected as a gather)
  state0  None (zeros) or the tuple (h0,), h0 (B, H) or None (zeros)
  hs      (T, B, H): every hidden state; hs[-1] is h_n (for packed sequences, each one's last)
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ...cells import GRU as KIND
from ..layout import check_batch_sizes, check_gate_weights, per_step, prev_rows
from ..recursion import bptt_loop, effective_truncate
from .common import (
    OPS,
    check_sequence,
    check_state_parts,
    final_rows,
    input_step,
    linear,
    linear_add,
    new_steps,
    pack,
    project_inputs,
    project_inputs_backward,
    recurrent_weight_grad,
    shifted,
    tanh_into,
)

GATES = KIND.num_gates
PRECISIONS = ("fp32",)
"""The torch engine's precisions this cell implements (``bptt.engine.torch.stack``)."""


class Cache(NamedTuple):
    """What :func:`forward` keeps for :func:`backward`."""

    x: torch.Tensor            # (T, B, I) floats or (T, B) int64 token ids
    h0: torch.Tensor           # (B, H)
    gates: torch.Tensor        # (T, B, 3H): [r_t | u_t | n_t], after their activations
    s_all: torch.Tensor        # (T, B, 3H): s_t = h_{t-1} W_hh^T + b_hh
    hs: torch.Tensor           # (T, B, H): h_t
    weight_ih: torch.Tensor    # (3H, I)
    weight_hh: torch.Tensor    # (3H, H)
    has_bias_ih: bool
    has_bias_hh: bool
    batch_sizes: tuple | None  # packed sequences: b_t running at step t (None: all B)


def forward(
    x: torch.Tensor,
    state0: tuple[torch.Tensor | None] | None,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None = None,
    bias_hh: torch.Tensor | None = None,
    batch_sizes: tuple[int, ...] | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor], Cache]:
    """Run the layer over ``x``; return ``(hs, (h_n,), cache)`` with hs (T, B, H), h_n (B, H).

    ``batch_sizes``: packed sequences (the module docstring)."""
    H = check_gate_weights(KIND, weight_ih, weight_hh, bias_ih, bias_hh)
    T, B = check_sequence(x, weight_ih.shape[1])
    check_batch_sizes(batch_sizes, T, B)
    (h0,) = check_state_parts(KIND, state0, B, weight_hh)

    gates = project_inputs(x, weight_ih, bias_ih)        # (T, B, 3H): a_t = x_t W_ih^T + b_ih
    s_all = new_steps(weight_hh, (T, B, GATES * H), batch_sizes)  # s_t for every t
    hs = new_steps(weight_hh, (T, B, H), batch_sizes)
    a, s, h = (per_step(v, batch_sizes) for v in (gates, s_all, hs))
    h_prev = prev_rows(h0, h, batch_sizes)
    w_hh = pack(weight_hh, B, T)                         # reordered once for all T steps
    for t in range(T):
        _cell(a[t], s[t], h_prev[t], w_hh, bias_hh, out=h[t])
    cache = Cache(x=x, h0=h0, gates=gates, s_all=s_all, hs=hs, weight_ih=weight_ih,
                  weight_hh=weight_hh, has_bias_ih=bias_ih is not None,
                  has_bias_hh=bias_hh is not None, batch_sizes=batch_sizes)
    return hs, (final_rows(hs, batch_sizes),), cache


def _cell(a: torch.Tensor, s: torch.Tensor, h: torch.Tensor, w_hh: torch.Tensor,
          bias_hh: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """One step in place, returning ``out``: ``a`` (B, 3H) holds a_t and becomes
    [r_t | u_t | n_t], ``s`` (B, 3H) receives s_t, ``out`` (B, H) receives h_t; ``w_hh`` is
    W_hh or its :func:`pack` (the product through oneDNN on the CPU: :mod:`.common`)."""
    H = h.shape[1]
    s.copy_(linear(h, w_hh, bias_hh))                    # s_t = h_{t-1} W_hh^T + b_hh
    a[:, :2 * H].add_(s[:, :2 * H]).sigmoid_()           # r_t, u_t = sigmoid(a_t + s_t) (r, z)
    r, u, n = a[:, :H], a[:, H:2 * H], a[:, 2 * H:]
    n.addcmul_(r, s[:, 2 * H:])
    tanh_into(n, n)                                      # n_t = tanh(a^n_t + r_t * s^n_t)
    torch.sub(h, n, out=out)
    return out.mul_(u).add_(n)                           # h_t = n_t + u_t * (h_{t-1} - n_t)


def step(x: torch.Tensor, state: tuple[torch.Tensor], weight_ih: torch.Tensor,
         weight_hh: torch.Tensor, bias_ih: torch.Tensor | None = None,
         bias_hh: torch.Tensor | None = None) -> tuple[torch.Tensor]:
    """One step, no checks and no cache (generation): (h_t,) from x_t (B,) int64 token ids or
    (B, I) features and (h_{t-1},), (B, H); the operations of one step of :func:`forward`."""
    (h,) = state
    a = input_step(x, weight_ih, bias_ih)                # a_t = x_t W_ih^T + b_ih
    s = a.new_empty(a.shape)
    return (_cell(a, s, h, weight_hh, bias_hh, out=h.new_empty(h.shape)),)


def _factors(cache: Cache):
    """da_t = dh_t * K_t and ds_t = dh_t * Ks_t: the factors for every step at once,
    ``(K, Ks)`` (T, B, 3, H) each."""
    gates, hs = cache.gates, cache.hs
    T, B, GH = gates.shape
    H = GH // GATES
    r, u, n = gates[..., :H], gates[..., H:2 * H], gates[..., 2 * H:]
    K = gates.new_empty((T, B, GATES, H))
    k_n = K[:, :, 2]
    torch.mul(1.0 - u, 1.0 - n * n, out=k_n)             # (1 - u_t)(1 - n_t^2)            (2)
    h_prev = shifted(cache.h0, hs)
    torch.mul(h_prev - n, u * (1.0 - u), out=K[:, :, 1])  # (h_{t-1}-n_t) u_t(1-u_t)       (3)
    s_n = cache.s_all[..., 2 * H:]
    torch.mul(k_n, s_n * r * (1.0 - r), out=K[:, :, 0])  # .. s^n_t r_t(1-r_t)          (4)
    Ks = K.clone()
    Ks[:, :, 2].mul_(r)                                  # [.. | .. | (2) * r_t]           (5)
    return K, Ks


def backward(
    dhs: torch.Tensor | None,
    dstate_n: tuple[torch.Tensor | None] | None,
    cache: Cache,
    truncate: int | None = None,
    need_dx: bool = True,
) -> tuple[torch.Tensor | None, tuple[torch.Tensor], dict[str, torch.Tensor]]:
    """BPTT from upstream gradients on every output ``dhs`` (T, B, H) and on ``(h_n,)``.

    Either may be None (no gradient there). Returns ``(dx, (dh0,), grads)``: dx (T, B, I) (None
    for token-id input or when not ``need_dx``), dh0 (B, H), and grads with keys ``weight_ih,
    weight_hh`` (+ ``bias_ih``, ``bias_hh`` for the biases the layer has). ``truncate=k`` lets
    the loss at step t reach back through at most k recurrent steps.
    """
    gates, hs, h0, weight_hh = cache.gates, cache.hs, cache.h0, cache.weight_hh
    T, B, H = hs.shape
    bs = cache.batch_sizes
    r = gates[..., :H]
    Kt, Kst, u = (per_step(v, bs) for v in (*_factors(cache), gates[..., H:2 * H].contiguous()))
    k = effective_truncate(truncate, T)
    rows = (1 if k is None else k + 1) * B
    ds_buf = gates.new_empty((rows, GATES * H))
    w_hh_t = pack(weight_hh.t().contiguous(), rows, T)  # ds W_hh = ds (W_hh^T)^T, once

    def step(t: int, dstate: tuple, da_out: torch.Tensor, prev_out: tuple):
        (dh,) = dstate                                   # (A, b, H): dh_t by age          (1)
        b = dh.shape[1]
        dh4 = dh.unsqueeze(2)
        torch.mul(dh4, Kt[t], out=da_out.view(*dh4.shape[:2], GATES, H))  # da_t   (2)-(4)
        (dh_prev,) = prev_out
        ages = dh_prev.shape[0]
        if not ages:
            return None
        ds = ds_buf[:ages * b]
        torch.mul(dh4[:ages], Kst[t], out=ds.view(ages, b, GATES, H))  # ds_t             (5)
        through_u = (dh[:ages] * u[t]).view(-1, H)       # dh_t * u_t
        dh_new = linear_add(ds, w_hh_t, through_u)       # dh_{t-1} = ds_t W_hh + dh_t u_t (1)
        if k is None:                                    # the step's own array (no copy)
            return (dh_new.view(1, b, H),)
        dh_prev.copy_(dh_new.view(ages, b, H))
        return None

    dstate_n = check_state_parts(KIND, dstate_n, B, h0, names="d{}_n")
    da, dstate0 = bptt_loop(OPS, step, dhs, dstate_n, T, truncate, GATES * H, bs)
    ds = da.clone()
    ds[..., 2 * H:].mul_(r)                              # ds_t = [da^r | da^z | da^n r_t]  (5)

    grads = {"weight_hh": recurrent_weight_grad(ds, hs, h0)}  # dW_hh = sum ds_t^T h_{t-1} (6)
    dx, grads["weight_ih"] = project_inputs_backward(da, cache.x, cache.weight_ih,
                                                     need_dx)  # (7), (8)
    if cache.has_bias_ih:
        grads["bias_ih"] = da.sum(dim=(0, 1))            # db_ih = sum_t sum_b da_t        (7)
    if cache.has_bias_hh:
        grads["bias_hh"] = ds.sum(dim=(0, 1))            # db_hh = sum_t sum_b ds_t        (6)
    return dx, dstate0, grads
