"""TorchScript export: the model as a ``torch.jit`` module that plain torch loads.

``torch.jit.load(path)`` gives a module with

  logits, state = module(tokens, state)      # tokens (B, T) int64; state: [h] or [h, c]
  state = module.begin_state(batch_size)     # zeros, each part (L*D, B, H)

and the file's ``description.json`` describes it
(``torch.jit.load(path, _extra_files={"description.json": ""})``) (:mod:`bptt.export.model`).

Two ways to compute the recurrent stack:

  torch.nn  a cell that ``torch.nn`` has (``CellKind.torch_name``: RNN, LSTM, GRU) runs as that
            module, whose parameter names are ours
  loop      any cell with a step in :data:`STEPS`: the stack as a scripted loop over layers,
            directions and time steps of the cell's equations, one step function per cell

A cell with neither is refused. A new cell kind exports once its step is added to ``STEPS``.
"""

from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Tuple  # noqa: UP035 (TorchScript reads these annotations)

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..engine.numpy.layernorm import EPS as LN_EPS
from .model import Exportable

VIAS = ("torch.nn", "loop")


# -- the loop path: one step of each cell, in row-vector form as the engines ------------------


class Step(nn.Module):
    """One time step of a cell: the state parts at t from x_t (B, In), the parts at t-1
    ((B, H) each) and the layer's parameters by suffix-free name: ``forward(x, state, p)``."""


def _affine(x: Tensor, h: Tensor, p: Dict[str, Tensor]) -> Tensor:  # noqa: UP006
    """x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh: (B, G*H)"""
    z = x @ p["weight_ih"].t() + h @ p["weight_hh"].t()
    if "bias_ih" in p:
        z = z + p["bias_ih"] + p["bias_hh"]
    return z


class RNNTanhStep(Step):
    def forward(self, x: Tensor, state: List[Tensor],  # noqa: UP006
                p: Dict[str, Tensor]) -> List[Tensor]:  # noqa: UP006
        return [torch.tanh(_affine(x, state[0], p))]  # h_t = tanh(x_t W_ih^T + h_{t-1} W_hh^T + b)


class RNNReluStep(Step):
    def forward(self, x: Tensor, state: List[Tensor],  # noqa: UP006
                p: Dict[str, Tensor]) -> List[Tensor]:  # noqa: UP006
        return [torch.relu(_affine(x, state[0], p))]  # h_t = relu(x_t W_ih^T + h_{t-1} W_hh^T + b)


class LSTMStep(Step):
    def forward(self, x: Tensor, state: List[Tensor],  # noqa: UP006
                p: Dict[str, Tensor]) -> List[Tensor]:  # noqa: UP006
        i, f, g, o = _affine(x, state[0], p).chunk(4, -1)   # [i f g o] pre-activations
        c = torch.sigmoid(f) * state[1] + torch.sigmoid(i) * torch.tanh(g)  # c_t = f c_{t-1} + i g
        return [torch.sigmoid(o) * torch.tanh(c), c]        # h_t = o tanh(c_t)


class GRUStep(Step):
    def forward(self, x: Tensor, state: List[Tensor],  # noqa: UP006
                p: Dict[str, Tensor]) -> List[Tensor]:  # noqa: UP006
        h = state[0]
        gi = x @ p["weight_ih"].t()
        gh = h @ p["weight_hh"].t()
        if "bias_ih" in p:
            gi = gi + p["bias_ih"]
            gh = gh + p["bias_hh"]
        i_r, i_z, i_n = gi.chunk(3, -1)
        h_r, h_z, h_n = gh.chunk(3, -1)
        r = torch.sigmoid(i_r + h_r)                     # r_t
        z = torch.sigmoid(i_z + h_z)                     # z_t
        n = torch.tanh(i_n + r * h_n)                    # n_t = tanh(i_n + r_t (h W_hn^T + b_hn))
        return [(1.0 - z) * n + z * h]                   # h_t = (1 - z_t) n_t + z_t h_{t-1}


def _ln(y: Tensor, gain: Tensor, bias: Optional[Tensor], eps: float) -> Tensor:  # noqa: UP045
    """LN(y) * gain (+ bias) over the last axis."""
    return F.layer_norm(y, [y.shape[-1]], gain, bias, eps)


class LNStep(Step):
    """A layer-normalised cell's step: the normalised products of both sides, the engines'
    eps."""

    def __init__(self) -> None:
        super().__init__()
        self.eps = LN_EPS

    def products(self, x: Tensor, h: Tensor,
                 p: Dict[str, Tensor]) -> Tuple[Tensor, Tensor]:  # noqa: UP006
        """(LN(x_t W_ih^T) g_ih + b_ih, LN(h_{t-1} W_hh^T) g_hh + b_hh), biases when present."""
        gi = _ln(x @ p["weight_ih"].t(), p["ln_weight_ih"], p.get("bias_ih"), self.eps)
        gh = _ln(h @ p["weight_hh"].t(), p["ln_weight_hh"], p.get("bias_hh"), self.eps)
        return gi, gh


