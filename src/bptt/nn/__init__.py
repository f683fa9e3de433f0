"""Drop-in ``torch.nn`` recurrent modules whose backward is this package's hand-written BPTT.

    from bptt import nn as bnn
    lstm = bnn.LSTM(input_size, hidden_size, num_layers=2, batch_first=True)  # as torch.nn.LSTM
    lstm.load_state_dict(torch_lstm.state_dict())                             # and back again
    out, (h_n, c_n) = lstm(x)                                                 # same forward
    bnn.LSTM(..., bptt_truncate=20)                                           # truncated BPTT

``RNN``, ``LSTM`` and ``GRU`` (:mod:`bptt.nn.modules`) and the single-step ``RNNCell``,
``LSTMCell`` and ``GRUCell`` (:mod:`bptt.nn.cells`) take torch.nn's constructor arguments, hold
its parameters under its names and compute its forward (packed sequences and ``proj_size``
included), and so do ``LayerNormLSTM`` and ``LayerNormGRU`` (with ``LayerNormLSTMCell`` and
``LayerNormGRUCell``), the layer-normalised cells of docs/bptt_layernorm.md, which torch.nn
lacks; their gradients come from the torch engine's ``StackFunction``, the same
``autograd.Function`` the torch engine trains with (the hand-written BPTT of
docs/bptt.md and docs/bptt_lstm_gru.md).

Importing ``bptt.nn`` imports torch (``import bptt`` does not).
"""

from __future__ import annotations

from .cells import GRUCell, LayerNormGRUCell, LayerNormLSTMCell, LSTMCell, RNNCell, RNNCellBase
from .modules import GRU, LSTM, RNN, LayerNormGRU, LayerNormLSTM, RNNBase

__all__ = ["GRU", "LSTM", "RNN", "GRUCell", "LSTMCell", "LayerNormGRU", "LayerNormGRUCell",
           "LayerNormLSTM", "LayerNormLSTMCell", "RNNBase", "RNNCell", "RNNCellBase"]
