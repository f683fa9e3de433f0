"""Gradient verification as a library: the hand-written BPTT against independent references.

Every check builds one recurrent stack (cell, sizes, layers, directions), draws random inputs,
initial states and upstream gradients, and compares our forward and hand-written backward with a
reference, in float64:

  torch      ``torch.nn.RNN/LSTM/GRU(...).double()`` differentiated by autograd (truncation
             included, through a reference that detaches the state k+1 steps back)
  fd         central finite differences of the loss, every parameter, input and state entry
  gradcheck  ``torch.autograd.gradcheck`` on the torch engine's autograd.Function

Modules, by job:

  record        CheckRow (one checked configuration and its errors), tolerances, rel_error
  ours          what is checked: a configuration's draws, our forward and backward per engine
  references    check_against_torch (torch.nn autograd, the truncated reference),
                check_finite_differences, numerical_gradient
  rows          default_table (the NumPy engine's configurations), run_config, run_checks
  torch_engine  the torch engine's rows: vs autograd, and gradcheck (imports torch)
  table         format_table: the text ``bptt check`` prints

Nothing here imports torch at module import; torch is loaded by the checks that need it.
"""

from __future__ import annotations

from .record import (
    ERROR_COLUMNS,
    FD_TOLERANCE,
    METHODS,
    TOLERANCE,
    CheckRow,
    rel_error,
)
from .references import check_against_torch, check_finite_differences, numerical_gradient
from .rows import default_table, run_checks, run_config
from .table import format_table

__all__ = [
    "ERROR_COLUMNS", "FD_TOLERANCE", "METHODS", "TOLERANCE", "CheckRow", "check_against_torch",
    "check_finite_differences", "default_table", "format_table", "numerical_gradient",
    "rel_error", "run_checks", "run_config",
]
