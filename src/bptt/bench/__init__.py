"""``bptt bench``: how fast every engine trains and generates, and how much memory it takes.

Subjects (rows of the table), all the language model of a configuration (its cell and layers
over one-hot characters, or behind an embedding for the word models; the book's: one tanh RNN
layer), a linear head, softmax cross-entropy, SGD with the gradient norm clipped at 1; a
configuration runs the subjects that take it (``BenchConfig.takes``):

  numpy           our NumPy engine (hand-written BPTT; its worker never imports torch)
  numpy-bf16      the NumPy engine with ``precision="bf16"`` (the compiled kernel's bfloat16
                  products, float32 rest)
  torch           our torch engine (the same BPTT as an autograd.Function)
  torch-bf16      the torch engine with ``precision="bf16"`` (bfloat16 products, float32 rest)
  torch-autograd  our torch engine differentiating the unrolled loop
  torch-builtin   our engine around torch.nn.RNN/LSTM/GRU + torch.nn.Linear
  torch.nn.RNN    reference written here, independent of our engines: torch.nn.RNN +
                  torch.nn.Linear on one-hot inputs, torch.optim.SGD and
                  torch.nn.utils.clip_grad_norm_; generation steps one character at a time under
                  torch.no_grad(); torch.nn.LSTM and torch.nn.GRU likewise, the references of
                  the ``lstm`` and ``gru`` configurations (2 layers), torch.nn.LSTM behind
                  torch.nn.Embedding that of the word models
  bptt.nn.RNN     the same with bptt.nn's drop-in module (our BPTT inside a torch.nn.Module);
                  bptt.nn.LSTM and bptt.nn.GRU likewise
  book            reference written here as the book has it (d2l 8.5): the unrolled loop over
                  one-hot inputs with torch.mm and the output layer inside the loop, autograd,
                  the book's grad_clipping and sgd; generation is its predict_ch8 loop (the
                  one-layer character RNN configurations only)

Measurements, per configuration (``CONFIGS``; ``--quick`` shrinks every one of them): training
tokens/s, single-stream generation characters/s (character models; both in interleaved rounds
of timed blocks, one persistent worker process per subject), and peak memory of a few training
steps in a fresh process. Every worker computes with the same number of threads in every pool
(``bptt.engine.threads``: the kernel's, the BLAS's, torch's), by default as many as this process
may use cores, waiting passively.

Modules, by job:

  settings  BenchConfig, CONFIGS, QUICK_CONFIGS, SUBJECTS, PARTS, BenchSettings, threads
  subjects  EngineSubject, ModuleSubject, BookSubject, make_subject
  worker    the worker protocol: Worker (the parent's end), worker_main (the process)
  memory    measure_memory: peak memory growth of a few training steps
  measure   run: the timed rounds and the memory processes of every configuration
  report    TARGETS, evaluate_targets, format_table
  rates     gemm_shapes, gemm_rates, profile_step, torch_profile_step

The names below are loaded from those modules on first use. The parent process imports neither
torch nor (until it measures) NumPy; the NumPy engine's worker never imports torch.
"""

from __future__ import annotations

import importlib

_LAZY = {
    **dict.fromkeys(("ENGINE_SUBJECTS", "BF16_SUBJECTS", "REFERENCE", "BOOK", "MODULE_SUBJECTS",
                     "SUBJECTS", "PARTS", "BenchConfig", "CONFIGS", "QUICK_CONFIGS",
                     "BenchSettings", "cores", "threads", "THREADS_ENV"), "settings"),
    **dict.fromkeys(("EngineSubject", "ModuleSubject", "BookSubject", "make_subject"),
                    "subjects"),
    **dict.fromkeys(("Worker", "worker_main"), "worker"),
    "measure_memory": "memory",
    **dict.fromkeys(("run", "Measurement", "machine_info"), "measure"),
    **dict.fromkeys(("TARGETS", "evaluate_targets", "format_table"), "report"),
    **dict.fromkeys(("gemm_shapes", "gemm_rates", "profile_step", "torch_profile_step"),
                    "rates"),
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
