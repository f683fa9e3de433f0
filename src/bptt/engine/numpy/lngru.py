r"""Layer-normalised GRU layer, one direction: forward over a whole sequence and its BPTT.

Ba, Kiros & Hinton (2016), as haste's LayerNormGRU formulates it: the input pre-activations and
the recurrent ones are each normalised over all 3H gate units together, with a gain, and their
biases (torch's ``bias_ih``, ``bias_hh``) are added after the normalisation
(docs/bptt_layernorm.md, "LN-GRU"). LN(y) = (y - mean(y)) / sqrt(var(y) + eps) over the last
axis; gate slices of width H in torch's order r, z, n:

    a_t = LN(x_t W_ih^T) * g_ih + b_ih           (B, 3H) = [a^r | a^z | a^n]
    s_t = LN(h_{t-1} W_hh^T) * g_hh + b_hh       (B, 3H) = [s^r | s^z | s^n]
    r_t = sigmoid(a^r_t + s^r_t),   u_t = sigmoid(a^z_t + s^z_t)      (u is torch's z gate)
    n_t = tanh(a^n_t + r_t * s^n_t)
    h_t = (1 - u_t) * n_t + u_t * h_{t-1}        h_{-1} = h0

The reset gate multiplies s^n_t: the n slice of the recurrent pre-activations after their
normalisation, gain and bias, as the GRU's r multiplies W_hn h + b_hn (the normalisation itself
runs over all 3H units, before r). g_ih, g_hh (3H,) are ``layernorm_ih_l{k}.weight``,
``layernorm_hh_l{k}.weight``. Written u^_t = LN(x_t W_ih^T), v^_t = LN(h_{t-1} W_hh^T); as in
:mod:`bptt.engine.numpy.lnlstm` the centring is folded into the weights (W~ = W minus the mean
of its 3H rows): u^_t = u_t rstd_u with u_t = x_t W~_ih^T, v^_t = v_t rstd_v with
v_t = h_{t-1} W~_hh^T.

Backward, with dh_t the total gradient reaching h_t, rstd_* the layer norms' 1 / sqrt(var + eps):

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

da_t and dv^_t are dh_t times factors that do not depend on the gradient, and so is the mean
of (3) (a row dot of dh_t with one vector); all are computed for every step at once before the
loop, so a step is one element-wise product for da_t, one for dv_t and its correction, and one
product, whose (B, H) rows take the factor rstd_v. The step writes [da_t | dv_t / rstd_v]
(width 6H) for the loop's sum over truncation ages; ds_t is rebuilt from da_t after the loop,
as the GRU's.

Truncation (``truncate = k``): both paths from h_t to h_{t-1} (through s_t and through
``u_t * h_{t-1}``) are one recurrent transition, cut together after k of them.

Symbols: T steps, B batch, I input size, H hidden size.
  x       (T, B, I) float, or (T, B) integer token ids (one-hot input; projected as a gather)
  state0  None (zeros) or the tuple (h0,), h0 (B, H) or None (zeros)
  hs      (T, B, H): every hidden state; hs[-1] is h_n
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ...cells import LNGRU as KIND
from .. import kernel
from ..layout import check_gate_weights, check_own_params
from ..products import bf16_round, matmul
from ..recursion import compiled_or_loop
from .common import (
    OPS,
    Upstream,
    check_precision,
    check_sequence,
    check_state_parts,
    prev_weight_grad,
    project_inputs,
    project_inputs_backward,
    sigmoid_,
    step_product,
    upstream_array,
)
from .layernorm import (
    EPS,
    affine,
    centred,
    column_dot,
    gain_and_input_grads_,
    rowdot,
    scale,
)

GATES = KIND.num_gates
PRECISIONS = ("fp32", "bf16")
"""The precisions this cell implements (``bptt.engine.numpy.stack``)."""


class Cache(NamedTuple):
    """What :func:`forward` keeps for :func:`backward`."""

    x: np.ndarray             # (T, B, I) floats or (T, B) token ids
    gates: np.ndarray         # (T, B, 3H): [r_t | u_t | n_t], after their activations
    s_n: np.ndarray           # (T, B, H): s^n_t, the n slice of v^_t g_hh + b_hh
    h_buf: np.ndarray         # (T + 1, B, H): h0, then h_t in row t + 1
    u_hat: np.ndarray         # (T, B, 3H): u^_t = LN(x_t W_ih^T)
    u_rstd: np.ndarray        # (T, B, 1): its 1 / sqrt(var + eps)
    v_hat: np.ndarray         # (T, B, 3H): v^_t = LN(h_{t-1} W_hh^T)
    v_rstd: np.ndarray        # (T, B, 1)
    w_ih: np.ndarray          # (3H, I): W~_ih, W_ih centred over its rows
    w_hh: np.ndarray          # (3H, H): W~_hh
    ln_weight_ih: np.ndarray  # (3H,) g_ih
    ln_weight_hh: np.ndarray  # (3H,) g_hh
    has_bias_ih: bool
    has_bias_hh: bool
    precision: str = "fp32"   # fp32 | bf16: the products' operands


def forward(
    x: np.ndarray,
    state0: tuple[np.ndarray | None] | None,
    weight_ih: np.ndarray,
    weight_hh: np.ndarray,
    bias_ih: np.ndarray | None = None,
    bias_hh: np.ndarray | None = None,
    ln_weight_ih: np.ndarray | None = None,
    ln_weight_hh: np.ndarray | None = None,
    precision: str = "fp32",
) -> tuple[np.ndarray, tuple[np.ndarray], Cache]:
    """Run the layer over ``x``; return ``(hs, (h_n,), cache)`` with hs (T, B, H), h_n (B, H).
    The gains are required (``bptt.model`` gives them), the biases optional."""
    check_precision(precision, weight_hh)
    H = check_gate_weights(KIND, weight_ih, weight_hh, bias_ih, bias_hh)
    check_own_params(KIND, H, {"ln_weight_ih": ln_weight_ih, "ln_weight_hh": ln_weight_hh})
    T, B = check_sequence(x, weight_ih.shape[1])
    dtype = weight_hh.dtype
    (h0,) = check_state_parts(KIND, state0, B, H, dtype)

    w_ih, w_hh = centred(weight_ih), centred(weight_hh)  # W~: the centring in the products
    # (T, B, 3H): u_t = x_t W~_ih^T, all t
    u_hat = project_inputs(x, w_ih, None, precision=precision)
    u_rstd = scale(u_hat)                                # u^_t = u_t rstd_u = LN(x_t W_ih^T)
    gates = affine(u_hat, ln_weight_ih, bias_ih)         # a_t = u^_t g_ih + b_ih, all t
    h_buf = np.empty((T + 1, B, H), dtype=dtype)         # h_buf[0] = h0, h_buf[t + 1] = h_t
    h_buf[0] = h0
    s_n = np.empty((T, B, H), dtype=dtype)
    v_hat = np.empty((T, B, GATES * H), dtype=dtype)
    v_rstd = np.empty((T, B, 1), dtype=dtype)
    if kernel.covers(gates, h_buf, w_hh, ln_weight_hh, *([] if bias_hh is None else [bias_hh]),
                     precision=precision):
        kernel.ln_forward(KIND, gates, h_buf[0], h_buf[1:], w_hh, v_hat, v_rstd, ln_weight_hh,
                          eps=EPS, b_hh=bias_hh, s_n=s_n,
                          precision=precision)  # the loop below, compiled
    else:
        s = np.empty((B, GATES * H), dtype=dtype)
        w_hh_t = w_hh.T if precision == "fp32" else bf16_round(w_hh.T)
        for t in range(T):
            _cell(gates[t], h_buf[t], w_hh_t, (ln_weight_hh, bias_hh), s,
                  out=(h_buf[t + 1], v_hat[t], v_rstd[t]), precision=precision)
            s_n[t] = s[:, 2 * H:]
    cache = Cache(x=x, gates=gates, s_n=s_n, h_buf=h_buf, u_hat=u_hat, u_rstd=u_rstd,
                  v_hat=v_hat, v_rstd=v_rstd, w_ih=w_ih, w_hh=w_hh, ln_weight_ih=ln_weight_ih,
                  ln_weight_hh=ln_weight_hh, has_bias_ih=bias_ih is not None,
                  has_bias_hh=bias_hh is not None, precision=precision)
    return h_buf[1:], (h_buf[-1],), cache


def _cell(a: np.ndarray, h: np.ndarray, w_hh_t: np.ndarray, own: tuple, s: np.ndarray,
          out: tuple, precision: str = "fp32") -> None:
    """One step in place: ``a`` (B, 3H) holds a_t and becomes [r_t | u_t | n_t], ``s`` (B, 3H)
    receives s_t; ``w_hh_t`` is W~_hh^T; ``own`` = (g_hh, b_hh or None); ``out`` = (h_t, v^_t,
    rstd_v), written."""
    H = h.shape[1]
    h_new, v, v_rstd = out
    step_product(h, w_hh_t, v, precision)               # v_t = h_{t-1} W~_hh^T
    v_rstd[...] = scale(v)                               # v^_t = v_t rstd_v
    affine(v, *own, out=s)                               # s_t = v^_t g_hh + b_hh
    a[:, :2 * H] += s[:, :2 * H]
    sigmoid_(a[:, :2 * H])                              # r_t, u_t = sigmoid(a_t + s_t) (r, z)
    r, u, n = a[:, :H], a[:, H:2 * H], a[:, 2 * H:]
    n += r * s[:, 2 * H:]
    np.tanh(n, out=n)                                    # n_t = tanh(a^n_t + r_t * s^n_t)
    np.subtract(h, n, out=h_new)
    h_new *= u
    h_new += n                                           # h_t = n_t + u_t * (h_{t-1} - n_t)


class _Factors(NamedTuple):
    """What the backward step reads that does not depend on the incoming gradient, all T; the
    equation each serves."""

    K: np.ndarray        # (T, B, 3, H): da_t = dh_t * K_t                                (1)
    KG: np.ndarray       # (T, B, 3, H): dv^_t = ds_t g_hh = dh_t * KG_t                  (2)
    mean2: np.ndarray    # (T, B, H): mean(dv^_t v^_t) = dh_t . mean2_t                   (3)
    u: np.ndarray        # (T, B, H): u_t                                                 (4)


def _factors(cache: Cache) -> _Factors:
    """The gradient-free factors of (1)-(4), for every step at once."""
    T, B, GH = cache.gates.shape
    H = GH // GATES
    G3 = cache.gates.reshape(T, B, GATES, H)
    r, u, n = G3[:, :, 0], G3[:, :, 1], G3[:, :, 2]
    K = np.empty((T, B, GATES, H), dtype=cache.gates.dtype)
    np.multiply(1.0 - u, 1.0 - n * n, out=K[:, :, 2])                   # (1): da^n / dh
    np.multiply(cache.h_buf[:-1] - n, u * (1.0 - u), out=K[:, :, 1])     # (1): da^z / dh
    np.multiply(K[:, :, 2], cache.s_n * r * (1.0 - r), out=K[:, :, 0])   # (1): da^r / dh
    KG = K * cache.ln_weight_hh.reshape(GATES, H)        # dv^_t / dh_t = ds_t g_hh / dh_t (2)
    KG[:, :, 2] *= r
    mean2 = np.einsum("tbgh,tbgh->tbh", KG, cache.v_hat.reshape(T, B, GATES, H))
    mean2 /= GH
    return _Factors(K=K, KG=KG, mean2=mean2, u=np.ascontiguousarray(u))


def backward(
    dhs: np.ndarray | Upstream | None,
    dstate_n: tuple[np.ndarray | None] | None,
    cache: Cache,
    truncate: int | None = None,
    need_dx: bool = True,
) -> tuple[np.ndarray | None, tuple[np.ndarray], dict[str, np.ndarray]]:
    """BPTT from upstream gradients on every output ``dhs`` (T, B, H) and on ``(h_n,)``.

    Returns ``(dx, (dh0,), grads)``: dx (T, B, I) (None for token-id input or when not
    ``need_dx``), dh0 (B, H), and grads with keys ``weight_ih, weight_hh, ln_weight_ih,
    ln_weight_hh`` (+ ``bias_ih``, ``bias_hh`` for the biases the layer has). ``truncate=k``
    lets the loss at step t reach back through at most k recurrent steps.
    """
    gates = cache.gates
    T, B, GH = gates.shape
    H = GH // GATES
    dtype = gates.dtype
    dstate_n = check_state_parts(KIND, dstate_n, B, H, dtype, names="d{}_n")
    dhs = upstream_array(dhs, T, B, H, dtype)           # a head's lazy gradient, all rows
    out, dstate0 = compiled_or_loop(
        OPS, lambda: _compiled_loop(cache, dhs, dstate_n),  # the steps of _step, compiled
        lambda: _step(_factors(cache), cache), dhs, dstate_n, T, truncate, 2 * GH)
    da, dv = out[..., :GH], out[..., GH:]
    ds = da.copy()
    ds[..., 2 * H:] *= gates[..., :H]                    # ds_t = [da^r_t | da^z_t | da^n_t r_t]

    h_prev = cache.h_buf[:-1] * cache.v_rstd             # rstd_v h_{t-1}: dv_t = rstd_v * dv
    # dW_hh = centred(sum_t dv_t^T h_{t-1})
    grads = {"weight_hh": centred(prev_weight_grad(dv, h_prev, cache.precision))}
    grads["ln_weight_hh"] = column_dot(ds, cache.v_hat)  # dg_hh = sum_t sum_b ds_t v^_t
    if cache.has_bias_ih:
        grads["bias_ih"] = da.sum(axis=(0, 1))           # db_ih = sum_t sum_b da_t
    if cache.has_bias_hh:
        grads["bias_hh"] = ds.sum(axis=(0, 1))           # db_hh = sum_t sum_b ds_t
    # dg_ih = sum_t sum_b da_t u^_t
    # du_t = rstd_u (du^ - u^_t mean(du^ u^_t)),  du^ = da_t g_ih
    # (both made where dv was, spent by dW_hh; da becomes du^)
    grads["ln_weight_ih"], du = gain_and_input_grads_(da, cache.u_hat, cache.u_rstd,
                                                      cache.ln_weight_ih, dv)
    dx, dw_ih = project_inputs_backward(du, cache.x, cache.w_ih, need_dx,
                                        cache.precision)  # dx_t = du_t W~_ih
    grads["weight_ih"] = centred(dw_ih)                  # dW_ih = centred(sum_t du_t^T x_t)
    return dx, dstate0, grads


def _compiled_loop(cache: Cache, dhs: np.ndarray | None, dstate_n: tuple) -> tuple | None:
    """The backward recursion without truncation in the compiled kernel: ``(out (T, B, 6H),
    (dh0,))`` as :func:`bptt.engine.recursion.bptt_loop` gives them from :func:`_step`, or None
    where the kernel does not compute on these arrays."""
    if not kernel.covers(cache.gates, cache.h_buf, cache.w_hh, cache.ln_weight_hh, *dstate_n,
                         *([] if dhs is None else [dhs]), precision=cache.precision):
        return None
    T, B, GH = cache.gates.shape
    out = np.empty((T, B, 2 * GH), dtype=cache.gates.dtype)
    dh = np.array(dstate_n[0], dtype=out.dtype)         # in: dL/dh_n; out: dL/dh_0
    kernel.ln_backward(KIND, cache.w_hh, out=out, carry_h=dh, gates=cache.gates,
                       v=cache.v_hat, v_rstd=cache.v_rstd, g_hh=cache.ln_weight_hh,
                       h0=cache.h_buf[0], hs=cache.h_buf[1:], s_n=cache.s_n, dhs=dhs,
                       precision=cache.precision)
    return out, (dh,)


def _step(k: _Factors, cache: Cache):
    """The one-step backward :func:`bptt.engine.recursion.bptt_loop` runs: (1)-(4) at step t
    for every pending age at once, writing [da_t | dv_t / rstd_v] (A, B, 6H)."""
    w_hh, v_hat, v_rstd = cache.w_hh, cache.v_hat, cache.v_rstd
    prec = cache.precision
    if prec == "bf16":
        w_hh = bf16_round(w_hh)                          # rounded once for every step
    scratch: dict[int, np.ndarray] = {}

    def step(t: int, dstate: tuple, out: np.ndarray, prev_out: tuple) -> None:
        (dh,) = dstate                                   # (A, B, H): dh_t by age
        A, B, H = dh.shape
        GH = GATES * H
        if A not in scratch:
            scratch[A] = np.empty((A, B, GH), dtype=dh.dtype)
        dh4 = dh[:, :, None, :]
        # da^n_t = dh_t (1 - u_t)(1 - n_t^2), da^z_t = ..., da^r_t = da^n_t s^n_t r_t (1 - r_t)
        np.multiply(dh4, k.K[t], out=out[..., :GH].reshape(A, B, GATES, H))
        dv = out[..., GH:]
        # dv_t = rstd_v (dv^ - v^_t mean(dv^ v^_t)),  dv^ = ds_t g_hh  (kept without rstd_v)
        np.multiply(dh4, k.KG[t], out=dv.reshape(A, B, GATES, H))
        dv -= np.multiply(v_hat[t], rowdot(dh, k.mean2[t])[..., None], out=scratch[A])
        (dh_prev,) = prev_out
        K = dh_prev.shape[0]
        if K:                                            # dh_{t-1} = dv_t W~_hh + dh_t * u_t
            step_product(dv[:K].reshape(K * B, GH), w_hh, dh_prev.reshape(K * B, H), prec)
            dh_prev *= v_rstd[t]
            dh_prev += dh[:K] * k.u[t]

    return step


def step(
    x: np.ndarray,
    state: tuple[np.ndarray],
    weight_ih: np.ndarray,
    weight_hh: np.ndarray,
    bias_ih: np.ndarray | None = None,
    bias_hh: np.ndarray | None = None,
    ln_weight_ih: np.ndarray | None = None,
    ln_weight_hh: np.ndarray | None = None,
    precision: str = "fp32",
) -> tuple[np.ndarray]:
    """One step, no checks and no cache (generation): (h_t,) from x_t and (h_{t-1},), (B, H).

    ``x`` is (B,) token ids or (B, I) features; the same operations as one step of
    :func:`forward`.
    """
    (h,) = state
    B, H = h.shape
    w_ih = centred(weight_ih)
    if x.dtype.kind in "iu":
        u = w_ih.T[x]                                    # one-hot x_t W~_ih^T: a row gather
    else:
        u = matmul(x.astype(w_ih.dtype, copy=False), w_ih.T, precision=precision)
    scale(u)                                             # u^_t
    a = affine(u, ln_weight_ih, bias_ih)                 # a_t = u^_t g_ih + b_ih
    out = (np.empty((B, H), dtype=h.dtype), np.empty((B, GATES * H), dtype=h.dtype),
           np.empty((B, 1), dtype=h.dtype))
    w_hh_t = centred(weight_hh).T
    _cell(a, h, w_hh_t if precision == "fp32" else bf16_round(w_hh_t), (ln_weight_hh, bias_hh),
          np.empty((B, GATES * H), dtype=h.dtype), out)
    return (out[0],)
