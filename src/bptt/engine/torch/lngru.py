r"""Layer-normalised GRU layer, one direction, on torch tensors: forward and its hand-written
BPTT.

The same equations and structure as :mod:`bptt.engine.numpy.lngru` (docs/bptt_layernorm.md,
"LN-GRU"); LN(y) = (y - mean(y)) / sqrt(var(y) + eps) over the last axis, gate slices of width
H in torch's order r, z, n:

    a_t = LN(x_t W_ih^T) * g_ih + b_ih           (B, 3H) = [a^r | a^z | a^n]
    s_t = LN(h_{t-1} W_hh^T) * g_hh + b_hh       (B, 3H) = [s^r | s^z | s^n]
    r_t = sigmoid(a^r_t + s^r_t),   u_t = sigmoid(a^z_t + s^z_t)      (u is torch's z gate)
    n_t = tanh(a^n_t + r_t * s^n_t)              (r multiplies the normalised s^n)
    h_t = (1 - u_t) * n_t + u_t * h_{t-1}        h_{-1} = h0

Written u^_t = LN(x_t W_ih^T), v^_t = LN(h_{t-1} W_hh^T). Backward, with dh_t the total
gradient reaching h_t, rstd_* the layer norms' 1 / sqrt(var + eps) and W~ = W minus the mean of
its 3H rows (the centring folded into the weights, :mod:`bptt.engine.torch.layernorm`):

    (1) da^n_t = dh_t (1 - u_t)(1 - n_t^2),   da^z_t = dh_t (h_{t-1} - n_t) u_t (1 - u_t),
        da^r_t = da^n_t s^n_t r_t (1 - r_t)
    (2) ds_t   = [da^r_t | da^z_t | da^n_t r_t]
    (3) dv_t   = rstd_v (dv^ - v^_t mean(dv^ v^_t)),   dv^ = ds_t g_hh
    (4) dh_{t-1} = dv_t W~_hh + dh_t u_t
    (5) dW_hh  = centred(sum_t dv_t^T h_{t-1}),   db_hh = sum_t sum_b ds_t,
        dg_hh  = sum_t sum_b ds_t v^_t
    (6) du_t   = rstd_u (du^ - u^_t mean(du^ u^_t)),   du^ = da_t g_ih
    (7) dW_ih  = centred(sum_t du_t^T x_t),   dx_t = du_t W~_ih
    (8) db_ih  = sum_t sum_b da_t,   dg_ih = sum_t sum_b da_t u^_t

da_t, rstd_v dv^_t and the mean of (3) are dh_t times factors computed for every step at once
before the loop; the step writes [da_t | dv_t] (width 6H) for the loop's sum over truncation
ages, and ds_t is rebuilt from da_t after it. The forward normalisations are torch's kernel
(:func:`bptt.engine.torch.layernorm.normalize`); every gradient is written here.

Truncation (``truncate = k``): both paths from h_t to h_{t-1} are one recurrent transition, cut
together after k of them.

Packed sequences (``batch_sizes``, :mod:`bptt.engine.stack`): step t runs the first b_t rows
only (every layer norm is per row, so nothing else changes); h_n holds each sequence's state at
its own last step.

Symbols: T steps, B batch, I input size, H hidden size.
  x       (T, B, I) float, or (T, B) int64 token ids (one-hot input; projected as a gather)
  state0  None (zeros) or the tuple (h0,), h0 (B, H) or None (zeros)
  hs      (T, B, H): every hidden state; hs[-1] is h_n (for packed sequences, each one's last)
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ...cells import LNGRU as KIND
from .. import kernel
from ..layout import check_batch_sizes, check_gate_weights, check_own_params, per_step, prev_rows
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
)

GATES = KIND.num_gates
PRECISIONS = ("fp32", "bf16")
"""The torch engine's precisions this cell implements (``bptt.engine.torch.stack``)."""


