"""Memory a run needs, estimated before anything is allocated, against what the machine has.

A run too big for the machine would otherwise die in the allocator with a traceback, or grow
until the kernel kills it (and everything near it). :func:`require` refuses it first, in one
line with the estimate and the memory available.

The estimate counts what training keeps at its peak, in the engine's dtype:

- the parameters, their gradients, and the copy of both taken at each epoch's start (restored
  when the loss diverges);
- the optimiser's state (Adam two arrays per parameter, Adagrad one, SGD none) and its copy;
- the activations the backward needs: per layer and direction, ``T * B * H`` values per part
  the cell's forward keeps (``CellKind.cache_parts``, :mod:`bptt.cells`) plus its gate
  gradients (``G * T * B * H``), and the head's logits and their gradient (``T * B * O`` each,
  O the vocabulary for a language model);
- a checkpoint being written (its tensors serialised once more), and the per-step records
  ``sine`` and ``series`` keep in memory (``records``).

It is an estimate (allocator overheads and the interpreter are not counted): a run it refuses
cannot fit; a run it passes may still be close to the limit.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .model import ModelSpec, param_shapes

OPTIMIZER_SLOTS = {"sgd": 0, "adam": 2, "adagrad": 1}
ITEMSIZE = {"float32": 4, "float64": 8}
RECORD_BYTES = 600          # one per-step metrics record (a dict of a few floats) in memory


@dataclass
class Estimate:
    """Bytes per part; ``device`` parts live where the engine computes, ``host`` parts in RAM."""

    device: dict[str, int] = field(default_factory=dict)
    host: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.device.values()) + sum(self.host.values())

    def describe(self, parts: dict[str, int] | None = None) -> str:
        parts = {**self.device, **self.host} if parts is None else parts
        return ", ".join(f"{k} {human(v)}" for k, v in parts.items() if v)


def human(n: float) -> str:
    """Bytes in binary units: 512 B, 3.2 MiB, 4.0 TiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def estimate(spec: ModelSpec, *, batch_size: int, num_steps: int, optimizer: str = "sgd",
             dtype: str = "float32", records: int = 0, training: bool = True) -> Estimate:
    """What training ``spec`` on batches of ``batch_size`` x ``num_steps`` needs at its peak;
    with ``training=False``, what a forward pass (evaluation) needs: the parameters, each
    layer's states and gates, and the outputs."""
    item = ITEMSIZE.get(dtype, 8)
    n_params = sum(math.prod(s) for s in param_shapes(spec).values())
    slots = OPTIMIZER_SLOTS.get(optimizer, 2)
    T, B, H = num_steps, batch_size, spec.hidden_size
    if not training:
        return Estimate(device={
            "parameters": n_params * item,
            "activations": 2 * (spec.gates + 1) * T * B * H * spec.directions * item,
            "outputs": 2 * T * B * spec.output_size * item,
        })
    per_layer = (spec.kind.cache_parts + spec.gates) * T * B * H
    return Estimate(
        device={
            "parameters and gradients": 3 * n_params * item,
            "optimiser state": 2 * slots * n_params * item,
            "activations": spec.num_layers * spec.directions * per_layer * item,
            "outputs": 2 * T * B * spec.output_size * item,
        },
        host={
            "checkpoint": (1 + slots) * n_params * item,
            "step records": records * RECORD_BYTES,
        },
    )


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available() -> int | None:
    """What the cgroup (v2) limit leaves this process's group, when there is a limit."""
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((root / "memory.current").read_text().strip())
    except (OSError, ValueError):
        return None


def host_available() -> tuple[int | None, str]:
    """(bytes of RAM available, where that number comes from); (None, "") when unknown."""
    found = [(v, w) for v, w in ((_meminfo_available(), "MemAvailable in /proc/meminfo"),
                                 (_cgroup_available(), "the cgroup's memory.max")) if v is not None]
    if found:
        return min(found)
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "sysconf"
    except (AttributeError, ValueError, OSError):
        return None, ""


def device_available(device) -> tuple[int | None, str]:
    """Free memory of a CUDA device (torch), else the host's."""
    if getattr(device, "type", str(device).split(":")[0]) == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free on {device}"
    return host_available()


class NotEnoughMemory(ValueError):
    """A run refused before allocating, because it cannot fit (one line, exit 2)."""


def require(est: Estimate, device="cpu", *, hint: str = "") -> None:
    """Refuse, in one line, a run whose estimate exceeds the memory available."""
    on_cuda = getattr(device, "type", str(device).split(":")[0]) == "cuda"
    checks = ([(est.device, device_available(device)), (est.host, host_available())]
              if on_cuda else [({**est.device, **est.host}, host_available())])
    for parts, (have, where) in checks:
        need = sum(parts.values())
        if have is not None and need > have:
            raise NotEnoughMemory(
                f"expected a run that fits in the {human(have)} of memory available "
                f"({where}), got one that needs about {human(need)} ({est.describe(parts)})"
                + (f"; {hint}" if hint else ""))
