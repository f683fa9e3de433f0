r"""Layer-normalised LSTM layer, one direction, on torch tensors: forward and its hand-written
BPTT.

The same equations and structure as :mod:`bptt.engine.numpy.lnlstm` (docs/bptt_layernorm.md,
"LN-LSTM"); LN(y) = (y - mean(y)) / sqrt(var(y) + eps) over the last axis, gate slices of width
H in torch's order i, f, g, o:

    u^_t = LN(x_t W_ih^T),   v^_t = LN(h_{t-1} W_hh^T)                   (B, 4H)
    z_t  = u^_t * g_ih + b_ih + v^_t * g_hh + b_hh                      = [z^i | z^f | z^g | z^o]
    i_t = sigmoid(z^i_t),  f_t = sigmoid(z^f_t),  g_t = tanh(z^g_t),  o_t = sigmoid(z^o_t)
    c_t = f_t * c_{t-1} + i_t * g_t
    k_t = LN(c_t) * g_c + b_c,   c^_t = LN(c_t)
    h_t = o_t * tanh(k_t)                                   h_{-1} = h0,  c_{-1} = c0

Backward, with dh_t and dc_t the total gradients reaching h_t and c_t, rstd_* the layer norms'
1 / sqrt(var + eps) and W~ = W minus the mean of its 4H rows (the centring folded into the
weights, :mod:`bptt.engine.torch.layernorm`):

    (1)  dk_t   = dh_t * o_t (1 - tanh(k_t)^2)
    (2)  dc_t   = dc_{t+1} f_{t+1} + rstd_c (dc^ - mean(dc^) - c^_t mean(dc^ c^_t)),
                  dc^ = dk_t g_c
    (3)  dz^i_t = dc_t g_t i_t (1 - i_t),   dz^f_t = dc_t c_{t-1} f_t (1 - f_t),
         dz^g_t = dc_t i_t (1 - g_t^2),     dz^o_t = dh_t tanh(k_t) o_t (1 - o_t)
    (4)  dv_t   = rstd_v (dv^ - v^_t mean(dv^ v^_t)),   dv^ = dz_t g_hh
    (5)  dh_{t-1} = dv_t W~_hh,   dc_{t-1} = dc_t f_t
    (6)  dW_hh  = centred(sum_t dv_t^T h_{t-1})       (minus the mean over its 4H rows)
    (7)  du_t   = rstd_u (du^ - u^_t mean(du^ u^_t)),   du^ = dz_t g_ih
    (8)  dW_ih  = centred(sum_t du_t^T x_t),   dx_t = du_t W~_ih
    (9)  db_ih  = db_hh = sum_t sum_b dz_t
    (10) dg_hh  = sum_t sum_b dz_t v^_t,   dg_ih = sum_t sum_b dz_t u^_t
    (11) dg_c   = sum_t sum_b dk_t c^_t,   db_c = sum_t sum_b dk_t

The factors of (1), (3) and (5) that do not depend on the incoming gradient are computed for
every step at once before the loop. A step keeps dv_t / rstd_v and applies rstd_v to the
product's (B, H) rows, (5); (6) takes it as rstd_v h_{t-1}. The step writes [dz_t | dv_t /
rstd_v | dk_t] (width 9H) for the loop's sum over truncation ages. The forward normalisations
are torch's kernel (:func:`bptt.engine.torch.layernorm.normalize`); every gradient is written
here.

Truncation (``truncate = k``): one transition is one step of the pair (h, c); both paths are cut
together after k transitions.

Packed sequences (``batch_sizes``, :mod:`bptt.engine.stack`): step t runs the first b_t rows
only (every layer norm is per row, so nothing else changes); (h_n, c_n) hold each sequence's
state at its own last step.

Symbols: T steps, B batch, I input size, H hidden size.
  x       (T, B, I) float, or (T, B) int64 token ids (one-hot input; projected as a gather)
  state0  None (zeros) or the pair (h0, c0), each (B, H) or None (zeros)
  hs      (T, B, H): every hidden state; hs[-1] is h_n (for packed sequences, each one's last)
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ...cells import LNLSTM as KIND
from .. import kernel
from ..layout import (
    check_batch_sizes,
    check_gate_weights,
    check_own_params,
    per_step,
    prev_rows,
    sum_biases,
)
from ..recursion import compiled_or_loop
from .common import (
    OPS,
    check_sequence,
    check_state_parts,
    final_rows,
    input_step,
    kernel_views,
    low_dtype,
    matmul,
    new_steps,
    project_inputs,
    project_inputs_backward,
    shifted,
    stack_steps,
)
from .layernorm import (
    EPS,
    affine,
    centred,
    gain_and_input_grads,
    gain_grad,
    low_mm,
    normalize,
    rowdot,
    scale_backward,
)

GATES = KIND.num_gates
PRECISIONS = ("fp32", "bf16")
"""The torch engine's precisions this cell implements (``bptt.engine.torch.stack``)."""


