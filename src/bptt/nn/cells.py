r"""``bptt.nn.RNNCell``, ``LSTMCell`` and ``GRUCell``: one time step of torch.nn's cells, run
as a one-step sequence through the same hand-written forward and backward as the sequence
modules (:mod:`bptt.nn.modules`).

The same constructor, parameters (``weight_ih`` (G*H, I), ``weight_hh`` (G*H, H), ``bias_ih``,
``bias_hh``), initialisation and forward as torch.nn: input (B, I) or unbatched (I,), ``hx``
omitted (zeros) or given; RNNCell and GRUCell return h' (B, H), LSTMCell ``(h', c')``. Integer
input (B,) / () are token ids, one-hot vectors of size ``input_size``.

``LayerNormLSTMCell`` and ``LayerNormGRUCell``: one step of the layer-normalised cells (the
sequence modules' ``LayerNormLSTM`` and ``LayerNormGRU``), with the cell's own parameters
``layernorm_ih.weight``, ``layernorm_hh.weight`` (and the LSTM's ``layernorm_c.weight``,
``layernorm_c.bias``): the registry's names without a layer suffix.

Symbols: B batch, I input size, H hidden size, G gates (1 RNN, 4 LSTM, 3 GRU).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..cells import GRU as GRU_KIND
from ..cells import LNGRU as LNGRU_KIND
from ..cells import LNLSTM as LNLSTM_KIND
from ..cells import LSTM as LSTM_KIND
from ..cells import RNN as RNN_KIND
from ..cells import CellKind, layer_suffix
from ..model import stack_fills, stack_shapes
from .checks import check_constructor, check_token_ids, is_tokens
from .modules import init_parameters, param_at, set_parameter
from .run import run_stack


def cell_name(stack_name: str) -> str:
    """A one-layer stack's parameter name as the cell names it, without the layer suffix:
    ``weight_ih_l0`` -> ``weight_ih``, ``layernorm_c_l0.bias`` -> ``layernorm_c.bias``."""
    return stack_name.replace(layer_suffix(0, 0), "", 1)


class RNNCellBase(nn.Module):
    """What the three cells share: parameters, checks, one step through the engine."""

    kind: ClassVar[CellKind]

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None, *, nonlinearity: str = "tanh") -> None:
        super().__init__()
        check_constructor(self.kind, input_size, hidden_size, 1, bias, False, 0.0, False, 0,
                          nonlinearity)
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        shapes = stack_shapes(self.kind, input_size, hidden_size, bias=bias)
        self._stack_names = tuple(shapes)                # the one-layer stack's names, in order
        for name, shape in shapes.items():
            set_parameter(self, cell_name(name),
                          nn.Parameter(torch.empty(shape, device=device, dtype=dtype)))
        if not bias:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self._fills = {cell_name(n): v for n, v in stack_fills(self.kind, bias=bias).items()}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch's initialisation: every parameter U(-1/sqrt(H), 1/sqrt(H)), in torch's order;
        a cell's own (a layer norm's gains and biases) start at the registry's fill."""
        init_parameters(self, self.hidden_size, self._fills)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            s += f", nonlinearity={self.nonlinearity!r}"
        return s

    def __repr__(self) -> str:
        """torch.nn's one line (the ParameterDicts holding a cell's own parameters are not
        listed as submodules)."""
        return f"{self._get_name()}({self.extra_repr()})"

    def _step(self, input: torch.Tensor, hx) -> tuple[torch.Tensor, ...]:
        """One step: the new state's parts, (B, H) each (unbatched: (H,))."""
        name = type(self).__name__
        tokens = is_tokens(input)
        batched_dim = 1 if tokens else 2
        if input.dim() not in (batched_dim - 1, batched_dim):
            raise ValueError(f"expected {name} input of {batched_dim - 1}-D or {batched_dim}-D, "
                             f"got a {input.dim()}-D tensor of shape {tuple(input.shape)}")
        batched = input.dim() == batched_dim
        x = input if batched else input.unsqueeze(0)
        parts = self._state_parts(hx, x, batched)
        if tokens:
            check_token_ids(self, x)
        elif x.shape[1] != self.input_size:
            raise RuntimeError(f"expected {name} input of size {self.input_size} (input_size), "
                               f"got shape {tuple(input.shape)}")
        elif x.dtype != self.weight_ih.dtype and not torch.is_autocast_enabled(x.device.type):
            raise ValueError(f"expected {name} input of dtype {self.weight_ih.dtype} (the "
                             f"parameters'), got {x.dtype}")
        weights = [param_at(self, cell_name(n)) for n in self._stack_names]
        _, parts_n = run_stack(self, self._stack_names, weights, x.unsqueeze(0),
                               None if parts is None else tuple(p.unsqueeze(0) for p in parts))
        return tuple(p[0] if batched else p[0, 0] for p in parts_n)

    def _state_parts(self, hx, x: torch.Tensor, batched: bool):
        """``hx`` as its parts, (B, H) each, checked (torch: ValueError for the dimensions,
        RuntimeError for the sizes); None stays None (zeros)."""
        if hx is None:
            return None
        name, kind = type(self).__name__, self.kind
        parts = tuple(hx) if kind.paired_state else (hx,)
        if len(parts) != kind.num_state_parts or not all(
                isinstance(p, torch.Tensor) for p in parts):
            raise ValueError(f"expected the {name} state as {' and '.join(kind.state)} tensors, "
                             f"got {type(hx).__name__}")
        out = []
        for label, p in zip(kind.state, parts, strict=True):
            if p.dim() not in (1, 2):
                raise ValueError(f"expected the {name} state {label} 1-D or 2-D, got a "
                                 f"{p.dim()}-D tensor")
            p = p if batched else p.unsqueeze(0)
            if tuple(p.shape) != (x.shape[0], self.hidden_size):
                raise RuntimeError(f"expected the {name} state {label} of shape "
                                   f"({x.shape[0]}, {self.hidden_size}) (batch, hidden_size), "
                                   f"got {tuple(p.shape)}")
            out.append(p)
        return tuple(out)


