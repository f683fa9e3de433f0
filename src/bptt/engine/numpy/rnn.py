r"""Vanilla (Elman) RNN layer, one direction: forward over a whole sequence and its BPTT.

Forward, in the code's row-vector orientation (docs/bptt.md, section "RNN"):

    z_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh        (B, H)
    h_t = f(z_t),   f = tanh or relu,   h_{-1} = h0

Backward, with dh_t the total gradient reaching h_t (from the loss at t and from step t+1):

    dh_t     = dL/dh_t + dz_{t+1} W_hh
    dz_t     = dh_t * f'(z_t)           f'(z) = 1 - h_t^2 (tanh),  [h_t > 0] (relu)
    dW_hh    = sum_t dz_t^T h_{t-1}
    dW_ih    = sum_t dz_t^T x_t
    db_ih    = db_hh = sum_t sum_b dz_t
    dx_t     = dz_t W_ih,     dh0 = dz_0 W_hh

Symbols: T steps, B batch, I input size, H hidden size.
  x       (T, B, I) float, or (T, B) integer token ids (one-hot input; projected as a gather)
  state0  None (zeros) or the tuple (h0,), h0 (B, H) or None (zeros)
  hs      (T, B, H): every hidden state; hs[-1] is h_n

Speed (docs/performance.md): the states live in one (T + 1, B, H) buffer whose row 0 is h0, so
the input projection is written straight into it, each step overwrites its row in place
(``np.matmul(..., out=)``, ``np.tanh(..., out=)``: nothing is allocated per step), and
h_{t-1} for every t is a contiguous view for the one dW_hh product. The backward pass runs in
chunks of steps (all T when T*B is small, as in the book's model): per chunk one product for
each weight gradient, and memory beyond the states is two chunk-sized buffers, not (T, B, H)
arrays. The upstream gradient may be given lazily, chunk by chunk, so a model's head never
materialises dL/dh for the whole sequence. The recursion itself is the one every cell shares
(:class:`bptt.engine.recursion.Recursion`), run once per chunk. Where the compiled kernel
applies (``bptt.engine.kernel``: float32 or float64, BPTT without truncation), the loops over
time run there instead, the same equations with every step's product and activation fused.

Precision ``bf16``: every matrix product takes bfloat16 operands and accumulates in float32
(the kernel's bf16 products, or NumPy on operands rounded to bfloat16); states, gradients and
weights stay float32.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ...cells import RNN as KIND
from .. import kernel
from ..layout import check_gate_weights, sum_biases
from ..products import bf16_round, matmul
from ..recursion import Recursion, effective_truncate
from .common import (
    OPS,
    Upstream,
    check_nonlinearity,
    check_precision,
    check_sequence,
    check_state_parts,
    project_inputs,
    step_product,
    token_weight_grad_,
)

GATES = KIND.num_gates

CHUNK_ROWS = 1024
"""Rows (steps x batch) per backward chunk: enough for efficient weight-gradient products, few
enough that the chunk buffers stay small next to the states of a long sequence. A sequence of
at most ``4 * CHUNK_ROWS`` rows (the book's 35 x 32) is one chunk."""


class Cache(NamedTuple):
    """What :func:`forward` keeps for :func:`backward`."""

    x: np.ndarray            # (T, B, I) floats or (T, B) token ids
    states: np.ndarray       # (T + 1, B, H): h0, then h_t in row t + 1 (hs = states[1:])
    weight_ih: np.ndarray    # (H, I)
    weight_hh: np.ndarray    # (H, H)
    has_bias_ih: bool
    has_bias_hh: bool
    nonlinearity: str        # tanh | relu
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
    nonlinearity: str = "tanh",
    precision: str = "fp32",
) -> tuple[np.ndarray, tuple[np.ndarray], Cache]:
    """Run the layer over ``x``; return ``(hs, (h_n,), cache)`` with hs (T, B, H), h_n (B, H)."""
    check_nonlinearity(nonlinearity)
    check_precision(precision, weight_hh)
    H = check_gate_weights(KIND, weight_ih, weight_hh, bias_ih, bias_hh)
    T, B = check_sequence(x, weight_ih.shape[1])
    dtype = weight_hh.dtype
    (h0,) = check_state_parts(KIND, state0, B, H, dtype)
    bias = sum_biases(bias_ih, bias_hh)                  # b_ih + b_hh: one add for all t

    states = np.empty((T + 1, B, H), dtype=dtype)        # states[0] = h0, states[t + 1] = h_t
    states[0] = h0
    hs = states[1:]
    # (T, B, H): x_t W_ih^T + b, all t
    project_inputs(x, weight_ih, bias, out=hs, precision=precision)
    if kernel.covers(states, weight_hh, precision=precision):  # the loop below, compiled
        kernel.forward(KIND, hs, states[0], hs, weight_hh, relu=nonlinearity == "relu",
                       precision=precision)
    else:
        w_hh_t = weight_hh.T if precision == "fp32" else bf16_round(weight_hh.T)
        rec = np.empty((B, H), dtype=dtype)
        for t in range(T):
            z = hs[t]
            step_product(states[t], w_hh_t, rec, precision)
            z += rec                                     # z_t = x_t W_ih^T + b + h_{t-1} W_hh^T
            if nonlinearity == "tanh":
                np.tanh(z, out=z)                        # h_t = tanh(z_t), in place
            else:
                np.maximum(z, 0, out=z)                  # h_t = relu(z_t), in place
    cache = Cache(x=x, states=states, weight_ih=weight_ih, weight_hh=weight_hh,
                  has_bias_ih=bias_ih is not None, has_bias_hh=bias_hh is not None,
                  nonlinearity=nonlinearity, precision=precision)
    return hs, (hs[-1],), cache


