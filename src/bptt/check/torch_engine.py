"""The rows of the torch engine: its StackFunction, whose backward is the hand-written BPTT on
tensors, checked two ways:

  torch      float64 outputs and gradients against ``torch.nn.RNN/LSTM/GRU`` autograd on the
             same weights and upstream gradients (:func:`bptt.check.references.check_against_torch`
             with ``engine="torch"``: the same comparison as the NumPy rows; a cell torch.nn
             lacks against its unrolled loop under autograd)
  gradcheck  ``torch.autograd.gradcheck`` in float64 (numerical vs analytical Jacobians of every
             input: x, h0, c0 and every weight). It answers pass/fail, so its row shows 0 in
             the params column when it passes and inf when it does not.
  model      the word language model whole through the engine's EmbeddingFunction,
             StackFunction and HeadFunction (bptt.check.model), against torch.nn autograd and
             finite differences

This module imports torch (``bptt.check`` imports it only when it runs these rows).
"""

from __future__ import annotations

import torch

from ..cells import CELL_NAMES, CELLS, get_cell
from ..engine.torch.stack import StackConfig, StackFunction
from ..model import ModelSpec, param_fills, param_shapes
from .model import model_rows, run_model_config
from .record import CheckRow
from .references import check_against_torch, has_torch_reference


def gradcheck_row(cell: str, *, nonlinearity: str = "tanh", batch: int = 2, steps: int = 3,
                  input_size: int = 3, hidden_size: int = 3, num_layers: int = 1,
                  bidirectional: bool = False, seed: int = 0, proj_size: int = 0) -> CheckRow:
    """``torch.autograd.gradcheck`` on the StackFunction (float64, tiny sizes)."""
    kind = get_cell(cell)
    gen = torch.Generator().manual_seed(seed)
    spec = ModelSpec(cell=kind.name, input_size=input_size, hidden_size=hidden_size,
                     output_size=1, num_layers=num_layers, nonlinearity=nonlinearity,
                     bidirectional=bidirectional, task="regression", proj_size=proj_size)
    shapes = {k: v for k, v in param_shapes(spec).items() if not k.startswith("head.")}
    names = tuple(shapes)
    fills = param_fills(spec)
    weights = []
    for n in names:                                      # a cell's own parameters near their
        w = 0.5 * torch.randn(shapes[n], generator=gen, dtype=torch.float64)  # initial value
        weights.append((w + fills.get(n, 0.0)).requires_grad_())
    LD = num_layers * spec.directions
    x = torch.randn(steps, batch, input_size, generator=gen, dtype=torch.float64,
                    requires_grad=True)
    states = [torch.randn(LD, batch, size, generator=gen, dtype=torch.float64,
                          requires_grad=True) for size in spec.state_sizes]
    h0, c0 = (*states, None)[:2]                         # c0: the LSTM's only
    cfg = StackConfig(cell, names=names, num_layers=num_layers, bidirectional=bidirectional,
                      nonlinearity=nonlinearity)

    def f(x, h0, c0, *w):
        out, h_n, c_n, _ = StackFunction.apply(cfg, x, h0, c0, *w)
        return (out, h_n) if c_n is None else (out, h_n, c_n)

    passed = torch.autograd.gradcheck(f, (x, h0, c0, *weights), eps=1e-6, atol=1e-7,
                                      rtol=1e-5, raise_exception=False)
    err = 0.0 if passed else float("inf")
    return CheckRow(cell=cell, engine="torch",
                    nonlinearity=nonlinearity if kind.takes_nonlinearity else "-",
                    batch=batch, steps=steps, input_size=input_size,
                    hidden_size=hidden_size, layers=num_layers, bidirectional=bidirectional,
                    with_h0=True, truncate=None, method="gradcheck", params=err,
                    proj_size=proj_size)


# the configurations of each cell's rows: hand-picked for the cells torch.nn has, and a set for
# every other cell of the registry (OTHER_CELLS)
AGAINST_AUTOGRAD = [("rnn", "tanh", {}), ("rnn", "relu", {"with_h0": False, "truncate": 2}),
                    ("lstm", "tanh", {"num_layers": 2}), ("gru", "tanh", {"bidirectional": True}),
                    ("lstm", "tanh", {"proj_size": 2})]
AGAINST_AUTOGRAD_FULL = [("rnn", "tanh", {"num_layers": 2, "bidirectional": True}),
                         ("lstm", "tanh", {"truncate": 1}), ("gru", "tanh", {"truncate": 0}),
                         ("lstm", "tanh", {"bidirectional": True, "with_h0": False}),
                         ("gru", "tanh", {"num_layers": 3}),
                         ("lstm", "tanh", {"proj_size": 2, "truncate": 1}),
                         ("lstm", "tanh", {"proj_size": 3, "num_layers": 2,
                                           "bidirectional": True})]
GRADCHECK = [("rnn", "tanh", {}), ("rnn", "relu", {}), ("lstm", "tanh", {}), ("gru", "tanh", {}),
             ("lstm", "tanh", {"proj_size": 2})]
GRADCHECK_FULL = [("rnn", "tanh", {"num_layers": 2, "bidirectional": True}),
                  ("lstm", "tanh", {"num_layers": 2}), ("gru", "tanh", {"num_layers": 2}),
                  ("gru", "tanh", {"bidirectional": True})]
OTHER_CELLS = {  # (quick, full) option sets, vs autograd and gradcheck
    "autograd": ([{"num_layers": 2}],
                 [{"truncate": 1}, {"bidirectional": True, "with_h0": False}]),
    "gradcheck": ([{}], [{"num_layers": 2, "bidirectional": True}]),
}


def _configs(picked: list, picked_full: list, other: tuple, quick: bool) -> list:
    """The hand-picked configurations, then ``other``'s option sets for every cell of the
    registry that none of them names."""
    configs = picked + ([] if quick else picked_full)
    named = {cell for cell, _, _ in picked + picked_full}
    sets = other[0] + ([] if quick else other[1])
    return configs + [(kind.name, "tanh", kw) for kind in CELLS.values()
                      if kind.name not in named for kw in sets]


def rows(quick: bool = False) -> list[CheckRow]:
    """The torch engine's rows: vs autograd (torch.nn, or the unrolled loop for a cell torch.nn
    lacks), and gradcheck, for every cell of the registry."""
    shape = dict(batch=3, steps=5, input_size=4, hidden_size=5)
    configs = _configs(AGAINST_AUTOGRAD, AGAINST_AUTOGRAD_FULL, OTHER_CELLS["autograd"], quick)
    out = [check_against_torch(cell, nonlinearity=nl, engine="torch", **shape, **kw)
           for cell, nl, kw in configs]
    grad_cfgs = _configs(GRADCHECK, GRADCHECK_FULL, OTHER_CELLS["gradcheck"], quick)
    out += [gradcheck_row(cell, nonlinearity=nl, **kw) for cell, nl, kw in grad_cfgs]
    out += [run_model_config(c) for cell in CELL_NAMES for c in model_rows(cell, quick, "torch")
            if c["method"] != "torch" or has_torch_reference(cell)]
    return out
