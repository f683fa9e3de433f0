"""The model: a spec (cell, sizes, layers, ...) plus a flat dict of parameters named as torch.

A language model (task ``lm``) reads token ids (one-hot input of size V = vocabulary), runs the
recurrent stack and a linear head ``head.weight`` (V, D*H), ``head.bias`` (V,) giving logits;
its loss is softmax cross-entropy. A regression model (task ``regression``) reads real-valued
features (input_size >= 1) and its head predicts ``output_size`` values under mean squared error.

The recurrent parameters load into plain ``torch.nn.RNN/LSTM/GRU`` and the head into
``torch.nn.Linear``: names and shapes are torch's (``weight_ih_l0`` (G*H, I), ...).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from .cells import NONLINEARITIES, CellKind, CellParam, get_cell, layer_suffix

TASKS = ("lm", "regression")
INITS = ("torch", "d2l")


@dataclass(frozen=True)
class ModelSpec:
    """Everything that fixes the parameter shapes and the computation."""

    cell: str = "rnn"             # a name of bptt.cells.CELLS: rnn | lstm | gru | ...
    input_size: int = 28          # vocabulary size (lm) or features per step (regression)
    hidden_size: int = 512        # the book's 512 hidden units
    output_size: int = 28         # vocabulary size (lm) or predicted values per step
    num_layers: int = 1
    nonlinearity: str = "tanh"    # rnn cell only: tanh (the book) or relu
    bias: bool = True
    dropout: float = 0.0          # between layers, training only (as torch)
    bidirectional: bool = False   # a language model predicting the next token cannot be
    task: str = "lm"              # lm (token ids, cross-entropy) | regression (floats, MSE)

    def __post_init__(self) -> None:
        def bad(what: str, got: object) -> ValueError:
            return ValueError(f"expected {what}, got {got!r}")

        if not isinstance(self.cell, str):
            raise bad("cell a name from bptt.cells.CELL_NAMES", self.cell)
        get_cell(self.cell)                      # the registry names what it expected
        if self.task not in TASKS:
            raise bad("task 'lm' or 'regression'", self.task)
        for name in ("input_size", "hidden_size", "output_size", "num_layers"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or value < 1:
                raise bad(f"{name} a positive integer", value)
        if self.nonlinearity not in NONLINEARITIES:
            raise bad(f"nonlinearity {' or '.join(map(repr, NONLINEARITIES))}", self.nonlinearity)
        if not 0.0 <= self.dropout < 1.0:
            raise bad("dropout in [0, 1)", self.dropout)
        if self.task == "lm" and self.bidirectional:
            raise ValueError(
                "expected bidirectional=False for a language model (the reverse direction would "
                "see the token it must predict), got bidirectional=True"
            )

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def kind(self) -> CellKind:
        """The cell's description in the registry (gates, state parts, options)."""
        return get_cell(self.cell)

    @property
    def gates(self) -> int:
        return self.kind.num_gates

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"expected model spec keys {sorted(known)}, got unknown {unknown}")
        return cls(**d)


def param_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every parameter's shape, in torch's order (per layer and direction the four of
    torch.nn.RNN, then the cell's own ``CellKind.params``), then the head."""
    G, H, D = spec.gates, spec.hidden_size, spec.directions
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in range(spec.num_layers):
        in_size = spec.input_size if layer == 0 else D * H
        for d in range(D):
            s = layer_suffix(layer, d)
            shapes[f"weight_ih{s}"] = (G * H, in_size)
            shapes[f"weight_hh{s}"] = (G * H, H)
            if spec.bias:
                shapes[f"bias_ih{s}"] = (G * H,)
                shapes[f"bias_hh{s}"] = (G * H,)
            for name, p in _cell_params(spec, s):
                shapes[name] = (p.blocks * H,)
    shapes["head.weight"] = (spec.output_size, D * H)
    shapes["head.bias"] = (spec.output_size,)
    return shapes


def _cell_params(spec: ModelSpec, suffix: str) -> list[tuple[str, CellParam]]:
    """The cell's own parameters of one layer and direction, by name (biases only with bias)."""
    return [(p.param_name(suffix), p) for p in spec.kind.params if spec.bias or not p.bias]


def param_fills(spec: ModelSpec) -> dict[str, float]:
    """The parameters the cell declares itself (``CellKind.params``: a layer norm's gains and
    biases), by name, with the value every initialisation gives them."""
    return {name: p.fill
            for layer in range(spec.num_layers) for d in range(spec.directions)
            for name, p in _cell_params(spec, layer_suffix(layer, d))}


def init_params(
    spec: ModelSpec,
    init: str = "torch",
    rng: np.random.Generator | int | None = None,
    dtype: str | np.dtype = "float32",
) -> dict[str, np.ndarray]:
    """Fresh parameters.

    ``torch``: every recurrent parameter U(-1/sqrt(H), 1/sqrt(H)) as torch.nn.RNN, and the head
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as torch.nn.Linear.
    ``d2l``: the book's N(0, 0.01^2) weights and zero biases.
    Either way a parameter of the cell's own (``CellKind.params``: a layer norm's gain or bias)
    starts at its ``fill`` and draws nothing, so the other parameters' draws do not depend on it.
    """
    if init not in INITS:
        raise ValueError(f"expected init 'torch' or 'd2l', got {init!r}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    dtype = np.dtype(dtype)
    fills = param_fills(spec)
    params = {}
    for name, shape in param_shapes(spec).items():
        if name in fills:
            value = np.full(shape, fills[name])
        elif init == "d2l":
            is_bias = name.startswith("bias") or name == "head.bias"
            value = np.zeros(shape) if is_bias else rng.normal(0.0, 0.01, size=shape)
        else:
            fan = shape[1] if name == "head.weight" else (
                spec.directions * spec.hidden_size if name == "head.bias" else spec.hidden_size
            )
            bound = 1.0 / np.sqrt(fan)
            value = rng.uniform(-bound, bound, size=shape)
        params[name] = value.astype(dtype)
    return params


def check_params(spec: ModelSpec, params: dict) -> None:
    """Raise a ValueError naming the first missing, unexpected or misshapen parameter."""
    shapes = param_shapes(spec)
    missing = [k for k in shapes if k not in params]
    extra = [k for k in params if k not in shapes]
    if missing or extra:
        raise ValueError(
            f"expected parameters {list(shapes)}, got missing {missing} and unexpected {extra}"
        )
    for name, shape in shapes.items():
        if tuple(params[name].shape) != shape:
            raise ValueError(
                f"expected {name} of shape {shape}, got {tuple(params[name].shape)}"
            )
