"""MKL's product on bfloat16 operands with a float32 result, from torch's own MKL.

torch's CPU products on bfloat16 operands (oneDNN's linear, ``torch.mm``) return a bfloat16
result: the float32 sum rounded to 8 bits of mantissa. ``--precision bf16`` promises float32
results ("bfloat16 operands, float32 accumulation"), which the compiled kernel computes
(``vdpbf16ps``) and so does MKL's ``cblas_gemm_bf16bf16f32``, which libtorch exports on x86
builds. MKL runs it on AMX tiles on the Intel CPUs that have them (Sapphire Rapids and later)
and on AVX512-BF16 elsewhere; on AMD it takes a slow path. So it is a candidate of the products
chosen by measurement (:func:`bptt.engine.torch.common.matmul`), never a fixed choice.

The symbol is resolved with ``ctypes`` on first use and checked once on a small product; a
build without it (not x86, no MKL) or a failed check leaves :func:`available` False.
"""

from __future__ import annotations

import ctypes
import os

import torch

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112        # MKL's CBLAS enums
_FN: list = []                                       # [the ctypes function or None]


def _resolve():
    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        fn = ctypes.CDLL(path).cblas_gemm_bf16bf16f32
    except (OSError, AttributeError):
        return None
    fn.argtypes = ([ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int,
                   ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_void_p, ctypes.c_int])
    fn.restype = None
    return fn


def available() -> bool:
    """MKL's bf16 product is there and computes what it should (checked once)."""
    if not _FN:
        _FN.append(None)
        if os.environ.get("BPTT_MKL_BF16", "1") != "0" and (fn := _resolve()) is not None:
            _FN[0] = fn
            gen = torch.Generator().manual_seed(0)
            a, b = torch.randn(5, 33, generator=gen), torch.randn(33, 7, generator=gen)
            ref = a.bfloat16().double() @ b.bfloat16().double()
            try:
                ok = torch.allclose(bf16_matmul(a, b.t().contiguous().t()).double(), ref,
                                    rtol=1e-5, atol=1e-5)
            except (OSError, RuntimeError, ValueError):
                ok = False
            if not ok:
                _FN[0] = None
    return _FN[0] is not None


def _operand(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """``x`` in bfloat16 as MKL reads it: (tensor, transposed flag, leading dimension)."""
    low = x.to(torch.bfloat16)
    rows, cols = low.shape
    if low.stride(1) == 1 and low.stride(0) >= max(cols, 1):
        return low, _NO_TRANS, low.stride(0)
    if low.stride(0) == 1 and low.stride(1) >= max(rows, 1):
        return low, _TRANS, low.stride(1)
    low = low.contiguous()
    return low, _NO_TRANS, max(cols, 1)


def bf16_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` of two float32 CPU matrices (transposed views welcome) on bfloat16 operands
    (rounded to nearest even), accumulated and returned in float32."""
    if not (a.device.type == b.device.type == "cpu" and a.dim() == b.dim() == 2):
        raise ValueError(f"expected two CPU matrices, got {tuple(a.shape)} on {a.device} and "
                         f"{tuple(b.shape)} on {b.device}")
    M, K = a.shape
    N = b.shape[1]
    out = torch.empty((M, N), dtype=torch.float32)
    if M == 0 or N == 0:
        return out
    if K == 0:
        return out.zero_()
    al, ta, lda = _operand(a)
    bl, tb, ldb = _operand(b)
    _FN[0](_ROW_MAJOR, ta, tb, M, N, K, 1.0, al.data_ptr(), lda, bl.data_ptr(), ldb, 0.0,
           out.data_ptr(), N)
    return out