class Cache(NamedTuple):
    """What :func:`forward` keeps for :func:`backward`."""

    x: torch.Tensor             # (T, B, I) floats or (T, B) int64 token ids
    h0: torch.Tensor            # (B, H)
    gates: torch.Tensor         # (T, B, 3H): [r_t | u_t | n_t], after their activations
    s_n: torch.Tensor           # (T, B, H): s^n_t, the n slice of LN(h_{t-1} W_hh^T) g_hh + b_hh
    hs: torch.Tensor            # (T, B, H): h_t
    u_hat: torch.Tensor         # (T, B, 3H): LN(x_t W_ih^T)
    u_rstd: torch.Tensor        # (T, B, 1): its 1 / sqrt(var + eps)
    v_hat: torch.Tensor         # (T, B, 3H): LN(h_{t-1} W_hh^T)
    v_rstd: torch.Tensor        # (T, B, 1)
    weight_ih: torch.Tensor     # (3H, I)
    weight_hh: torch.Tensor     # (3H, H)
    ln_weight_ih: torch.Tensor  # (3H,) g_ih
    ln_weight_hh: torch.Tensor  # (3H,) g_hh
    has_bias_ih: bool
    has_bias_hh: bool
    batch_sizes: tuple | None   # packed sequences: b_t running at step t (None: all B)
    precision: str = "fp32"     # fp32 | bf16: the products' operands


def forward(
    x: torch.Tensor,
    state0: tuple[torch.Tensor | None] | None,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None = None,
    bias_hh: torch.Tensor | None = None,
    ln_weight_ih: torch.Tensor | None = None,
    ln_weight_hh: torch.Tensor | None = None,
    batch_sizes: tuple[int, ...] | None = None,
    precision: str = "fp32",
) -> tuple[torch.Tensor, tuple[torch.Tensor], Cache]:
    """Run the layer over ``x``; return ``(hs, (h_n,), cache)`` with hs (T, B, H), h_n (B, H).
    The gains are required (``bptt.model`` gives them), the biases optional; ``batch_sizes``:
    packed sequences (the module docstring)."""
    H = check_gate_weights(KIND, weight_ih, weight_hh, bias_ih, bias_hh)
    check_own_params(KIND, H, {"ln_weight_ih": ln_weight_ih, "ln_weight_hh": ln_weight_hh})
    T, B = check_sequence(x, weight_ih.shape[1])
    check_batch_sizes(batch_sizes, T, B)
    low = low_dtype(precision)
    (h0,) = check_state_parts(KIND, state0, B, weight_hh)

    # u^_t = LN(x_t W_ih^T), all t
    u_hat, u_rstd = normalize(project_inputs(x, weight_ih, None, precision))
    gates = affine(u_hat, ln_weight_ih, bias_ih)        # (T, B, 3H): a_t = u^_t g_ih + b_ih
    hs = new_steps(weight_hh, (T, B, H), batch_sizes)
    kept = None
    if batch_sizes is None:
        kept = _compiled_forward(gates, h0, hs, weight_hh, (ln_weight_hh, bias_hh), precision)
    if kept is None:
        s_all = new_steps(weight_hh, (T, B, GATES * H), batch_sizes)  # s_t for every t
        a, s, h = (per_step(v, batch_sizes) for v in (gates, s_all, hs))
        h_prev = prev_rows(h0, h, batch_sizes)
        w_hh_t = weight_hh.t() if low is None else weight_hh.t().to(low)
        kept = [stack_steps(n, batch_sizes) for n in zip(
            *(_cell(a[t], s[t], h_prev[t], w_hh_t, (ln_weight_hh, bias_hh), out=h[t],
                    low=low)[1]
              for t in range(T)), strict=True)] + [s_all[..., 2 * H:]]
    v_hat, v_rstd, s_n = kept
    cache = Cache(x=x, h0=h0, gates=gates, s_n=s_n, hs=hs, u_hat=u_hat,
                  u_rstd=u_rstd, v_hat=v_hat, v_rstd=v_rstd, weight_ih=weight_ih,
                  weight_hh=weight_hh, ln_weight_ih=ln_weight_ih, ln_weight_hh=ln_weight_hh,
                  has_bias_ih=bias_ih is not None, has_bias_hh=bias_hh is not None,
                  batch_sizes=batch_sizes, precision=precision)
    return hs, (final_rows(hs, batch_sizes),), cache