class Cache(NamedTuple):
    """What :func:`forward` keeps for :func:`backward`."""

    x: torch.Tensor             # (T, B, I) floats or (T, B) int64 token ids
    h0: torch.Tensor            # (B, H)
    c0: torch.Tensor            # (B, H)
    gates: torch.Tensor         # (T, B, 4H): [i_t | f_t | g_t | o_t], after their activations
    hs: torch.Tensor            # (T, B, H): h_t
    cs: torch.Tensor            # (T, B, H): c_t
    u_hat: torch.Tensor         # (T, B, 4H): LN(x_t W_ih^T)
    u_rstd: torch.Tensor        # (T, B, 1): its 1 / sqrt(var + eps)
    v_hat: torch.Tensor         # (T, B, 4H): LN(h_{t-1} W_hh^T)
    v_rstd: torch.Tensor        # (T, B, 1)
    c_hat: torch.Tensor         # (T, B, H): LN(c_t)
    c_rstd: torch.Tensor        # (T, B, 1)
    tanh_k: torch.Tensor        # (T, B, H): tanh(k_t), k_t = LN(c_t) g_c + b_c
    weight_ih: torch.Tensor     # (4H, I)
    weight_hh: torch.Tensor     # (4H, H)
    ln_weight_ih: torch.Tensor  # (4H,) g_ih
    ln_weight_hh: torch.Tensor  # (4H,) g_hh
    ln_weight_c: torch.Tensor   # (H,) g_c
    has_bias_ih: bool
    has_bias_hh: bool
    has_ln_bias_c: bool
    batch_sizes: tuple | None   # packed sequences: b_t running at step t (None: all B)
    precision: str = "fp32"     # fp32 | bf16: the products' operands


def forward(
    x: torch.Tensor,
    state0: tuple[torch.Tensor | None, torch.Tensor | None] | None,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None = None,
    bias_hh: torch.Tensor | None = None,
    ln_weight_ih: torch.Tensor | None = None,
    ln_weight_hh: torch.Tensor | None = None,
    ln_weight_c: torch.Tensor | None = None,
    ln_bias_c: torch.Tensor | None = None,
    batch_sizes: tuple[int, ...] | None = None,
    precision: str = "fp32",
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], Cache]:
    """Run the layer over ``x``; return ``(hs, (h_n, c_n), cache)``, hs (T, B, H). The gains
    are required (``bptt.model`` gives them), the biases optional; ``batch_sizes``: packed
    sequences (the module docstring)."""
    H = check_gate_weights(KIND, weight_ih, weight_hh, bias_ih, bias_hh)
    check_own_params(KIND, H, {"ln_weight_ih": ln_weight_ih, "ln_weight_hh": ln_weight_hh,
                               "ln_weight_c": ln_weight_c, "ln_bias_c": ln_bias_c})
    T, B = check_sequence(x, weight_ih.shape[1])
    check_batch_sizes(batch_sizes, T, B)
    low = low_dtype(precision)
    h0, c0 = check_state_parts(KIND, state0, B, weight_hh)

    # u^_t = LN(x_t W_ih^T), all t
    u_hat, u_rstd = normalize(project_inputs(x, weight_ih, None, precision))
    gates = affine(u_hat, ln_weight_ih, sum_biases(bias_ih, bias_hh))  # u^_t g_ih + b, all t
    hs, cs, tanh_k = (new_steps(weight_hh, (T, B, H), batch_sizes) for _ in range(3))
    own = (ln_weight_hh, ln_weight_c, ln_bias_c)
    kept = None
    if batch_sizes is None:
        kept = _compiled_forward(gates, h0, c0, hs, cs, tanh_k, weight_hh, own, precision)
    if kept is None:
        z, h, c, tk = (per_step(a, batch_sizes) for a in (gates, hs, cs, tanh_k))
        h_prev, c_prev = prev_rows(h0, h, batch_sizes), prev_rows(c0, c, batch_sizes)
        w_hh_t = weight_hh.t() if low is None else weight_hh.t().to(low)
        kept = [stack_steps(n, batch_sizes) for n in zip(
            *(_cell(z[t], h_prev[t], c_prev[t], w_hh_t, own, out=(h[t], c[t], tk[t]), low=low)[2]
              for t in range(T)), strict=True)]
    v_hat, v_rstd, c_hat, c_rstd = kept
    cache = Cache(x=x, h0=h0, c0=c0, gates=gates, hs=hs, cs=cs, u_hat=u_hat, u_rstd=u_rstd,
                  v_hat=v_hat, v_rstd=v_rstd, c_hat=c_hat, c_rstd=c_rstd, tanh_k=tanh_k,
                  weight_ih=weight_ih, weight_hh=weight_hh, ln_weight_ih=ln_weight_ih,
                  ln_weight_hh=ln_weight_hh, ln_weight_c=ln_weight_c,
                  has_bias_ih=bias_ih is not None, has_bias_hh=bias_hh is not None,
                  has_ln_bias_c=ln_bias_c is not None, batch_sizes=batch_sizes,
                  precision=precision)
    return hs, (final_rows(hs, batch_sizes), final_rows(cs, batch_sizes)), cache


