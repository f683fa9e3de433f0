r"""LSTM layer, one direction: forward over a whole sequence and its BPTT (torch's equations).

Forward, in the code's row-vector orientation (docs/bptt_lstm_gru.md, section "LSTM"), with the
four gate slices of width H in torch's order i, f, g, o:

    z_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh         (B, 4H) = [z^i | z^f | z^g | z^o]
    i_t = sigmoid(z^i_t),  f_t = sigmoid(z^f_t),  g_t = tanh(z^g_t),  o_t = sigmoid(z^o_t)
    c_t = f_t * c_{t-1} + i_t * g_t
    m_t = o_t * tanh(c_t)                                    h_{-1} = h0,  c_{-1} = c0
    h_t = m_t W_hr^T   with a projection (torch's proj_size P < H: W_hr (P, H)), else h_t = m_t

Backward, with dh_t and dc_t the total gradients reaching h_t and c_t (from the loss at t and
from step t+1):

    dh_t     = dL/dh_t + dz_{t+1} W_hh
    dm_t     = dh_t W_hr      (with a projection; else dm_t = dh_t)
    dc_t     = dc_{t+1} * f_{t+1} + dm_t * o_t * (1 - tanh(c_t)^2)
    dz^i_t   = dc_t * g_t * i_t (1 - i_t)
    dz^f_t   = dc_t * c_{t-1} * f_t (1 - f_t)
    dz^g_t   = dc_t * i_t * (1 - g_t^2)
    dz^o_t   = dm_t * tanh(c_t) * o_t (1 - o_t)
    dW_hh    = sum_t dz_t^T h_{t-1}
    dW_ih    = sum_t dz_t^T x_t
    db_ih    = db_hh = sum_t sum_b dz_t
    dx_t     = dz_t W_ih,     dh0 = dz_0 W_hh,     dc0 = dc_0 * f_0
    dW_hr    = sum_t dh_t^T m_t

For dW_hr the one-step backward writes dh_t beside dz_t (the last P columns of the rows the
recursion sums over ages), so it is one product after the loop.

Truncation (``truncate = k``): the gradient of the loss at step t crosses at most k recurrent
transitions, and a transition is one step of the pair (h, c): both paths h_t -> h_{t-1} (through
dz_t W_hh) and c_t -> c_{t-1} (through dc_t * f_t) count as one transition and are dropped
together. The loss at t therefore reaches z_t .. z_{t-k} and neither h_{t-k-1} nor c_{t-k-1};
it equals autograd on the graph where the state (h, c) at step t-k-1 is detached. The upstream
gradients on h_n and c_n enter at age 0 of the last step, like the loss at T-1.

The compiled kernel (``bptt.engine.kernel``) runs the loops over time -- the same equations,
every step's product and gates fused -- where it covers the layer (float32 or float64, no
projection; the backward without truncation); this Python code runs the rest. Precision
``bf16``: every matrix product on bfloat16 operands with float32 accumulation; states, gates,
gradients and weights stay float32.

Symbols: T steps, B batch, I input size, H hidden size, S the size of h: P with a projection,
else H.
  x       (T, B, I) float, or (T, B) integer token ids (one-hot input; projected as a gather)
  state0  None (zeros) or the pair (h0, c0), (B, S) and (B, H), either None (zeros)
  hs      (T, B, S): every hidden state; hs[-1] is h_n
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ...cells import LSTM as KIND
from .. import kernel
from ..layout import check_gate_weights, sum_biases
from ..products import bf16_round, matmul
from ..recursion import bptt_loop, effective_truncate
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

GATES = KIND.num_gates
PRECISIONS = ("fp32", "bf16")
"""The precisions this cell implements (``bptt.engine.numpy.stack``)."""


class Cache(NamedTuple):
    """What :func:`forward` keeps for :func:`backward`."""

    x: np.ndarray            # (T, B, I) floats or (T, B) token ids
    gates: np.ndarray        # (T, B, 4H): [i_t | f_t | g_t | o_t], after their activations
    h_buf: np.ndarray        # (T + 1, B, S): h0, then h_t in row t + 1
    c_buf: np.ndarray        # (T + 1, B, H): c0, then c_t in row t + 1
    tanh_cs: np.ndarray      # (T, B, H): tanh(c_t)
    ms: np.ndarray           # (T, B, H): m_t = o_t tanh(c_t) (the rows of h_buf without projection)
    weight_ih: np.ndarray    # (4H, I)
    weight_hh: np.ndarray    # (4H, S)
    weight_hr: np.ndarray | None  # (P, H) with a projection
    has_bias_ih: bool
    has_bias_hh: bool
    precision: str = "fp32"  # fp32 | bf16: the products' operands


def forward(
    x: np.ndarray,
    state0: tuple[np.ndarray | None, np.ndarray | None] | None,
    weight_ih: np.ndarray,
    weight_hh: np.ndarray,
    bias_ih: np.ndarray | None = None,
    bias_hh: np.ndarray | None = None,
    weight_hr: np.ndarray | None = None,
    precision: str = "fp32",
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], Cache]:
    """Run the layer over ``x``; return ``(hs, (h_n, c_n), cache)``, hs (T, B, S);
    ``weight_hr`` (P, H): the projection."""
    check_precision(precision, weight_hh)
    H = check_gate_weights(KIND, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr)
    T, B = check_sequence(x, weight_ih.shape[1])
    dtype = weight_hh.dtype
    S = weight_hh.shape[1]
    h0, c0 = check_state_parts(KIND, state0, B, (S, H), dtype)

    bias = sum_biases(bias_ih, bias_hh)
    # (T, B, 4H): x_t W_ih^T + b, all t
    gates = project_inputs(x, weight_ih, bias, precision=precision)
    h_buf = np.empty((T + 1, B, S), dtype=dtype)         # h_buf[0] = h0, h_buf[t + 1] = h_t
    c_buf = np.empty((T + 1, B, H), dtype=dtype)         # c_buf[0] = c0, c_buf[t + 1] = c_t
    h_buf[0], c_buf[0] = h0, c0
    hs, cs = h_buf[1:], c_buf[1:]
    ms = hs if weight_hr is None else np.empty((T, B, H), dtype=dtype)
    tanh_cs = np.empty((T, B, H), dtype=dtype)
    if weight_hr is None and kernel.covers(gates, h_buf, c_buf, weight_hh, precision=precision):
        kernel.forward(KIND, gates, h_buf[0], hs, weight_hh, c0=c_buf[0], cs=cs,
                       tanh_cs=tanh_cs, precision=precision)  # the loop below, compiled
    else:
        rec = np.empty((B, GATES * H), dtype=dtype)
        ig = np.empty((B, H), dtype=dtype)
        w_hh_t = weight_hh.T if precision == "fp32" else bf16_round(weight_hh.T)
        w_hr_t = None
        if weight_hr is not None:
            w_hr_t = weight_hr.T if precision == "fp32" else bf16_round(weight_hr.T)
        for t in range(T):
            z = gates[t]
            step_product(h_buf[t], w_hh_t, rec, precision)
            z += rec                                     # z_t = x_t W_ih^T + b + h_{t-1} W_hh^T
            sigmoid_(z[:, :2 * H])                      # i_t, f_t = sigmoid(z^i_t, z^f_t)
            np.tanh(z[:, 2 * H:3 * H], out=z[:, 2 * H:3 * H])  # g_t = tanh(z^g_t)
            sigmoid_(z[:, 3 * H:])                      # o_t = sigmoid(z^o_t)
            i, f, g, o = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
            c = cs[t]
            np.multiply(f, c_buf[t], out=c)
            np.multiply(i, g, out=ig)
            c += ig                                      # c_t = f_t * c_{t-1} + i_t * g_t
            np.tanh(c, out=tanh_cs[t])
            np.multiply(o, tanh_cs[t], out=ms[t])        # m_t = o_t * tanh(c_t)
            if w_hr_t is not None:
                step_product(ms[t], w_hr_t, hs[t], precision)  # h_t = m_t W_hr^T
    cache = Cache(x=x, gates=gates, h_buf=h_buf, c_buf=c_buf, tanh_cs=tanh_cs, ms=ms,
                  weight_ih=weight_ih, weight_hh=weight_hh, weight_hr=weight_hr,
                  has_bias_ih=bias_ih is not None, has_bias_hh=bias_hh is not None,
                  precision=precision)
    return hs, (hs[-1], cs[-1]), cache


def _factors(cache: Cache) -> np.ndarray:
    """The factors of the backward that do not depend on the incoming gradient, for all T at
    once (a few large element-wise passes instead of many small ones inside the loop), laid
    out as the gates, (T, B, 5, H) = [F^i | F^f | F^g | F^o | F^c]:

      dc_t  = dc_{t+1} f_{t+1} + dh_t * F^c_t,          F^c = o (1 - tanh(c)^2)
      dz^i, dz^f, dz^g = dc_t * [F^i | F^f | F^g],      F^i = g i (1 - i),
                                                        F^f = c_{t-1} f (1 - f), F^g = i (1 - g^2)
      dz^o  = dh_t * F^o,                               F^o = tanh(c) o (1 - o)
    """
    T, B, GH = cache.gates.shape
    H = GH // GATES
    G4 = cache.gates.reshape(T, B, GATES, H)
    i, f, g, o = G4[:, :, 0], G4[:, :, 1], G4[:, :, 2], G4[:, :, 3]
    tanh_cs = cache.tanh_cs
    F = np.empty((T, B, GATES + 1, H), dtype=cache.gates.dtype)
    np.subtract(1.0, i, out=F[:, :, 0])
    F[:, :, 0] *= i
    F[:, :, 0] *= g
    np.subtract(1.0, f, out=F[:, :, 1])
    F[:, :, 1] *= f
    F[:, :, 1] *= cache.c_buf[:-1]
    np.multiply(g, g, out=F[:, :, 2])
    np.subtract(1.0, F[:, :, 2], out=F[:, :, 2])
    F[:, :, 2] *= i
    np.subtract(1.0, o, out=F[:, :, 3])
    F[:, :, 3] *= o
    F[:, :, 3] *= tanh_cs
    np.multiply(tanh_cs, tanh_cs, out=F[:, :, 4])
    np.subtract(1.0, F[:, :, 4], out=F[:, :, 4])
    F[:, :, 4] *= o
    return F


def backward(
    dhs: np.ndarray | Upstream | None,
    dstate_n: tuple[np.ndarray | None, np.ndarray | None] | None,
    cache: Cache,
    truncate: int | None = None,
    need_dx: bool = True,
) -> tuple[np.ndarray | None, tuple[np.ndarray, np.ndarray], dict[str, np.ndarray]]:
    """BPTT from upstream gradients on every output ``dhs`` (T, B, S) and on ``(h_n, c_n)``.

    ``dstate_n`` is None or the pair ``(dh_n, dc_n)``, (B, S) and (B, H), each None (zeros).
    Returns ``(dx, (dh0, dc0), grads)``: dx (T, B, I) (None for token-id input or when not
    ``need_dx``), and grads with keys ``weight_ih, weight_hh`` (+ ``bias_ih``, ``bias_hh`` for
    the biases the layer has, + ``weight_hr`` with a projection). ``truncate=k`` cuts both the
    h and the c path after k recurrent steps (module docstring and
    :class:`bptt.engine.recursion.Recursion`).
    """
    T, B, GH = cache.gates.shape
    H = GH // GATES
    S = cache.h_buf.shape[2]
    dtype = cache.gates.dtype
    w_hr, prec = cache.weight_hr, cache.precision
    f = cache.gates.reshape(T, B, GATES, H)[:, :, 1]    # f_t
    k = effective_truncate(truncate, T)
    A = 1 if k is None else k + 1
    dc = np.empty((A, B, H), dtype=dtype)               # dc_t by age
    dm = None if w_hr is None else np.empty((A, B, H), dtype=dtype)  # dm_t by age

    def step(t: int, dstate: tuple, dz_out: np.ndarray, prev_out: tuple) -> None:
        dh, dc_next = dstate                             # (A, B, S), (A, B, H): dh_t and
        #                                                  dc_{t+1} f_{t+1}
        Ft = F[t]
        dz, dmt = dz_out, dh
        if w_hr is not None:
            dz = dz_out[..., :GH]
            dz_out[..., GH:] = dh                        # dh_t beside dz_t, for dW_hr
            step_product(dh.reshape(A * B, S), w_hr_r, dm.reshape(A * B, H), prec)
            dmt = dm                                     # dm_t = dh_t W_hr
        # dc_t = dc_{t+1} * f_{t+1} + dm_t * o_t * (1 - tanh(c_t)^2)
        np.multiply(dmt, Ft[:, 4], out=dc)
        np.add(dc, dc_next, out=dc)
        dz4 = dz.reshape(A, B, GATES, H)                 # a view (the last axis split)
        # dz^i_t = dc_t * g_t * i_t (1 - i_t)
        # dz^f_t = dc_t * c_{t-1} * f_t (1 - f_t)
        # dz^g_t = dc_t * i_t * (1 - g_t^2)
        np.multiply(dc[:, :, None, :], Ft[:, :3], out=dz4[:, :, :3])
        np.multiply(dmt, Ft[:, 3], out=dz4[:, :, 3])    # dz^o_t = dm_t * tanh(c_t) * o_t (1 - o_t)
        dh_prev, dc_prev = prev_out
        K = dh_prev.shape[0]
        if K:                                            # dh_{t-1} = dz_t W_hh,  dc_t * f_t
            step_product(dz[:K].reshape(K * B, GATES * H), w_hh,
                         dh_prev.reshape(K * B, S), prec)
            np.multiply(dc[:K], f[t], out=dc_prev)

    dstate_n = check_state_parts(KIND, dstate_n, B, (S, H), dtype, names="d{}_n")
    dhs = upstream_array(dhs, T, B, S, dtype)           # a head's lazy gradient, all rows
    if k is None and w_hr is None and (compiled := _compiled_loop(cache, dhs, dstate_n)):
        dz_all, dstate0 = compiled                       # the same steps, compiled
    else:
        F = _factors(cache)                              # read by step, as w_hh and w_hr_r
        w_hh = cache.weight_hh if prec == "fp32" else bf16_round(cache.weight_hh)
        w_hr_r = w_hr if w_hr is None or prec == "fp32" else bf16_round(w_hr)
        width = GH if w_hr is None else GH + S           # [dz_t | dh_t] with a projection
        dz_all, dstate0 = bptt_loop(OPS, step, dhs, dstate_n, T, truncate, width)
    dz = dz_all if w_hr is None else dz_all[..., :GH]

    # dW_hh = sum_t dz_t^T h_{t-1}
    grads = {"weight_hh": prev_weight_grad(dz, cache.h_buf[:-1], prec)}
    dx, grads["weight_ih"] = project_inputs_backward(dz, cache.x, cache.weight_ih, need_dx,
                                                     prec)  # dW_ih = sum dz_t^T x_t
    if cache.has_bias_ih or cache.has_bias_hh:
        db = dz.sum(axis=(0, 1))                         # db_ih = db_hh = sum_t sum_b dz_t
        if cache.has_bias_ih:
            grads["bias_ih"] = db
        if cache.has_bias_hh:
            grads["bias_hh"] = db.copy() if cache.has_bias_ih else db
    if w_hr is not None:
        dh_all = dz_all[..., GH:].reshape(T * B, S)
        # dW_hr = sum_t dh_t^T m_t
        grads["weight_hr"] = matmul(dh_all.T, cache.ms.reshape(T * B, H), precision=prec)
    return dx, dstate0, grads


def _compiled_loop(cache: Cache, dhs: np.ndarray | None, dstate_n: tuple) -> tuple:
    """The backward recursion without truncation in the compiled kernel (the steps of
    :func:`backward`'s ``step``, fused): ``(dz (T, B, 4H), (dh0, dc0))``, or None where the
    kernel does not compute on these arrays."""
    if not kernel.covers(cache.gates, cache.h_buf, cache.c_buf, cache.weight_hh, *dstate_n,
                         *([] if dhs is None else [dhs]), precision=cache.precision):
        return None
    T, B, GH = cache.gates.shape
    dz = np.empty((T, B, GH), dtype=cache.gates.dtype)
    dh, dc = (np.array(d, dtype=dz.dtype) for d in dstate_n)  # in: dL/d(h_n, c_n); out: h0, c0
    kernel.backward(KIND, cache.weight_hh, dz=dz, carry_h=dh, carry_c=dc, gates=cache.gates,
                    hs=cache.h_buf[1:], c0=cache.c_buf[0], cs=cache.c_buf[1:],
                    tanh_cs=cache.tanh_cs, dhs=dhs, precision=cache.precision)
    return dz, (dh, dc)


def step(
    x: np.ndarray,
    state: tuple[np.ndarray, np.ndarray],
    weight_ih: np.ndarray,
    weight_hh: np.ndarray,
    bias_ih: np.ndarray | None = None,
    bias_hh: np.ndarray | None = None,
    weight_hr: np.ndarray | None = None,
    precision: str = "fp32",
) -> tuple[np.ndarray, np.ndarray]:
    """One step, no checks and no cache (generation): (h_t, c_t) from x_t and (h_{t-1}, c_{t-1}).

    ``x`` is (B,) token ids or (B, I) features; the same operations as one step of
    :func:`forward`.
    """
    h, c = state
    H = weight_hh.shape[0] // GATES
    if x.dtype.kind in "iu":
        z = weight_ih.T[x]                               # one-hot x_t W_ih^T: a row gather
    else:
        z = matmul(x.astype(weight_ih.dtype, copy=False), weight_ih.T, precision=precision)
    bias = sum_biases(bias_ih, bias_hh)                  # b_ih + b_hh first, as forward
    if bias is not None:
        z += bias
    z += matmul(h, weight_hh.T, precision=precision)   # z_t = x_t W_ih^T + b + h_{t-1} W_hh^T
    sigmoid_(z[:, :2 * H])                              # i_t, f_t
    np.tanh(z[:, 2 * H:3 * H], out=z[:, 2 * H:3 * H])    # g_t
    sigmoid_(z[:, 3 * H:])                              # o_t
    c = z[:, H:2 * H] * c + z[:, :H] * z[:, 2 * H:3 * H]  # c_t = f_t c_{t-1} + i_t g_t
    m = z[:, 3 * H:] * np.tanh(c)                        # m_t = o_t tanh(c_t)
    if weight_hr is None:
        return m, c
    return matmul(m, weight_hr.T, precision=precision), c  # h_t = m_t W_hr^T
