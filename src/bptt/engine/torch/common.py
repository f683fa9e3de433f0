"""Pieces every torch cell shares: the input projection, its gradient, and the BPTT recursion.

The torch twin of :mod:`bptt.engine.numpy.common`, on tensors of any device. Nothing here reads
a value back to the host, so a CUDA backward never waits inside its loop over time.

Symbols: T steps, B batch, I input size, H hidden size, G gates (1 RNN, 3 GRU, 4 LSTM),
A ages (1 without truncation, k + 1 with ``truncate = k``).

The input projection of all T steps is one matrix product before the recurrent loop, and its
weight gradient one product after the backward loop. Token inputs (T, B) int64 stand for one-hot
vectors: ``onehot(x) W_ih^T`` is the row gather ``W_ih^T[x]``, and its gradient an ``index_add_``
of the rows of dz into the V rows of dW_ih^T, never a V-wide product.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable

import numpy as np
import torch

NONLINEARITIES = ("tanh", "relu")

# -- matrix products through oneDNN on the CPU ----------------------------------------------------
#
# On the CPU torch multiplies float32 matrices with its BLAS (MKL), which on AMD processors
# runs AVX2 kernels; its oneDNN linear (the op torch's compiler fuses CPU linears into) runs
# AVX-512 kernels and is about twice as fast for this package's shapes (docs/performance.md).
# The hand-written BPTT computes its float32 and bfloat16 CPU products ``a @ w^T`` there when
# the build has it and it passes a numerical self-check; everywhere else (CUDA, float64, no
# oneDNN, or BPTT_ONEDNN=0) with ``torch.mm``. A weight used by every step of a sequence is
# reordered once per call into oneDNN's blocked layout (``pack``), which spares each step's
# small product the repacking of the whole (H, H) matrix: 1.7x on a (32, 512) x (512, 512)
# step. Same arithmetic: the operands' precision, float32 accumulation.

_ONEDNN: list = []          # [(linear op, reorder op) or None], resolved on first use


def _onednn():
    if not _ONEDNN:
        ops = None
        if os.environ.get("BPTT_ONEDNN", "1") != "0":
            try:
                lin = torch.ops.mkldnn._linear_pointwise
                reorder = torch.ops.mkldnn._reorder_linear_weight
                if torch.backends.mkldnn.is_available():
                    gen = torch.Generator().manual_seed(0)
                    a, w = torch.randn(3, 7, generator=gen), torch.randn(5, 7, generator=gen)
                    z = torch.randn(3, 5, generator=gen)
                    ref = a @ w.t()
                    packed = reorder(w, 3)
                    ok = all(torch.allclose(r, ref, rtol=1e-5, atol=1e-5) for r in (
                        lin(a, w, None, "none", [], ""), lin(a, packed, None, "none", [], ""),
                        lin.binary(a, z, packed, None, "add") - z))
                    ops = (lin, reorder) if ok else None
            except (AttributeError, RuntimeError):
                ops = None
        _ONEDNN.append(ops)
    return _ONEDNN[0]


_ONEDNN_DTYPES = (torch.float32, torch.bfloat16)


def _use_onednn(*tensors: torch.Tensor) -> bool:
    return (all(t.device.type == "cpu" and t.dtype in _ONEDNN_DTYPES for t in tensors)
            and _onednn() is not None)


def pack(w: torch.Tensor, batch: int) -> torch.Tensor:
    """``w`` (N, K), reordered once for repeated :func:`linear` products with ``batch`` rows
    (oneDNN's blocked layout; an opaque tensor only :func:`linear` and :func:`linear_add`
    read); ``w`` itself where oneDNN is not used."""
    if _use_onednn(w):
        try:
            return _onednn()[1](w.contiguous(), batch)
        except RuntimeError:
            return w
    return w


def linear(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``a @ w^T`` (a (M, K), w (N, K) or :func:`pack` of it): oneDNN for float32 and
    bfloat16 CPU tensors, else torch.mm."""
    if w.layout == torch._mkldnn or _use_onednn(a, w):
        return _onednn()[0](a, w, None, "none", [], "")
    return a @ w.t()


