"""The compiled kernel (``bptt.engine._kernel``): when it applies, and its calls on arrays.

The kernel runs a recurrent layer's whole loop over time in C++ -- every step's product and its
gate non-linearities fused, forward and backward, for the RNN, LSTM and GRU and the
layer-normalised LSTM and GRU (their norms fused too: :func:`ln_forward`) -- and the large
products around the loops (input projections, weight gradients, the head) and the softmax
cross-entropy. It implements the same labelled equations as the cells' Python code
(``engine/numpy/<cell>.py``), which stays as the reference and the fallback: the cells call
the kernel only through this module, and only where it covers the case; everything else
(truncated BPTT, CUDA, a build without the kernel) runs the Python path. ``bptt check``
verifies both paths against torch autograd in float64 (docs/performance.md, "The kernel").

Arrays are NumPy arrays, float32 or float64; the torch engine hands over its CPU tensors as
NumPy views of their memory (:func:`arrays_of`). ``precision="bf16"``: the products take
bfloat16 operands (rounded to nearest even) and accumulate in float32; states, gates and
gradients stay float32.

``BPTT_KERNEL=0`` in the environment turns the kernel off (read at every call, so a test can
switch it); ``BPTT_KERNEL_ISA`` picks an instruction set among those the CPU runs (avx512bf16,
avx512, avx2, base), read when the module loads.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import warnings
from collections.abc import Iterator

import numpy as np

from ..cells import CellKind
from .threads import beside_kernel, threads

ENV = "BPTT_KERNEL"
CELL_CODES = {"rnn": 0, "lstm": 1, "gru": 2}
LN_CELL_CODES = {"lnlstm": 1, "lngru": 2}   # the layer-normalised twins of the LSTM and GRU
FORWARD, BACKWARD = 0, 1
_STATE: dict = {}                   # "module": the extension or None, "why": why not


def _load():
    if "module" not in _STATE:
        try:
            _kernel = importlib.import_module(f"{__package__}._kernel")
        except ImportError as e:
            _kernel = None
            _STATE["why"] = str(e).splitlines()[0] if str(e) else type(e).__name__
        _STATE["module"] = _kernel
    return _STATE["module"]


def enabled() -> bool:
    """The kernel is built, loads, and ``BPTT_KERNEL`` does not turn it off."""
    if os.environ.get(ENV, "1") == "0":
        return False
    if _load() is None:
        if not _STATE.get("warned"):
            _STATE["warned"] = True
            warnings.warn(f"the compiled kernel is not available ({_STATE['why']}); the "
                          f"engines run their Python code (slower; see docs/performance.md)",
                          stacklevel=3)
        return False
    beside_kernel()                      # NumPy's BLAS: one thread beside the kernel's team
    return True


def status() -> str:
    """One line: which kernel runs (its instruction set), or why none does."""
    if os.environ.get(ENV, "1") == "0":
        return f"off ({ENV}=0)"
    mod = _load()
    if mod is None:
        return f"not available ({_STATE['why']})"
    return f"{mod.isa()}" + (" (bf16 in hardware)" if mod.native_bf16() else "")


@contextlib.contextmanager
def disabled(off: bool = True) -> Iterator[None]:
    """Within the block, the kernel is off (``off=False``: left as it is)."""
    old = os.environ.get(ENV)
    if off:
        os.environ[ENV] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = old


_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def computes(dtype, precision: str = "fp32") -> bool:
    """The kernel is on and computes in ``dtype`` (float32 or float64; bf16: float32)."""
    dtype = np.dtype(dtype)
    return (dtype in _DTYPES and (precision != "bf16" or dtype == np.float32)
            and enabled())


def covers(*arrays, precision: str = "fp32") -> bool:
    """The kernel is on and computes on these arrays: NumPy arrays of one dtype, float32 or
    float64 (bf16: float32)."""
    if not enabled():
        return False
    dtype = arrays[0].dtype if isinstance(arrays[0], np.ndarray) else None
    if dtype not in _DTYPES or (precision == "bf16" and dtype != np.float32):
        return False
    return all(isinstance(a, np.ndarray) and a.dtype == dtype for a in arrays[1:])


def arrays_of(*tensors):
    """NumPy views of the memory of CPU float32/float64 torch tensors (None stays None), or
    None when one of them is elsewhere (a GPU, another dtype, not contiguous)."""
    out = []
    for t in tensors:
        if t is None:
            out.append(None)
            continue
        if (t.device.type != "cpu" or t.dtype not in _TORCH_FLOATS()
                or not t.is_contiguous()):
            return None
        out.append(t.detach().numpy())
    return out


def _TORCH_FLOATS():
    import torch

    return (torch.float32, torch.float64)


def _c(a):
    """A read-only input as the kernel takes it: C-contiguous (a copy only when it is not)."""
    return a if a is None or a.flags.c_contiguous else np.ascontiguousarray(a)


def pack(weight_hh: np.ndarray, kind: CellKind, direction: int, precision: str = "fp32"):
    """``weight_hh`` (G*H, H) packed for the loop's step products (FORWARD or BACKWARD)."""
    return _load().pack(np.ascontiguousarray(weight_hh), kind.num_gates, direction,
                        precision == "bf16")