class RNNCell(RNNCellBase):
    """torch.nn.RNNCell: h' = f(x W_ih^T + b_ih + h W_hh^T + b_hh), f = tanh or relu."""

    kind = RNN_KIND

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", device=None, dtype=None) -> None:
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, bias, device, dtype, nonlinearity=nonlinearity)

    def forward(self, input: torch.Tensor, hx: torch.Tensor | None = None) -> torch.Tensor:
        return self._step(input, hx)[0]


class LSTMCell(RNNCellBase):
    """torch.nn.LSTMCell: [i|f|g|o] = x W_ih^T + b_ih + h W_hh^T + b_hh; c' = f * c + i * g;
    h' = o * tanh(c')."""

    kind = LSTM_KIND

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, device, dtype)

    def forward(self, input: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = self._step(input, hx)
        return h, c


class GRUCell(RNNCellBase):
    """torch.nn.GRUCell: r, z = sigmoid(..); n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn));
    h' = (1 - z) * n + z * h."""

    kind = GRU_KIND

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, device, dtype)

    def forward(self, input: torch.Tensor, hx: torch.Tensor | None = None) -> torch.Tensor:
        return self._step(input, hx)[0]


class LayerNormLSTMCell(LSTMCell):
    """One step of :class:`bptt.nn.LayerNormLSTM`: [i|f|g|o] = LN(x W_ih^T) g_ih + b_ih +
    LN(h W_hh^T) g_hh + b_hh; c' = f * c + i * g; h' = o * tanh(LN(c') g_c + b_c)."""

    kind = LNLSTM_KIND


class LayerNormGRUCell(GRUCell):
    """One step of :class:`bptt.nn.LayerNormGRU`: a = LN(x W_ih^T) g_ih + b_ih, s = LN(h W_hh^T)
    g_hh + b_hh; r, z = sigmoid(a^{r,z} + s^{r,z}); n = tanh(a^n + r * s^n);
    h' = (1 - z) * n + z * h."""

    kind = LNGRU_KIND


__all__ = ["GRUCell", "LSTMCell", "LayerNormGRUCell", "LayerNormLSTMCell", "RNNCell",
           "RNNCellBase"]