class LNLSTMStep(LNStep):
    def forward(self, x: Tensor, state: List[Tensor],  # noqa: UP006
                p: Dict[str, Tensor]) -> List[Tensor]:  # noqa: UP006
        gi, gh = self.products(x, state[0], p)
        i, f, g, o = (gi + gh).chunk(4, -1)                 # [i f g o] pre-activations
        c = torch.sigmoid(f) * state[1] + torch.sigmoid(i) * torch.tanh(g)  # c_t = f c_{t-1} + i g
        k = _ln(c, p["ln_weight_c"], p.get("ln_bias_c"), self.eps)  # k_t = LN(c_t) g_c + b_c
        return [torch.sigmoid(o) * torch.tanh(k), c]        # h_t = o tanh(k_t)


class LNGRUStep(LNStep):
    def forward(self, x: Tensor, state: List[Tensor],  # noqa: UP006
                p: Dict[str, Tensor]) -> List[Tensor]:  # noqa: UP006
        h = state[0]
        a, s = self.products(x, h, p)
        a_r, a_z, a_n = a.chunk(3, -1)
        s_r, s_z, s_n = s.chunk(3, -1)
        r = torch.sigmoid(a_r + s_r)                     # r_t
        z = torch.sigmoid(a_z + s_z)                     # u_t
        n = torch.tanh(a_n + r * s_n)                    # n_t = tanh(a^n_t + r_t s^n_t)
        return [(1.0 - z) * n + z * h]                   # h_t = (1 - u_t) n_t + u_t h_{t-1}


# (cell, nonlinearity for a cell that takes one, else None) -> the Step module of the loop path
STEPS: dict[tuple[str, str | None], type[Step]] = {
    ("rnn", "tanh"): RNNTanhStep,
    ("rnn", "relu"): RNNReluStep,
    ("lstm", None): LSTMStep,
    ("gru", None): GRUStep,
    ("lnlstm", None): LNLSTMStep,
    ("lngru", None): LNGRUStep,
}


def step_of(model: Exportable) -> type[Step] | None:
    """The loop path's Step for the model's cell, or None."""
    kind = model.kind
    return STEPS.get((kind.name, model.spec.nonlinearity if kind.takes_nonlinearity else None))


def choose_via(model: Exportable, via: str | None) -> str:
    """``via`` checked against what the cell offers; None: torch.nn when torch has the cell.
    A projected LSTM goes through torch.nn.LSTM(proj_size=P) only (the loop's steps have no
    projection)."""
    kind = model.kind
    offers = [v for v, ok in (("torch.nn", kind.torch_name is not None),
                              ("loop", step_of(model) is not None
                               and not model.spec.proj_size)) if ok]
    if not offers:
        raise ValueError(f"expected a cell that torch.nn has or one with a TorchScript step in "
                         f"bptt.export.torchscript.STEPS, got cell {kind.name!r} (neither)")
    if via is None:
        return offers[0]
    if via not in offers:
        raise ValueError(f"expected via one of {', '.join(offers)} for cell {kind.name!r}, "
                         f"got {via!r}")
    return via


# -- the modules ------------------------------------------------------------------------------


class OneHot(nn.Module):
    """Token ids (B, T) -> one-hot rows (B, T, V), the book's input."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, tokens: Tensor) -> Tensor:
        return nn.functional.one_hot(tokens, self.size).to(torch.float32)


class Identity(nn.Module):
    """Regression features (B, T, I) as they are."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class TorchNNStack(nn.Module):
    """The stack as torch.nn.RNN or GRU: one state part."""

    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: Tensor, state: List[Tensor]) -> tuple[Tensor, List[Tensor]]:  # noqa: UP006
        y, h = self.rnn(x, state[0])
        return y, [h]


class TorchNNPairStack(TorchNNStack):
    """The stack as torch.nn.LSTM: the state pair (h, c)."""

    def forward(self, x: Tensor, state: List[Tensor]) -> tuple[Tensor, List[Tensor]]:  # noqa: UP006
        y, (h, c) = self.rnn(x, (state[0], state[1]))
        return y, [h, c]


class LoopLayer(nn.Module):
    """One layer and direction of the loop path: its parameters by suffix-free name."""

    def __init__(self, params: dict[str, Tensor], reverse: bool) -> None:
        super().__init__()
        self.params: Dict[str, Tensor] = params  # noqa: UP006
        self.reverse = reverse


