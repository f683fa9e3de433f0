r"""Layer normalisation over the last axis on torch tensors, the piece the layer-normalised cells
(``lnlstm``, ``lngru``) share: the torch twin of :mod:`bptt.engine.numpy.layernorm`
(docs/bptt_layernorm.md, "The layer norm and its backward").

    LN(x) = (x - mean(x)) * rstd,      rstd = 1 / sqrt(var(x) + eps)

The forward normalisation is torch's own kernel (``torch.native_layer_norm`` without gain or
bias, which also returns rstd); every gradient is hand-written. For a product ``x = a W^T`` the
backward folds the centring into the weights, ``W~ = W - mean over W's N rows``
(:func:`centred`), so what remains of the layer norm's backward is that of the scaling:

    dx = rstd * (dy - y * mean(dy * y))          (y = LN(x); the centring's part in W~)
"""

from __future__ import annotations

import torch

from ..numpy.layernorm import EPS


def normalize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(LN(x), rstd)``: ``x`` normalised over its last axis (a fresh tensor) and 1 / sqrt(var
    + eps) per row, shape (..., 1)."""
    xhat, _, rstd = torch.native_layer_norm(x, x.shape[-1:], None, None, EPS)
    return xhat, rstd


def centred(w: torch.Tensor) -> torch.Tensor:
    """``w`` minus its mean over dim 0 (a fresh tensor): for a weight (N, K), ``a centred(w)^T``
    is ``a w^T`` centred over its N features; for a weight's gradient, the centring's
    backward."""
    return w - w.mean(dim=0)


def scale_backward(dy: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``dy - y * mean(dy * y)`` in ``dy``'s memory (returned): the backward of the scaling but
    for the factor rstd, which the caller applies where it is cheapest."""
    return dy.addcmul_(y, rowdot(dy, y).unsqueeze(-1), value=-1.0 / y.shape[-1])


def rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum(a * b)`` over the last axis, (...), broadcasting the leading axes (on the CPU the
    product and its sum are ten times faster than a batched matmul of (1, N) by (N, 1))."""
    return (a * b).sum(dim=-1)


def affine(y: torch.Tensor, gain: torch.Tensor, bias: torch.Tensor | None,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """``y * gain + bias`` (the bias when there is one), into ``out`` when given."""
    if bias is None:
        return torch.mul(y, gain, out=out)
    return torch.addcmul(bias, y, gain, out=out)


def gain_grad(dy: torch.Tensor, y: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
    """``sum(dy * y)`` over every axis but the last, (N,): a gain's gradient over all steps and
    rows; the product is made in ``work`` (``dy``'s shape; large temporaries are fresh memory
    on the CPU, so the callers reuse one)."""
    return torch.mul(dy, y, out=work).view(-1, y.shape[-1]).sum(dim=0)


def gain_and_input_grads(dy: torch.Tensor, y: torch.Tensor, rstd: torch.Tensor,
                         gain: torch.Tensor, work: torch.Tensor):
    """For ``y * gain`` with y the scaled centred product (T, B, N): ``(dgain, dx~)``,
    ``dgain = sum dy y`` and ``dx~ = rstd (dy gain - y mean(dy gain y))`` for every row,
    both through ``work`` (returned as dx~)."""
    N = y.shape[-1]
    dgain = gain_grad(dy, y, work)
    m = (work.view(-1, N) @ gain).view(*y.shape[:-1], 1)  # N mean(dy gain y), per row
    dx = torch.mul(dy, gain, out=work).addcmul_(y, m, value=-1.0 / N)
    return dgain, dx.mul_(rstd)


def low_mm(a: torch.Tensor, b: torch.Tensor, low: torch.dtype | None) -> torch.Tensor:
    """``a @ b``, or with ``low`` (bf16; ``b`` already in bfloat16) on bfloat16 operands, in
    ``a``'s dtype: a step's product on the cells' Python path."""
    return a @ b if low is None else (a.to(low) @ b).to(a.dtype)