def step(
    x: np.ndarray,
    state: tuple[np.ndarray],
    weight_ih: np.ndarray,
    weight_hh: np.ndarray,
    bias_ih: np.ndarray | None = None,
    bias_hh: np.ndarray | None = None,
    nonlinearity: str = "tanh",
    precision: str = "fp32",
) -> tuple[np.ndarray]:
    """One step, no checks and no cache (generation): (h_t,) from x_t and (h_{t-1},), (B, H).

    ``x`` is (B,) token ids or (B, I) features. The same operations, in the same order, as one
    step of :func:`forward`.
    """
    (h,) = state
    if x.dtype.kind in "iu":
        z = weight_ih.T[x]                               # one-hot x_t W_ih^T: a row gather
    else:
        z = matmul(x.astype(weight_ih.dtype, copy=False), weight_ih.T, precision=precision)
    if bias_ih is not None:                              # b_ih + b_hh first, as forward
        z += bias_ih if bias_hh is None else bias_ih + bias_hh
    elif bias_hh is not None:
        z += bias_hh
    z += matmul(h, weight_hh.T, precision=precision)   # z_t = x_t W_ih^T + b + h_{t-1} W_hh^T
    if nonlinearity == "tanh":
        return (np.tanh(z, out=z),)
    return (np.maximum(z, 0, out=z),)


