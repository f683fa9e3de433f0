r"""LSTM layer, one direction, on torch tensors: forward and its hand-written BPTT.

The same equations and structure as :mod:`bptt.engine.numpy.lstm` (torch's equations,
docs/bptt_lstm_gru.md, "LSTM"), gate slices of width H in torch's order i, f, g, o:

    z_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh         (B, 4H) = [z^i | z^f | z^g | z^o]
    i_t = sigmoid(z^i_t),  f_t = sigmoid(z^f_t),  g_t = tanh(z^g_t),  o_t = sigmoid(z^o_t)
    c_t = f_t * c_{t-1} + i_t * g_t
    m_t = o_t * tanh(c_t)                                    h_{-1} = h0,  c_{-1} = c0
    h_t = m_t W_hr^T   with a projection (torch's proj_size P < H: W_hr (P, H)), else h_t = m_t

Backward, with dh_t and dc_t the total gradients reaching h_t and c_t:

    (1) dh_t     = dL/dh_t + dz_{t+1} W_hh
    (11) dm_t    = dh_t W_hr   (with a projection; else dm_t = dh_t)
    (2) dc_t     = dc_{t+1} * f_{t+1} + dm_t * o_t * (1 - tanh(c_t)^2)
    (3) dz^i_t   = dc_t * g_t * i_t (1 - i_t)
    (4) dz^f_t   = dc_t * c_{t-1} * f_t (1 - f_t)
    (5) dz^g_t   = dc_t * i_t * (1 - g_t^2)
    (6) dz^o_t   = dm_t * tanh(c_t) * o_t (1 - o_t)
    (7) dW_hh    = sum_t dz_t^T h_{t-1}
    (8) dW_ih    = sum_t dz_t^T x_t
    (9) db_ih    = db_hh = sum_t sum_b dz_t
    (10) dx_t    = dz_t W_ih,     dh0 = dz_0 W_hh,     dc0 = dc_0 * f_0
    (12) dW_hr   = sum_t dh_t^T m_t

The factors of (2)-(6) that do not depend on the incoming gradient are computed for every step
at once before the backward loop, so each step is four element-wise kernels and one product
(two with a projection). For (12) a step also writes its dh_t beside its dz_t (the last P
columns of the recursion's rows, summed over ages like dz_t), so dW_hr is one product after the
loop.

Truncation (``truncate = k``): one transition is one step of the pair (h, c); both the h path
(through dz_t W_hh) and the c path (through dc_t * f_t) are cut together after k transitions.

Packed sequences (``batch_sizes``, :mod:`bptt.engine.stack`): step t runs the first b_t rows
only; (h_n, c_n) hold each sequence's state at its own last step.

The compiled kernel (:mod:`bptt.engine.kernel`) runs the loops over time -- the same equations,
every step's product and gates fused -- where it covers the layer: CPU float32/float64 tensors,
no projection, no packed sequences, and (backward) no truncation; this Python code runs the
rest. Precision ``bf16``: every matrix product on bfloat16 operands with float32 accumulation;
states, gates, gradients and weights stay float32.

Symbols: T steps, B batch, I input size, H hidden size, S the size of h: P with a projection,
else H.
  x       (T, B, I) float, or (T, B) int64 token ids (one-hot input; projected as a gather)
  state0  None (zeros) or the pair (h0, c0), (B, S) and (B, H), either None (zeros)
  hs      (T, B, S): every hidden state; hs[-1] is h_n (for packed sequences, each one's last)
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ...cells import LSTM as KIND
from .. import kernel
from ..layout import check_batch_sizes, check_gate_weights, per_step, prev_rows, sum_biases
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
    matmul,
    new_steps,
    pack,
    project_inputs,
    shared_gate_grads,
    shifted,
    step_linear_add,
    tanh_into,
)

GATES = KIND.num_gates


class Cache(NamedTuple):
    """What :func:`forward` keeps for :func:`backward`."""

    x: torch.Tensor            # (T, B, I) floats or (T, B) int64 token ids
    h0: torch.Tensor           # (B, S)
    c0: torch.Tensor           # (B, H)
    gates: torch.Tensor        # (T, B, 4H): [i_t | f_t | g_t | o_t], after their activations
    cs: torch.Tensor           # (T, B, H): c_t
    tanh_cs: torch.Tensor      # (T, B, H): tanh(c_t)
    hs: torch.Tensor           # (T, B, S): h_t
    ms: torch.Tensor           # (T, B, H): m_t = o_t * tanh(c_t) (hs itself without projection)
    weight_ih: torch.Tensor    # (4H, I)
    weight_hh: torch.Tensor    # (4H, S)
    weight_hr: torch.Tensor | None  # (P, H) with a projection
    has_bias_ih: bool
    has_bias_hh: bool
    batch_sizes: tuple | None  # packed sequences: b_t running at step t (None: all B)
    precision: str = "fp32"    # fp32 | bf16: the products' operands


def forward(
    x: torch.Tensor,
    state0: tuple[torch.Tensor | None, torch.Tensor | None] | None,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None = None,
    bias_hh: torch.Tensor | None = None,
    weight_hr: torch.Tensor | None = None,
    batch_sizes: tuple[int, ...] | None = None,
    precision: str = "fp32",
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], Cache]:
    """Run the layer over ``x``; return ``(hs, (h_n, c_n), cache)``, hs (T, B, S).

    ``weight_hr`` (P, H): the projection; ``batch_sizes``: packed sequences (module docstring).
    """
    low = low_dtype(precision)
    H = check_gate_weights(KIND, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr)
    T, B = check_sequence(x, weight_ih.shape[1])
    check_batch_sizes(batch_sizes, T, B)
    S = weight_hh.shape[1]
    h0, c0 = check_state_parts(KIND, state0, B, weight_hh, sizes=(S, H))

    # x_t W_ih^T + b, all t
    gates = project_inputs(x, weight_ih, sum_biases(bias_ih, bias_hh), precision)
    hs = new_steps(weight_hh, (T, B, S), batch_sizes)
    cs, tanh_cs = (new_steps(weight_hh, (T, B, H), batch_sizes) for _ in range(2))
    ms = hs if weight_hr is None else new_steps(weight_hh, (T, B, H), batch_sizes)
    views = None
    if weight_hr is None and batch_sizes is None:
        views = kernel_views(gates, h0, hs, c0, cs, tanh_cs, weight_hh, precision=precision)
    if views is not None:                                # the loop below, compiled
        g, h0v, hsv, c0v, csv, tcv, w = views
        kernel.forward(KIND, g, h0v, hsv, w, c0=c0v, cs=csv, tanh_cs=tcv, precision=precision)
    else:
        _python_forward(gates, h0, c0, hs, cs, tanh_cs, ms, weight_hh, weight_hr, batch_sizes,
                        low)
    cache = Cache(x=x, h0=h0, c0=c0, gates=gates, cs=cs, tanh_cs=tanh_cs, hs=hs, ms=ms,
                  weight_ih=weight_ih, weight_hh=weight_hh, weight_hr=weight_hr,
                  has_bias_ih=bias_ih is not None, has_bias_hh=bias_hh is not None,
                  batch_sizes=batch_sizes, precision=precision)
    return hs, (final_rows(hs, batch_sizes), final_rows(cs, batch_sizes)), cache


def _python_forward(gates, h0, c0, hs, cs, tanh_cs, ms, weight_hh, weight_hr, batch_sizes,
                    low: torch.dtype | None) -> None:
    """The forward loop over time, writing ``gates`` (in place), ``hs``, ``cs``, ``tanh_cs`` and
    ``ms``; ``low`` (bf16): the products' operands in bfloat16."""
    T, B = gates.shape[:2]
    z, h, c, tc, m = (per_step(a, batch_sizes) for a in (gates, hs, cs, tanh_cs, ms))
    h_prev, c_prev = prev_rows(h0, h, batch_sizes), prev_rows(c0, c, batch_sizes)
    w_hh = pack(weight_hh if low is None else weight_hh.to(low), B, T)  # reordered once
    w_hr = None if weight_hr is None else pack(
        weight_hr if low is None else weight_hr.to(low), B, T)
    for t in range(T):
        _cell(z[t], h_prev[t], c_prev[t], w_hh, out=(m[t], c[t], tc[t]), low=low)
        if w_hr is not None:                             # h_t = m_t W_hr^T
            h[t].copy_(linear(m[t] if low is None else m[t].to(low), w_hr))