class LoopStack(nn.Module):
    """The stack as a scripted loop: layer by layer, each direction over time with ``step``."""

    def __init__(self, layers: list[LoopLayer], step: Step, directions: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.step = step
        self.directions = directions

    def forward(self, x: Tensor, state: List[Tensor]) -> tuple[Tensor, List[Tensor]]:  # noqa: UP006
        finals: List[List[Tensor]] = [[] for _ in state]  # noqa: UP006
        outs: List[Tensor] = []  # noqa: UP006
        k = 0
        for layer in self.layers:                            # l * D + d, as torch
            p = layer.params
            s = [part[k] for part in state]                  # (B, H) each
            ys: List[Tensor] = []  # noqa: UP006
            T = x.shape[1]
            for j in range(T):
                t = T - 1 - j if layer.reverse else j
                s = self.step(x[:, t], s, p)
                ys.append(s[0])
            if layer.reverse:
                ys.reverse()
            outs.append(torch.stack(ys, 1))                  # (B, T, H)
            for i in range(len(s)):
                finals[i].append(s[i])
            k += 1
            if k % self.directions == 0:                     # the layer's directions are done
                x = torch.cat(outs, -1)                      # (B, T, D*H)
                outs = []
        return x, [torch.stack(f, 0) for f in finals]        # (L*D, B, H) each


class Exported(nn.Module):
    """input -> stack -> head, and ``begin_state``."""

    def __init__(self, inputs: nn.Module, stack: nn.Module, head: nn.Linear,
                 state_sizes: list[int], num_states: int) -> None:
        super().__init__()
        self.inputs, self.stack, self.head = inputs, stack, head
        self.state_sizes: List[int] = state_sizes  # noqa: UP006
        self.num_states = num_states

    def forward(self, x: Tensor, state: List[Tensor]) -> tuple[Tensor, List[Tensor]]:  # noqa: UP006
        y, state = self.stack(self.inputs(x), state)
        return self.head(y), state

    @torch.jit.export
    def begin_state(self, batch_size: int) -> List[Tensor]:  # noqa: UP006
        return [torch.zeros(self.num_states, batch_size, size) for size in self.state_sizes]


def _tensor(a) -> Tensor:
    return torch.from_numpy(a.copy())


def _input_stage(model: Exportable) -> nn.Module:
    if not model.is_lm:
        return Identity()
    if model.has_embedding:
        return nn.Embedding.from_pretrained(_tensor(model.params["embedding.weight"]))
    return OneHot(model.spec.input_size)


def _torch_nn_stack(model: Exportable) -> nn.Module:
    spec, kind = model.spec, model.kind
    first = model.layer_params(0, 0)["weight_ih"].shape[1]
    kw = {"nonlinearity": spec.nonlinearity} if kind.takes_nonlinearity else {}
    if spec.proj_size:
        kw["proj_size"] = spec.proj_size
    rnn = getattr(nn, kind.torch_name)(first, spec.hidden_size, spec.num_layers, bias=spec.bias,
                                       batch_first=True, bidirectional=spec.bidirectional, **kw)
    names = {name for name, _ in rnn.named_parameters()}
    rnn.load_state_dict({k: _tensor(v) for k, v in model.params.items() if k in names})
    return (TorchNNPairStack if kind.num_state_parts == 2 else TorchNNStack)(rnn)


def _loop_stack(model: Exportable) -> nn.Module:
    spec = model.spec
    layers = [LoopLayer({k: _tensor(v) for k, v in model.layer_params(l, d).items()}, d == 1)
              for l in range(spec.num_layers) for d in range(spec.directions)]
    return LoopStack(layers, step_of(model)(), spec.directions)


def build(model: Exportable, via: str | None = None) -> nn.Module:
    """The eager module (``via``: "torch.nn" or "loop"; None: torch.nn when torch has the
    cell)."""
    via = choose_via(model, via)
    stack = _torch_nn_stack(model) if via == "torch.nn" else _loop_stack(model)
    weight = model.head_weight()
    head = nn.Linear(weight.shape[1], weight.shape[0])
    head.load_state_dict({"weight": _tensor(weight), "bias": _tensor(model.params["head.bias"])})
    module = Exported(_input_stage(model), stack, head, model.state_sizes, model.num_states)
    return module.eval().requires_grad_(False)


def save(model: Exportable, path: str, via: str | None = None) -> None:
    """Script the module and write it, with ``description.json``, to ``path``."""
    with warnings.catch_warnings():
        # torch 2.13 announces TorchScript's deprecation on every script call; the file is
        # what was asked for, and loading it stays supported
        warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated", category=Warning)
        scripted = torch.jit.script(build(model, via))
        torch.jit.save(scripted, path, _extra_files={"description.json": model.description_json()})


def run(path: str, x, state: list):
    """Load the file with plain torch and run it: (output, state parts) as NumPy arrays."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated", category=Warning)
        module = torch.jit.load(path)
    with torch.no_grad(), warnings.catch_warnings():
        # torch.nn.LSTM(proj_size=P) notes that oneDNN has no projection and runs its own loop
        warnings.filterwarnings("ignore", message="LSTM with projections is not supported")
        y, out = module(torch.from_numpy(x), [torch.from_numpy(s) for s in state])
    return y.numpy(), [s.numpy() for s in out]
