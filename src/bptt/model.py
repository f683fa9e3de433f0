"""The model: a spec (cell, sizes, layers, ...) plus a flat dict of parameters named as torch.

A language model (task ``lm``) reads token ids: as one-hot rows of size V = vocabulary (the
book's input), or through an embedding ``embedding.weight`` (V, E) whose rows are the stack's
input (``torch.nn.Embedding``); it runs the recurrent stack and a linear head ``head.weight``
(V, D*H), ``head.bias`` (V,) giving logits; its loss is softmax cross-entropy. With tied weights
(Press & Wolf 2017) the head's weight IS the embedding: the dict holds ``embedding.weight`` once
and no ``head.weight``, and its gradient is the sum of both uses. A regression model (task
``regression``) reads real-valued features (input_size >= 1) and its head predicts
``output_size`` values under mean squared error.

Dropout (training only) multiplies activations by masks Bernoulli(1 - p) / (1 - p) at the places
``dropout_placement`` names: ``between-layers`` (torch.nn.RNN/LSTM/GRU's: the outputs of every
layer but the last) or ``non-recurrent`` (Zaremba et al. 2014: also the embedding's output and
the top layer's output before the head; never the recurrent connections). ``dropout_mode``
``standard`` draws a fresh mask at every time step; ``variational`` (Gal & Ghahramani 2016) one
mask per sequence, the same at every step.

The recurrent parameters load into plain ``torch.nn.RNN/LSTM/GRU``, the embedding into
``torch.nn.Embedding`` and the head into ``torch.nn.Linear``: names and shapes are torch's
(``weight_ih_l0`` (G*H, I or E), ...).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from .cells import CELLS, NONLINEARITIES, CellKind, CellParam, get_cell, layer_suffix

TASKS = ("lm", "regression")
INITS = ("torch", "d2l", "uniform")
DROPOUT_PLACEMENTS = ("between-layers", "non-recurrent")
DROPOUT_MODES = ("standard", "variational")
EMBEDDING = "embedding.weight"


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
    dropout: float = 0.0          # training only, at the places dropout_placement names
    bidirectional: bool = False   # a language model predicting the next token cannot be
    task: str = "lm"              # lm (token ids, cross-entropy) | regression (floats, MSE)
    proj_size: int = 0            # > 0: the LSTM's h_t = m_t W_hr^T has P < H features (torch's
                                  # proj_size); the next layer and the head read P, not H
    embedding_size: int | None = None   # None: one-hot input (the book); E: embedding (V, E)
    tie_weights: bool = False     # head.weight IS embedding.weight (needs E = D*H or D*P, O = V)
    dropout_placement: str = "between-layers"   # as torch.nn; non-recurrent: Zaremba's places
    dropout_mode: str = "standard"              # a mask per step; variational: per sequence

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
        if self.dropout_placement not in DROPOUT_PLACEMENTS:
            raise bad(f"dropout_placement one of {DROPOUT_PLACEMENTS}", self.dropout_placement)
        if self.dropout_mode not in DROPOUT_MODES:
            raise bad(f"dropout_mode one of {DROPOUT_MODES}", self.dropout_mode)
        self._check_embedding()

    def _check_embedding(self) -> None:
        E = self.embedding_size
        if E is not None and (not isinstance(E, int | np.integer) or isinstance(E, bool)
                              or E < 1):
            raise ValueError(f"expected embedding_size a positive integer or None, got {E!r}")
        if E is not None and self.task != "lm":
            raise ValueError(f"expected embedding_size None for a {self.task} model (an "
                             f"embedding reads token ids), got {E}")
        if not self.tie_weights:
            return
        if E is None:
            raise ValueError("expected an embedding_size with tie_weights=True (the head "
                             "shares the embedding's matrix), got None")
        DH = self.directions * self.out_size
        if E != DH or self.output_size != self.input_size:
            what = "D*P" if self.proj_size else "D*H"
            raise ValueError(
                f"expected embedding_size equal to the head's input size {what} = {DH} and "
                f"output_size equal to input_size (V) to tie the weights, got embedding_size "
                f"{E} and output_size {self.output_size} with input_size {self.input_size}")

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

    @property
    def head_weight(self) -> str:
        """The name of the head's weight in the parameter dict: ``head.weight``, or
        ``embedding.weight`` when the weights are tied."""
        return EMBEDDING if self.tie_weights else "head.weight"

    @property
    def stack_input_size(self) -> int:
        """Layer 0's input size: E with an embedding, else ``input_size``."""
        return self.input_size if self.embedding_size is None else self.embedding_size

    @property
    def drops_out(self) -> bool:
        """Whether training draws any dropout mask: a dropout rate and a place to use it."""
        return self.dropout > 0 and (self.num_layers > 1
                                     or self.dropout_placement == "non-recurrent")

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
    """Every parameter's shape: the embedding (when there is one), the stack in torch's order
    (per layer and direction the four of torch.nn.RNN, the cell's own ``CellKind.params``, and
    ``weight_hr`` with a projection), then the head (``head.weight`` only when it is not tied to
    the embedding).

    With ``proj_size`` P > 0 (torch.nn.LSTM's names and shapes): ``weight_hh`` is (4H, P),
    ``weight_hr`` (P, H) follows the biases, and the next layer and the head read D*P features.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    if spec.embedding_size is not None:
        shapes[EMBEDDING] = (spec.input_size, spec.embedding_size)
    shapes.update(stack_shapes(spec.kind, spec.stack_input_size, spec.hidden_size,
                               spec.num_layers, spec.bidirectional, spec.bias, spec.proj_size))
    if not spec.tie_weights:
        shapes["head.weight"] = (spec.output_size, spec.directions * spec.out_size)
    shapes["head.bias"] = (spec.output_size,)
    return shapes


def stack_shapes(kind: CellKind, input_size: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False, bias: bool = True,
                 proj_size: int = 0) -> dict[str, tuple[int, ...]]:
    """The recurrent stack's parameters as torch.nn.RNN/LSTM/GRU name and order them (without a
    head): per layer and direction ``weight_ih`` (G*H, in), ``weight_hh`` (G*H, S), the biases
    (G*H,), the cell's own ``CellKind.params`` (blocks*H,), then ``weight_hr`` (P, H) with a
    projection; S = P or H, in = I or D*S."""
    G, H, D = kind.num_gates, hidden_size, 2 if bidirectional else 1
    S = proj_size or hidden_size
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in range(num_layers):
        in_size = input_size if layer == 0 else D * S
        for d in range(D):
            s = layer_suffix(layer, d)
            shapes[f"weight_ih{s}"] = (G * H, in_size)
            shapes[f"weight_hh{s}"] = (G * H, S)
            if bias:
                shapes[f"bias_ih{s}"] = (G * H,)
                shapes[f"bias_hh{s}"] = (G * H,)
            for name, p in _cell_params(kind, bias, s):
                shapes[name] = (p.blocks * H,)
            if proj_size:
                shapes[f"weight_hr{s}"] = (proj_size, H)
    return shapes


def _cell_params(kind: CellKind, bias: bool, suffix: str) -> list[tuple[str, CellParam]]:
    """The cell's own parameters of one layer and direction, by name (biases only with bias)."""
    return [(p.param_name(suffix), p) for p in kind.params if bias or not p.bias]


