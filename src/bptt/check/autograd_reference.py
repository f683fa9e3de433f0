"""The reference of a cell that torch.nn does not have: the same equations as an unrolled loop
over time steps (the torch-autograd engine's, :mod:`bptt.engine.torch.unrolled`), written with
plain torch ops and differentiated by autograd.

:class:`AutogradReference` stands where ``torch.nn.RNN/LSTM/GRU(...).double()`` stands for the
cells torch has: it holds float64 parameters under this package's names and shapes, drawn
from a seed, and ``reference(x, hx)`` returns ``(out, h_n)`` in torch's forms, so that
:func:`bptt.check.references.check_against_torch` (and its truncated loss) runs unchanged.
Nothing of the hand-written BPTT runs here.

This module imports torch (``bptt.check`` imports it only when a row needs it).
"""

from __future__ import annotations

import torch

from ..cells import get_cell
from ..engine.torch.unrolled import STEPS, stack_forward
from ..model import ModelSpec
from .ours import reference_params


def has_step(cell) -> bool:
    """The unrolled loop has the cell's step (``unrolled.STEPS``)."""
    return get_cell(cell).name in STEPS


class AutogradReference:
    """A stack of ``cell`` layers as ``torch.nn.LSTM`` offers one: ``named_parameters()`` and a
    call ``(x (T, B, I), hx) -> (out (T, B, D*H), h_n)``, in float64 under autograd."""

    def __init__(self, cell, nonlinearity: str, input_size: int, hidden_size: int,
                 num_layers: int, bidirectional: bool, bias: bool, seed: int) -> None:
        self.kind = get_cell(cell)
        if not has_step(self.kind):
            raise ValueError(f"expected a cell with an autograd step in "
                             f"bptt.engine.torch.unrolled.STEPS, got {self.kind.name!r}")
        self.spec = ModelSpec(cell=self.kind.name, input_size=input_size,
                              hidden_size=hidden_size, output_size=1, num_layers=num_layers,
                              nonlinearity=nonlinearity, bias=bias, bidirectional=bidirectional,
                              task="regression")
        self.params = {k: torch.tensor(v, requires_grad=True)
                       for k, v in reference_params(self.spec, seed).items()}

    def named_parameters(self):
        return self.params.items()

    def load_state_dict(self, state: dict) -> None:
        """Take float64 copies of ``state`` (every parameter, by name) as the parameters, as
        torch.nn.Module's own method does."""
        missing = sorted(set(self.params) - set(state))
        if missing or len(state) != len(self.params):
            raise ValueError(f"expected parameters {sorted(self.params)}, got {sorted(state)}")
        self.params = {k: torch.as_tensor(state[k], dtype=torch.float64).clone()
                       .requires_grad_() for k in self.params}

    def double(self) -> AutogradReference:
        return self                                      # float64 already

    def __call__(self, x: torch.Tensor, hx=None):
        s = self.spec
        return stack_forward(self.kind, self.params, x, hx, num_layers=s.num_layers,
                             bidirectional=s.bidirectional, nonlinearity=s.nonlinearity)
