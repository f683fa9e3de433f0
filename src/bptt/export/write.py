"""``export_model``: a checkpoint to a TorchScript or ONNX file, checked before it is kept.

Every check happens before anything on disk changes: the format, ``out`` (an existing file is
replaced only with ``overwrite``), the optional packages, the checkpoint and its cell. The file
is written under a temporary name beside ``out``, loaded back by plain torch or onnxruntime and
run on a fixed probe (random tokens or features, a random initial state); only when its outputs
and final state match the NumPy engine's within float32 tolerance is it renamed to ``out``.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engine import as_numpy, get_engine
from ..errors import require
from .model import Exportable

FORMATS = ("torchscript", "onnx")
SUFFIXES = {"torchscript": ".pt", "onnx": ".onnx"}
# max |file - NumPy engine| / max(1, max |NumPy engine|) over the probe's outputs and states
TOLERANCE = 1e-4


@dataclass
class ExportResult:
    path: Path
    format: str
    via: str                 # torch.nn | loop (TorchScript), onnx operators (ONNX)
    error: float             # the probe's largest relative difference from the NumPy engine


def _backend(fmt: str):
    """The module writing ``fmt``, its optional packages imported (or a one-line error)."""
    if fmt == "torchscript":
        require("torch", "torch", "--format torchscript")
        from . import torchscript

        return torchscript
    require("onnx", "export", "--format onnx")
    require("onnxruntime", "export", "--format onnx (the written file is checked with it)")
    from . import onnx_graph

    return onnx_graph


def reference(model: Exportable, x: np.ndarray, state: list[np.ndarray]):
    """The NumPy engine's output and final state parts for the probe."""
    engine = get_engine("numpy", model.spec)
    out, final = engine.forward(engine.from_numpy(model.params), x,
                                model.kind.from_parts(tuple(state)))
    return as_numpy(out), [as_numpy(s) for s in model.kind.to_parts(final)]


def difference(got, want) -> float:
    """The largest relative difference over output and state parts."""
    (y, states), (ref, ref_states) = got, want
    return max(float(np.abs(a - b).max()) / max(1.0, float(np.abs(b).max()))
               for a, b in zip([y, *states], [ref, *ref_states], strict=True))


def export_model(checkpoint, fmt: str, out: str | Path, *, overwrite: bool = False,
                 via: str | None = None) -> ExportResult:
    """Write the model of ``checkpoint`` (a Checkpoint, run folder or .safetensors file) as
    ``fmt`` to ``out``. ``via`` (TorchScript only): "torch.nn" or "loop" (default: torch.nn
    when torch has the cell)."""
    from .. import checkpoint as ck

    if fmt not in FORMATS:
        raise ValueError(f"expected format one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"expected --out to be a file, got the folder {out}")
    if out.exists() and not overwrite:
        raise ValueError(f"expected --out to be a new file, got {out}, which exists (pass "
                         "--overwrite to replace it)")
    if not out.parent.is_dir():
        raise ValueError(f"expected --out in an existing folder, got {out} ({out.parent} "
                         "does not exist)")
    if via is not None and fmt != "torchscript":
        raise ValueError(f"expected via only with --format torchscript, got via {via!r}")
    backend = _backend(fmt)
    ckpt = checkpoint if isinstance(checkpoint, ck.Checkpoint) else ck.load(checkpoint)
    model = Exportable.from_checkpoint(ckpt)
    if fmt == "torchscript":
        via = backend.choose_via(model, via)
        save = lambda path: backend.save(model, path, via)  # noqa: E731
    else:
        backend.check_cell(model)
        if model.spec.proj_size:
            raise ValueError(f"expected a model without proj_size for --format onnx (ONNX's "
                             f"LSTM operator has no projection), got proj_size "
                             f"{model.spec.proj_size}; --format torchscript exports it")
        via = "onnx operators"
        save = lambda path: backend.save(model, path)  # noqa: E731

    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        save(tmp)
        x, state = model.probe()
        error = difference(backend.run(tmp, x, state), reference(model, x, state))
        if not error <= TOLERANCE:
            raise ValueError(f"expected the exported file to reproduce the model within "
                             f"{TOLERANCE:g}, got a difference of {error:.3g}; nothing written")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)                    # mkstemp's 0600 -> a usual file
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return ExportResult(out, fmt, via, error)
