"""Pieces every torch cell shares: input and state checks, the input projection and its
gradient, the products through oneDNN, and :data:`OPS`, torch's side of the array operations
the engines share (the BPTT loop of :mod:`bptt.engine.recursion`, the stack of
:mod:`bptt.engine.stack`).

The torch twin of :mod:`bptt.engine.numpy.common`, on tensors of any device. Nothing here reads
a value back to the host, so a CUDA backward never waits inside its loop over time.

Symbols: T steps, B batch, I input size, H hidden size, G gates (1 RNN, 3 GRU, 4 LSTM).

The input projection of all T steps is one matrix product before the recurrent loop, and its
weight gradient one product after the backward loop. Token inputs (T, B) int64 stand for one-hot
vectors: ``onehot(x) W_ih^T`` is the row gather ``W_ih^T[x]``, and its gradient an ``index_add_``
of the rows of dz into the V rows of dW_ih^T, never a V-wide product.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ...cells import NONLINEARITIES, CellKind
from .. import kernel, products
from ..layout import last_rows, sequence_groups, state_parts
from ..recursion import check_truncate  # noqa: F401 (re-exported: the torch modules' check)
from . import mkl


class TorchOps:
    """:class:`bptt.engine.protocol.ArrayOps` on torch tensors (of ``like``'s device)."""

    @staticmethod
    def zeros(like: torch.Tensor, shape: tuple) -> torch.Tensor:
        return like.new_zeros(shape)

    @staticmethod
    def empty(like: torch.Tensor, shape: tuple) -> torch.Tensor:
        return like.new_empty(shape)

    @staticmethod
    def sum_ages(a: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return a.sum(dim=0) if out is None else torch.sum(a, dim=0, out=out)

    @staticmethod
    def flip(x: torch.Tensor, batch_sizes: tuple | None = None) -> torch.Tensor:
        if batch_sizes is None:
            return x.flip(0)                             # a copy (torch has no negative strides)
        out = x.clone()                                  # each sequence within its length
        for length, r0, r1 in sequence_groups(batch_sizes):
            out[:length, r0:r1] = x[:length, r0:r1].flip(0)
        return out

    @staticmethod
    def concat(xs: list) -> torch.Tensor:
        return torch.cat(xs, dim=2)

    @staticmethod
    def stack(xs: list) -> torch.Tensor:
        return torch.stack(xs)


OPS = TorchOps()

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


PACK_MIN_USES = 8
"""Fewer products than this with one weight (a sequence of a few steps, a generation step
through a module) are cheaper without the reorder, which costs about as much as a few
products."""


def pack(w: torch.Tensor, batch: int, uses: int = PACK_MIN_USES) -> torch.Tensor:
    """``w`` (N, K), reordered once for ``uses`` repeated :func:`linear` products with
    ``batch`` rows (oneDNN's blocked layout; an opaque tensor only :func:`linear` and
    :func:`linear_add` read); ``w`` itself where oneDNN is not used or ``uses`` is below
    :data:`PACK_MIN_USES`."""
    if uses >= PACK_MIN_USES and _use_onednn(w):
        try:
            return _onednn()[1](w.contiguous(), batch)
        except RuntimeError:
            return w
    return w


def linear(a: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ w^T`` (+ ``bias``) (a (M, K), w (N, K) or :func:`pack` of it): oneDNN for float32
    and bfloat16 CPU tensors, else torch.mm."""
    if w.layout == torch._mkldnn or _use_onednn(a, w):
        return _onednn()[0](a, w, bias, "none", [], "")
    return a @ w.t() if bias is None else torch.addmm(bias, a, w.t())


def linear_add(a: torch.Tensor, w: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``a @ w^T + other`` as a fresh tensor, in one product (``other`` of ``a``'s dtype)."""
    if w.layout == torch._mkldnn or _use_onednn(a, w, other):
        return _onednn()[0].binary(a, other, w, None, "add")
    return torch.addmm(other, a, w.t())


def step_linear_add(a: torch.Tensor, w: torch.Tensor, other: torch.Tensor,
                    low: torch.dtype | None = None) -> torch.Tensor:
    """:func:`linear_add`, or with ``low`` (bf16; ``w`` already in bfloat16) the product on
    bfloat16 operands added to ``other`` in its own dtype: a fresh tensor either way."""
    if low is None:
        return linear_add(a, w, other)
    return other + linear(a.to(low), w)


# -- precision, the kernel and the large products ----------------------------------------------

PRECISIONS = ("fp32", "bf16")
"""The precisions every torch cell implements (``bptt.engine.torch.stack``)."""
_LOW = {"fp32": None, "bf16": torch.bfloat16}


def low_dtype(precision: str) -> torch.dtype | None:
    """The dtype of the matrix products' operands: None (the tensors' own) or bfloat16."""
    if precision not in _LOW:
        raise ValueError(f"expected precision 'fp32' or 'bf16', got {precision!r}")
    return _LOW[precision]


_KERNEL_DTYPES = (torch.float32, torch.float64)


def kernel_views(*tensors: torch.Tensor | None, precision: str = "fp32") -> list | None:
    """NumPy views of the memory of the tensors (None stays None) when the compiled kernel
    computes on them -- CPU, contiguous, all float32 or all float64 (bf16: float32) -- else
    None: the caller runs its Python path."""
    first = tensors[0]
    if (first.device.type != "cpu" or first.dtype not in _KERNEL_DTYPES
            or (precision == "bf16" and first.dtype != torch.float32) or not kernel.enabled()):
        return None
    views = []
    for t in tensors:
        if t is None:
            views.append(None)
        elif t.device.type != "cpu" or t.dtype != first.dtype or not t.is_contiguous():
            return None
        else:
            views.append(t.detach().numpy())
    return views


def matmul(a: torch.Tensor, b: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """``a @ b`` of two matrices (transposed views welcome), a fresh tensor of ``a``'s dtype.

    On the CPU in float32 and float64 by the product this machine runs fastest
    (:mod:`bptt.engine.products`: the compiled kernel, oneDNN or torch.mm, measured at first
    use); elsewhere torch.mm. ``precision="bf16"``: bfloat16 operands, float32 accumulation,
    float32 result -- the kernel's or MKL's (:mod:`.mkl`), measured, wherever either runs
    (torch's own bfloat16 products, the fallback without both, round their result to bfloat16).
    """
    low = low_dtype(precision)
    cpu = a.device.type == "cpu"
    runners = {}
    if cpu and a.dtype in _KERNEL_DTYPES and kernel.computes(
            str(a.dtype).removeprefix("torch."), precision):
        an, bn = a.detach().numpy(), b.detach().numpy()

        def compiled():
            out = a.new_empty((a.shape[0], b.shape[1]))
            kernel.matmul(an, bn, out.numpy(), precision=precision)
            return out
        runners["kernel"] = compiled
    if low is not None and cpu and a.dtype == torch.float32 and mkl.available():
        runners["mkl"] = lambda: mkl.bf16_matmul(a, b)
    if low is None or not runners:
        # torch's CPU products on bfloat16 operands (oneDNN's, torch.mm's) round their result
        # to bfloat16; the kernel's and MKL's keep it float32, the contract above. Choosing
        # between those and torch's by speed would make the numbers depend on the timing, so
        # under bf16 torch's run only where neither of the others does.
        if _use_onednn(a, b) and (a.dtype == torch.float32 or low is not None):
            def onednn():
                al, bl = (a, b) if low is None else (a.to(low), b.to(low))
                return _onednn()[0](al, bl.t(), None, "none", [], "").to(a.dtype)
            runners["onednn"] = onednn
        if low is None:
            runners["mm"] = lambda: a @ b
        else:
            runners["mm"] = lambda: (a.to(low) @ b.to(low)).to(a.dtype)
    if len(runners) == 1 or a.shape[0] * a.shape[1] * b.shape[1] < 1 << 15:
        return runners.get("mm", next(iter(runners.values())))()
    return runners[products.choose("torch", products.shape_key(a, b, precision), runners)]()


def numpy_view(t: torch.Tensor):
    """``t``'s memory as a NumPy array (no copy) when NumPy can compute on it in place -- a
    contiguous float32/float64 CPU tensor outside autograd -- else None."""
    if (t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)
            and t.is_contiguous() and not t.requires_grad):
        return t.numpy()
    return None


def tanh_into(src: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out = tanh(src)`` (same shape; ``src`` may be ``out``).

    On the CPU through NumPy's vectorised tanh on the tensors' own memory (no copy, any
    strides: a gate's slice of the LSTM's rows too): torch's CPU tanh kernel is about ten times
    slower for a (B, H) step, which made it a tenth of the RNN's step time. Both are correctly
    rounded to within an ulp.
    """
    if (out.device.type == "cpu" and src.device.type == "cpu" and out.dtype == src.dtype
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
        expected = " or ".join(repr(n) for n in NONLINEARITIES)
        raise ValueError(f"expected nonlinearity {expected}, got {nonlinearity!r}")


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


def check_state_parts(kind: CellKind, state0, batch: int, like: torch.Tensor,
                      names: str = "{}0", sizes: tuple[int, ...] | None = None
                      ) -> tuple[torch.Tensor, ...]:
    """A state as a tuple of (B, S) tensors of ``like``'s dtype and device, one per state part
    of ``kind`` (S = ``sizes[p]``, default ``like.shape[1]`` for every part); zeros for a missing
    part (or when ``state0`` is None). ``names`` names the parts in errors (``"{}0"``: h0, c0;
    ``"d{}_n"``: dh_n, dc_n)."""
    sizes = sizes or (like.shape[1],) * len(kind.state)
    if state0 is None:
        return tuple([like.new_zeros((batch, size)) for size in sizes])
    out = []
    given = state_parts(kind, state0, batch, sizes[0], "tensors")
    for p, h, size in zip(kind.state, given, sizes, strict=True):
        if h is None:
            out.append(like.new_zeros((batch, size)))
            continue
        if tuple(h.shape) != (batch, size):
            raise ValueError(f"expected {names.format(p)} of shape ({batch}, {size}), "
                             f"got {tuple(h.shape)}")
        out.append(h.to(like.dtype))
    return tuple(out)


def new_steps(like: torch.Tensor, shape: tuple, batch_sizes: tuple | None) -> torch.Tensor:
    """A (T, B, ...) buffer the forward loop fills step by step: uninitialised, or zeros for
    packed sequences, whose padding rows the loop never writes but the all-at-once products
    after it read (uninitialised memory may hold NaN, and 0 * NaN is NaN)."""
    return like.new_empty(shape) if batch_sizes is None else like.new_zeros(shape)


def stack_steps(rows: list, batch_sizes: tuple | None) -> torch.Tensor:
    """(T, B, ...) from the T per-step tensors a forward loop made, (b_t, ...) each: stacked,
    or for packed sequences zeros in the padding rows (the all-at-once products after the loop
    read them, and 0 * NaN is NaN)."""
    if batch_sizes is None:
        return torch.stack(rows)
    out = rows[0].new_zeros((len(rows), *rows[0].shape))
    for t, r in enumerate(rows):
        out[t, :r.shape[0]] = r
    return out


def final_rows(a: torch.Tensor, batch_sizes: tuple | None) -> torch.Tensor:
    """(B, ...): each sequence's row of ``a`` (T, B, ...) at its own last step."""
    return last_rows(a, batch_sizes, torch.cat)


def project_inputs(x: torch.Tensor, weight_ih: torch.Tensor, bias: torch.Tensor | None,
                   precision: str = "fp32") -> torch.Tensor:
    """All steps at once: ``x_t W_ih^T + bias`` for every t.  (T, B, G*H), a fresh tensor.
    ``precision="bf16"``: a float input's product on bfloat16 operands."""
    T, B = x.shape[:2]
    if is_tokens(x):
        table = weight_ih.t()                          # (V, GH); contiguous rows gather faster
        if weight_ih.shape[1] <= 4 * T * B:
            table = table.contiguous()
            # (T, B, GH): one-hot W_ih^T = a row gather (index_select: ~5x advanced indexing)
            out = torch.index_select(table, 0, x.reshape(-1)).view(T, B, -1)
        else:                                          # a large vocabulary: columns of W_ih,
            out = torch.index_select(weight_ih, 1, x.reshape(-1)).t().contiguous()  # from rows
            out = out.view(T, B, -1)
        if bias is not None:
            out += bias
        return out
    x2 = x.reshape(T * B, -1).to(weight_ih.dtype)
    out = matmul(x2, weight_ih.t(), precision)
    if bias is not None:
        out += bias                                    # x W_ih^T + b
    return out.view(T, B, -1)


def input_step(x: torch.Tensor, weight_ih: torch.Tensor, bias: torch.Tensor | None,
               precision: str = "fp32") -> torch.Tensor:
    """One step of :func:`project_inputs` (generation): ``x_t W_ih^T + bias``, (B, G*H), from
    (B,) int64 ids or (B, I) features; the same operations, without the table copy."""
    if is_tokens(x):
        out = torch.index_select(weight_ih.t(), 0, x.reshape(-1))  # one-hot x_t W_ih^T: a gather
        if bias is not None:
            out += bias
        return out
    x = x.to(weight_ih.dtype)
    low = low_dtype(precision)
    if low is not None:
        out = torch.mm(x.to(low), weight_ih.t().to(low)).to(x.dtype)
        return out if bias is None else out.add_(bias)
    return x @ weight_ih.t() if bias is None else torch.addmm(bias, x, weight_ih.t())


def project_inputs_backward(
    dz: torch.Tensor, x: torch.Tensor, weight_ih: torch.Tensor, need_dx: bool = True,
    precision: str = "fp32",
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Gradients of :func:`project_inputs`: ``(dx, dW_ih)``; dx is None for token ids.

    dW_ih = sum_t dz_t^T x_t   (one product over all T*B rows; a column scatter-add for ids)
    dx_t  = dz_t W_ih          (only when ``need_dx``)
    """
    T, B, GH = dz.shape
    dz2 = dz.reshape(T * B, GH)
    if is_tokens(x):
        # dW_ih^T[v] = sum of the rows of dz whose token is v
        V = weight_ih.shape[1]
        if V <= 4 * T * B:
            dW_t = dz.new_zeros((V, GH))
            # rows with gaps between them (a view of a wider row): index_add_ takes a slow
            # path on those, 3x the time of a copy and the dense one (H 256: 1.4 ms, 0.4 ms)
            dW_t.index_add_(0, x.reshape(-1), dz2 if dz2.is_contiguous() else dz2.contiguous())
            return None, dW_t.t().contiguous()
        dW = dz.new_zeros((GH, V))                    # a large vocabulary: into the columns,
        dW.index_add_(1, x.reshape(-1), dz2.t())      # no (V, GH) gradient to transpose
        return None, dW
    x2 = x.reshape(T * B, -1).to(dz.dtype)
    dW = matmul(dz2.t(), x2, precision)
    dx = matmul(dz2, weight_ih, precision).view(T, B, -1) if need_dx else None
    return dx, dW


def recurrent_weight_grad(dz: torch.Tensor, hs: torch.Tensor, h0: torch.Tensor,
                          precision: str = "fp32") -> torch.Tensor:
    """dW_hh = sum_t dz_t^T h_{t-1}: one product over every step, h_{t-1} = h0 then hs."""
    T, B, GH = dz.shape
    H = hs.shape[2]
    h_prev = shifted(h0, hs).reshape(T * B, H)
    return matmul(dz.reshape(T * B, GH).t(), h_prev, precision)


def shared_gate_grads(dz: torch.Tensor, x: torch.Tensor, hs: torch.Tensor, h0: torch.Tensor,
                      weight_ih: torch.Tensor, need_dx: bool = True, precision: str = "fp32"):
    """``(dx, dW_ih, dW_hh)`` for a cell whose input and recurrent pre-activations share one
    gradient dz (the RNN's, the LSTM's): dW_ih = sum_t dz_t^T x_t and dW_hh = sum_t dz_t^T
    h_{t-1} as ONE product of dz^T with the rows [x_t | h_{t-1}] (T*B, I + S), the layout a
    fused RNN kernel keeps; token ids take :func:`project_inputs_backward` and
    :func:`recurrent_weight_grad` instead. ``precision="bf16"``: bfloat16 operands."""
    if is_tokens(x):
        dx, dW_ih = project_inputs_backward(dz, x, weight_ih, need_dx, precision)
        return dx, dW_ih, recurrent_weight_grad(dz, hs, h0, precision)
    T, B, GH = dz.shape
    I, S = x.shape[2], hs.shape[2]
    rows = dz.new_empty((T, B, I + S))                  # [x_t | h_{t-1}], every t
    rows[:, :, :I] = x
    rows[0, :, I:] = h0
    rows[1:, :, I:] = hs[:-1]
    dz2 = dz.reshape(T * B, GH)
    dW = matmul(dz2.t(), rows.view(T * B, I + S), precision)  # [dW_ih | dW_hh], one product
    dx = matmul(dz2, weight_ih, precision).view(T, B, I) if need_dx else None
    return dx, dW[:, :I].contiguous(), dW[:, I:].contiguous()


def shifted(first: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
    """(T, B, H): ``first`` then ``seq[:-1]``, i.e. the previous state of every step."""
    return torch.cat((first.unsqueeze(0), seq[:-1]), dim=0)
