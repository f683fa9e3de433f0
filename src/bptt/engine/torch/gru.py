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

The compiled kernel (:mod:`bptt.engine.kernel`) runs the loops over time -- the same equations,
every step's product and gates fused -- where it covers the layer: CPU float32/float64 tensors,
no packed sequences, and (backward) no truncation; this Python code runs the rest. Precision
``bf16``: every matrix product on bfloat16 operands with float32 accumulation; states, gates,
gradients and weights stay float32.

Symbols: T steps, B batch, I input size, H hidden size.
  x       (T, B, I) float, or (T, B) int64 token ids (one-hot input; projected as a gather)
  state0  None (zeros) or the tuple (h0,), h0 (B, H) or None (zeros)
  hs      (T, B, H): every hidden state; hs[-1] is h_n (for packed sequences, each one's last)
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ...cells import GRU as KIND
from .. import kernel
from ..layout import check_batch_sizes, check_gate_weights, per_step, prev_rows
from ..recursion import bptt_loop, effective_truncate
from .common import (
    OPS,
    PRECISIONS,  # noqa: F401 (the precisions this cell implements: bptt.engine.torch.stack)
    check_sequence,
    check_state_parts,
    final_rows,
    input_step,
    kernel_views,
    linear,
    low_dtype,
    new_steps,
    pack,
    project_inputs,
    project_inputs_backward,
    recurrent_weight_grad,
    shifted,
    step_linear_add,
    tanh_into,
)

GATES = KIND.num_gates


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
    precision: str = "fp32"    # fp32 | bf16: the products' operands


def forward(
    x: torch.Tensor,
    state0: tuple[torch.Tensor | None] | None,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None = None,
    bias_hh: torch.Tensor | None = None,
    batch_sizes: tuple[int, ...] | None = None,
    precision: str = "fp32",
) -> tuple[torch.Tensor, tuple[torch.Tensor], Cache]:
    """Run the layer over ``x``; return ``(hs, (h_n,), cache)`` with hs (T, B, H), h_n (B, H).

    ``batch_sizes``: packed sequences (the module docstring)."""
    low = low_dtype(precision)
    H = check_gate_weights(KIND, weight_ih, weight_hh, bias_ih, bias_hh)
    T, B = check_sequence(x, weight_ih.shape[1])
    check_batch_sizes(batch_sizes, T, B)
    (h0,) = check_state_parts(KIND, state0, B, weight_hh)

    # (T, B, 3H): a_t = x_t W_ih^T + b_ih
    gates = project_inputs(x, weight_ih, bias_ih, precision)
    s_all = new_steps(weight_hh, (T, B, GATES * H), batch_sizes)  # s_t for every t
    hs = new_steps(weight_hh, (T, B, H), batch_sizes)
    views = None
    if batch_sizes is None:
        views = kernel_views(gates, h0, hs, weight_hh, s_all, bias_hh, precision=precision)
    if views is not None:                                # the loop below, compiled
        g, h0v, hsv, w, sv, bh = views
        kernel.forward(KIND, g, h0v, hsv, w, b_hh=bh, s=sv, precision=precision)
    else:
        a, s, h = (per_step(v, batch_sizes) for v in (gates, s_all, hs))
        h_prev = prev_rows(h0, h, batch_sizes)
        w_hh = pack(weight_hh if low is None else weight_hh.to(low), B, T)  # reordered once
        for t in range(T):
            _cell(a[t], s[t], h_prev[t], w_hh, bias_hh, out=h[t], low=low)
    cache = Cache(x=x, h0=h0, gates=gates, s_all=s_all, hs=hs, weight_ih=weight_ih,
                  weight_hh=weight_hh, has_bias_ih=bias_ih is not None,
                  has_bias_hh=bias_hh is not None, batch_sizes=batch_sizes, precision=precision)
    return hs, (final_rows(hs, batch_sizes),), cache


def _cell(a: torch.Tensor, s: torch.Tensor, h: torch.Tensor, w_hh: torch.Tensor,
          bias_hh: torch.Tensor | None, out: torch.Tensor,
          low: torch.dtype | None = None) -> torch.Tensor:
    """One step in place, returning ``out``: ``a`` (B, 3H) holds a_t and becomes
    [r_t | u_t | n_t], ``s`` (B, 3H) receives s_t, ``out`` (B, H) receives h_t; ``w_hh`` is
    W_hh or its :func:`pack` (the product through oneDNN on the CPU: :mod:`.common`); ``low``
    (bf16): ``w_hh`` in bfloat16, the product on bfloat16 operands."""
    H = h.shape[1]
    if low is None:
        s.copy_(linear(h, w_hh, bias_hh))                # s_t = h_{t-1} W_hh^T + b_hh
    else:                                                # the same on bfloat16 operands
        s.copy_(linear(h.to(low), w_hh))
        if bias_hh is not None:
            s.add_(bias_hh)
    a[:, :2 * H].add_(s[:, :2 * H]).sigmoid_()           # r_t, u_t = sigmoid(a_t + s_t) (r, z)
    r, u, n = a[:, :H], a[:, H:2 * H], a[:, 2 * H:]
    n.addcmul_(r, s[:, 2 * H:])
    tanh_into(n, n)                                      # n_t = tanh(a^n_t + r_t * s^n_t)
    torch.sub(h, n, out=out)
    return out.mul_(u).add_(n)                           # h_t = n_t + u_t * (h_{t-1} - n_t)


def step(x: torch.Tensor, state: tuple[torch.Tensor], weight_ih: torch.Tensor,
         weight_hh: torch.Tensor, bias_ih: torch.Tensor | None = None,
         bias_hh: torch.Tensor | None = None, precision: str = "fp32") -> tuple[torch.Tensor]:
    """One step, no checks and no cache (generation): (h_t,) from x_t (B,) int64 token ids or
    (B, I) features and (h_{t-1},), (B, H); the operations of one step of :func:`forward`."""
    (h,) = state
    low = low_dtype(precision)
    a = input_step(x, weight_ih, bias_ih, precision)     # a_t = x_t W_ih^T + b_ih
    s = a.new_empty(a.shape)
    w = weight_hh if low is None else weight_hh.to(low)
    return (_cell(a, s, h, w, bias_hh, out=h.new_empty(h.shape), low=low),)


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
    bs, low = cache.batch_sizes, low_dtype(cache.precision)
    k = effective_truncate(truncate, T)
    dstate_n = check_state_parts(KIND, dstate_n, B, h0, names="d{}_n")
    if k is None and bs is None:
        da, ds, dstate0 = _compiled_loop(cache, dhs, dstate_n)  # the steps below, compiled
        if da is not None:
            return _grads(cache, da, ds, dstate0, need_dx)
    r = gates[..., :H]
    Kt, Kst, u = (per_step(v, bs) for v in (*_factors(cache), gates[..., H:2 * H].contiguous()))
    rows = (1 if k is None else k + 1) * B
    ds_buf = gates.new_empty((rows, GATES * H))
    w_hh_t = weight_hh.t().contiguous()                  # ds W_hh = ds (W_hh^T)^T, once
    w_hh_t = pack(w_hh_t if low is None else w_hh_t.to(low), rows, T)

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
        dh_new = step_linear_add(ds, w_hh_t, through_u, low)  # dh_{t-1} = ds_t W_hh + dh_t u_t (1)
        if k is None:                                    # the step's own array (no copy)
            return (dh_new.view(1, b, H),)
        dh_prev.copy_(dh_new.view(ages, b, H))
        return None

    da, dstate0 = bptt_loop(OPS, step, dhs, dstate_n, T, truncate, GATES * H, bs)
    ds = da.clone()
    ds[..., 2 * H:].mul_(r)                              # ds_t = [da^r | da^z | da^n r_t]  (5)
    return _grads(cache, da, ds, dstate0, need_dx)


def _grads(cache: Cache, da: torch.Tensor, ds: torch.Tensor, dstate0: tuple, need_dx: bool):
    """(6)-(8) after the loop: ``(dx, dstate0, grads)``, one product each."""
    prec = cache.precision
    # dW_hh = sum ds_t^T h_{t-1} (6)
    grads = {"weight_hh": recurrent_weight_grad(ds, cache.hs, cache.h0, prec)}
    dx, grads["weight_ih"] = project_inputs_backward(da, cache.x, cache.weight_ih,
                                                     need_dx, prec)  # (7), (8)
    if cache.has_bias_ih:
        grads["bias_ih"] = da.sum(dim=(0, 1))            # db_ih = sum_t sum_b da_t        (7)
    if cache.has_bias_hh:
        grads["bias_hh"] = ds.sum(dim=(0, 1))            # db_hh = sum_t sum_b ds_t        (6)
    return dx, dstate0, grads


def _compiled_loop(cache: Cache, dhs: torch.Tensor | None, dstate_n: tuple):
    """The backward recursion without truncation in the compiled kernel (the steps of
    :func:`backward`'s ``step``, fused): ``(da, ds (T, B, 3H), (dh0,))``, or Nones where the
    kernel does not compute on these tensors (CUDA, a dtype, no kernel)."""
    da = torch.empty_like(cache.gates)
    ds = torch.empty_like(cache.gates)
    dh = dstate_n[0].detach().to(da.dtype, copy=True).contiguous()
    H = cache.hs.shape[2]
    views = kernel_views(cache.gates, cache.h0, cache.hs, cache.s_all, cache.weight_hh, da, ds,
                         dh, None if dhs is None else dhs.contiguous(),
                         precision=cache.precision)
    if views is None:
        return None, None, None
    g, h0, hs, s_all, w, dav, dsv, dhv, dhsv = views
    kernel.backward(KIND, w, dz=dav, ds=dsv, carry_h=dhv, gates=g, h0=h0, hs=hs,
                    s_n=s_all[:, :, 2 * H:], dhs=dhsv, precision=cache.precision)
    return da, ds, (dh,)