def forward(kind: CellKind, x: np.ndarray, h0: np.ndarray, hs: np.ndarray,
            weight_hh: np.ndarray, *, c0=None, cs=None, tanh_cs=None, b_hh=None, s=None,
            relu: bool = False, precision: str = "fp32") -> None:
    """The forward loop over time, in place (kernel.h, ``FwdArgs``): ``x`` (T, B, G*H) holds
    x_t W_ih^T + b and becomes the gates after their activations (the RNN: ``x`` is ``hs``);
    ``hs`` (T, B, H) receives h_t; the LSTM's ``cs`` and ``tanh_cs``, the GRU's ``s`` (T, B, 3H)
    = h_{t-1} W_hh^T + b_hh are written too."""
    T, B = hs.shape[:2]
    packed = pack(weight_hh, kind, FORWARD, precision)
    _load().forward(CELL_CODES[kind.name], packed, T, B, x, _c(h0), hs, _c(c0), cs, tanh_cs,
                    _c(b_hh), s, relu, threads())


def backward(kind: CellKind, weight_hh, *, dz: np.ndarray, carry_h: np.ndarray, gates=None,
             h0=None, hs=None, c0=None, cs=None, tanh_cs=None, s_n=None, dhs=None, ds=None,
             carry_c=None, relu: bool = False, precision: str = "fp32", packed=None) -> None:
    """The backward loop over time without truncation (kernel.h, ``BwdArgs``): writes dz_t
    (the GRU: da_t, and ds_t into ``ds``) for every step; ``carry_h`` (``carry_c``) enter as
    dL/dh_n (dL/dc_n) and leave as dL/dh_0 (dL/dc_0). ``packed``: ``weight_hh`` already packed
    BACKWARD (a chunked backward packs once)."""
    T, B = dz.shape[:2]
    if packed is None:
        packed = pack(weight_hh, kind, BACKWARD, precision)
    _load().backward(CELL_CODES[kind.name], packed, T, B, _c(gates), _c(h0), _c(hs), _c(c0),
                     _c(cs), _c(tanh_cs), s_n, _c(dhs), dz, ds, carry_h, carry_c, relu,
                     threads())


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None, *,
           accumulate: bool = False, precision: str = "fp32") -> np.ndarray:
    """``a @ b`` of two matrices (any strides: transposed views are fine), into ``out`` (its
    rows contiguous) or a fresh array; ``accumulate``: ``out += a @ b``."""
    if out is None:
        out = np.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
    _load().gemm(a, b, out, accumulate, precision == "bf16", threads())
    return out


def softmax_xent(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean cross-entropy of ``logits`` (N, V) against ``targets`` (N,), computed in place:
    ``logits`` becomes dL/dlogits (``bptt.engine.numpy.loss.softmax_cross_entropy_``)."""
    return _load().softmax_xent(logits, np.ascontiguousarray(targets, dtype=np.int64),
                                threads())


def ln_forward(kind: CellKind, x: np.ndarray, h0: np.ndarray, hs: np.ndarray,
               weight_hh: np.ndarray, v: np.ndarray, v_rstd: np.ndarray, g_hh: np.ndarray, *,
               eps: float, c0=None, cs=None, c_hat=None, c_rstd=None, tanh_k=None, g_c=None,
               b_c=None, b_hh=None, s_n=None, precision: str = "fp32") -> None:
    """The layer-normalised LSTM's or GRU's forward loop over time, in place (kernel.h,
    ``LnFwdArgs``; ``engine/numpy/lnlstm.py``, ``lngru.py``): ``weight_hh`` is W~_hh (centred
    over its rows); ``x`` (T, B, G*H) holds u^_t g_ih + b and becomes the gates; ``hs``, ``v``
    (v^_t), ``v_rstd`` (T, B, 1) and the LSTM's ``cs``, ``c_hat``, ``c_rstd``, ``tanh_k``, the
    GRU's ``s_n`` are written."""
    T, B = hs.shape[:2]
    packed = pack(weight_hh, kind, FORWARD, precision)
    _load().ln_forward(LN_CELL_CODES[kind.name], packed, T, B, eps, x, _c(h0), hs, v, v_rstd,
                       _c(g_hh), _c(c0), cs, c_hat, c_rstd, tanh_k, _c(g_c), _c(b_c), _c(b_hh),
                       s_n, threads())


def ln_backward(kind: CellKind, weight_hh: np.ndarray, *, out: np.ndarray, carry_h: np.ndarray,
                gates: np.ndarray, v: np.ndarray, v_rstd: np.ndarray, g_hh: np.ndarray,
                h0=None, hs=None, s_n=None, c0=None, cs=None, c_hat=None, c_rstd=None,
                tanh_k=None, g_c=None, dhs=None, carry_c=None, dv_scaled: bool = False,
                precision: str = "fp32") -> None:
    """The layer-normalised cells' backward loop over time without truncation (kernel.h,
    ``LnBwdArgs``): writes every step's row of ``out`` -- the LSTM's [dz_t | dv_t / rstd_v |
    dk_t] (9H), the GRU's [da_t | dv_t / rstd_v] (6H), as the Python step's (``dv_scaled``:
    dv_t itself, as the torch engine's GRU step keeps it); ``carry_h``
    (``carry_c``) enter as dL/dh_n (dL/dc_n) and leave as dL/dh_0 (dL/dc_0)."""
    T, B = out.shape[:2]
    packed = pack(weight_hh, kind, BACKWARD, precision)
    _load().ln_backward(LN_CELL_CODES[kind.name], packed, T, B, _c(gates), _c(v), _c(v_rstd),
                        _c(g_hh), _c(h0), _c(hs), _c(s_n), _c(c0), _c(cs), _c(c_hat),
                        _c(c_rstd), _c(tanh_k), _c(g_c), _c(dhs), out, carry_h, carry_c,
                        dv_scaled, threads())