def param_fills(spec: ModelSpec) -> dict[str, float]:
    """The parameters the cell declares itself (``CellKind.params``: a layer norm's gains and
    biases), by name, with the value every initialisation gives them."""
    return stack_fills(spec.kind, spec.num_layers, spec.bidirectional, spec.bias)


def stack_fills(kind: CellKind, num_layers: int = 1, bidirectional: bool = False,
                bias: bool = True) -> dict[str, float]:
    """:func:`param_fills` of a stack alone (the names of :func:`stack_shapes`)."""
    return {name: p.fill
            for layer in range(num_layers) for d in range(2 if bidirectional else 1)
            for name, p in _cell_params(kind, bias, layer_suffix(layer, d))}


def init_params(
    spec: ModelSpec,
    init: str = "torch",
    rng: np.random.Generator | int | None = None,
    dtype: str | np.dtype = "float32",
    scale: float = 0.1,
) -> dict[str, np.ndarray]:
    """Fresh parameters, drawn in the order of :func:`param_shapes`.

    ``torch``: every recurrent parameter U(-1/sqrt(H), 1/sqrt(H)) as torch.nn.RNN, the head
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as torch.nn.Linear, the embedding N(0, 1) as
    torch.nn.Embedding.
    ``d2l``: the book's N(0, 0.01^2) weights and zero biases.
    ``uniform``: every parameter, biases included, U(-scale, scale) (Zaremba et al. 2014: 0.1
    for the small model, 0.05 medium, 0.04 large).
    Whatever the init, a parameter of the cell's own (``CellKind.params``: a layer norm's gain or
    bias) starts at its ``fill`` and draws nothing, so the other parameters' draws do not depend
    on it.
    """
    if init not in INITS:
        raise ValueError(f"expected init one of {INITS}, got {init!r}")
    if not (isinstance(scale, int | float) and 0 < scale < float("inf")):
        raise ValueError(f"expected scale > 0 and finite, got {scale!r}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    dtype = np.dtype(dtype)
    fills = param_fills(spec)
    params = {}
    for name, shape in param_shapes(spec).items():
        if name in fills:
            value = np.full(shape, fills[name])
        elif init == "uniform":
            value = rng.uniform(-scale, scale, size=shape)
        elif init == "torch" and name == EMBEDDING:
            value = rng.standard_normal(size=shape)
        elif init == "d2l":
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
