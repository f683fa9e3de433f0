"""How every :mod:`bptt.nn` module runs its recurrence: through the torch engine's
:class:`bptt.engine.torch.stack.StackFunction`, whose forward is the hand-written loop and whose
backward is the hand-written BPTT (the one ``autograd.Function`` the torch engine trains with).

The modules bring their input to the engine's form first -- time-major (T, B, I) features or
(T, B) token ids, padded with the packed sequences' ``batch_sizes`` -- and their state to the
tuple of its parts, each (L*D, B, S).

Under autocast (``torch.autocast``) the engine runs with autocast off, on the parameters' own
dtype: the input and state are cast to it, and the Elman RNN (the cell with bfloat16 products,
``rnn.PRECISIONS``) multiplies in bfloat16 when autocast asks for bfloat16 on float32
parameters; the outputs keep the parameters' dtype.

Graph capture: ``torch.export`` and ``torch.jit.trace`` record a forward as a graph of torch
operators, which a Python ``autograd.Function`` is not (an exported program of it fails when
run; a trace cannot be saved). While they record, the forward is torch.nn's own operator for the
cell (``torch.nn.RNN/LSTM/GRU`` called with these parameters: the same function, which
``bptt check`` proves equal), so the exported program or saved trace runs anywhere torch does,
for any length and batch. A cell torch.nn does not have is refused there, in one line. The
hand-written BPTT is a training backward; an exported program carries none.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..cells import CellKind
from ..engine.torch import library, stack
from ..engine.torch.common import is_tokens


def precision_under_autocast(kind: CellKind, device_type: str, dtype: torch.dtype) -> str:
    """The engine's precision for parameters of ``dtype`` under the current autocast state:
    ``bf16`` (bfloat16 products, float32 state) where autocast asks for bfloat16 and the cell
    has it, else ``fp32`` (the parameters' dtype throughout)."""
    if (torch.is_autocast_enabled(device_type) and dtype == torch.float32
            and torch.get_autocast_dtype(device_type) == torch.bfloat16
            and "bf16" in stack.cell_module(kind).PRECISIONS):
        return "bf16"
    return "fp32"


def run_stack(module, names: tuple[str, ...], weights: list[torch.Tensor], x: torch.Tensor,
              parts: tuple[torch.Tensor, ...] | None, *, num_layers: int = 1,
              bidirectional: bool = False, dropout: float = 0.0,
              batch_sizes: tuple[int, ...] | None = None):
    """Run StackFunction; return ``(out (T, B, D*S), parts_n)``.

    ``names``/``weights``: the parameters in torch's order under the stack's names
    (``weight_ih_l0``, ...); ``parts``: the initial state's parts or None (zeros).
    """
    kind = module.kind
    if torch.compiler.is_exporting() or torch.jit.is_tracing():
        return torch_nn_forward(module, names, weights, x, parts, num_layers=num_layers,
                                bidirectional=bidirectional, dropout=dropout,
                                batch_sizes=batch_sizes)
    device_type = x.device.type
    autocast = torch.is_autocast_enabled(device_type)
    dtype = weights[0].dtype
    if autocast:                                         # the engine's own dtype, autocast off
        x = x if is_tokens(x) else x.to(dtype)
        parts = None if parts is None else tuple(p.to(dtype) for p in parts)
    cfg = stack.StackConfig(
        cell=kind.name, names=names, num_layers=num_layers, bidirectional=bidirectional,
        nonlinearity=getattr(module, "nonlinearity", "tanh"), dropout=dropout,
        training=module.training, truncate=getattr(module, "bptt_truncate", None),
        precision=precision_under_autocast(kind, device_type, dtype), batch_sizes=batch_sizes)
    params = dict(zip(names, weights, strict=True))
    hx = None if parts is None else kind.from_parts(parts)
    off = torch.autocast(device_type, enabled=False) if autocast else contextlib.nullcontext()
    with off:
        if torch.compiler.is_compiling():               # one opaque operator: no graph break
            out, state_n = library.apply(cfg, x, params, hx)
        elif torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                           for t in (x, *weights, *(parts or ()))):
            out, state_n, _ = stack.apply(cfg, x, params, hx)
        else:                                            # no graph wanted: the forward alone
            out, state_n, _ = stack.forward(
                kind, params, x, hx, num_layers=num_layers, bidirectional=bidirectional,
                nonlinearity=cfg.nonlinearity, dropout=dropout, training=cfg.training,
                precision=cfg.precision, batch_sizes=batch_sizes)
    return out, kind.to_parts(state_n)


def torch_nn_forward(module, names: tuple[str, ...], weights: list[torch.Tensor], x: torch.Tensor,
                     parts, *, num_layers: int, bidirectional: bool, dropout: float,
                     batch_sizes: tuple[int, ...] | None):
    """:func:`run_stack`'s forward as torch.nn's operator, for graph capture (module
    docstring): a torch.nn module of the same configuration, made on the meta device, holding
    these very parameters (torch.func.functional_call refuses a jit trace)."""
    kind = module.kind
    if kind.torch_name is None:
        raise RuntimeError(f"expected a cell torch.nn has for torch.export / torch.jit.trace of "
                           f"{type(module).__name__} (the hand-written loop is a Python "
                           f"autograd.Function, which a graph cannot hold), got the {kind.name} "
                           f"cell")
    params = dict(zip(names, weights, strict=True))
    w_ih, w_hh = params["weight_ih_l0"], params["weight_hh_l0"]
    options = kind.options(getattr(module, "nonlinearity", "tanh"))
    if "weight_hr_l0" in params:
        options["proj_size"] = int(params["weight_hr_l0"].shape[0])
    input_size, hidden_size = int(w_ih.shape[1]), int(w_hh.shape[0]) // kind.num_gates
    twin = getattr(nn, kind.torch_name)(
        input_size, hidden_size, num_layers, bias="bias_ih_l0" in params, dropout=dropout,
        bidirectional=bidirectional, device="meta", **options)
    twin.train(module.training)
    for name, w in params.items():
        del twin._parameters[name]                       # the meta placeholder
        setattr(twin, name, w)                           # torch.nn keeps _flat_weights in step
    if is_tokens(x):                                     # token ids: one-hot rows
        x = nn.functional.one_hot(x, input_size).to(w_ih.dtype)
    hx = None if parts is None else kind.from_parts(parts)
    if batch_sizes is not None:
        lengths = [sum(b > r for b in batch_sizes) for r in range(batch_sizes[0])]
        x = pack_padded_sequence(x, lengths)
    out, state_n = twin(x, hx)
    if batch_sizes is not None:
        out = pad_packed_sequence(out)[0]
    return out, kind.to_parts(state_n)
