"""The cell kinds, declared once: everything that lists cells, gates or state parts reads this.

A cell kind is a frozen description of one recurrent cell: its name (the ``--cell`` value and
``ModelSpec.cell``), the names of its gates in the order of the G*H rows of ``weight_ih`` and
``weight_hh`` (torch's order), the parts of its state, whether it takes a nonlinearity, the
``torch.nn`` class that computes the same function, when torch has one, the parameters it has
per layer beyond torch.nn.RNN's four (:class:`CellParam`: names, shapes, initial values), the
size of what its forward keeps for its backward, and whether it projects its output
(``proj_size``, torch's LSTM: h_t = m_t W_hr^T, ``weight_hr_l{k}`` (P, H)).

Inside the engines a state is always a tuple with one array per state part (``(h,)`` or
``(h, c)``); the public API keeps torch's forms (``h``, or the pair ``(h, c)``), converted by
:func:`to_parts` and :func:`from_parts`.

Adding a cell: an entry in :data:`CELLS`, a NumPy module ``bptt.engine.numpy.<name>``, a torch
module ``bptt.engine.torch.<name>`` and its reference for ``bptt check`` (docs/architecture.md).
Nothing here imports NumPy or torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CellParam:
    """A per-layer parameter of a cell beyond torch.nn.RNN's four (``weight_ih``, ``weight_hh``,
    ``bias_ih``, ``bias_hh``): a vector of ``blocks * H`` values.

    The model lists it after the four for every layer and direction (``bptt.model``), the
    engines hand it to the cell's ``forward`` and ``step`` as the keyword ``key`` and read its
    gradient under ``key`` from the cell's ``backward``.
    """

    key: str              # the keyword of the cell's forward and step, and its gradient's key
    name: str             # its torch-style name, "{}" standing for the layer's suffix ("_l0")
    blocks: int           # its length in units of H: the number of gates, or 1
    fill: float           # its initial value in every scheme (a gain 1, a bias 0)
    bias: bool = False    # an additive bias: absent when the model has bias=False

    def param_name(self, suffix: str) -> str:
        """Its name in one layer and direction: ``layernorm_ih{}.weight`` + ``_l1_reverse``
        -> ``layernorm_ih_l1_reverse.weight``."""
        return self.name.format(suffix)


@dataclass(frozen=True)
class CellKind:
    """One recurrent cell kind."""

    name: str                          # rnn | lstm | gru: the --cell value
    title: str                         # for tables and plots
    gates: tuple[str, ...]             # gate names, in the order of the G*H weight rows
    state: tuple[str, ...] = ("h",)    # the state parts: ("h",) or ("h", "c")
    takes_nonlinearity: bool = False   # tanh | relu (the Elman RNN only)
    torch_name: str | None = None      # the torch.nn class computing the same cell
    params: tuple[CellParam, ...] = ()  # per-layer parameters beyond torch.nn.RNN's four
    cache_parts: int = 2               # (T, B, H) arrays a layer keeps for its backward, beside
                                       # its gate gradients (bptt.memory's estimate)
    projects: bool = False             # takes proj_size: h_t = m_t W_hr^T (torch's LSTM)

    @property
    def num_gates(self) -> int:
        """G: weight_ih is (G*H, I) and weight_hh (G*H, H)."""
        return len(self.gates)

    @property
    def num_state_parts(self) -> int:
        return len(self.state)

    @property
    def paired_state(self) -> bool:
        """The public state is a pair ``(h, c)`` rather than one array (torch's LSTM form)."""
        return len(self.state) > 1

    def options(self, nonlinearity: str = "tanh") -> dict[str, str]:
        """The keyword options of the cell's ``forward`` and ``step`` in every engine:
        ``{"nonlinearity": ...}`` for a cell that takes one, else none. The engines and the
        stacks pass a model's settings through this, so no caller names a cell."""
        return {"nonlinearity": nonlinearity} if self.takes_nonlinearity else {}

    def param_name(self, key: str, suffix: str) -> str:
        """The name of a layer's parameter from the cell's keyword for it: ``weight_ih`` +
        ``_l0`` -> ``weight_ih_l0`` (torch's four), a :class:`CellParam` by its template."""
        for p in self.params:
            if p.key == key:
                return p.param_name(suffix)
        return key + suffix

    def to_parts(self, state):
        """The public state (``h``, ``(h, c)`` or None) as the engines' tuple of parts;
        :func:`to_parts`."""
        if state is None:
            return None
        if len(self.state) > 1:
            if not isinstance(state, tuple | list) or len(state) != len(self.state):
                got = (f"a {type(state).__name__} of length {len(state)}"
                       if isinstance(state, tuple | list) else _describe(state))
                raise ValueError(f"expected the {self.title} state as a tuple "
                                 f"({', '.join(self.state)}), got {got}")
            return tuple(state)
        if isinstance(state, tuple | list):
            raise ValueError(f"expected the {self.title} state as one array h, got a "
                             f"{type(state).__name__} of length {len(state)}")
        return (state,)

    def from_parts(self, parts):
        """The engines' tuple of parts as the public state (``h`` or ``(h, c)``);
        :func:`from_parts`."""
        if parts is None:
            return None
        return tuple(parts) if len(self.state) > 1 else parts[0]


# cache_parts: rnn h_t and its pre-activation; lstm the 4 gates, c_t, tanh(c_t), h_t; gru the 3
# gates, h_t, W_hn h + b_hn and h_{t-1}
RNN = CellKind("rnn", "Elman RNN", gates=("h",), takes_nonlinearity=True, torch_name="RNN",
               cache_parts=2)
LSTM = CellKind("lstm", "LSTM", gates=("i", "f", "g", "o"), state=("h", "c"),
                torch_name="LSTM", cache_parts=7, projects=True)
GRU = CellKind("gru", "GRU", gates=("r", "z", "n"), torch_name="GRU", cache_parts=6)

# The layer-normalised cells (Ba, Kiros & Hinton 2016, as haste formulates them): a gain on the
# normalised input and recurrent pre-activations (their biases are bias_ih, bias_hh, added after
# the normalisation), and for the LSTM a gain and a bias on the normalised cell state.
# cache_parts: lnlstm the gates, LN(x W_ih^T), LN(h W_hh^T) (4 each), h_t, c_t, LN(c_t),
# tanh(k_t), and its backward's 5 beside dz_t (dv_t, dk_t) and 8 of factors; lngru the gates,
# LN(x W_ih^T), LN(h W_hh^T) (3 each), h_t, s^n_t, and its backward's 3 (dv_t) and 8
LNLSTM = CellKind("lnlstm", "LN-LSTM", gates=("i", "f", "g", "o"), state=("h", "c"), params=(
    CellParam("ln_weight_ih", "layernorm_ih{}.weight", blocks=4, fill=1.0),
    CellParam("ln_weight_hh", "layernorm_hh{}.weight", blocks=4, fill=1.0),
    CellParam("ln_weight_c", "layernorm_c{}.weight", blocks=1, fill=1.0),
    CellParam("ln_bias_c", "layernorm_c{}.bias", blocks=1, fill=0.0, bias=True),
), cache_parts=29)
LNGRU = CellKind("lngru", "LN-GRU", gates=("r", "z", "n"), params=(
    CellParam("ln_weight_ih", "layernorm_ih{}.weight", blocks=3, fill=1.0),
    CellParam("ln_weight_hh", "layernorm_hh{}.weight", blocks=3, fill=1.0),
), cache_parts=22)

CELLS: dict[str, CellKind] = {c.name: c for c in (RNN, LSTM, GRU, LNLSTM, LNGRU)}
"""Every cell kind by name, in the order tables and ``--help`` list them."""

CELL_NAMES: tuple[str, ...] = tuple(CELLS)

NONLINEARITIES: tuple[str, ...] = ("tanh", "relu")


def get_cell(cell: str | CellKind) -> CellKind:
    """The cell kind named ``cell`` (a CellKind is returned as is)."""
    if isinstance(cell, CellKind):
        return cell
    try:
        return CELLS[cell]
    except (KeyError, TypeError):
        names = ", ".join(repr(n) for n in CELL_NAMES)
        raise ValueError(f"expected cell one of {names}, got {cell!r}") from None


def layer_suffix(layer: int, direction: int) -> str:
    """torch's suffix of a parameter name: ``_l{layer}``, and ``_reverse`` for direction 1."""
    return f"_l{layer}" + ("_reverse" if direction else "")


def to_parts(cell: str | CellKind, state):
    """A public state as a tuple of parts; None stays None.

    ``h`` -> ``(h,)``; ``(h, c)`` -> ``(h, c)``. A paired cell given anything but a pair, or a
    single-part cell given a pair, is refused with what was expected and what arrived.
    """
    return get_cell(cell).to_parts(state)


def from_parts(cell: str | CellKind, parts):
    """The engines' tuple of parts as the public state: ``(h,)`` -> ``h``, ``(h, c)`` kept."""
    return get_cell(cell).from_parts(parts)


def _describe(x) -> str:
    shape = getattr(x, "shape", None)
    return f"an array of shape {tuple(shape)}" if shape is not None else type(x).__name__
