r"""GRU layer, one direction: forward over a whole sequence and its BPTT (torch's equations).

Forward, in the code's row-vector orientation (docs/bptt_lstm_gru.md, section "GRU"), with the
three gate slices of width H in torch's order r, z, n. The input part a_t and the recurrent part
s_t of the pre-activations are kept apart, because r multiplies the n slice of s_t only:

    a_t = x_t W_ih^T + b_ih                   (B, 3H) = [a^r | a^z | a^n]
    s_t = h_{t-1} W_hh^T + b_hh               (B, 3H) = [s^r | s^z | s^n]
    r_t = sigmoid(a^r_t + s^r_t),   u_t = sigmoid(a^z_t + s^z_t)      (u is torch's z gate)
    n_t = tanh(a^n_t + r_t * s^n_t)
    h_t = (1 - u_t) * n_t + u_t * h_{t-1}     h_{-1} = h0

Backward, with dh_t the total gradient reaching h_t (from the loss at t and from step t+1).
da_t is the gradient of the input-side pre-activation a_t, ds_t that of the recurrent one s_t:

    dh_t     = dL/dh_t + ds_{t+1} W_hh + dh_{t+1} * u_{t+1}
    da^n_t   = dh_t * (1 - u_t) * (1 - n_t^2)
    da^z_t   = dh_t * (h_{t-1} - n_t) * u_t (1 - u_t)
    da^r_t   = da^n_t * s^n_t * r_t (1 - r_t)
    ds_t     = [da^r_t | da^z_t | da^n_t * r_t]
    dW_hh    = sum_t ds_t^T h_{t-1},      db_hh = sum_t sum_b ds_t
    dW_ih    = sum_t da_t^T x_t,          db_ih = sum_t sum_b da_t
    dx_t     = da_t W_ih,                 dh0 = ds_0 W_hh + dh_0 * u_0

Since r_t does not depend on the age of a pending gradient, ds_t is rebuilt from the summed da_t
after the loop (n slice times r_t), so the shared recursion only has to carry da_t.

Truncation (``truncate = k``): both paths from h_t to h_{t-1} (through s_t and the direct
``u_t * h_{t-1}`` term) are one recurrent transition; the loss at step t reaches a_t .. a_{t-k}
and not h_{t-k-1}, i.e. autograd with h_{t-k-1} detached.

Symbols: T steps, B batch, I input size, H hidden size.
  x       (T, B, I) float, or (T, B) integer token ids (one-hot input; projected as a gather)
  state0  None (zeros) or the tuple (h0,), h0 (B, H) or None (zeros)
  hs      (T, B, H): every hidden state; hs[-1] is h_n
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ...cells import GRU as KIND
from .. import kernel
from ..layout import check_gate_weights
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


class Cache(NamedTuple):
    """What :func:`forward` keeps for :func:`backward`."""

    x: np.ndarray            # (T, B, I) floats or (T, B) token ids
    gates: np.ndarray        # (T, B, 3H): [r_t | u_t | n_t], after their activations
    s_n: np.ndarray          # (T, B, H): s^n_t = the n slice of h_{t-1} W_hh^T + b_hh
    h_buf: np.ndarray        # (T + 1, B, H): h0, then h_t in row t + 1
    weight_ih: np.ndarray    # (3H, I)
    weight_hh: np.ndarray    # (3H, H)
    has_bias_ih: bool
    has_bias_hh: bool
    precision: str = "fp32"  # fp32 | bf16: the products' operands


PRECISIONS = ("fp32", "bf16")
"""The precisions this cell implements (``bptt.engine.numpy.stack``)."""


def forward(
    x: np.ndarray,
    state0: tuple[np.ndarray | None] | None,
    weight_ih: np.ndarray,
    weight_hh: np.ndarray,
    bias_ih: np.ndarray | None = None,
    bias_hh: np.ndarray | None = None,
    precision: str = "fp32",
) -> tuple[np.ndarray, tuple[np.ndarray], Cache]:
    """Run the layer over ``x``; return ``(hs, (h_n,), cache)`` with hs (T, B, H), h_n (B, H)."""
    check_precision(precision, weight_hh)
    H = check_gate_weights(KIND, weight_ih, weight_hh, bias_ih, bias_hh)
    T, B = check_sequence(x, weight_ih.shape[1])
    dtype = weight_hh.dtype
    (h0,) = check_state_parts(KIND, state0, B, H, dtype)

    # (T, B, 3H): a_t = x_t W_ih^T + b_ih
    gates = project_inputs(x, weight_ih, bias_ih, precision=precision)
    h_buf = np.empty((T + 1, B, H), dtype=dtype)         # h_buf[0] = h0, h_buf[t + 1] = h_t
    h_buf[0] = h0
    hs = h_buf[1:]
    if kernel.covers(gates, h_buf, weight_hh, *([] if bias_hh is None else [bias_hh]),
                     precision=precision):
        s_all = np.empty((T, B, GATES * H), dtype=dtype)  # the loop below, compiled
        kernel.forward(KIND, gates, h0, hs, weight_hh, b_hh=bias_hh, s=s_all,
                       precision=precision)
        s_n = s_all[:, :, 2 * H:]                        # s^n_t: a view of every s_t
    else:
        s_n = np.empty((T, B, H), dtype=dtype)           # s^n_t, needed by da^r_t
        s = np.empty((B, GATES * H), dtype=dtype)
        rs = np.empty((B, H), dtype=dtype)
        w_hh_t = weight_hh.T if precision == "fp32" else bf16_round(weight_hh.T)
        for t in range(T):
            a = gates[t]
            step_product(h_buf[t], w_hh_t, s, precision)  # s_t = h_{t-1} W_hh^T + b_hh
            if bias_hh is not None:
                s += bias_hh
            a[:, :2 * H] += s[:, :2 * H]
            sigmoid_(a[:, :2 * H])                      # r_t, u_t = sigmoid(a_t + s_t) (r, z)
            r, u, n = a[:, :H], a[:, H:2 * H], a[:, 2 * H:]
            s_n[t] = s[:, 2 * H:]
            np.multiply(r, s_n[t], out=rs)
            n += rs
            np.tanh(n, out=n)                            # n_t = tanh(a^n_t + r_t * s^n_t)
            h_new = hs[t]
            np.subtract(h_buf[t], n, out=h_new)
            h_new *= u
            h_new += n                                   # h_t = n_t + u_t * (h_{t-1} - n_t)
    cache = Cache(x=x, gates=gates, s_n=s_n, h_buf=h_buf, weight_ih=weight_ih,
                  weight_hh=weight_hh, has_bias_ih=bias_ih is not None,
                  has_bias_hh=bias_hh is not None, precision=precision)
    return hs, (hs[-1],), cache


def _factors(cache: Cache) -> np.ndarray:
    """The factors of the backward that do not depend on the incoming gradient, for all T at
    once, laid out as the gates, (T, B, 3, H) = [F^r | F^z | F^n]:

      da^n_t = dh_t * F^n,     F^n = (1 - u) (1 - n^2)
      da^z_t = dh_t * F^z,     F^z = (h_{t-1} - n) u (1 - u)
      da^r_t = da^n_t * F^r,   F^r = s^n r (1 - r)
    """
    T, B, GH = cache.gates.shape
    H = GH // GATES
    G3 = cache.gates.reshape(T, B, GATES, H)
    r, u, n = G3[:, :, 0], G3[:, :, 1], G3[:, :, 2]
    F = np.empty((T, B, GATES, H), dtype=cache.gates.dtype)
    np.subtract(1.0, r, out=F[:, :, 0])
    F[:, :, 0] *= r
    F[:, :, 0] *= cache.s_n
    np.subtract(cache.h_buf[:-1], n, out=F[:, :, 1])
    F[:, :, 1] *= u
    F[:, :, 1] *= 1.0 - u
    np.multiply(n, n, out=F[:, :, 2])
    np.subtract(1.0, F[:, :, 2], out=F[:, :, 2])
    F[:, :, 2] *= 1.0 - u
    return F


def backward(
    dhs: np.ndarray | Upstream | None,
    dstate_n: tuple[np.ndarray | None] | None,
    cache: Cache,
    truncate: int | None = None,
    need_dx: bool = True,
) -> tuple[np.ndarray | None, tuple[np.ndarray], dict[str, np.ndarray]]:
    """BPTT from upstream gradients on every output ``dhs`` (T, B, H) and on ``(h_n,)``.

    Returns ``(dx, (dh0,), grads)``: dx (T, B, I) (None for token-id input or when not
    ``need_dx``), dh0 (B, H), and grads with keys ``weight_ih, weight_hh`` (+ ``bias_ih``,
    ``bias_hh`` for the biases the layer has). ``truncate=k`` lets the loss at step t reach
    back through at most k recurrent steps (module docstring and
    :class:`bptt.engine.recursion.Recursion`).
    """
    gates, prec = cache.gates, cache.precision
    T, B, GH = gates.shape
    H = GH // GATES
    dtype = gates.dtype
    G3 = gates.reshape(T, B, GATES, H)
    r, u = G3[:, :, 0], G3[:, :, 1]
    k = effective_truncate(truncate, T)
    A = 1 if k is None else k + 1
    ds_buf = np.empty((A, B, GATES * H), dtype=dtype)
    du = np.empty((A, B, H), dtype=dtype)

    def step(t: int, dstate: tuple, da_out: np.ndarray, prev_out: tuple) -> None:
        (dh,) = dstate                                   # (A, B, H): dh_t by age
        da3 = da_out.reshape(A, B, GATES, H)
        # da^z_t = dh_t * (h_{t-1} - n_t) * u_t (1 - u_t)
        # da^n_t = dh_t * (1 - u_t) * (1 - n_t^2)
        np.multiply(dh[:, :, None, :], F[t][:, 1:], out=da3[:, :, 1:])
        # da^r_t = da^n_t * s^n_t * r_t (1 - r_t)
        np.multiply(da3[:, :, 2], F[t][:, 0], out=da3[:, :, 0])
        (dh_prev,) = prev_out
        K = dh_prev.shape[0]
        if K:
            dsK = ds_buf[:K]
            np.copyto(dsK, da_out[:K])
            dsK.reshape(K, B, GATES, H)[:, :, 2] *= r[t]  # ds_t = [da^r_t | da^z_t | da^n_t r_t]
            step_product(dsK.reshape(K * B, GATES * H), w_hh, dh_prev.reshape(K * B, H),
                         prec)
            np.multiply(dh[:K], u[t], out=du[:K])
            dh_prev += du[:K]                            # dh_{t-1} = ds_t W_hh + dh_t * u_t

    dstate_n = check_state_parts(KIND, dstate_n, B, H, dtype, names="d{}_n")
    dhs = upstream_array(dhs, T, B, H, dtype)           # a head's lazy gradient, all rows
    if k is None and kernel.covers(gates, cache.h_buf, cache.s_n, cache.weight_hh, *dstate_n,
                                   *([] if dhs is None else [dhs]), precision=prec):
        da, ds, dstate0 = _compiled_loop(cache, dhs, dstate_n)  # the same steps, compiled
    else:
        F = _factors(cache)                              # read by step, as w_hh
        w_hh = cache.weight_hh if prec == "fp32" else bf16_round(cache.weight_hh)
        da, dstate0 = bptt_loop(OPS, step, dhs, dstate_n, T, truncate, GATES * H)
        ds = da.copy()
        ds[..., 2 * H:] *= gates[..., :H]                # ds_t = [da^r_t | da^z_t | da^n_t r_t]

    # dW_hh = sum_t ds_t^T h_{t-1}
    grads = {"weight_hh": prev_weight_grad(ds, cache.h_buf[:-1], prec)}
    dx, grads["weight_ih"] = project_inputs_backward(da, cache.x, cache.weight_ih, need_dx,
                                                     prec)  # dW_ih = sum da_t^T x_t
    if cache.has_bias_ih:
        grads["bias_ih"] = da.sum(axis=(0, 1))           # db_ih = sum_t sum_b da_t
    if cache.has_bias_hh:
        grads["bias_hh"] = ds.sum(axis=(0, 1))           # db_hh = sum_t sum_b ds_t
    return dx, dstate0, grads


def _compiled_loop(cache: Cache, dhs: np.ndarray | None, dstate_n: tuple) -> tuple:
    """The backward recursion without truncation in the compiled kernel (the steps of
    :func:`backward`'s ``step``, fused): ``(da, ds (T, B, 3H), (dh0,))``."""
    da = np.empty(cache.gates.shape, dtype=cache.gates.dtype)
    ds = np.empty_like(da)
    dh = np.array(dstate_n[0], dtype=da.dtype)       # in: dL/dh_n; out: dL/dh0
    kernel.backward(KIND, cache.weight_hh, dz=da, ds=ds, carry_h=dh, gates=cache.gates,
                    h0=cache.h_buf[0], hs=cache.h_buf[1:], s_n=cache.s_n, dhs=dhs,
                    precision=cache.precision)
    return da, ds, (dh,)


def step(
    x: np.ndarray,
    state: tuple[np.ndarray],
    weight_ih: np.ndarray,
    weight_hh: np.ndarray,
    bias_ih: np.ndarray | None = None,
    bias_hh: np.ndarray | None = None,
    precision: str = "fp32",
) -> tuple[np.ndarray]:
    """One step, no checks and no cache (generation): (h_t,) from x_t and (h_{t-1},), (B, H).

    ``x`` is (B,) token ids or (B, I) features; the same operations as one step of
    :func:`forward`.
    """
    (h,) = state
    H = weight_hh.shape[1]
    if x.dtype.kind in "iu":
        a = weight_ih.T[x]                               # one-hot x_t W_ih^T: a row gather
    else:
        a = matmul(x.astype(weight_ih.dtype, copy=False), weight_ih.T, precision=precision)
    if bias_ih is not None:
        a += bias_ih
    s = matmul(h, weight_hh.T, precision=precision)      # s_t = h_{t-1} W_hh^T + b_hh
    if bias_hh is not None:
        s += bias_hh
    a[:, :2 * H] += s[:, :2 * H]
    sigmoid_(a[:, :2 * H])                              # r_t, u_t
    r, u, n = a[:, :H], a[:, H:2 * H], a[:, 2 * H:]
    n += r * s[:, 2 * H:]
    np.tanh(n, out=n)                                    # n_t = tanh(a^n_t + r_t * s^n_t)
    h_new = h - n
    h_new *= u
    h_new += n                                           # h_t = n_t + u_t * (h_{t-1} - n_t)
    return (h_new,)
