r"""Layer-normalised LSTM layer, one direction: forward over a whole sequence and its BPTT.

Ba, Kiros & Hinton (2016), as haste's LayerNormLSTM formulates it: the input pre-activations
and the recurrent ones are each normalised over all 4H gate units together, with a gain, and
the cell state is normalised before the output tanh, with a gain and a bias
(docs/bptt_layernorm.md, "LN-LSTM"). LN(y) is (y - mean(y)) / sqrt(var(y) + eps) over the last
axis (:mod:`bptt.engine.numpy.layernorm`); gate slices of width H in torch's order i, f, g, o:

    u^_t = LN(x_t W_ih^T),   v^_t = LN(h_{t-1} W_hh^T)                   (B, 4H)
    z_t  = u^_t * g_ih + b_ih + v^_t * g_hh + b_hh                      = [z^i | z^f | z^g | z^o]
    i_t = sigmoid(z^i_t),  f_t = sigmoid(z^f_t),  g_t = tanh(z^g_t),  o_t = sigmoid(z^o_t)
    c_t = f_t * c_{t-1} + i_t * g_t
    k_t = LN(c_t) * g_c + b_c           (B, H): c^_t = LN(c_t)
    h_t = o_t * tanh(k_t)                                   h_{-1} = h0,  c_{-1} = c0

g_ih, g_hh (4H,) are ``layernorm_ih_l{k}.weight``, ``layernorm_hh_l{k}.weight``; g_c, b_c (H,)
``layernorm_c_l{k}.weight``, ``layernorm_c_l{k}.bias``. The biases of the two gate-wide layer
norms are torch's ``bias_ih``, ``bias_hh``, added after the normalisation (a second bias there
would be the same parameter twice). The recurrence carries c_t itself: only the output reads
LN(c_t).

The centring of the two products is folded into their weights: with W~ = W - (the mean of W's
4H rows), ``x_t W~_ih^T`` is ``x_t W_ih^T`` minus its mean, so u^_t = u_t rstd_u with
u_t = x_t W~_ih^T and rstd_u = 1 / sqrt(mean(u_t^2) + eps), and likewise v^_t = v_t rstd_v
with v_t = h_{t-1} W~_hh^T (:mod:`bptt.engine.numpy.layernorm`).

Backward, with dh_t and dc_t the total gradients reaching h_t and c_t:

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

The gates' factors and those of (1)-(2) are computed for all steps at once before the loop. A
step keeps dv_t / rstd_v (width 4H) and applies rstd_v to the product's (B, H) rows instead,
(5); (6) takes it as rstd_v h_{t-1}. The step writes [dz_t | dv_t / rstd_v | dk_t] (width 9H),
so the loop's sum over truncation ages gives all three; (6)-(11) are a few products and
reductions over all steps after it.

Truncation (``truncate = k``): one transition is one step of the pair (h, c), as the LSTM's;
both paths are cut together after k transitions.

Symbols: T steps, B batch, I input size, H hidden size.
  x       (T, B, I) float, or (T, B) integer token ids (one-hot input; projected as a gather)
  state0  None (zeros) or the pair (h0, c0), each (B, H) or None (zeros)
  hs      (T, B, H): every hidden state; hs[-1] is h_n
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ...cells import LNLSTM as KIND
from .. import kernel
from ..layout import check_gate_weights, check_own_params, sum_biases
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
    normalize,
    scale,
    scale_backward,
)

GATES = KIND.num_gates
PRECISIONS = ("fp32", "bf16")
"""The precisions this cell implements (``bptt.engine.numpy.stack``)."""


class Cache(NamedTuple):
    """What :func:`forward` keeps for :func:`backward`."""

    x: np.ndarray             # (T, B, I) floats or (T, B) token ids
    gates: np.ndarray         # (T, B, 4H): [i_t | f_t | g_t | o_t], after their activations
    h_buf: np.ndarray         # (T + 1, B, H): h0, then h_t in row t + 1
    c_buf: np.ndarray         # (T + 1, B, H): c0, then c_t in row t + 1
    u_hat: np.ndarray         # (T, B, 4H): u^_t = LN(x_t W_ih^T)
    u_rstd: np.ndarray        # (T, B, 1): its 1 / sqrt(var + eps)
    v_hat: np.ndarray         # (T, B, 4H): v^_t = LN(h_{t-1} W_hh^T)
    v_rstd: np.ndarray        # (T, B, 1)
    c_hat: np.ndarray         # (T, B, H): c^_t = LN(c_t)
    c_rstd: np.ndarray        # (T, B, 1)
    tanh_k: np.ndarray        # (T, B, H): tanh(k_t), k_t = c^_t g_c + b_c
    w_ih: np.ndarray          # (4H, I): W~_ih, W_ih centred over its rows
    w_hh: np.ndarray          # (4H, H): W~_hh
    ln_weight_ih: np.ndarray  # (4H,) g_ih
    ln_weight_hh: np.ndarray  # (4H,) g_hh
    ln_weight_c: np.ndarray   # (H,) g_c
    has_bias_ih: bool
    has_bias_hh: bool
    has_ln_bias_c: bool
    precision: str = "fp32"   # fp32 | bf16: the products' operands


def forward(
    x: np.ndarray,
    state0: tuple[np.ndarray | None, np.ndarray | None] | None,
    weight_ih: np.ndarray,
    weight_hh: np.ndarray,
    bias_ih: np.ndarray | None = None,
    bias_hh: np.ndarray | None = None,
    ln_weight_ih: np.ndarray | None = None,
    ln_weight_hh: np.ndarray | None = None,
    ln_weight_c: np.ndarray | None = None,
    ln_bias_c: np.ndarray | None = None,
    precision: str = "fp32",
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], Cache]:
    """Run the layer over ``x``; return ``(hs, (h_n, c_n), cache)``, hs (T, B, H). The gains
    are required (``bptt.model`` gives them), the biases optional."""
    check_precision(precision, weight_hh)
    H = check_gate_weights(KIND, weight_ih, weight_hh, bias_ih, bias_hh)
    check_own_params(KIND, H, {"ln_weight_ih": ln_weight_ih, "ln_weight_hh": ln_weight_hh,
                               "ln_weight_c": ln_weight_c, "ln_bias_c": ln_bias_c})
    T, B = check_sequence(x, weight_ih.shape[1])
    dtype = weight_hh.dtype
    h0, c0 = check_state_parts(KIND, state0, B, H, dtype)

    w_ih, w_hh = centred(weight_ih), centred(weight_hh)  # W~: the centring in the products
    # (T, B, 4H): u_t = x_t W~_ih^T, all t
    u_hat = project_inputs(x, w_ih, None, precision=precision)
    u_rstd = scale(u_hat)                                # u^_t = u_t rstd_u = LN(x_t W_ih^T)
    gates = affine(u_hat, ln_weight_ih, sum_biases(bias_ih, bias_hh))  # u^_t g_ih + b, all t
    h_buf = np.empty((T + 1, B, H), dtype=dtype)         # h_buf[0] = h0, h_buf[t + 1] = h_t
    c_buf = np.empty((T + 1, B, H), dtype=dtype)         # c_buf[0] = c0, c_buf[t + 1] = c_t
    h_buf[0], c_buf[0] = h0, c0
    v_hat = np.empty((T, B, GATES * H), dtype=dtype)
    v_rstd = np.empty((T, B, 1), dtype=dtype)
    c_hat = np.empty((T, B, H), dtype=dtype)
    c_rstd = np.empty((T, B, 1), dtype=dtype)
    tanh_k = np.empty((T, B, H), dtype=dtype)
    own = (ln_weight_hh, ln_weight_c, ln_bias_c)
    if kernel.covers(gates, h_buf, c_buf, w_hh, *(p for p in own if p is not None),
                     precision=precision):
        kernel.ln_forward(KIND, gates, h_buf[0], h_buf[1:], w_hh, v_hat, v_rstd, ln_weight_hh,
                          eps=EPS, c0=c_buf[0], cs=c_buf[1:], c_hat=c_hat, c_rstd=c_rstd,
                          tanh_k=tanh_k, g_c=ln_weight_c, b_c=ln_bias_c,
                          precision=precision)  # the loop below, compiled
    else:
        scratch = (np.empty((B, GATES * H), dtype=dtype), np.empty((B, H), dtype=dtype))
        w_hh_t = w_hh.T if precision == "fp32" else bf16_round(w_hh.T)
        for t in range(T):
            _cell(gates[t], h_buf[t], c_buf[t], w_hh_t, own, scratch,
                  out=(h_buf[t + 1], c_buf[t + 1], v_hat[t], v_rstd[t], c_hat[t], c_rstd[t],
                       tanh_k[t]), precision=precision)
    cache = Cache(x=x, gates=gates, h_buf=h_buf, c_buf=c_buf, u_hat=u_hat, u_rstd=u_rstd,
                  v_hat=v_hat, v_rstd=v_rstd, c_hat=c_hat, c_rstd=c_rstd, tanh_k=tanh_k,
                  w_ih=w_ih, w_hh=w_hh, ln_weight_ih=ln_weight_ih, ln_weight_hh=ln_weight_hh,
                  ln_weight_c=ln_weight_c, has_bias_ih=bias_ih is not None,
                  has_bias_hh=bias_hh is not None, has_ln_bias_c=ln_bias_c is not None,
                  precision=precision)
    return h_buf[1:], (h_buf[-1], c_buf[-1]), cache


def _cell(z: np.ndarray, h: np.ndarray, c_prev: np.ndarray, w_hh_t: np.ndarray, own: tuple,
          scratch: tuple, out: tuple, precision: str = "fp32") -> None:
    """One step in place: ``z`` (B, 4H) holds u^_t g_ih + b and becomes [i_t | f_t | g_t |
    o_t]; ``w_hh_t`` is W~_hh^T; ``own`` = (g_hh, g_c, b_c or None); ``scratch`` two arrays
    (B, 4H), (B, H); ``out`` = (h_t, c_t, v^_t, rstd_v, c^_t, rstd_c, tanh(k_t)), written."""
    H = h.shape[1]
    g_hh, g_c, b_c = own
    rec, ig = scratch
    h_new, c, v, v_rstd, c_hat, c_rstd, tanh_k = out
    step_product(h, w_hh_t, v, precision)               # v_t = h_{t-1} W~_hh^T
    v_rstd[...] = scale(v)                               # v^_t = v_t rstd_v
    np.multiply(v, g_hh, out=rec)
    z += rec                                             # z_t = u^_t g_ih + b + v^_t g_hh
    sigmoid_(z[:, :2 * H])                              # i_t, f_t = sigmoid(z^i_t, z^f_t)
    np.tanh(z[:, 2 * H:3 * H], out=z[:, 2 * H:3 * H])    # g_t = tanh(z^g_t)
    sigmoid_(z[:, 3 * H:])                              # o_t = sigmoid(z^o_t)
    i, f, g, o = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
    np.multiply(f, c_prev, out=c)
    np.multiply(i, g, out=ig)
    c += ig                                              # c_t = f_t * c_{t-1} + i_t * g_t
    c_rstd[...] = normalize(c, out=c_hat)                # c^_t = LN(c_t)
    affine(c_hat, g_c, b_c, out=tanh_k)                  # k_t = c^_t g_c + b_c
    np.tanh(tanh_k, out=tanh_k)
    np.multiply(o, tanh_k, out=h_new)                    # h_t = o_t * tanh(k_t)


class _Factors(NamedTuple):
    """What the backward step reads that does not depend on the incoming gradient, all T; the
    equation each serves."""

    F: np.ndarray        # (T, B, 4, H): the gates', dz_t = [dc_t | dc_t | dc_t | dh_t] * F (3)
    f: np.ndarray        # (T, B, H): f_t                                                  (5)
    dk: np.ndarray       # (T, B, H): o (1 - tanh(k)^2), so that dk_t = dh_t * dk          (1)
    c_means: np.ndarray  # (T, B, H, 2): [1/H | c^/H], dc^ . them: mean(dc^), mean(dc^ c^_t) (2)


def _factors(cache: Cache) -> _Factors:
    """The gradient-free factors of (1)-(3) and (5), for every step at once (a few large
    element-wise passes instead of many small ones inside the loop)."""
    T, B, GH = cache.gates.shape
    H = GH // GATES
    G4 = cache.gates.reshape(T, B, GATES, H)
    i, f, g, o = G4[:, :, 0], G4[:, :, 1], G4[:, :, 2], G4[:, :, 3]
    tanh_k = cache.tanh_k
    F = np.empty((T, B, GATES, H), dtype=cache.gates.dtype)
    np.multiply(g, i * (1.0 - i), out=F[:, :, 0])
    np.multiply(cache.c_buf[:-1], f * (1.0 - f), out=F[:, :, 1])
    np.multiply(i, 1.0 - g * g, out=F[:, :, 2])
    np.multiply(tanh_k, o * (1.0 - o), out=F[:, :, 3])
    dk = np.multiply(tanh_k, tanh_k)
    np.subtract(1.0, dk, out=dk)
    dk *= o
    c_means = np.empty((T, B, H, 2), dtype=F.dtype)
    c_means[..., 0] = 1.0 / H
    np.multiply(cache.c_hat, 1.0 / H, out=c_means[..., 1])
    return _Factors(F=F, f=np.ascontiguousarray(f), dk=dk, c_means=c_means)


def backward(
    dhs: np.ndarray | Upstream | None,
    dstate_n: tuple[np.ndarray | None, np.ndarray | None] | None,
    cache: Cache,
    truncate: int | None = None,
    need_dx: bool = True,
) -> tuple[np.ndarray | None, tuple[np.ndarray, np.ndarray], dict[str, np.ndarray]]:
    """BPTT from upstream gradients on every output ``dhs`` (T, B, H) and on ``(h_n, c_n)``.

    ``dstate_n`` is None or the pair ``(dh_n, dc_n)``, each (B, H) or None (zeros).
    Returns ``(dx, (dh0, dc0), grads)``: dx (T, B, I) (None for token-id input or when not
    ``need_dx``), and grads with keys ``weight_ih, weight_hh, ln_weight_ih, ln_weight_hh,
    ln_weight_c`` (+ ``bias_ih``, ``bias_hh``, ``ln_bias_c`` for the biases the layer has).
    ``truncate=k`` cuts both the h and the c path after k recurrent steps.
    """
    T, B, GH = cache.gates.shape
    H = GH // GATES
    dtype = cache.gates.dtype
    dstate_n = check_state_parts(KIND, dstate_n, B, H, dtype, names="d{}_n")
    dhs = upstream_array(dhs, T, B, H, dtype)           # a head's lazy gradient, all rows
    out, dstate0 = compiled_or_loop(
        OPS, lambda: _compiled_loop(cache, dhs, dstate_n),  # the steps of _step, compiled
        lambda: _step(_factors(cache), cache), dhs, dstate_n, T, truncate, 2 * GH + H)
    dz, dv, dk = out[..., :GH], out[..., GH:2 * GH], out[..., 2 * GH:]

    h_prev = cache.h_buf[:-1] * cache.v_rstd             # rstd_v h_{t-1}: dv_t = rstd_v * dv
    # dW_hh = centred(sum_t dv_t^T h_{t-1})
    grads = {"weight_hh": centred(prev_weight_grad(dv, h_prev, cache.precision))}
    if cache.has_bias_ih or cache.has_bias_hh:
        db = dz.sum(axis=(0, 1))                         # db_ih = db_hh = sum_t sum_b dz_t
        if cache.has_bias_ih:
            grads["bias_ih"] = db
        if cache.has_bias_hh:
            grads["bias_hh"] = db.copy() if cache.has_bias_ih else db
    grads["ln_weight_hh"] = column_dot(dz, cache.v_hat)  # dg_hh = sum_t sum_b dz_t v^_t
    # dg_ih = sum_t sum_b dz_t u^_t
    # du_t = rstd_u (du^ - u^_t mean(du^ u^_t)),  du^ = dz_t g_ih
    # (both made where dv was, spent by dW_hh; dz becomes du^)
    grads["ln_weight_ih"], du = gain_and_input_grads_(dz, cache.u_hat, cache.u_rstd,
                                                      cache.ln_weight_ih, dv)
    dx, dw_ih = project_inputs_backward(du, cache.x, cache.w_ih, need_dx,
                                        cache.precision)  # dx_t = du_t W~_ih
    grads["weight_ih"] = centred(dw_ih)                  # dW_ih = centred(sum_t du_t^T x_t)
    grads["ln_weight_c"] = column_dot(dk, cache.c_hat)  # dg_c = sum_t sum_b dk_t c^_t
    if cache.has_ln_bias_c:
        grads["ln_bias_c"] = dk.sum(axis=(0, 1))         # db_c = sum_t sum_b dk_t
    return dx, dstate0, grads


def _compiled_loop(cache: Cache, dhs: np.ndarray | None, dstate_n: tuple) -> tuple | None:
    """The backward recursion without truncation in the compiled kernel: ``(out (T, B, 9H),
    (dh0, dc0))`` as :func:`bptt.engine.recursion.bptt_loop` gives them from :func:`_step`, or
    None where the kernel does not compute on these arrays."""
    own = [cache.ln_weight_hh, cache.ln_weight_c]
    if not kernel.covers(cache.gates, cache.h_buf, cache.c_buf, cache.w_hh, *own, *dstate_n,
                         *([] if dhs is None else [dhs]), precision=cache.precision):
        return None
    T, B, GH = cache.gates.shape
    out = np.empty((T, B, 2 * GH + GH // GATES), dtype=cache.gates.dtype)
    dh, dc = (np.array(d, dtype=out.dtype) for d in dstate_n)  # in: dL/d(h_n, c_n); out: h0, c0
    kernel.ln_backward(KIND, cache.w_hh, out=out, carry_h=dh, carry_c=dc, gates=cache.gates,
                       v=cache.v_hat, v_rstd=cache.v_rstd, g_hh=cache.ln_weight_hh,
                       c0=cache.c_buf[0], cs=cache.c_buf[1:], c_hat=cache.c_hat,
                       c_rstd=cache.c_rstd, tanh_k=cache.tanh_k, g_c=cache.ln_weight_c, dhs=dhs,
                       precision=cache.precision)
    return out, (dh, dc)


def _step(k: _Factors, cache: Cache):
    """The one-step backward :func:`bptt.engine.recursion.bptt_loop` runs: (1)-(5) at step t
    for every pending age at once, writing [dz_t | dv_t / rstd_v | dk_t] (A, B, 9H)."""
    w_hh, g_hh, v_hat, v_rstd = cache.w_hh, cache.ln_weight_hh, cache.v_hat, cache.v_rstd
    prec = cache.precision
    if prec == "bf16":
        w_hh = bf16_round(w_hh)                          # rounded once for every step
    g_c, c_hat, c_rstd = cache.ln_weight_c, cache.c_hat, cache.c_rstd
    scratch: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def step(t: int, dstate: tuple, out: np.ndarray, prev_out: tuple) -> None:
        dh, dc = dstate                                  # (A, B, H): dh_t, dc_{t+1} f_{t+1}
        A, B, H = dh.shape
        GH = GATES * H
        if A not in scratch:
            scratch[A] = (np.empty_like(dh), np.empty((A, B, GH), dtype=dh.dtype))
        dc_h, tmp = scratch[A]
        dz, dv, dk = out[..., :GH], out[..., GH:2 * GH], out[..., 2 * GH:]
        np.multiply(dh, k.dk[t], out=dk)                 # dk_t = dh_t * o_t (1 - tanh(k_t)^2)
        # dc_t = dc_{t+1} f_{t+1} + rstd_c (dc^ - mean(dc^) - c^_t mean(dc^ c^_t))
        np.multiply(dk, g_c, out=dc_h)                   # dc^
        means = np.matmul(dc_h[:, :, None, :], k.c_means[t])  # (A, B, 1, 2)
        dc_h -= means[..., 0]
        dc_h -= np.multiply(c_hat[t], means[..., 1], out=tmp[..., :H])
        dc_h *= c_rstd[t]
        dc += dc_h
        dz4 = dz.reshape(A, B, GATES, H)
        # dz^i_t = dc_t g_t i_t (1 - i_t), dz^f_t = dc_t c_{t-1} f_t (1 - f_t), dz^g_t = ...
        np.multiply(dc[:, :, None, :], k.F[t][:, :3], out=dz4[:, :, :3])
        np.multiply(dh, k.F[t][:, 3], out=dz4[:, :, 3])  # dz^o_t = dh_t tanh(k_t) o_t (1 - o_t)
        # dv_t = rstd_v (dv^ - v^_t mean(dv^ v^_t)),  dv^ = dz_t g_hh  (kept without rstd_v)
        np.multiply(dz, g_hh, out=dv)
        scale_backward(dv, v_hat[t], tmp)
        dh_prev, dc_prev = prev_out
        K = dh_prev.shape[0]
        if K:                                            # dh_{t-1} = dv_t W~_hh,  dc_t f_t
            step_product(dv[:K].reshape(K * B, GH), w_hh, dh_prev.reshape(K * B, H), prec)
            dh_prev *= v_rstd[t]
            np.multiply(dc[:K], k.f[t], out=dc_prev)

    return step


def step(
    x: np.ndarray,
    state: tuple[np.ndarray, np.ndarray],
    weight_ih: np.ndarray,
    weight_hh: np.ndarray,
    bias_ih: np.ndarray | None = None,
    bias_hh: np.ndarray | None = None,
    ln_weight_ih: np.ndarray | None = None,
    ln_weight_hh: np.ndarray | None = None,
    ln_weight_c: np.ndarray | None = None,
    ln_bias_c: np.ndarray | None = None,
    precision: str = "fp32",
) -> tuple[np.ndarray, np.ndarray]:
    """One step, no checks and no cache (generation): (h_t, c_t) from x_t and (h_{t-1}, c_{t-1}).

    ``x`` is (B,) token ids or (B, I) features; the same operations as one step of
    :func:`forward`.
    """
    h, c = state
    B, H = h.shape
    w_ih = centred(weight_ih)
    if x.dtype.kind in "iu":
        u = w_ih.T[x]                                    # one-hot x_t W~_ih^T: a row gather
    else:
        u = matmul(x.astype(w_ih.dtype, copy=False), w_ih.T, precision=precision)
    scale(u)                                             # u^_t
    z = affine(u, ln_weight_ih, sum_biases(bias_ih, bias_hh))
    out = tuple(np.empty((B, n), dtype=h.dtype) for n in (H, H, GATES * H, 1, H, 1, H))
    scratch = (np.empty((B, GATES * H), dtype=h.dtype), np.empty((B, H), dtype=h.dtype))
    w_hh_t = centred(weight_hh).T
    _cell(z, h, c, w_hh_t if precision == "fp32" else bf16_round(w_hh_t),
          (ln_weight_hh, ln_weight_c, ln_bias_c), scratch, out, precision)
    return out[0], out[1]