def _compiled_forward(gates, h0, c0, hs, cs, tanh_k, weight_hh, own,
                      precision) -> list | None:
    """The forward loop in the compiled kernel (the steps of :func:`_cell`, on W~_hh): writes
    ``gates``, ``hs``, ``cs``, ``tanh_k`` and returns ``[v^, rstd_v, c^, rstd_c]`` (T, B, ...),
    or None where the kernel does not compute on these tensors (CUDA, a dtype, no kernel)."""
    T, B, GH = gates.shape
    H = GH // GATES
    made = [gates.new_empty(shape) for shape in ((T, B, GH), (T, B, 1), (T, B, H), (T, B, 1))]
    views = kernel_views(gates, h0.contiguous(), c0.contiguous(), hs, cs, tanh_k,
                         centred(weight_hh).contiguous(), *made, *own,
                         precision=precision)
    if views is None:
        return None
    g, h0v, c0v, hsv, csv, tkv, w, v, vr, ch, cr, g_hh, g_c, b_c = views
    kernel.ln_forward(KIND, g, h0v, hsv, w, v, vr, g_hh, eps=EPS, c0=c0v, cs=csv, c_hat=ch,
                      c_rstd=cr, tanh_k=tkv, g_c=g_c, b_c=b_c, precision=precision)
    return made


def _cell(z: torch.Tensor, h: torch.Tensor, c_prev: torch.Tensor, w_hh_t: torch.Tensor,
          own: tuple, out: tuple, low: torch.dtype | None = None) -> tuple:
    """One step in place, returning ``(h_t, c_t, (v^_t, rstd_v, c^_t, rstd_c))``: ``z`` (B, 4H)
    holds u^_t g_ih + b and becomes [i_t | f_t | g_t | o_t]; ``own`` = (g_hh, g_c, b_c or
    None); ``out`` = (h_t, c_t, tanh(k_t)) (B, H) each, written; ``w_hh_t`` is W_hh^T."""
    H = h.shape[1]
    g_hh, g_c, b_c = own
    h_new, c, tanh_k = out
    v_hat, v_rstd = normalize(low_mm(h, w_hh_t, low))    # v^_t = LN(h_{t-1} W_hh^T)
    z.addcmul_(v_hat, g_hh)                              # z_t = u^_t g_ih + b + v^_t g_hh
    z[:, :2 * H].sigmoid_()                              # i_t, f_t = sigmoid(z^i_t, z^f_t)
    z[:, 2 * H:3 * H].tanh_()                            # g_t = tanh(z^g_t)
    z[:, 3 * H:].sigmoid_()                              # o_t = sigmoid(z^o_t)
    i, f, g, o = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
    torch.mul(f, c_prev, out=c)
    c.addcmul_(i, g)                                     # c_t = f_t * c_{t-1} + i_t * g_t
    c_hat, c_rstd = normalize(c)                         # c^_t = LN(c_t)
    affine(c_hat, g_c, b_c, out=tanh_k).tanh_()         # tanh(k_t), k_t = c^_t g_c + b_c
    torch.mul(o, tanh_k, out=h_new)                      # h_t = o_t * tanh(k_t)
    return h_new, c, (v_hat, v_rstd, c_hat, c_rstd)


