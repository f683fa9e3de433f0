r"""``bptt.nn.RNN``, ``LSTM`` and ``GRU``: torch.nn's sequence modules whose forward is our
hand-written loop and whose backward is our hand-written BPTT (docs/bptt.md,
docs/bptt_lstm_gru.md), never autograd of a loop.

The same constructor as torch.nn (positional order included), the same attributes, parameter
names, shapes and initialisation, so a ``state_dict`` moves between ``torch.nn.X`` and
``bptt.nn.X`` in both directions; the same forward: (T, B, I), (B, T, I) with
``batch_first`` or unbatched (T, I) input, or a ``PackedSequence``; ``hx`` omitted (zeros) or
given; ``(output, h_n)``, and ``(output, (h_n, c_n))`` for the LSTM. Equations, in the code's
row-vector orientation, for layer l, direction d, step t:

    RNN   h_t = f(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh),  f = tanh or relu
    LSTM  [i|f|g|o]_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh  (sigmoid, sigmoid, tanh,
          sigmoid);  c_t = f_t * c_{t-1} + i_t * g_t;  h_t = o_t * tanh(c_t)  (times W_hr^T with
          proj_size P > 0)
    GRU   r_t, z_t = sigmoid(x_t W_i{r,z}^T + b_i{r,z} + h_{t-1} W_h{r,z}^T + b_h{r,z});
          n_t = tanh(x_t W_in^T + b_in + r_t * (h_{t-1} W_hn^T + b_hn));
          h_t = (1 - z_t) * n_t + z_t * h_{t-1}
    LayerNormLSTM, LayerNormGRU   the LSTM and GRU with LN(x_t W_ih^T) g_ih and
          LN(h_{t-1} W_hh^T) g_hh in place of the two products (the biases added after), and
          for the LSTM h_t = o_t * tanh(LN(c_t) g_c + b_c) (docs/bptt_layernorm.md); the gains
          and biases are ``layernorm_{ih,hh,c}_l{k}.weight`` / ``.bias``, starting at 1 and 0

Layer l >= 1 reads the outputs of layer l - 1 (both directions concatenated), multiplied while
training by a dropout mask (p = ``dropout``) as torch.nn does.

Beyond torch.nn:

  bptt_truncate=k   (keyword) the gradient of the output at step t reaches back at most k
                    recurrent steps per layer (truncated BPTT inside the module); None: full
  token ids         integer input, (T, B) / (B, T) / (T,), stands for one-hot vectors of
                    size ``input_size`` (the vocabulary), projected as a row gather

Symbols: T steps, B batch, I input size, H hidden size, P proj_size, S = P or H (the size of
h), L num_layers, D directions (2 when bidirectional).
  input   (T, B, I) | (B, T, I) | (T, I); token ids (T, B) | (B, T) | (T,); a PackedSequence
  output  (T, B, D*S) | (B, T, D*S) | (T, D*S); a PackedSequence for one
  h_n     (L*D, B, S) | (L*D, S);  c_n (LSTM)  (L*D, B, H) | (L*D, H)
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..cells import GRU as GRU_KIND
from ..cells import LNGRU as LNGRU_KIND
from ..cells import LNLSTM as LNLSTM_KIND
from ..cells import LSTM as LSTM_KIND
from ..cells import RNN as RNN_KIND
from ..cells import CellKind
from ..engine.recursion import check_truncate
from ..model import stack_fills, stack_shapes
from .checks import check_constructor, check_sequence_input, check_state, is_tokens, no_projection
from .run import run_stack


class RNNBase(nn.Module):
    """What RNN, LSTM and GRU share: parameters, checks, the forward through the engine."""

    kind: ClassVar[CellKind]

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, device=None, dtype=None, *,
                 nonlinearity: str = "tanh", bptt_truncate: int | None = None) -> None:
        super().__init__()
        kind = self.kind
        check_constructor(kind, input_size, hidden_size, num_layers, bias, batch_first,
                          dropout, bidirectional, proj_size, nonlinearity)
        check_truncate(bptt_truncate)
        if proj_size and not kind.projects:
            raise ValueError(f"expected proj_size 0 for the {kind.title} (it has no "
                             f"projection), got {proj_size}")
        self.mode = (f"RNN_{nonlinearity.upper()}" if kind.takes_nonlinearity
                     else kind.torch_name or kind.name.upper())
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.bidirectional = bias, batch_first, bidirectional
        self.dropout = float(dropout)
        self.proj_size = proj_size
        self.bptt_truncate = bptt_truncate
        shapes = stack_shapes(kind, input_size, hidden_size, num_layers, bidirectional, bias,
                              proj_size)
        self._flat_weights_names = list(shapes)
        per_layer = len(shapes) // (num_layers * self.directions)
        self._all_weights = [self._flat_weights_names[i:i + per_layer]
                             for i in range(0, len(shapes), per_layer)]
        for name, shape in shapes.items():                # torch's order: the same init draws
            set_parameter(self, name, nn.Parameter(torch.empty(shape, device=device,
                                                               dtype=dtype)))
        self._fills = stack_fills(kind, num_layers, bidirectional, bias)
        self.reset_parameters()

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def _flat_weights(self) -> list[torch.Tensor]:
        """The parameters in torch's order (torch.nn keeps this list for cuDNN)."""
        return [param_at(self, n) for n in self._flat_weights_names]

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """The parameters per layer and direction, as torch.nn.RNNBase.all_weights."""
        return [[param_at(self, n) for n in names] for names in self._all_weights]

    def reset_parameters(self) -> None:
        """torch's initialisation: every parameter U(-1/sqrt(H), 1/sqrt(H)), in torch's order,
        so the same seed gives the same parameters as torch.nn; a cell's own (a layer norm's
        gains and biases) start at the registry's fill and draw nothing."""
        init_parameters(self, self.hidden_size, self._fills)

    def flatten_parameters(self) -> None:
        """A no-op: torch.nn packs its weights for cuDNN here; the hand-written loop reads the
        parameters as they are."""

    def extra_repr(self) -> str:
        """torch.nn's text (which leaves the nonlinearity out), and ``bptt_truncate`` when set."""
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        for name, default in (("bias", True), ("batch_first", False), ("dropout", 0.0),
                              ("bidirectional", False), ("bptt_truncate", None)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        return s

    def __repr__(self) -> str:
        """torch.nn's one line (the ParameterDicts holding a cell's own parameters are not
        listed as submodules)."""
        return f"{self._get_name()}({self.extra_repr()})"

    # -- forward ----------------------------------------------------------------------------
    def _state_shapes(self, batch: int) -> tuple[tuple[int, ...], ...]:
        """The shape of each state part: h (L*D, B, S), then c (L*D, B, H) for the LSTM."""
        LD = self.num_layers * self.directions
        sizes = (self.proj_size or self.hidden_size, self.hidden_size)
        return tuple((LD, batch, size) for size in sizes[:self.kind.num_state_parts])

    def forward(self, input, hx=None):
        """``(output, h_n)`` (the LSTM: ``(output, (h_n, c_n))``) as torch.nn computes them."""
        if isinstance(input, PackedSequence):
            return self._forward_packed(input, hx)
        check_sequence_input(self, input, packed=False)
        batched = input.dim() == (2 if is_tokens(input) else 3)
        x = input if batched else input.unsqueeze(1 - int(self.batch_first))
        if self.batch_first:
            x = x.transpose(0, 1)                        # time-major: (T, B, ...)
        parts = None
        if hx is not None:
            expected = self._state_shapes(x.shape[1])
            if not batched:
                expected = tuple(shape[:1] + shape[2:] for shape in expected)
            parts = check_state(self, hx, expected, 3 if batched else 2, like=x)
            parts = parts if batched else tuple(p.unsqueeze(1) for p in parts)
        out, parts_n = self._run(x, parts, None)
        if self.batch_first:
            out = out.transpose(0, 1)
        if not batched:
            out, parts_n = out.squeeze(1 - int(self.batch_first)), [p.squeeze(1) for p in parts_n]
        return out, self.kind.from_parts(tuple(parts_n))

    def _forward_packed(self, input: PackedSequence, hx):
        """A PackedSequence: padded inside, sorted by length, the batch shrinking as sequences
        end (in the hand-written loop and BPTT alike); ``hx`` and h_n in the caller's order
        (``sorted_indices`` / ``unsorted_indices``, as torch.nn)."""
        data, sizes, sorted_indices, unsorted_indices = input
        check_sequence_input(self, data, packed=True)
        batch_sizes = tuple(int(b) for b in sizes)       # a CPU tensor: no device read
        padded, lengths = pad_packed_sequence(PackedSequence(data, sizes))  # (T, B, ...)
        parts = None
        if hx is not None:
            parts = check_state(self, hx, self._state_shapes(batch_sizes[0]), 3, like=data)
            if sorted_indices is not None:
                parts = tuple(p.index_select(1, sorted_indices) for p in parts)
        out, parts_n = self._run(padded, parts, batch_sizes)
        out_data = pack_padded_sequence(out, lengths).data
        if unsorted_indices is not None:
            parts_n = tuple(p.index_select(1, unsorted_indices) for p in parts_n)
        output = PackedSequence(out_data, sizes, sorted_indices, unsorted_indices)
        return output, self.kind.from_parts(tuple(parts_n))

    def _run(self, x: torch.Tensor, parts, batch_sizes):
        """The stack on time-major ``x``: ``(out, parts_n)``."""
        return run_stack(self, tuple(self._flat_weights_names), self._flat_weights, x, parts,
                         num_layers=self.num_layers, bidirectional=self.bidirectional,
                         dropout=self.dropout, batch_sizes=batch_sizes)


def set_parameter(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
    """Register ``param`` under ``name``; a dotted name (a cell's own parameter,
    ``layernorm_ih_l0.weight``) goes into a ``ParameterDict`` named by its first part, so the
    ``state_dict`` keys are the registry's names."""
    owner, _, leaf = name.rpartition(".")
    if not owner:
        module.register_parameter(name, param)
        return
    if owner not in module._modules:
        module.add_module(owner, nn.ParameterDict())
    module.get_submodule(owner)[leaf] = param


def param_at(module: nn.Module, name: str) -> torch.Tensor:
    """The tensor registered under ``name`` (dotted or not): by attribute, so whatever
    ``torch.func.functional_call`` put in a parameter's place is what is read."""
    owner, _, leaf = name.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, leaf)


def init_parameters(module: nn.Module, hidden_size: int, fills: dict[str, float]) -> None:
    """Every parameter U(-1/sqrt(H), 1/sqrt(H)) in registration order (torch's), except those
    named in ``fills``, set to their value."""
    bound = 1.0 / math.sqrt(hidden_size)
    with torch.no_grad():
        for name, weight in module.named_parameters():
            if name in fills:
                weight.fill_(fills[name])
            else:
                nn.init.uniform_(weight, -bound, bound)


class RNN(RNNBase):
    """torch.nn.RNN (an Elman RNN, tanh or relu) with the hand-written forward and BPTT."""

    kind = RNN_KIND

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, device=None, dtype=None, *,
                 bptt_truncate: int | None = None, proj_size: int | None = None) -> None:
        no_projection("RNN", proj_size)
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, nonlinearity=nonlinearity,
                         bptt_truncate=bptt_truncate)


