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

from .cells import CELLS, NONLINEARITIES, CellKind, get_cell

TASKS = ("lm", "regression")
INITS = ("torch", "d2l")


@dataclass(frozen=True)
class ModelSpec:
    """Everything that fixes the parameter shapes and the computation."""

    cell: str = "rnn"             # a name of bptt.cells.CELLS: rnn | lstm | gru
    input_size: int = 28          # vocabulary size (lm) or features per step (regression)
    hidden_size: int = 512        # the book's 512 hidden units
    output_size: int = 28         # vocabulary size (lm) or predicted values per step
    num_layers: int = 1
    nonlinearity: str = "tanh"    # rnn cell only: tanh (the book) or relu
    bias: bool = True
    dropout: float = 0.0          # between layers, training only (as torch)
    bidirectional: bool = False   # a language model predicting the next token cannot be
    task: str = "lm"              # lm (token ids, cross-entropy) | regression (floats, MSE)
    proj_size: int = 0            # > 0: the LSTM's h_t = m_t W_hr^T has P < H features (torch's
                                  # proj_size); the next layer and the head read P, not H

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
        if not isinstance(self.proj_size, int | np.integer) or self.proj_size < 0:
            raise bad("proj_size an integer >= 0", self.proj_size)
        if self.proj_size and not self.kind.projects:
            takers = [c.name for c in CELLS.values() if c.projects]
            raise ValueError(f"expected proj_size 0 for the {self.cell} cell (proj_size is for "
                             f"the {' and '.join(takers)} cell), got {self.proj_size}")
        if self.proj_size >= self.hidden_size:
            raise ValueError(f"expected proj_size below hidden_size {self.hidden_size}, got "
                             f"{self.proj_size}")
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

    @property
    def out_size(self) -> int:
        """The features of h_t per direction: proj_size when projecting, else hidden_size."""
        return self.proj_size or self.hidden_size

    @property
    def state_sizes(self) -> tuple[int, ...]:
        """The size of each state part: h has ``out_size``, a further part (c) hidden_size."""
        return (self.out_size, *(self.hidden_size,) * (self.kind.num_state_parts - 1))

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
    """Every parameter's shape, in torch's order, then the head.

    With ``proj_size`` P > 0 (torch.nn.LSTM's names and shapes): ``weight_hh`` is (4H, P),
    ``weight_hr`` (P, H) follows the biases, and the next layer and the head read D*P features.
    """
    shapes = stack_shapes(spec.kind, spec.input_size, spec.hidden_size, spec.num_layers,
                          spec.bidirectional, spec.bias, spec.proj_size)
    shapes["head.weight"] = (spec.output_size, spec.directions * spec.out_size)
    shapes["head.bias"] = (spec.output_size,)
    return shapes


def stack_shapes(kind: CellKind, input_size: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False, bias: bool = True,
                 proj_size: int = 0) -> dict[str, tuple[int, ...]]:
    """The recurrent stack's parameters as torch.nn.RNN/LSTM/GRU name and order them (without a
    head): per layer and direction ``weight_ih`` (G*H, in), ``weight_hh`` (G*H, S), the biases
    (G*H,), then ``weight_hr`` (P, H) with a projection; S = P or H, in = I or D*S."""
    G, H, D = kind.num_gates, hidden_size, 2 if bidirectional else 1
    S = proj_size or hidden_size
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in range(num_layers):
        in_size = input_size if layer == 0 else D * S
        for d in range(D):
            s = f"_l{layer}" + ("_reverse" if d else "")
            shapes[f"weight_ih{s}"] = (G * H, in_size)
            shapes[f"weight_hh{s}"] = (G * H, S)
            if bias:
                shapes[f"bias_ih{s}"] = (G * H,)
                shapes[f"bias_hh{s}"] = (G * H,)
            if proj_size:
                shapes[f"weight_hr{s}"] = (proj_size, H)
    return shapes


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
    """
    if init not in INITS:
        raise ValueError(f"expected init 'torch' or 'd2l', got {init!r}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    dtype = np.dtype(dtype)
    params = {}
    for name, shape in param_shapes(spec).items():
        if init == "d2l":
            is_bias = name.startswith("bias") or name == "head.bias"
            value = np.zeros(shape) if is_bias else rng.normal(0.0, 0.01, size=shape)
        else:
            fan = shape[1] if name == "head.weight" else (
                spec.directions * spec.out_size if name == "head.bias" else spec.hidden_size
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
