"""Engines: the same model computed four ways, interchangeable, differing only in speed.

  numpy           hand-written BPTT on NumPy arrays (never imports torch)
  torch           the same hand-written BPTT on torch tensors (CPU or CUDA), as an autograd.Function
  torch-autograd  the book's unrolled loop over time steps, differentiated by autograd
  torch-builtin   torch.nn.RNN/LSTM/GRU (cuDNN on a GPU) plus torch.nn.Linear

Every engine satisfies :class:`bptt.engine.protocol.Engine` (the interface the jobs use); every
cell of :mod:`bptt.cells` has a module in ``engine/numpy`` and in ``engine/torch`` satisfying
:class:`bptt.engine.protocol.CellModule`.
"""

from __future__ import annotations

from ..errors import require
from ..model import ModelSpec

ENGINES = ("numpy", "torch", "torch-autograd", "torch-builtin")


def get_engine(name: str, spec: ModelSpec, *, device: str | None = None,
               dtype: str = "float32", precision: str = "fp32"):
    """An engine instance by name; torch is imported only for the torch engines."""
    if name not in ENGINES:
        raise ValueError(f"expected engine one of {', '.join(ENGINES)}, got {name!r}")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"expected dtype 'float32' or 'float64', got {dtype!r}")
    if name in ("numpy", "torch") and device in (None, "cpu"):
        from .heap import keep_freed_memory

        keep_freed_memory()           # a step's large arrays: reused memory, not fresh pages
    if name == "numpy":
        from .numpy.model import NumpyEngine

        return NumpyEngine(spec, dtype=dtype, precision=precision, device=device)
    require("torch", "torch", f"engine {name!r}")
    from .torch.model import TORCH_ENGINES

    return TORCH_ENGINES[name](spec, device=device, dtype=dtype, precision=precision)


def as_numpy(x):
    """A NumPy array from an engine's output (a NumPy array or a torch tensor on any device)."""
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return x


def copy_arrays(arrays: dict) -> dict:
    """A deep copy of a dict of arrays or tensors (scalars kept): optimisers update in place."""
    return {k: v.clone() if hasattr(v, "clone") else v.copy() if hasattr(v, "copy") else v
            for k, v in arrays.items()}
