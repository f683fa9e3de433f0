"""bptt: recurrent networks with hand-derived backpropagation through time.

The public names below are loaded on first use (``bptt.train``, ``bptt.ModelSpec``, ...), so
``import bptt`` and ``bptt --help`` stay instant and the NumPy path never imports torch. The
hand-written cells themselves live in ``bptt.engine.numpy.{rnn,lstm,gru}`` (and their torch
twins in ``bptt.engine.torch``), each ``forward`` beside its ``backward``. The drop-in
``torch.nn`` modules are the subpackage ``bptt.nn`` (``from bptt import nn``; it imports
torch, so it is not among the lazy names).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> (module, attribute)
_LAZY = {
    # the cell registry: one CellKind per cell (gates, state parts, options)
    **{n: ("bptt.cells", n) for n in ("CellKind", "CELLS", "CELL_NAMES", "get_cell")},
    # the model: shapes, torch parameter names, initialisation
    **{n: ("bptt.model", n) for n in ("ModelSpec", "init_params", "param_shapes",
                                      "check_params")},
    # engines: the hand-written BPTT on NumPy or torch, torch autograd, torch.nn
    **{n: ("bptt.engine", n) for n in ("get_engine", "ENGINES")},
    "Engine": ("bptt.engine.protocol", "Engine"),
    # optimisation, over dicts of NumPy arrays or torch tensors
    **{n: ("bptt.optim", n) for n in ("SGD", "Adam", "Adagrad", "make_optimizer",
                                      "clip_grad_norm_", "clip_grad_value_", "global_norm")},
    # data
    **{n: ("bptt.data", n) for n in ("Vocab", "load_corpus", "DataError")},
    # the language model: train, generate, evaluate
    "TrainConfig": ("bptt.lm.config", "TrainConfig"),
    "train": ("bptt.lm.train", "train"),
    "LanguageModel": ("bptt.lm.generate", "LanguageModel"),
    "generate": ("bptt.lm.generate", "generate"),
    "evaluate_tokens": ("bptt.lm.evaluate", "evaluate_tokens"),
    # what every training job shares: checkpoints, the divergence stop
    "Checkpoint": ("bptt.checkpoint", "Checkpoint"),
    "CheckpointError": ("bptt.checkpoint", "CheckpointError"),
    "load_checkpoint": ("bptt.checkpoint", "load"),
    "save_checkpoint": ("bptt.checkpoint", "save"),
    "Diverged": ("bptt.errors", "Diverged"),
    # sequence regression
    **{n: ("bptt.series", n) for n in ("SineConfig", "SeriesConfig", "train_sine",
                                       "train_series")},
    # diagnostics: gradient checks and gradient flow
    "run_checks": ("bptt.check", "run_checks"),
    # deployment: TorchScript and ONNX files
    "export_model": ("bptt.export", "export_model"),
    **{n: ("bptt.gradflow", n) for n in ("GradFlow", "jacobians", "analyse")},
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value          # loaded once
        return value
    raise AttributeError(f"module 'bptt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
