"""The large matrix products of a training step, each computed by the implementation this
machine runs fastest, chosen by measurement at first use and remembered.

A training step's products outside the recurrent loops -- the input projection of all steps,
the weight gradients, the head's three products -- are single large products. Several
libraries can compute each (:data:`CANDIDATES`): the compiled kernel (``bptt.engine.kernel``),
NumPy's BLAS (OpenBLAS), and for CPU torch tensors torch's oneDNN linear and ``torch.mm``
(MKL), and under bf16 MKL's float32-result bfloat16 product (``engine/torch/mkl.py``: AMX
on the Intel CPUs that have it). Which is fastest depends on the CPU (MKL takes slower code
paths on AMD; oneDNN uses AMX on Intel Sapphire Rapids and later; OpenBLAS's kernels vary by
model), on the shape and on
the threads, so none is fixed here: the first product of a kind of shape (M, K, N rounded to
powers of two) times every candidate on the real operands and keeps the fastest, in memory and
in a file (``$BPTT_CACHE_DIR`` or ``~/.cache/bptt``, keyed by CPU model, library versions and
threads), so the next process on the same machine does not measure again.

``precision="bf16"``: bfloat16 operands (rounded to nearest even), float32 accumulation and
result. The kernel computes it natively; NumPy by rounding both operands to bfloat16 and
multiplying them in float32, which gives the same products (a product of two bfloat16 numbers
is exact in float32) at float32 speed.

``BPTT_PRODUCTS`` forces a choice: ``kernel`` or ``library`` (NumPy's, or torch's oneDNN where
it has it).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import kernel
from .threads import threads

ENV = "BPTT_PRODUCTS"
CACHE_ENV = "BPTT_CACHE_DIR"
CANDIDATES = {"numpy": ("kernel", "numpy"), "torch": ("kernel", "onednn", "mm", "mkl")}
"""The implementations each kind of operand may use, in order of preference on a tie."""

ROUNDS = 5
"""Timed runs of each candidate, interleaved; the fastest run of each counts."""
_CHOSEN: dict[str, str] = {}
_FILE: dict = {}


def bf16_round(a: np.ndarray) -> np.ndarray:
    """A float32 copy of ``a`` rounded to bfloat16 (to nearest even; NaN stays NaN)."""
    u = np.array(a, dtype=np.float32).view(np.uint32)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return np.where(nan, u | 0x00400000, r).astype(np.uint32).view(np.float32)


def _bucket(n: int) -> int:
    return 1 << max(int(n) - 1, 1).bit_length()


_CPU: list[str] = []


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what the platform says."""
    if not _CPU:
        name = platform.processor() or platform.machine()
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        _CPU.append(name)
    return _CPU[0]


def _machine() -> str:
    torch = sys.modules.get("torch")
    # v2: NumPy's BLAS runs one thread beside the kernel (threads.set_blas_threads); v3 (in
    # the key, so choices measured against the slower kernel are measured again): the kernel's
    # bf16 products pack and round their operands a vector at a time
    return (f"{cpu_model()}|numpy {np.__version__}|torch {getattr(torch, '__version__', '-')}|"
            f"kernel {kernel.status()} v3|threads {threads()}")


def _cache_path() -> Path:
    base = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "bptt")
    return Path(base) / "products-v2.json"


def _remembered() -> dict:
    """The file's choices for this machine (read once)."""
    machine = _machine()
    if _FILE.get("machine") != machine:
        _FILE.clear()
        _FILE["machine"] = machine
        try:
            _FILE["choices"] = json.loads(_cache_path().read_text()).get(machine, {})
        except (OSError, ValueError, AttributeError):
            _FILE["choices"] = {}
    return _FILE["choices"]


def _remember(key: str, name: str) -> None:
    """Add a choice to the file, atomically; a read-only or missing home is no error."""
    path = _cache_path()
    with contextlib.suppress(OSError, ValueError):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        data = data if isinstance(data, dict) else {}
        data.setdefault(_FILE["machine"], {})[key] = name
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".products-")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)


def choose(kind: str, key: str, runners: dict) -> str:
    """The candidate to use for products of ``key`` (a kind of operand and shape): forced by
    ``BPTT_PRODUCTS``, known, or measured now by running each of ``runners`` (name ->
    callable computing the product) and kept."""
    forced = os.environ.get(ENV)
    if forced in ("kernel", "library"):
        names = [n for n in CANDIDATES[kind] if n in runners and (n == "kernel") == (
            forced == "kernel")]
        if names:
            return names[0]
    full = f"{kind}|{key}"
    name = _CHOSEN.get(full) or _remembered().get(full)
    if name in runners:
        _CHOSEN[full] = name
        return name
    for run in runners.values():
        run()                                            # warm up (first-use costs)
    times = dict.fromkeys(runners, float("inf"))
    for _ in range(ROUNDS):                              # interleaved: a busy moment of the
        for n, run in runners.items():                   # machine falls on every candidate
            t0 = time.perf_counter()
            run()
            times[n] = min(times[n], time.perf_counter() - t0)
    name = min(times, key=lambda n: (times[n], CANDIDATES[kind].index(n)))
    _CHOSEN[full] = name
    _remembered()[full] = name
    _remember(full, name)
    return name


def shape_key(a, b, precision: str) -> str:
    M, K = a.shape
    N = b.shape[1]
    dtype = str(a.dtype).removeprefix("torch.")
    gaps = "|gaps" if not (_dense(a) and _dense(b)) else ""
    return f"{dtype}|{precision}|{_bucket(M)}x{_bucket(K)}x{_bucket(N)}{gaps}"


def _dense(a) -> bool:
    """A matrix or its transpose is contiguous: not a view with gaps between its rows (a
    slice of a wider array's columns, which some products first copy: chosen separately)."""
    if hasattr(a, "is_contiguous"):
        return a.is_contiguous() or a.t().is_contiguous()
    return a.flags.c_contiguous or a.flags.f_contiguous


def chosen() -> dict[str, str]:
    """Every choice made (or read back) in this process: key -> candidate."""
    return dict(_CHOSEN)


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None, *,
           accumulate: bool = False, precision: str = "fp32") -> np.ndarray:
    """``a @ b`` of NumPy matrices (transposed views welcome) into ``out`` (or a fresh array);
    ``accumulate``: ``out += a @ b``. bf16: bfloat16 operands, float32 accumulation."""
    if out is None:
        out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
    use_kernel = kernel.covers(a, b, out, precision=precision)
    small = a.shape[0] * a.shape[1] * b.shape[1] < 1 << 15   # call overhead decides: NumPy
    if use_kernel and precision == "fp32" and small:
        use_kernel = False
    elif use_kernel and precision == "fp32":
        scratch = np.empty_like(out)
        runners = {"kernel": lambda: kernel.matmul(a, b, scratch),
                   "numpy": lambda: np.matmul(a, b, out=scratch)}
        use_kernel = choose("numpy", shape_key(a, b, precision), runners) == "kernel"
    if use_kernel:
        return kernel.matmul(a, b, out, accumulate=accumulate, precision=precision)
    if precision == "bf16":
        a, b = bf16_round(a), bf16_round(b)
    if accumulate:
        out += a @ b
    else:
        np.matmul(a, b, out=out)
    return out
