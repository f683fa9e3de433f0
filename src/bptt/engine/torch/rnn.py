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
computes f'(z_t) for all steps at once, then (without truncation) folds it into the recursion:
with u_t = dL/dh_t * f'(z_t) for every t at once, left in dz_t for the step to read, (1)-(2)
become

    dz_t = u_t + (dz_{t+1} W_hh) * f'(z_t)

one ``addcmul_`` and one product per step (the shared recursion,
:class:`bptt.engine.recursion.Recursion`); (3)-(5) are single products after the loop.

Precision ``bf16`` (the torch engine's ``precision="bf16"``): every matrix product -- the
recurrent h_{t-1} W_hh^T and dz_t W_hh per step, the weight gradients, a float input's
projection -- takes bfloat16 operands (the weights converted once per call, the states kept in a
bfloat16 copy written once per step), accumulates in float32 inside oneDNN and returns bfloat16,
which is added into float32. Everything else -- the states h_t, z_t, the gradients dz_t, the
master weights and their gradients -- stays float32.

Packed sequences (``batch_sizes``, :mod:`bptt.engine.stack`): step t runs the first b_t rows
only, in the forward loop and in the recursion; h_n holds each sequence's state at its own last
step.

Symbols: T steps, B batch, I input size, H hidden size.
  x       (T, B, I) float, or (T, B) int64 token ids (one-hot input; projected as a gather)
  state0  None (zeros) or the tuple (h0,), h0 (B, H) or None (zeros)
  hs      (T, B, H): every hidden state; hs[-1] is h_n (for packed sequences, each one's last)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from ...cells import RNN as KIND
from .. import kernel
from ..layout import check_batch_sizes, check_gate_weights, per_step, prev_rows, sum_biases
from ..recursion import Recursion, effective_truncate
from .common import (
    OPS,
    PRECISIONS,  # noqa: F401 (the precisions this cell implements: bptt.engine.torch.stack)
    check_nonlinearity,
    check_sequence,
    check_state_parts,
    final_rows,
    kernel_views,
    linear,
    linear_add,
    low_dtype,
    matmul,
    numpy_view,
    pack,
    project_inputs,
    project_inputs_backward,
    tanh_into,
)

GATES = KIND.num_gates


class Cache(NamedTuple):
    """What :func:`forward` keeps for :func:`backward`."""

    x: torch.Tensor                    # (T, B, I) floats or (T, B) int64 token ids
    h0: torch.Tensor                   # (B, H)
    hs: torch.Tensor                   # (T, B, H): h_t
    weight_ih: torch.Tensor            # (H, I)
    weight_hh: torch.Tensor            # (H, H)
    has_bias_ih: bool
    has_bias_hh: bool
    nonlinearity: str                  # tanh | relu
    precision: str                     # fp32 | bf16
    states_low: torch.Tensor | None    # bf16: (T + 1, B, H), [h0, h_0 .. h_{T-1}] in bfloat16
    batch_sizes: tuple | None          # packed sequences: b_t running at step t (None: all B)


def forward(
    x: torch.Tensor,
    state0: tuple[torch.Tensor | None] | None,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None = None,
    bias_hh: torch.Tensor | None = None,
    nonlinearity: str = "tanh",
    precision: str = "fp32",
    batch_sizes: tuple[int, ...] | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor], Cache]:
    """Run the layer over ``x``; return ``(hs, (h_n,), cache)`` with hs (T, B, H), h_n (B, H).

    ``batch_sizes``: packed sequences (the module docstring)."""
    check_nonlinearity(nonlinearity)
    low = low_dtype(precision)
    check_gate_weights(KIND, weight_ih, weight_hh, bias_ih, bias_hh)
    T, B = check_sequence(x, weight_ih.shape[1])
    check_batch_sizes(batch_sizes, T, B)
    (h0,) = check_state_parts(KIND, state0, B, weight_hh)
    bias = sum_biases(bias_ih, bias_hh)
    hs, states_low = None, None
    if batch_sizes is None:                              # the loop below, compiled
        hs = _compiled_forward(x, h0, weight_ih, weight_hh, bias, nonlinearity, precision)
    if hs is not None:
        pass                                             # the kernel ran the loop
    elif low is None:
        hs = _forward_fp32(x, h0, weight_ih, weight_hh, bias, nonlinearity, batch_sizes)
    else:
        hs, states_low = _forward_low(x, h0, weight_ih, weight_hh, bias, nonlinearity, low,
                                      batch_sizes)
    cache = Cache(x=x, h0=h0, hs=hs, weight_ih=weight_ih, weight_hh=weight_hh,
                  has_bias_ih=bias_ih is not None, has_bias_hh=bias_hh is not None,
                  nonlinearity=nonlinearity, precision=precision, states_low=states_low,
                  batch_sizes=batch_sizes)
    return hs, (final_rows(hs, batch_sizes),), cache


def _compiled_forward(x, h0, weight_ih, weight_hh, bias, nonlinearity: str, precision: str):
    """The states hs (T, B, H) by the compiled kernel (the loop of :func:`_forward_fp32`,
    fused), or None where it does not compute on these tensors."""
    if kernel_views(h0, weight_hh, precision=precision) is None:
        return None
    hs = project_inputs(x, weight_ih, bias, precision)   # x_t W_ih^T + b, all t
    hsv, h0v, w = kernel_views(hs, h0.contiguous(), weight_hh, precision=precision)
    kernel.forward(KIND, hsv, h0v, hsv, w, relu=nonlinearity == "relu", precision=precision)
    return hs


def _forward_fp32(x, h0, weight_ih, weight_hh, bias, nonlinearity: str,
                  batch_sizes: tuple | None) -> torch.Tensor:
    """The states hs (T, B, H) in the tensors' own dtype."""
    hs = project_inputs(x, weight_ih, bias)              # x_t W_ih^T + b, all t
    rows = per_step(hs, batch_sizes)                     # z = hs[t] (its running rows), views
    prevs = prev_rows(h0, rows, batch_sizes)             # h_{t-1}: h0, then rows of hs
    hs_np = numpy_view(hs) if nonlinearity == "tanh" else None  # NumPy's tanh (common.py)
    np_rows = None if hs_np is None else per_step(hs_np, batch_sizes)
    w_hh = pack(weight_hh, h0.shape[0], len(rows))     # reordered once for all T steps
    for t, (z, h) in enumerate(zip(rows, prevs, strict=True)):
        # z_t = x_t W_ih^T + b + h_{t-1} W_hh^T;  h_t = f(z_t), written into hs[t]
        r = linear_add(h, w_hh, z)
        r_np = None if hs_np is None else numpy_view(r)
        if r_np is not None:
            np.tanh(r_np, out=np_rows[t])
        elif nonlinearity == "tanh":
            torch.tanh(r, out=z)
        else:
            torch.clamp(r, min=0.0, out=z)               # relu
    return hs


def _forward_low(x, h0, weight_ih, weight_hh, bias, nonlinearity: str, low: torch.dtype,
                 batch_sizes: tuple | None):
    """precision bf16: the states hs (T, B, H) in float32 from bfloat16 products, and their
    bfloat16 copies [h0, h_0 .. h_{T-1}] (T + 1, B, H) for the weight gradient."""
    T, B = x.shape[:2]
    H = weight_hh.shape[1]
    if x.is_floating_point():                            # x_t W_ih^T + b: bf16 operands
        hs = torch.mm(x.reshape(T * B, -1).to(low), weight_ih.t().to(low)).float()
        hs = hs.view(T, B, H)
        if bias is not None:
            hs += bias
    else:
        hs = project_inputs(x, weight_ih, bias)          # a gather: no product
    w_low = pack(weight_hh.to(low), B, T)                # bf16, reordered once for all T steps
    new = hs.new_empty if batch_sizes is None else hs.new_zeros  # packed: padding rows zero
    states_low = new((T + 1, B, H), dtype=low)           # [h0, h_0 .. h_{T-1}] in bf16
    states_low[0].copy_(h0)
    rows = per_step(hs, batch_sizes)
    outs = per_step(states_low[1:], batch_sizes)         # the bf16 copy of h_t
    prevs = prev_rows(states_low[0], outs, batch_sizes)
    hs_np = numpy_view(hs) if nonlinearity == "tanh" else None
    np_rows = None if hs_np is None else per_step(hs_np, batch_sizes)
    for t, z in enumerate(rows):
        z.add_(linear(prevs[t], w_low))                  # z_t += h_{t-1} W_hh^T (bf16 product)
        if np_rows is not None:
            np.tanh(np_rows[t], out=np_rows[t])
        elif nonlinearity == "tanh":
            z.tanh_()
        else:
            z.relu_()
        outs[t].copy_(z)
    return hs, states_low


def step(x: torch.Tensor, state: tuple[torch.Tensor], weight_ih: torch.Tensor,
         weight_hh: torch.Tensor, bias_ih: torch.Tensor | None = None,
         bias_hh: torch.Tensor | None = None, nonlinearity: str = "tanh",
         precision: str = "fp32") -> tuple[torch.Tensor]:
    """One step, no checks and no cache (generation): (h_t,) from x_t and (h_{t-1},), (B, H).

    ``x`` is (B,) int64 token ids or (B, I) features; the operations of one step of
    :func:`forward`.
    """
    (h,) = state
    low = low_dtype(precision)
    if x.is_floating_point():
        if low is None:
            z = x.to(weight_ih.dtype) @ weight_ih.t()
        else:
            z = torch.mm(x.to(low), weight_ih.t().to(low)).float()
    else:                                                # one-hot x_t W_ih^T: a row gather
        z = torch.index_select(weight_ih.t(), 0, x.reshape(-1))
    bias = sum_biases(bias_ih, bias_hh)
    if bias is not None:
        z += bias
    if low is None:
        z.addmm_(h, weight_hh.t())
    else:
        z.add_(torch.mm(h.to(low), weight_hh.t().to(low)))
    return (tanh_into(z, z) if nonlinearity == "tanh" else z.relu_(),)


def _fprime(hs: torch.Tensor, nonlinearity: str) -> torch.Tensor:
    """f'(z_t) for every t at once, (T, B, H): 1 - h_t^2 (tanh) or [h_t > 0] (relu)."""
    if nonlinearity != "tanh":
        return (hs > 0).to(hs.dtype)                     # f'(z_t) = [h_t > 0]
    fprime = torch.empty_like(hs)                        # f'(z_t) = 1 - h_t^2
    f_np, hs_np = numpy_view(fprime), numpy_view(hs.detach())  # hs: a saved output
    if f_np is not None and hs_np is not None:          # CPU: NumPy, two passes instead of 3
        np.multiply(hs_np, hs_np, out=f_np)
        np.subtract(1.0, f_np, out=f_np)
    else:
        torch.mul(hs, hs, out=fprime).neg_().add_(1.0)
    return fprime


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
    the loss at step t reach back through at most k recurrent steps
    (:class:`bptt.engine.recursion.Recursion`).
    """
    hs, bs = cache.hs, cache.batch_sizes
    low = low_dtype(cache.precision)
    T, B, H = hs.shape
    k = effective_truncate(truncate, T)
    dstate_n = check_state_parts(KIND, dstate_n, B, cache.h0, names="d{}_n")
    if k is None and bs is None:
        dz, dh0 = _compiled_backward(cache, dhs, dstate_n)  # the loop below, compiled
        if dz is not None:
            grads, dx = _weight_grads(cache, dz, None, need_dx)
            return dx, (dh0,), grads
    fprime = _fprime(hs, cache.nonlinearity)
    # dz W_hh = dz (W_hh^T)^T: the products' weight is W_hh^T, reordered once for all steps
    K = 1 if k is None else max(k, 1)
    w_hh_t = cache.weight_hh.t().contiguous()
    w_hh_t = pack(w_hh_t if low is None else w_hh_t.to(low), K * B, T)
    rec = Recursion(OPS, dstate_n, T, k, H, bs)
    new = hs.new_empty if bs is None else hs.new_zeros  # packed: padding rows zero
    dz_low = None if low is None else new((T, B, H), dtype=low)  # bf16 rows of dz
    dz = torch.empty_like(hs)                            # ours: contiguous, whatever dhs is
    if k is None:
        # u_t = dL/dh_t * f'(z_t), left in dz_t;  dz_t = u_t + (dz_{t+1} W_hh) * f'(z_t)  (1, 2)
        if dhs is None:
            dz.zero_()
        else:
            torch.mul(dhs, fprime, out=dz)
        rec.run(_folded_step(dz, fprime, w_hh_t, dz_low, bs), None, dz)
    else:
        rec.run(_step(fprime, w_hh_t, low, bs), dhs, dz)
        if low is not None:
            dz_low = dz.to(low)
    grads, dx = _weight_grads(cache, dz, dz_low, need_dx)
    (dh0,) = rec.dstate0()
    return dx, (dh0.to(hs.dtype),), grads               # precision: the bf16 product, as float


def _compiled_backward(cache: Cache, dhs: torch.Tensor | None, dstate_n: tuple):
    """``(dz (T, B, H), dh0)`` by the compiled kernel (the recursion of :func:`_step`, fused),
    or ``(None, None)`` where it does not compute on these tensors."""
    dz = torch.empty_like(cache.hs)
    dh = dstate_n[0].detach().to(dz.dtype, copy=True).contiguous()
    views = kernel_views(cache.hs, cache.weight_hh, dz, dh,
                         None if dhs is None else dhs.contiguous(), precision=cache.precision)
    if views is None:
        return None, None
    hs, w, dzv, dhv, dhsv = views
    kernel.backward(KIND, w, dz=dzv, carry_h=dhv, hs=hs, dhs=dhsv,
                    relu=cache.nonlinearity == "relu", precision=cache.precision)
    return dz, dh


def _folded_step(dz: torch.Tensor, fprime: torch.Tensor, w_hh_t: torch.Tensor,
                 dz_low: torch.Tensor | None, batch_sizes: tuple | None):
    """The one-step backward without truncation (recursion contract, A = 1): dz_out, row t of
    ``dz``, holds u_t; it returns dh_{t-1}, the product itself (no copy). ``dz_low`` (bf16):
    the rows of dz in bfloat16, written as they are made."""
    fps = per_step(fprime, batch_sizes)                  # f'(z_t), (b_t, H) each
    rows = per_step(dz if dz_low is None else dz_low, batch_sizes)  # the products' operands

    def step(t: int, dstate: tuple, dz_out: torch.Tensor, prev_out: tuple) -> tuple:
        dz_out.addcmul_(dstate[0], fps[t])               # dz_t = u_t + dz_{t+1} W_hh * f'(z_t)
        if dz_low is not None:
            rows[t].copy_(dz_out[0])                     # precision: a bf16 copy of the row
        return (linear(rows[t], w_hh_t).unsqueeze(0),)   # dh_{t-1} = dz_t W_hh       (1)

    return step


def _step(fprime: torch.Tensor, w_hh_t: torch.Tensor, low: torch.dtype | None,
          batch_sizes: tuple | None):
    """The one-step backward (recursion contract) for every age at once (truncation)."""
    H = fprime.shape[2]
    fps = per_step(fprime, batch_sizes)                  # f'(z_t), (b_t, H) each

    def step(t: int, dstate: tuple, dz_out: torch.Tensor, prev_out: tuple) -> None:
        (dh,) = dstate                                   # (A, B, H): dh_t by age       (1)
        torch.mul(dh, fps[t], out=dz_out)                # dz_t = dh_t * f'(z_t)        (2)
        (dh_prev,) = prev_out
        K = dh_prev.shape[0]
        if K:                                            # dh_{t-1} = dz_t W_hh, ages 0..K-1
            g = dz_out[:K].reshape(-1, H)
            dh_prev.view(-1, H).copy_(linear(g if low is None else g.to(low), w_hh_t))

    return step


def _weight_grads(cache: Cache, dz: torch.Tensor, dz_low: torch.Tensor | None, need_dx: bool):
    """(3)-(6) after the loop: ``(grads, dx)``, one product each."""
    x, hs, weight_ih, prec = cache.x, cache.hs, cache.weight_ih, cache.precision
    T, B, H = hs.shape
    if dz_low is None or cache.states_low is None:      # (the kernel's forward keeps none)
        h_prev = torch.cat((cache.h0.unsqueeze(0), hs[:-1])).view(T * B, H)  # h_{t-1}, every t
        dz2 = dz.view(T * B, H)
        grads = {"weight_hh": matmul(dz2.t(), h_prev, prec)}  # dW_hh = sum dz_t^T h_{t-1} (3)
        dx, grads["weight_ih"] = project_inputs_backward(dz, x, weight_ih, need_dx,
                                                         prec)  # (4, 6)
    else:                                                # precision: bf16 operands
        low = dz_low.dtype
        dz_low = dz_low.view(T * B, H)
        states_low = cache.states_low
        grads = {"weight_hh": torch.mm(dz_low.t(), states_low[:-1].view(T * B, H)).float()}
        if x.is_floating_point():
            x_low = x.reshape(T * B, -1).to(low)
            grads["weight_ih"] = torch.mm(dz_low.t(), x_low).float()              # (4)
            dx = (torch.mm(dz_low, weight_ih.to(low)).float().view(T, B, -1)
                  if need_dx else None)                                            # (6)
        else:
            dx, grads["weight_ih"] = project_inputs_backward(dz, x, weight_ih, need_dx)
    if cache.has_bias_ih or cache.has_bias_hh:
        db = dz.sum(dim=(0, 1))                          # db_ih = db_hh = sum_t sum_b dz_t (5)
        if cache.has_bias_ih:
            grads["bias_ih"] = db
        if cache.has_bias_hh:
            grads["bias_hh"] = db.clone() if cache.has_bias_ih else db
    return grads, dx