def _compiled_forward(gates, h0, hs, weight_hh, own, precision) -> list | None:
    """The forward loop in the compiled kernel (the steps of :func:`_cell`, on W~_hh): writes
    ``gates`` and ``hs`` and returns ``[v^, rstd_v, s^n]`` (T, B, ...), or None where the
    kernel does not compute on these tensors (CUDA, a dtype, no kernel)."""
    T, B, GH = gates.shape
    H = GH // GATES
    made = [gates.new_empty(shape) for shape in ((T, B, GH), (T, B, 1), (T, B, H))]
    views = kernel_views(gates, h0.contiguous(), hs, centred(weight_hh).contiguous(), *made,
                         *own, precision=precision)
    if views is None:
        return None
    g, h0v, hsv, w, v, vr, sn, g_hh, b_hh = views
    kernel.ln_forward(KIND, g, h0v, hsv, w, v, vr, g_hh, eps=EPS, b_hh=b_hh, s_n=sn,
                      precision=precision)
    return made


def _cell(a: torch.Tensor, s: torch.Tensor, h: torch.Tensor, w_hh_t: torch.Tensor, own: tuple,
          out: torch.Tensor, low: torch.dtype | None = None) -> tuple:
    """One step in place, returning ``(h_t, (v^_t, rstd_v))``: ``a`` (B, 3H) holds a_t and
    becomes [r_t | u_t | n_t], ``s`` (B, 3H) receives s_t, ``out`` (B, H) receives h_t;
    ``own`` = (g_hh, b_hh or None); ``w_hh_t`` is W_hh^T."""
    H = h.shape[1]
    v_hat, v_rstd = normalize(low_mm(h, w_hh_t, low))    # v^_t = LN(h_{t-1} W_hh^T)
    affine(v_hat, *own, out=s)                          # s_t = v^_t g_hh + b_hh
    a[:, :2 * H].add_(s[:, :2 * H]).sigmoid_()           # r_t, u_t = sigmoid(a_t + s_t) (r, z)
    r, u, n = a[:, :H], a[:, H:2 * H], a[:, 2 * H:]
    n.addcmul_(r, s[:, 2 * H:]).tanh_()                  # n_t = tanh(a^n_t + r_t * s^n_t)
    torch.sub(h, n, out=out)
    return out.mul_(u).add_(n), (v_hat, v_rstd)          # h_t = n_t + u_t * (h_{t-1} - n_t)


def step(x: torch.Tensor, state: tuple[torch.Tensor], weight_ih: torch.Tensor,
         weight_hh: torch.Tensor, bias_ih: torch.Tensor | None = None,
         bias_hh: torch.Tensor | None = None, ln_weight_ih: torch.Tensor | None = None,
         ln_weight_hh: torch.Tensor | None = None,
         precision: str = "fp32") -> tuple[torch.Tensor]:
    """One step, no checks and no cache (generation): (h_t,) from x_t (B,) int64 token ids or
    (B, I) features and (h_{t-1},), (B, H); the operations of one step of :func:`forward`."""
    (h,) = state
    low = low_dtype(precision)
    a = affine(normalize(input_step(x, weight_ih, None, precision))[0], ln_weight_ih,
               bias_ih)                                  # a_t
    w_hh_t = weight_hh.t() if low is None else weight_hh.t().to(low)
    h_new, _ = _cell(a, a.new_empty(a.shape), h, w_hh_t, (ln_weight_hh, bias_hh),
                     out=h.new_empty(h.shape), low=low)
    return (h_new,)