def linear_add(a: torch.Tensor, w: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``a @ w^T + other`` as a fresh tensor, in one product (``other`` of ``a``'s dtype)."""
    if w.layout == torch._mkldnn or _use_onednn(a, w, other):
        return _onednn()[0].binary(a, other, w, None, "add")
    return torch.addmm(other, a, w.t())


def numpy_view(t: torch.Tensor):
    """``t``'s memory as a NumPy array (no copy) when NumPy can compute on it in place -- a
    contiguous float32/float64 CPU tensor outside autograd -- else None."""
    if (t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)
            and t.is_contiguous() and not t.requires_grad):
        return t.numpy()
    return None


def tanh_into(src: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out = tanh(src)`` (same shape; ``src`` may be ``out``).

    On the CPU through NumPy's vectorised tanh on the tensors' own memory (no copy): torch's
    CPU tanh kernel is about ten times slower for a (B, H) step, which made it a tenth of the
    RNN's step time. Both are correctly rounded to within an ulp.
    """
    if (out.device.type == "cpu" and src.device.type == "cpu" and out.is_contiguous()
            and src.is_contiguous() and out.dtype == src.dtype
            and out.dtype in (torch.float32, torch.float64)
            and not (out.requires_grad or src.requires_grad)):
        np.tanh(src.numpy(), out=out.numpy())
        return out
    return torch.tanh(src, out=out)


def is_tokens(x: torch.Tensor) -> bool:
    """Token ids (integer dtype) rather than real-valued features."""
    return not (x.is_floating_point() or x.is_complex())


def check_nonlinearity(nonlinearity: str) -> None:
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"expected nonlinearity 'tanh' or 'relu', got {nonlinearity!r}")


def check_truncate(truncate: int | None) -> None:
    if truncate is not None and (
        isinstance(truncate, bool) or not isinstance(truncate, numbers.Integral) or truncate < 0
    ):
        raise ValueError(f"expected bptt_truncate None or an integer >= 0, got {truncate!r}")


def check_sequence(x: torch.Tensor, input_size: int, name: str = "input") -> tuple[int, int]:
    """Validate a time-major input's shape; return (T, B). Ids (T, B) or features (T, B, I).

    The id range is not checked here (that would read the device back to the host): the engines
    check it on the NumPy batch before it is copied to the device.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected {name} as a torch tensor, got {type(x).__name__}")
    if is_tokens(x):
        if x.dim() != 2:
            raise ValueError(
                f"expected {name} token ids of shape (T, B), got shape {tuple(x.shape)}"
            )
    elif x.dim() != 3 or x.shape[2] != input_size:
        raise ValueError(
            f"expected {name} of shape (T, B, {input_size}), got shape {tuple(x.shape)}"
        )
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"expected {name} with T >= 1 and B >= 1, got shape {tuple(x.shape)}")
    return x.shape[0], x.shape[1]


def check_state(h: torch.Tensor | None, batch: int, like: torch.Tensor,
                name: str = "h0") -> torch.Tensor:
    """The initial state as a (B, H) tensor of ``like``'s dtype and device; zeros when None."""
    hidden = like.shape[1]
    if h is None:
        return like.new_zeros((batch, hidden))
    if tuple(h.shape) != (batch, hidden):
        raise ValueError(f"expected {name} of shape ({batch}, {hidden}), got {tuple(h.shape)}")
    return h.to(like.dtype)


def sum_biases(*biases: torch.Tensor | None) -> torch.Tensor | None:
    """The sum of the biases that exist; None when there is none."""
    total = None
    for b in biases:
        if b is not None:
            total = b if total is None else total + b
    return total


def project_inputs(x: torch.Tensor, weight_ih: torch.Tensor,
                   bias: torch.Tensor | None) -> torch.Tensor:
    """All steps at once: ``x_t W_ih^T + bias`` for every t.  (T, B, G*H), a fresh tensor."""
    T, B = x.shape[:2]
    if is_tokens(x):
        table = weight_ih.t()                          # (V, GH); contiguous rows gather faster
        if weight_ih.shape[1] <= 4 * T * B:
            table = table.contiguous()
        # (T, B, GH): one-hot W_ih^T = a row gather (index_select: ~5x advanced indexing)
        out = torch.index_select(table, 0, x.reshape(-1)).view(T, B, -1)
        if bias is not None:
            out += bias
        return out
    x2 = x.reshape(T * B, -1).to(weight_ih.dtype)
    if bias is None:
        out = x2 @ weight_ih.t()
    else:
        out = torch.addmm(bias, x2, weight_ih.t())     # x W_ih^T + b in one product
    return out.view(T, B, -1)


def project_inputs_backward(
    dz: torch.Tensor, x: torch.Tensor, weight_ih: torch.Tensor, need_dx: bool = True
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Gradients of :func:`project_inputs`: ``(dx, dW_ih)``; dx is None for token ids.

    dW_ih = sum_t dz_t^T x_t   (one product over all T*B rows; a row scatter-add for ids)
    dx_t  = dz_t W_ih          (only when ``need_dx``)
    """
    T, B, GH = dz.shape
    dz2 = dz.reshape(T * B, GH)
    if is_tokens(x):
        # dW_ih^T[v] = sum of the rows of dz whose token is v
        dW_t = dz.new_zeros((weight_ih.shape[1], GH))
        dW_t.index_add_(0, x.reshape(-1), dz2)
        return None, dW_t.t().contiguous()
    x2 = x.reshape(T * B, -1).to(dz.dtype)
    dW = dz2.t() @ x2
    dx = (dz2 @ weight_ih).view(T, B, -1) if need_dx else None
    return dx, dW


def recurrent_weight_grad(dz: torch.Tensor, hs: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """dW_hh = sum_t dz_t^T h_{t-1}: the h0 term plus one product over steps 1..T-1."""
    T, B, GH = dz.shape
    H = hs.shape[2]
    dW = dz[0].t() @ h0
    if T > 1:
        dW.addmm_(dz[1:].reshape(-1, GH).t(), hs[:-1].reshape(-1, H))
    return dW


def shifted(first: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
    """(T, B, H): ``first`` then ``seq[:-1]``, i.e. the previous state of every step."""
    return torch.cat((first.unsqueeze(0), seq[:-1]), dim=0)


Step = Callable[[int, tuple, torch.Tensor], None]


def bptt_loop(step: Step, dhs: torch.Tensor | None, dstate_n: tuple, hs: torch.Tensor, GH: int,
              truncate: int | None) -> tuple[torch.Tensor, tuple]:
    """The backward recursion through time, shared by every cell; returns ``(dz, dstate_0)``.

    ``hs`` (T, B, H) gives the shapes, dtype and device; ``dhs`` (T, B, H) and the entries of
    ``dstate_n`` (B, H) may be None (no gradient there).
    ``step(t, dstate, g)`` is the cell's one-step backward, linear in the state gradients and
    applied to every age at once. ``dstate`` is a tuple of (A, B, H) buffers holding, by age,
    the gradients reaching the state after step t (``(dh,)``, or ``(dh, dc)`` for the LSTM);
    the step writes the gradient of its pre-activations dz_t into ``g`` (A, B, G*H) and
    overwrites ``dstate`` in place with the gradients reaching the state before step t.

    Without truncation A = 1 and ``dh_t = dL/dh_t + dh_{t+1} -> h_t`` is carried straight along;
    ``g`` is then the slice ``dz[t]`` itself, so nothing is copied.

    With ``truncate = k`` the gradient of the loss at step t may cross at most k recurrent
    transitions (it reaches z_{t-k} but not h_{t-k-1}), exactly as
    :func:`bptt.engine.numpy.common.bptt_loop`: pending gradients are kept by age a =
    transitions already crossed (A = k + 1 slots); a step moves age a to a + 1 and drops age k.
    Here the ages live in a ring: age a is slot ``(p + a) % A``. Because the step treats every
    slot alike, moving all ages on by one is just ``p <- p - 1`` and zeroing the slot that held
    age k (it becomes the new age 0), with no copy of the buffers.
    """
    check_truncate(truncate)
    A = 1 if truncate is None else int(truncate) + 1
    T, B, H = hs.shape
    state = []
    for ds in dstate_n:
        s = hs.new_zeros((A, B, H))
        if ds is not None:
            s[0] += ds                                   # dL/dstate_n enters at age 0
        state.append(s)
    state = tuple(state)
    dz = hs.new_empty((T, B, GH))
    scratch = None if A == 1 else hs.new_empty((A, B, GH))
    p = 0                                                # the slot of age 0
    for t in reversed(range(T)):
        if dhs is not None:
            state[0][p] += dhs[t]                        # dh_t += dL/dh_t (age 0)
        g = dz[t].unsqueeze(0) if A == 1 else scratch
        step(t, state, g)
        if A > 1:
            torch.sum(scratch, dim=0, out=dz[t])         # dz_t: all ages together
        if truncate is not None:                         # age a -> a + 1, age k dropped
            p = (p - 1) % A
            for s in state:
                s[p].zero_()
    return dz, tuple(s[0] if A == 1 else s.sum(dim=0) for s in state)
