"""Peak memory of a few training steps of a subject, measured inside its own fresh process.

After setup (imports, parameters, data, and a warm-up of the same code on a tiny batch so lazy
library initialisation is not counted), ``/proc/self/clear_refs`` resets the kernel's
high-water mark and the peak is VmHWM - VmRSS(before); without it, the growth of ru_maxrss.
NumPy's own array allocations can be measured instead with tracemalloc.
"""

from __future__ import annotations

import gc
import sys


def _proc_status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's resident high-water mark (VmHWM) to the current RSS (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_memory(subject, steps: int, use_tracemalloc: bool = False) -> dict:
    """Peak memory growth of ``steps`` training steps of a set-up subject, in MiB."""
    gc.collect()
    if use_tracemalloc:
        import tracemalloc

        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        subject.train(steps)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return {"method": "tracemalloc", "peak_mb": (peak - base) / 2**20}
    before = _proc_status_mb("VmRSS")
    if before is not None and _reset_peak():
        subject.train(steps)
        return {"method": "rss", "peak_mb": _proc_status_mb("VmHWM") - before}
    import resource  # fallback: ru_maxrss growth

    scale = 1.0 / 1024 if sys.platform != "darwin" else 1.0 / 2**20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    subject.train(steps)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return {"method": "maxrss", "peak_mb": after - before}