class _Factors(NamedTuple):
    """What the backward step reads that does not depend on the incoming gradient, all T; the
    equation each serves."""

    K: torch.Tensor        # (T, B, 3, H): da_t = dh_t * K_t                               (1)
    KG: torch.Tensor       # (T, B, 3, H): rstd_v dv^_t = rstd_v ds_t g_hh = dh_t * KG_t   (3)
    mean2: torch.Tensor    # (T, B, H): mean(dv^_t v^_t) = dh_t . mean2_t                  (3)
    v_corr: torch.Tensor   # (T, B, 3H): v^ rstd_v                                         (3)
    u: torch.Tensor        # (T, B, H): u_t                                                (4)


def _factors(cache: Cache) -> _Factors:
    """The gradient-free factors of (1)-(4), for every step at once."""
    gates = cache.gates
    T, B, GH = gates.shape
    H = GH // GATES
    r, u, n = gates[..., :H], gates[..., H:2 * H], gates[..., 2 * H:]
    K = gates.new_empty((T, B, GATES, H))
    torch.mul(1.0 - u, 1.0 - n * n, out=K[:, :, 2])                            # da^n / dh (1)
    torch.mul(shifted(cache.h0, cache.hs) - n, u * (1.0 - u), out=K[:, :, 1])  # da^z / dh (1)
    torch.mul(K[:, :, 2], cache.s_n * r * (1.0 - r), out=K[:, :, 0])           # da^r / dh (1)
    KG = K * cache.ln_weight_hh.view(GATES, H)           # dv^_t / dh_t = ds_t g_hh / dh_t (2)
    KG[:, :, 2].mul_(r)
    v_hat = cache.v_hat.view(T, B, GATES, H)
    mean2 = torch.linalg.vecdot(KG.transpose(2, 3), v_hat.transpose(2, 3)).div_(GH)
    KG.mul_(cache.v_rstd.unsqueeze(-1))
    return _Factors(K=K, KG=KG, mean2=mean2, v_corr=cache.v_hat * cache.v_rstd,
                    u=u.contiguous())


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
    weight_hh, ln_weight_ih, ln_weight_hh`` (+ ``bias_ih``, ``bias_hh`` for the biases the
    layer has). ``truncate=k`` lets the loss at step t reach back through at most k recurrent
    steps.
    """
    gates, hs, h0 = cache.gates, cache.hs, cache.h0
    T, B, H = hs.shape
    GH = GATES * H
    w_hh = centred(cache.weight_hh)                      # W~_hh
    dstate_n = check_state_parts(KIND, dstate_n, B, h0, names="d{}_n")
    out, dstate0 = compiled_or_loop(
        OPS, lambda: _compiled_loop(cache, w_hh, dhs, dstate_n),  # the steps of _step, compiled
        lambda: _step(_factors(cache), w_hh, cache.batch_sizes, low_dtype(cache.precision)),
        dhs, dstate_n, T, truncate, 2 * GH, cache.batch_sizes)
    da, dv = out[..., :GH], out[..., GH:]
    ds = da.clone()
    ds[..., 2 * H:].mul_(gates[..., :H])                 # ds_t = [da^r | da^z | da^n r_t]  (2)

    dw_hh = matmul(dv.reshape(-1, GH).t(), shifted(h0, hs).view(-1, H), cache.precision)
    grads = {"weight_hh": centred(dw_hh)}                # dW_hh = centred(sum dv_t^T h_{t-1}) (5)
    work = dv                 # the (T, B, 3H) temporaries where dv was, spent by dW_hh
    grads["ln_weight_hh"] = gain_grad(ds, cache.v_hat, work)  # dg_hh = sum ds_t v^_t      (5)
    grads["ln_weight_ih"], du = gain_and_input_grads(
        da, cache.u_hat, cache.u_rstd, cache.ln_weight_ih, work)  # dg_ih (8), du_t       (6)
    dx, dw_ih = project_inputs_backward(du, cache.x, centred(cache.weight_ih),
                                        need_dx, cache.precision)  # dx_t = du_t W~_ih   (7)
    grads["weight_ih"] = centred(dw_ih)                  # dW_ih = centred(sum du_t^T x_t) (7)
    if cache.has_bias_ih:
        grads["bias_ih"] = da.sum(dim=(0, 1))            # db_ih = sum_t sum_b da_t        (8)
    if cache.has_bias_hh:
        grads["bias_hh"] = ds.sum(dim=(0, 1))            # db_hh = sum_t sum_b ds_t        (5)
    return dx, dstate0, grads


def _compiled_loop(cache: Cache, w_hh: torch.Tensor, dhs: torch.Tensor | None,
                   dstate_n: tuple) -> tuple | None:
    """The backward recursion without truncation in the compiled kernel: ``(out (T, B, 6H),
    (dh0,))`` as :func:`bptt.engine.recursion.bptt_loop` gives them from :func:`_step` ([da_t |
    dv_t]), or None where the kernel does not compute on these tensors."""
    T, B, GH = cache.gates.shape
    out = cache.gates.new_empty((T, B, 2 * GH))
    dh = dstate_n[0].detach().to(out.dtype, copy=True).contiguous()
    views = kernel_views(cache.gates, cache.v_hat, cache.v_rstd, cache.ln_weight_hh,
                         cache.h0.contiguous(), cache.hs, cache.s_n.contiguous(),
                         w_hh.contiguous(), out, dh, None if dhs is None else dhs.contiguous(),
                         precision=cache.precision)
    if views is None:
        return None
    g, v, vr, g_hh, h0, hs, sn, w, outv, dhv, dhsv = views
    kernel.ln_backward(KIND, w, out=outv, carry_h=dhv, gates=g, v=v, v_rstd=vr, g_hh=g_hh,
                       h0=h0, hs=hs, s_n=sn, dhs=dhsv, dv_scaled=True,
                       precision=cache.precision)       # dv_t itself, as _step keeps it
    return out, (dh,)


def _step(k: _Factors, w_hh: torch.Tensor, batch_sizes: tuple | None,
          low: torch.dtype | None = None):
    """The one-step backward :func:`bptt.engine.recursion.bptt_loop` runs: (1)-(4) at step t
    for every pending age at once, writing [da_t | dv_t] (A, b_t, 6H); ``w_hh`` is W~_hh. Every
    factor is cut to the running rows b_t (packed sequences)."""
    Kt, KG, mean2, v_corr, u = (per_step(a, batch_sizes)
                                for a in (k.K, k.KG, k.mean2, k.v_corr, k.u))
    if low is not None:
        w_hh = w_hh.to(low)                              # rounded once for every step

    def step(t: int, dstate: tuple, out: torch.Tensor, prev_out: tuple) -> None:
        (dh,) = dstate                                   # (A, b, H): dh_t by age
        A, B, H = dh.shape
        GH = GATES * H
        dh4 = dh.unsqueeze(2)
        torch.mul(dh4, Kt[t], out=out[..., :GH].view(A, B, GATES, H))  # da_t            (1)
        dv = out[..., GH:]
        torch.mul(dh4, KG[t], out=dv.view(A, B, GATES, H))  # dv_t                        (3)
        dv.addcmul_(v_corr[t], rowdot(dh, mean2[t]).unsqueeze(-1), value=-1.0)
        (dh_prev,) = prev_out
        K = dh_prev.shape[0]
        if K:
            torch.mul(dh[:K], u[t], out=dh_prev)       # dh_t * u_t
            # + dv_t W~_hh                                                             (4)
            dh_prev.view(-1, H).add_(low_mm(dv[:K].reshape(K * B, GH), w_hh, low))

    return step