class LSTM(RNNBase):
    """torch.nn.LSTM (``proj_size`` included) with the hand-written forward and BPTT."""

    kind = LSTM_KIND

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, device=None, dtype=None, *,
                 bptt_truncate: int | None = None) -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device, dtype, bptt_truncate=bptt_truncate)


class GRU(RNNBase):
    """torch.nn.GRU with the hand-written forward and BPTT."""

    kind = GRU_KIND

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, device=None, dtype=None, *,
                 bptt_truncate: int | None = None, proj_size: int | None = None) -> None:
        no_projection("GRU", proj_size)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, bptt_truncate=bptt_truncate)


class LayerNormLSTM(LSTM):
    """The layer-normalised LSTM (``lnlstm``: Ba, Kiros & Hinton 2016 as haste formulates it;
    docs/bptt_layernorm.md) with torch.nn.LSTM's constructor, forward and outputs, and per layer
    and direction, beside torch.nn.LSTM's parameters, ``layernorm_ih_l{k}.weight`` (4H,),
    ``layernorm_hh_l{k}.weight`` (4H,), ``layernorm_c_l{k}.weight`` (H,) and, with ``bias``,
    ``layernorm_c_l{k}.bias`` (H,). It has no projection: ``proj_size`` must be 0."""

    kind = LNLSTM_KIND


class LayerNormGRU(GRU):
    """The layer-normalised GRU (``lngru``, docs/bptt_layernorm.md) with torch.nn.GRU's
    constructor, forward and outputs, and per layer and direction, beside torch.nn.GRU's
    parameters, ``layernorm_ih_l{k}.weight`` (3H,) and ``layernorm_hh_l{k}.weight`` (3H,)."""

    kind = LNGRU_KIND


__all__ = ["GRU", "LSTM", "RNN", "LayerNormGRU", "LayerNormLSTM", "RNNBase"]