def step(x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor], weight_ih: torch.Tensor,
         weight_hh: torch.Tensor, bias_ih: torch.Tensor | None = None,
         bias_hh: torch.Tensor | None = None, ln_weight_ih: torch.Tensor | None = None,
         ln_weight_hh: torch.Tensor | None = None, ln_weight_c: torch.Tensor | None = None,
         ln_bias_c: torch.Tensor | None = None,
         precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """One step, no checks and no cache (generation): (h_t, c_t) from x_t (B,) int64 token ids
    or (B, I) features and (h_{t-1}, c_{t-1}), (B, H) each; the operations of one step of
    :func:`forward`."""
    h, c = state
    low = low_dtype(precision)
    u_hat = normalize(input_step(x, weight_ih, None, precision))[0]  # u^_t = LN(x_t W_ih^T)
    z = affine(u_hat, ln_weight_ih, sum_biases(bias_ih, bias_hh))
    w_hh_t = weight_hh.t() if low is None else weight_hh.t().to(low)
    h_new, c_new, _ = _cell(z, h, c, w_hh_t, (ln_weight_hh, ln_weight_c, ln_bias_c),
                            out=tuple(h.new_empty(h.shape) for _ in range(3)), low=low)
    return h_new, c_new


class _Factors(NamedTuple):
    """What the backward step reads that does not depend on the incoming gradient, all T; the
    equation each serves."""

    F: torch.Tensor        # (T, B, 4, H): the gates', dz_t = [dc_t | .. | dh_t] * F       (3)
    f: torch.Tensor        # (T, B, H): f_t                                                (5)
    dk: torch.Tensor       # (T, B, H): o (1 - tanh(k)^2), so that dk_t = dh_t * dk        (1)


