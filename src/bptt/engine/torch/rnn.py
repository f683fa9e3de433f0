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
with u_t = dL/dh_t * f'(z_t) for every t at once, (1)-(2) become

    dz_{t-1} = u_{t-1} + (dz_t W_hh) * f'(z_{t-1})

one product and one ``addcmul_`` per step; (3)-(5) are single products after the loop.

Precision ``bf16`` (the torch engine's ``precision="bf16"``): every matrix product -- the
recurrent h_{t-1} W_hh^T and dz_t W_hh per step, the weight gradients, a float input's
projection -- takes bfloat16 operands (the weights converted once per call, the states kept in a
bfloat16 copy written once per step), accumulates in float32 inside oneDNN and returns bfloat16,
which is added into float32. Everything else -- the states h_t, z_t, the gradients dz_t, the
master weights and their gradients -- stays float32.

Symbols: T steps, B batch, I input size, H hidden size.
  x   (T, B, I) float, or (T, B) int64 token ids (one-hot input; projected as a gather)
  h0  (B, H) or None (zeros)
  hs  (T, B, H): every hidden state; hs[-1] is h_n
"""

from __future__ import annotations

import numpy as np
import torch

from .common import (
    bptt_loop,
    check_nonlinearity,
    check_sequence,
    check_state,
    check_truncate,
    linear,
    linear_add,
    numpy_view,
    pack,
    project_inputs,
    project_inputs_backward,
    sum_biases,
    tanh_into,
)

GATES = 1
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def low_dtype(precision: str) -> torch.dtype | None:
    """The dtype of the matrix products' operands: None (the tensors' own) or bfloat16."""
    if precision not in PRECISIONS:
        raise ValueError(f"expected precision 'fp32' or 'bf16', got {precision!r}")
    return PRECISIONS[precision]


def forward(
    x: torch.Tensor,
    h0: torch.Tensor | None,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None = None,
    bias_hh: torch.Tensor | None = None,
    nonlinearity: str = "tanh",
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """Run the layer over ``x``; return ``(hs, h_n, cache)`` with hs (T, B, H), h_n (B, H)."""
    check_nonlinearity(nonlinearity)
    low = low_dtype(precision)
    H = weight_hh.shape[1]
    if weight_hh.shape != (H, H) or weight_ih.dim() != 2 or weight_ih.shape[0] != H:
        raise ValueError(
            f"expected weight_hh (H, H) and weight_ih (H, I) with one H, got "
            f"{tuple(weight_hh.shape)} and {tuple(weight_ih.shape)}"
        )
    T, B = check_sequence(x, weight_ih.shape[1])
    h0 = check_state(h0, B, weight_hh)
    bias = sum_biases(bias_ih, bias_hh)

    if low is None:
        hs = project_inputs(x, weight_ih, bias)          # x_t W_ih^T + b, all t
        h = h0
        hs_np = numpy_view(hs) if nonlinearity == "tanh" else None  # NumPy's tanh (common.py)
        w_hh = pack(weight_hh, B)                        # reordered once for all T steps
        for t, z in enumerate(hs.unbind(0)):             # z = hs[t], a view
            # z_t = x_t W_ih^T + b + h_{t-1} W_hh^T;  h_t = f(z_t), written into hs[t]
            r = linear_add(h, w_hh, z)
            r_np = None if hs_np is None else numpy_view(r)
            if r_np is not None:
                np.tanh(r_np, out=hs_np[t])
            elif nonlinearity == "tanh":
                torch.tanh(r, out=z)
            else:
                torch.clamp(r, min=0.0, out=z)           # relu
            h = z
        states_low = None
    else:
        if x.is_floating_point():                        # x_t W_ih^T + b: bf16 operands
            hs = torch.mm(x.reshape(T * B, -1).to(low), weight_ih.t().to(low)).float()
            hs = hs.view(T, B, H)
            if bias is not None:
                hs += bias
        else:
            hs = project_inputs(x, weight_ih, bias)      # a gather: no product
        w_low = pack(weight_hh.to(low), B)               # bf16, reordered once for all T steps
        states_low = hs.new_empty((T + 1, B, H), dtype=low)  # [h0, h_0 .. h_{T-1}] in bf16
        states_low[0].copy_(h0)
        lows = states_low.unbind(0)
        hs_np = numpy_view(hs) if nonlinearity == "tanh" else None
        for t, z in enumerate(hs.unbind(0)):
            z.add_(linear(lows[t], w_low))               # z_t += h_{t-1} W_hh^T (bf16 product)
            if hs_np is not None:
                np.tanh(hs_np[t], out=hs_np[t])
            elif nonlinearity == "tanh":
                z.tanh_()
            else:
                z.relu_()
            lows[t + 1].copy_(z)
    cache = (x, h0, hs, weight_ih, weight_hh, bias_ih is not None, bias_hh is not None,
             nonlinearity, precision, states_low)
    return hs, hs[-1], cache


def step(x: torch.Tensor, h: torch.Tensor, weight_ih: torch.Tensor, weight_hh: torch.Tensor,
         bias_ih: torch.Tensor | None = None, bias_hh: torch.Tensor | None = None,
         nonlinearity: str = "tanh", precision: str = "fp32") -> torch.Tensor:
    """One step, no checks and no cache (generation): h_t (B, H) from x_t and h_{t-1} (B, H).

    ``x`` is (B,) int64 token ids or (B, I) features; the operations of one step of
    :func:`forward`.
    """
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
    return tanh_into(z, z) if nonlinearity == "tanh" else z.relu_()


def backward(
    dhs: torch.Tensor | None,
    dh_n: torch.Tensor | None,
    cache: tuple,
    truncate: int | None = None,
    need_dx: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor, dict[str, torch.Tensor]]:
    """BPTT from upstream gradients on every output ``dhs`` (T, B, H) and on ``h_n`` (B, H).

    Either may be None (no gradient there). Returns ``(dx, dh0, grads)``: dx (T, B, I) (None for
    token-id input or when not ``need_dx``), dh0 (B, H), and grads with keys ``weight_ih,
    weight_hh`` (+ ``bias_ih``, ``bias_hh`` for the biases the layer has). ``truncate=k`` lets
    the loss at step t reach back through at most k recurrent steps
    (:func:`bptt.engine.torch.common.bptt_loop`).
    """
    (x, h0, hs, weight_ih, weight_hh, has_bias_ih, has_bias_hh, nonlinearity, precision,
     states_low) = cache
    check_truncate(truncate)
    low = low_dtype(precision)
    T, B, H = hs.shape
    if truncate is not None and truncate >= T:
        truncate = None                                  # no path is ever cut: full BPTT
    if nonlinearity == "tanh":                          # f'(z_t) = 1 - h_t^2, every t at once
        fprime = torch.empty_like(hs)
        f_np, hs_np = numpy_view(fprime), numpy_view(hs.detach())  # hs: a saved output
        if f_np is not None and hs_np is not None:      # CPU: NumPy, two passes instead of 3
            np.multiply(hs_np, hs_np, out=f_np)
            np.subtract(1.0, f_np, out=f_np)
        else:
            torch.mul(hs, hs, out=fprime).neg_().add_(1.0)
    else:
        fprime = (hs > 0).to(hs.dtype)                   # f'(z_t) = [h_t > 0]
    # dz W_hh = dz (W_hh^T)^T: the products' weight is W_hh^T, reordered once for all steps
    A = 1 if truncate is None else truncate + 1
    w_hh_t = weight_hh.t().contiguous()
    w_hh_t = pack(w_hh_t if low is None else w_hh_t.to(low), A * B)

    if truncate is None:
        # u_t = dL/dh_t * f'(z_t);  dz_{t-1} = u_{t-1} + (dz_t W_hh) * f'(z_{t-1})     (1, 2)
        dz = hs.new_zeros((T, B, H)) if dhs is None else torch.mul(dhs, fprime)
        if dh_n is not None:
            dz[-1].addcmul_(dh_n, fprime[-1])
        rows, fps = dz.unbind(0), fprime.unbind(0)
        if low is not None:                              # bf16 copies of the rows, as made
            dz_low = hs.new_empty((T, B, H), dtype=low)
            lows = dz_low.unbind(0)
        for t in range(T - 1, 0, -1):
            if low is None:
                carried = linear(rows[t], w_hh_t)       # dh_{t-1} = dz_t W_hh       (1)
            else:
                lows[t].copy_(rows[t])
                carried = linear(lows[t], w_hh_t)
            rows[t - 1].addcmul_(carried, fps[t - 1])
        if low is None:
            dh0 = linear(rows[0], w_hh_t)
        else:
            lows[0].copy_(rows[0])
            dh0 = linear(lows[0], w_hh_t).float()
    else:
        def step(t: int, dstate: tuple, g: torch.Tensor) -> None:
            (dh,) = dstate                               # (A, B, H): dh_t by age       (1)
            torch.mul(dh, fprime[t], out=g)              # dz_t = dh_t * f'(z_t)        (2)
            if low is None:
                dh.view(-1, H).copy_(linear(g.view(-1, H), w_hh_t))  # dz_t W_hh       (1)
            else:
                dh.view(-1, H).copy_(linear(g.view(-1, H).to(low), w_hh_t))

        dz, (dh0,) = bptt_loop(step, dhs, (dh_n,), hs, H, truncate)

    if low is None:
        h_prev = torch.cat((h0.unsqueeze(0), hs[:-1])).view(T * B, H)  # h_{t-1}, every t
        dz2 = dz.view(T * B, H)
        grads = {"weight_hh": linear(dz2.t(), h_prev.t())}  # dW_hh = sum dz_t^T h_{t-1} (3)
        dx, grads["weight_ih"] = project_inputs_backward(dz, x, weight_ih, need_dx)  # (4, 6)
    else:
        dz_low = (dz_low if truncate is None else dz.to(low)).view(T * B, H)
        grads = {"weight_hh": torch.mm(dz_low.t(), states_low[:-1].view(T * B, H)).float()}
        if x.is_floating_point():
            x_low = x.reshape(T * B, -1).to(low)
            grads["weight_ih"] = torch.mm(dz_low.t(), x_low).float()              # (4)
            dx = (torch.mm(dz_low, weight_ih.to(low)).float().view(T, B, -1)
                  if need_dx else None)                                            # (6)
        else:
            dx, grads["weight_ih"] = project_inputs_backward(dz, x, weight_ih, need_dx)
    if has_bias_ih or has_bias_hh:
        db = dz.sum(dim=(0, 1))                          # db_ih = db_hh = sum_t sum_b dz_t (5)
        if has_bias_ih:
            grads["bias_ih"] = db
        if has_bias_hh:
            grads["bias_hh"] = db.clone() if has_bias_ih else db
    return dx, dh0, grads
