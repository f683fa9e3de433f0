"""How many threads the engines compute with, set once for every pool in the process.

The products and loops of a training step run on three thread pools: the compiled kernel's
team (``bptt.engine._kernel``), NumPy's BLAS (OpenBLAS) and torch's intra-op threads (OpenMP,
MKL, oneDNN). Left alone, each would start as many threads as the machine has cores and spin
while it waits for work, and with two pools taking turns, or another process on the machine,
spinning threads steal each other's cores (a 2-core machine once fell from 18,100 to 330
tokens/s). So every pool gets the same number, :func:`set_threads` sets them all together, and
the waiting is passive: the kernel's threads spin for at most 50 microseconds and then sleep,
and the OpenMP environment of child processes (data-parallel workers, benchmark workers) asks
for passive waiting before they import anything.

The default is the number of cores this process may run on (``os.sched_getaffinity``) less
those the machine's other work keeps busy (the load average), divided among the ranks of a
data-parallel job on one machine, unless ``BPTT_THREADS`` (or else ``OMP_NUM_THREADS``) says
otherwise; ``--threads N`` of ``bptt train``
and ``bptt bench`` sets it.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys

ENV = "BPTT_THREADS"
_SETTING: list[int] = []              # [n] once decided


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:            # not Linux
        return os.cpu_count() or 1


def _from_env() -> int | None:
    for var in (ENV, "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) >= 1:
            return int(value)
    return None


def idle_cores() -> int:
    """The cores this process may run on, less those the machine's other work keeps busy: its
    share of the 1-minute load average, rounded to whole cores; at least one."""
    n = cores()
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):  # not available here
        return n
    busy = int(n * load / (os.cpu_count() or n) + 0.5)
    return max(1, n - busy)


def default_threads() -> int:
    """``BPTT_THREADS``, else ``OMP_NUM_THREADS``, else the cores this process may use that
    other work does not keep busy (:func:`idle_cores`), shared among the processes of one
    data-parallel job on this machine (torchrun's ``LOCAL_WORLD_SIZE``).

    Why not every core: each step of a recurrent loop waits for all its threads, so a thread
    that loses its core to another process for a scheduler slice stalls the whole team; with
    one busy process on a 2-core machine two threads trained at 0.3-0.5x the speed of one
    (docs/performance.md, "Threads")."""
    local = os.environ.get("LOCAL_WORLD_SIZE", "").strip()
    share = int(local) if local.isdigit() and int(local) >= 1 else 1
    return _from_env() or max(1, idle_cores() // share)


def threads() -> int:
    """The threads the engines use now (:func:`set_threads`, else the default)."""
    if not _SETTING:
        _SETTING.append(default_threads())
    return _SETTING[0]


def child_environment(n: int) -> dict[str, str]:
    """The environment that gives a child process ``n`` threads in every pool, waiting
    passively (read by OpenMP, OpenBLAS and MKL when they load, i.e. before any import)."""
    return {ENV: str(n), "OMP_NUM_THREADS": str(n), "OPENBLAS_NUM_THREADS": str(n),
            "MKL_NUM_THREADS": str(n), "OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}


_SETTER: list = []


def _openblas_setter():
    """NumPy's bundled OpenBLAS thread setter (``scipy_openblas_set_num_threads64_``), if any
    (looked up once)."""
    if not _SETTER:
        _SETTER.append(_find_openblas_setter())
    return _SETTER[0]


def _find_openblas_setter():
    try:
        import numpy
    except ImportError:
        return None
    base = os.path.dirname(os.path.dirname(numpy.__file__))
    for path in glob.glob(os.path.join(base, "numpy.libs", "libscipy_openblas*")):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                     "openblas_set_num_threads64_", "openblas_set_num_threads"):
            fn = getattr(lib, name, None)
            if fn is not None:
                return fn
    return None


_BESIDE_KERNEL: list[bool] = []       # [True] once the compiled kernel has loaded


def beside_kernel() -> None:
    """The compiled kernel has loaded (``bptt.engine.kernel`` says so): from now on NumPy's BLAS
    runs one thread (:func:`set_blas_threads`)."""
    if not _BESIDE_KERNEL:
        _BESIDE_KERNEL.append(True)
        set_blas_threads(1)


def set_blas_threads(n: int) -> None:
    """NumPy's OpenBLAS threads (where NumPy's bundled OpenBLAS is found).

    With the compiled kernel on, it gets one: the kernel's team computes every large product
    and loop, waiting passively, and what is left to NumPy is small. OpenBLAS's own threads
    wait by spinning and yielding, and on a busy machine a small product on two of them was
    measured 90 times slower than on one (a 28 x 1120 x 512 product: 87 ms against 0.9 ms,
    docs/performance.md).
    """
    setter = _openblas_setter()
    if setter is not None:
        setter(ctypes.c_int(n))


def set_threads(n: int | None) -> int:
    """Use ``n`` threads (None: the default) in the kernel's team, NumPy's OpenBLAS (one while
    the kernel is on: :func:`set_blas_threads`) and torch (when imported), and in the
    environment of child processes; returns n."""
    if n is None:
        n = default_threads()
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"expected threads a positive integer, got {n!r}")
    _SETTING[:] = [n]
    os.environ.update(child_environment(n))
    set_blas_threads(1 if _BESIDE_KERNEL else n)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