def _cell(z: torch.Tensor, h: torch.Tensor, c_prev: torch.Tensor, w_hh: torch.Tensor,
          out: tuple, low: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One step, returning ``(m_t, c_t)``: ``z`` (B, 4H) holds x_t W_ih^T + b and becomes
    [i_t | f_t | g_t | o_t]; ``out`` = (m_t, c_t, tanh(c_t)) (B, H) each, written (m_t is h_t
    without a projection); ``w_hh`` is W_hh or its :func:`pack` (the product through oneDNN
    on the CPU, NumPy's tanh there: :mod:`.common`); ``low`` (bf16): ``w_hh`` in bfloat16."""
    H = c_prev.shape[1]
    h_new, c, tanh_c = out
    r = step_linear_add(h, w_hh, z, low)                 # z_t = x_t W_ih^T + b + h_{t-1} W_hh^T
    torch.sigmoid(r[:, :2 * H], out=z[:, :2 * H])        # i_t, f_t = sigmoid(z^i_t, z^f_t)
    tanh_into(r[:, 2 * H:3 * H], z[:, 2 * H:3 * H])      # g_t = tanh(z^g_t)
    torch.sigmoid(r[:, 3 * H:], out=z[:, 3 * H:])        # o_t = sigmoid(z^o_t)
    i, f, g, o = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
    torch.mul(f, c_prev, out=c)
    c.addcmul_(i, g)                                     # c_t = f_t * c_{t-1} + i_t * g_t
    tanh_into(c, tanh_c)
    torch.mul(o, tanh_c, out=h_new)                      # m_t = o_t * tanh(c_t)
    return h_new, c


def step(x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor], weight_ih: torch.Tensor,
         weight_hh: torch.Tensor, bias_ih: torch.Tensor | None = None,
         bias_hh: torch.Tensor | None = None,
         weight_hr: torch.Tensor | None = None,
         precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """One step, no checks and no cache (generation): (h_t, c_t) from x_t (B,) int64 token ids
    or (B, I) features and (h_{t-1}, c_{t-1}), (B, S) and (B, H); the operations of one step of
    :func:`forward`."""
    h, c = state
    low = low_dtype(precision)
    z = input_step(x, weight_ih, sum_biases(bias_ih, bias_hh), precision)  # x_t W_ih^T + b
    w = weight_hh if low is None else weight_hh.to(low)
    m, c = _cell(z, h, c, w, out=tuple(c.new_empty(c.shape) for _ in range(3)), low=low)
    if weight_hr is None:
        return (m, c)
    if low is None:
        return (m @ weight_hr.t(), c)                    # h_t = m_t W_hr^T
    return (linear(m.to(low), weight_hr.to(low)).to(m.dtype), c)


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
    """BPTT from upstream gradients on every output ``dhs`` (T, B, S) and on ``(h_n, c_n)``.

    ``dhs`` and ``dstate_n`` may be None, and so may either of ``(dh_n, dc_n)``.
    Returns ``(dx, (dh0, dc0), grads)``: dx (T, B, I) (None for token-id input or when not
    ``need_dx``), and grads with keys ``weight_ih, weight_hh`` (+ the biases the layer has, +
    ``weight_hr`` with a projection). ``truncate=k`` cuts both the h and the c path after k
    recurrent steps.
    """
    T, B, S = cache.hs.shape
    H = cache.cs.shape[2]
    W = GATES * H
    weight_hh, w_hr, bs = cache.weight_hh, cache.weight_hr, cache.batch_sizes
    low = low_dtype(cache.precision)
    k = effective_truncate(truncate, T)
    dstate_n = check_state_parts(KIND, dstate_n, B, cache.h0, names="d{}_n", sizes=(S, H))
    if k is None and w_hr is None and bs is None:
        dz, dstate0 = _compiled_loop(cache, dhs, dstate_n)  # the steps below, compiled
        if dz is not None:
            return _grads(cache, dz, dz, dstate0, need_dx)
    kcs, coefs, fs = (per_step(a, bs) for a in _factors(cache))
    rows = (1 if k is None else k + 1) * B

    def weight(w: torch.Tensor) -> torch.Tensor:          # reordered once for all steps
        w = w.t().contiguous()
        return pack(w if low is None else w.to(low), rows, T)

    # the products' weights (dz W_hh = dz (W_hh^T)^T)
    w_hh_t = weight(weight_hh)
    w_hr_t = None if w_hr is None else weight(w_hr)

    def lin(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return linear(a, w) if low is None else linear(a.to(low), w).to(a.dtype)

    def step(t: int, dstate: tuple, dz_out: torch.Tensor, prev_out: tuple):
        dh, dc = dstate                                  # (A, b, S), (A, b, H) by age: dh_t,
        A, b = dh.shape[:2]                              # dc_{t+1} f_{t+1}
        dz = dz_out
        dm = dh
        if w_hr is not None:
            dz = dz_out[..., :W]
            dz_out[..., W:] = dh                         # dh_t beside dz_t, for dW_hr   (12)
            dm = lin(dh.view(-1, S), w_hr_t).view(A, b, H)  # dm_t = dh_t W_hr          (11)
        dc.addcmul_(dm, kcs[t])                          # dc_t                           (2)
        dz4 = dz.view(A, b, GATES, H)
        torch.mul(dc.unsqueeze(2), coefs[t][:, :3], out=dz4[:, :, :3])  # dz^i, dz^f, dz^g (3-5)
        torch.mul(dm, coefs[t][:, 3], out=dz4[:, :, 3])  # dz^o_t                         (6)
        dh_prev, dc_prev = prev_out
        K = dh_prev.shape[0]
        if not K:
            return None
        dh_new = lin(dz[:K].reshape(-1, W), w_hh_t)     # dh_{t-1} = dz_t W_hh           (1)
        if k is None:                                    # the step's own arrays (no copy)
            return dh_new.view(1, b, S), dc * fs[t]      # dc_t f_t, for step t-1         (2)
        dh_prev.copy_(dh_new.view(K, b, S))
        torch.mul(dc[:K], fs[t], out=dc_prev)            # dc_t f_t, for step t-1         (2)
        return None

    width = W if w_hr is None else W + S                 # [dz_t | dh_t] with a projection
    dz_all, dstate0 = bptt_loop(OPS, step, dhs, dstate_n, T, truncate, width, bs)
    return _grads(cache, dz_all, dz_all if w_hr is None else dz_all[..., :W], dstate0, need_dx)


def _grads(cache: Cache, dz_all: torch.Tensor, dz: torch.Tensor, dstate0: tuple,
           need_dx: bool):
    """(7)-(10), (12) after the loop: ``(dx, dstate0, grads)``; ``dz_all`` holds [dz_t | dh_t]
    with a projection (``dz`` its first 4H columns), else ``dz`` itself."""
    T, B, S = cache.hs.shape
    H = cache.cs.shape[2]
    W, w_hr, prec = GATES * H, cache.weight_hr, cache.precision
    grads = {}
    dx, grads["weight_ih"], grads["weight_hh"] = shared_gate_grads(
        dz, cache.x, cache.hs, cache.h0, cache.weight_ih, need_dx,
        prec)  # dW_hh = sum dz_t^T h_{t-1}, dW_ih = sum dz_t^T x_t (7, 8, 10)
    if cache.has_bias_ih or cache.has_bias_hh:
        db = dz.sum(dim=(0, 1))                          # db_ih = db_hh = sum_t sum_b dz_t (9)
        if cache.has_bias_ih:
            grads["bias_ih"] = db
        if cache.has_bias_hh:
            grads["bias_hh"] = db.clone() if cache.has_bias_ih else db
    if w_hr is not None:
        dh_all = dz_all[..., W:].reshape(T * B, S)
        # dW_hr = sum dh_t^T m_t (12)
        grads["weight_hr"] = matmul(dh_all.t(), cache.ms.reshape(T * B, H), prec)
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