def _factors(cache: Cache) -> _Factors:
    """The gradient-free factors of (1), (3) and (5), for every step at once."""
    gates, tanh_k = cache.gates, cache.tanh_k
    T, B, GH = gates.shape
    H = GH // GATES
    i, f, g, o = gates[..., :H], gates[..., H:2 * H], gates[..., 2 * H:3 * H], gates[..., 3 * H:]
    F = gates.new_empty((T, B, GATES, H))
    torch.mul(g, i * (1.0 - i), out=F[:, :, 0])
    torch.mul(shifted(cache.c0, cache.cs), f * (1.0 - f), out=F[:, :, 1])
    torch.mul(i, 1.0 - g * g, out=F[:, :, 2])
    torch.mul(tanh_k, o * (1.0 - o), out=F[:, :, 3])
    return _Factors(F=F, f=f.contiguous(), dk=o * (1.0 - tanh_k * tanh_k))


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
    ``need_dx``), and grads with keys ``weight_ih, weight_hh, ln_weight_ih, ln_weight_hh,
    ln_weight_c`` (+ the biases the layer has). ``truncate=k`` cuts both the h and the c path
    after k recurrent steps.
    """
    T, B, H = cache.hs.shape
    GH = GATES * H
    w_hh = centred(cache.weight_hh)                      # W~_hh
    dstate_n = check_state_parts(KIND, dstate_n, B, cache.h0, names="d{}_n")
    out, dstate0 = compiled_or_loop(
        OPS, lambda: _compiled_loop(cache, w_hh, dhs, dstate_n),  # the steps of _step, compiled
        lambda: _step(_factors(cache), cache, w_hh), dhs, dstate_n, T, truncate, 2 * GH + H,
        cache.batch_sizes)
    dz, dv, dk = out[..., :GH], out[..., GH:2 * GH], out[..., 2 * GH:]

    h_prev = shifted(cache.h0, cache.hs).mul_(cache.v_rstd)  # rstd_v h_{t-1}: dv_t = rstd_v dv
    dw_hh = matmul(dv.reshape(-1, GH).t(), h_prev.view(-1, H), cache.precision)
    grads = {"weight_hh": centred(dw_hh)}                # dW_hh = centred(sum dv_t^T h_{t-1}) (6)
    # the (T, B, 4H) temporaries below are made where dv was (spent by dW_hh), the (T, B, H)
    # one where dz was: fresh large memory costs page faults, more than the arithmetic in it
    work = dv
    grads["ln_weight_hh"] = gain_grad(dz, cache.v_hat, work)  # dg_hh = sum dz_t v^_t      (10)
    grads["ln_weight_ih"], du = gain_and_input_grads(
        dz, cache.u_hat, cache.u_rstd, cache.ln_weight_ih, work)  # dg_ih (10), du_t      (7)
    dx, dw_ih = project_inputs_backward(du, cache.x, centred(cache.weight_ih),
                                        need_dx, cache.precision)  # dx_t = du_t W~_ih   (8)
    grads["weight_ih"] = centred(dw_ih)                  # dW_ih = centred(sum du_t^T x_t) (8)
    if cache.has_bias_ih or cache.has_bias_hh:
        db = dz.sum(dim=(0, 1))                          # db_ih = db_hh = sum_t sum_b dz_t (9)
        if cache.has_bias_ih:
            grads["bias_ih"] = db
        if cache.has_bias_hh:
            grads["bias_hh"] = db.clone() if cache.has_bias_ih else db
    grads["ln_weight_c"] = gain_grad(dk, cache.c_hat, dz[..., :H])  # dg_c              (11)
    if cache.has_ln_bias_c:
        grads["ln_bias_c"] = dk.sum(dim=(0, 1))          # db_c = sum_t sum_b dk_t         (11)
    return dx, dstate0, grads


def _compiled_loop(cache: Cache, w_hh: torch.Tensor, dhs: torch.Tensor | None,
                   dstate_n: tuple) -> tuple | None:
    """The backward recursion without truncation in the compiled kernel: ``(out (T, B, 9H),
    (dh0, dc0))`` as :func:`bptt.engine.recursion.bptt_loop` gives them from :func:`_step`, or
    None where the kernel does not compute on these tensors."""
    T, B, GH = cache.gates.shape
    out = cache.gates.new_empty((T, B, 2 * GH + GH // GATES))
    dh, dc = (d.detach().to(out.dtype, copy=True).contiguous() for d in dstate_n)
    views = kernel_views(cache.gates, cache.v_hat, cache.v_rstd, cache.ln_weight_hh,
                         cache.c0.contiguous(), cache.cs, cache.c_hat, cache.c_rstd,
                         cache.tanh_k, cache.ln_weight_c, w_hh.contiguous(), out, dh, dc,
                         None if dhs is None else dhs.contiguous(), precision=cache.precision)
    if views is None:
        return None
    g, v, vr, g_hh, c0, cs, ch, cr, tk, g_c, w, outv, dhv, dcv, dhsv = views
    kernel.ln_backward(KIND, w, out=outv, carry_h=dhv, carry_c=dcv, gates=g, v=v, v_rstd=vr,
                       g_hh=g_hh, c0=c0, cs=cs, c_hat=ch, c_rstd=cr, tanh_k=tk, g_c=g_c,
                       dhs=dhsv, precision=cache.precision)
    return out, (dh, dc)


def _step(k: _Factors, cache: Cache, w_hh: torch.Tensor):
    """The one-step backward :func:`bptt.engine.recursion.bptt_loop` runs: (1)-(5) at step t
    for every pending age at once, writing [dz_t | dv_t / rstd_v | dk_t] (A, b_t, 9H); ``w_hh``
    is W~_hh. Every per-step factor is cut to the running rows b_t (packed sequences)."""
    g_hh, g_c = cache.ln_weight_hh, cache.ln_weight_c
    low = low_dtype(cache.precision)
    if low is not None:
        w_hh = w_hh.to(low)                              # rounded once for every step
    F, f, dk_f, v_hat, v_rstd, c_hat, c_rstd = (
        per_step(a, cache.batch_sizes)
        for a in (k.F, k.f, k.dk, cache.v_hat, cache.v_rstd, cache.c_hat, cache.c_rstd))

    def step(t: int, dstate: tuple, out: torch.Tensor, prev_out: tuple) -> None:
        dh, dc = dstate                                  # (A, b, H): dh_t, dc_{t+1} f_{t+1}
        A, B, H = dh.shape
        GH = GATES * H
        dz, dv, dk = out[..., :GH], out[..., GH:2 * GH], out[..., 2 * GH:]
        torch.mul(dh, dk_f[t], out=dk)                   # dk_t                           (1)
        dc_h = dk * g_c                                  # dc^                            (2)
        mean2 = rowdot(dc_h, c_hat[t]).unsqueeze(-1)     # H mean(dc^ c^_t)
        dc_h.sub_(dc_h.mean(dim=-1, keepdim=True)).addcmul_(c_hat[t], mean2, value=-1.0 / H)
        dc.addcmul_(dc_h, c_rstd[t])                     # dc_t                           (2)
        dz4 = dz.view(A, B, GATES, H)
        torch.mul(dc.unsqueeze(2), F[t][:, :3], out=dz4[:, :, :3])  # dz^i, dz^f, dz^g    (3)
        torch.mul(dh, F[t][:, 3], out=dz4[:, :, 3])      # dz^o_t                         (3)
        scale_backward(torch.mul(dz, g_hh, out=dv), v_hat[t])  # dv_t / rstd_v            (4)
        dh_prev, dc_prev = prev_out
        K = dh_prev.shape[0]
        if K:
            dh_prev.view(-1, H).copy_(low_mm(dv[:K].reshape(K * B, GH), w_hh,
                                             low))       # dh_{t-1} = dv_t W~_hh          (5)
            dh_prev.mul_(v_rstd[t])
            torch.mul(dc[:K], f[t], out=dc_prev)       # dc_t f_t, for step t-1         (5)

    return step