def _chunk_steps(T: int, B: int) -> int:
    return T if T * B <= 4 * CHUNK_ROWS else max(1, CHUNK_ROWS // B)


def _step(act: np.ndarray, start: int, weight_hh: np.ndarray, A: int, K: int,
          precision: str = "fp32"):
    """The one-step backward (:mod:`bptt.engine.recursion`'s contract, A ages, K carried back)
    of the chunk of steps beginning at ``start``, whose f'(z_t) are ``act``. bf16: ``weight_hh``
    is already rounded to bfloat16."""
    B, H = act.shape[1:]
    acts = list(act)                                     # (B, H) views, step start + j at j

    def step(t: int, dstate: tuple, dz_out: np.ndarray, prev_out: tuple) -> None:
        np.multiply(dstate[0], acts[t - start], out=dz_out)  # dz_t = dh_t * f'(z_t), by age
        if K == 1:                                       # one age: a (1, B, H) product, as 2-D
            step_product(dz_out if A == 1 else dz_out[:1], weight_hh, prev_out[0], precision)
        elif K:                                          # dh_{t-1} = dz_t W_hh (ages 0..K-1)
            step_product(dz_out[:K].reshape(K * B, H), weight_hh,
                         prev_out[0].reshape(K * B, H), precision)

    return step


def _compiled(cache: Cache, truncate: int | None, dstate_n: tuple):
    """Where the kernel runs the backward recursion (no truncation, arrays it takes): the
    packed W_hh and the gradient carried from chunk to chunk (dL/dh_n in, dL/dh0 out)."""
    T = cache.states.shape[0] - 1
    if effective_truncate(truncate, T) is not None or not kernel.covers(
            cache.states, cache.weight_hh, *dstate_n, precision=cache.precision):
        return None
    packed = kernel.pack(cache.weight_hh, KIND, kernel.BACKWARD, cache.precision)
    return packed, np.array(dstate_n[0])


def backward(
    dhs: np.ndarray | Upstream | None,
    dstate_n: tuple[np.ndarray | None] | None,
    cache: Cache,
    truncate: int | None = None,
    need_dx: bool = True,
) -> tuple[np.ndarray | None, tuple[np.ndarray], dict[str, np.ndarray]]:
    """BPTT from upstream gradients on every output ``dhs`` (T, B, H) and on ``(h_n,)``.

    Returns ``(dx, (dh0,), grads)``: dx (T, B, I) (None for token-id input or when not
    ``need_dx``), dh0 (B, H), and grads with keys ``weight_ih, weight_hh`` (+ ``bias_ih,
    bias_hh`` when the layer has biases). ``truncate=k`` lets the loss at step t reach back
    through at most k recurrent steps (:class:`bptt.engine.recursion.Recursion`).

    ``dhs`` may also be a function ``dhs(s, e, out)`` writing dL/dh_t of steps s..e-1 into
    ``out`` (e - s, B, H), called once per chunk from the last chunk to the first: a model's
    head then never materialises dL/dh for the whole sequence (:class:`NumpyEngine`).
    """
    x, states, weight_ih, weight_hh = cache.x, cache.states, cache.weight_ih, cache.weight_hh
    hs, prec = states[1:], cache.precision
    T, B, H = hs.shape
    dtype = hs.dtype
    token_input = np.issubdtype(x.dtype, np.integer)
    need_dx = need_dx and not token_input
    chunk = _chunk_steps(T, B)

    dW_hh = np.zeros((H, H), dtype=dtype)
    dW_ih = np.zeros((H, weight_ih.shape[1]), dtype=dtype)
    dx = np.empty(x.shape, dtype=dtype) if need_dx else None
    db = np.zeros(H, dtype=dtype)
    dz_buf = np.empty((chunk, B, H), dtype=dtype)        # dL/dh_t in, dz_t out, per chunk
    act_buf = np.empty((chunk, B, H), dtype=dtype)       # f'(z_t) for the chunk's steps
    dstate_n = check_state_parts(KIND, dstate_n, B, H, dtype, names="d{}_n")
    rec = Recursion(OPS, dstate_n, T, truncate, H)
    compiled = _compiled(cache, truncate, dstate_n)      # or the recursion in the kernel
    w_hh = weight_hh if prec == "fp32" else bf16_round(weight_hh)

    for s in reversed(range(0, T, chunk)):
        e = min(s + chunk, T)
        n = e - s
        dz, act = dz_buf[:n], act_buf[:n]
        if callable(dhs):
            dhs(s, e, dz)
        elif dhs is not None:
            dz[...] = dhs[s:e]
        if compiled is not None:                         # the steps below, compiled
            kernel.backward(KIND, weight_hh, dz=dz, carry_h=compiled[1], hs=hs[s:e],
                            dhs=None if dhs is None else dz, packed=compiled[0],
                            relu=cache.nonlinearity == "relu", precision=prec)
        else:
            # f'(z_t) for the chunk's steps, the factor of dz_t = dh_t * f'(z_t):
            if cache.nonlinearity == "tanh":
                np.multiply(hs[s:e], hs[s:e], out=act)
                np.subtract(1.0, act, out=act)           # dz_t = dh_t * (1 - h_t^2)
            else:
                np.sign(hs[s:e], out=act)                # dz_t = dh_t * [h_t > 0]
            rec.run(_step(act, s, w_hh, rec.A, rec.K, prec), None if dhs is None else dz, dz,
                    start=s)
        # this chunk's share of the weight gradients: one product each
        rows = dz.reshape(n * B, H)
        matmul(rows.T, states[s:e].reshape(n * B, H), dW_hh, accumulate=True,
               precision=prec)                           # dW_hh = sum_t dz_t^T h_{t-1}
        if token_input:
            token_weight_grad_(dW_ih, x[s:e].reshape(-1), rows)  # dW_ih = sum_t dz_t^T x_t
        else:
            xs = x[s:e].reshape(n * B, -1).astype(dtype, copy=False)
            matmul(rows.T, xs, dW_ih, accumulate=True, precision=prec)
            if need_dx:                                  # dx_t = dz_t W_ih
                matmul(rows, weight_ih, dx[s:e].reshape(n * B, -1), precision=prec)
        db += rows.sum(axis=0)                           # db_ih = db_hh = sum_t sum_b dz_t

    grads = {"weight_hh": dW_hh, "weight_ih": dW_ih}
    for key, present in (("bias_ih", cache.has_bias_ih), ("bias_hh", cache.has_bias_hh)):
        if present:
            grads[key] = db.copy()
    return dx, rec.dstate0() if compiled is None else (compiled[1],), grads
