"""How a stack of recurrent layers is laid out, shared by every engine.

torch's conventions: parameters ``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``,
``bias_hh_l{k}`` with suffix ``_reverse`` for the backward direction, then a cell's own
(``CellKind.params``, e.g. ``layernorm_ih_l{k}.weight``); stacked states (L*D, B, H) indexed
``l * D + d``. Inside the engines a state is a tuple of parts, one per state part of the
cell (``(h,)`` or ``(h, c)``, :mod:`bptt.cells`). Nothing here reads more of an array than its
shape (:func:`sum_biases` adds two vectors with ``+``), so the same code serves NumPy arrays and
torch tensors.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..cells import CellKind, get_cell, layer_suffix

_MODULES: dict[tuple[str, str], ModuleType] = {}


def cell_module(package: str, cell: str | CellKind) -> ModuleType:
    """``package.<cell>``: the module holding a cell's forward, backward and step.

    Imported once, on first use, then looked up in a dict: the hot paths (a training step, a
    graph traced by ``torch.compile``) never reach ``importlib``.
    """
    kind = get_cell(cell)
    key = (package, kind.name)
    mod = _MODULES.get(key)
    if mod is None:
        mod = _MODULES[key] = importlib.import_module(f"{package}.{kind.name}")
    return mod


def suffix(layer: int, direction: int) -> str:
    return layer_suffix(layer, direction)


def param_names(num_layers: int, bidirectional: bool, bias: bool,
                kind: CellKind | None = None) -> list[str]:
    """torch's parameter names, in torch's order (``bptt.model.param_shapes``): per layer and
    direction the four of torch.nn.RNN, then ``kind``'s own (``CellKind.params``)."""
    names = []
    for layer in range(num_layers):
        for d in range(2 if bidirectional else 1):
            s = suffix(layer, d)
            names += [f"weight_ih{s}", f"weight_hh{s}"]
            if bias:
                names += [f"bias_ih{s}", f"bias_hh{s}"]
            if kind is not None:
                names += [p.param_name(s) for p in kind.params if bias or not p.bias]
    return names


def layer_params(params: dict, layer: int, direction: int, kind: CellKind | None = None) -> dict:
    """One (layer, direction)'s weights under the cell's argument names: the four of
    torch.nn.RNN (biases None when absent), then ``kind``'s own by their keys."""
    s = suffix(layer, direction)
    out = {
        "weight_ih": params[f"weight_ih{s}"],
        "weight_hh": params[f"weight_hh{s}"],
        "bias_ih": params.get(f"bias_ih{s}"),
        "bias_hh": params.get(f"bias_hh{s}"),
    }
    if kind is not None:
        for p in kind.params:
            out[p.key] = params.get(p.param_name(s))
    return out


def layer_keys(num_layers: int, kind: CellKind | None = None) -> list[tuple]:
    """The parameter names of each layer's forward direction, in the order of a cell's
    arguments: ``(weight_ih, weight_hh, bias_ih, bias_hh, own)`` (biases may be absent), ``own``
    the pairs (keyword, name) of ``kind``'s own parameters."""
    keys = []
    for layer in range(num_layers):
        s = suffix(layer, 0)
        own = tuple((p.key, p.param_name(s)) for p in kind.params) if kind is not None else ()
        keys.append((*(f"{k}{s}" for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")),
                     own))
    return keys


def step_layers(step, options: dict, params: dict, keys: list, x, parts: tuple, stack):
    """One time step through every layer of a unidirectional stack (generation): the cell's
    ``step`` per layer, layer l + 1 reading layer l's h_t. ``parts`` are the stacked state
    parts (L, B, H); returns the top layer's h_t (B, H) and the new parts (L, B, H), stacked
    by ``stack`` (one layer: a view of the step's own arrays). ``keys`` from
    :func:`layer_keys`."""
    if len(keys) == 1:                                   # one layer (the book's model)
        (w_ih, w_hh, b_ih, b_hh, own), = keys
        new = step(x, tuple([p[0] for p in parts]), params[w_ih], params[w_hh],
                   params.get(b_ih), params.get(b_hh),
                   **{k: params.get(n) for k, n in own}, **options)
        return new[0], tuple([s[None] for s in new])
    inp, finals = x, []
    for (w_ih, w_hh, b_ih, b_hh, own), prev in zip(keys, zip(*parts, strict=True), strict=True):
        new = step(inp, prev, params[w_ih], params[w_hh], params.get(b_ih), params.get(b_hh),
                   **{k: params.get(n) for k, n in own}, **options)
        inp = new[0]                                     # h_t, the next layer's input
        finals.append(new)
    return inp, tuple(map(stack, zip(*finals, strict=True)))  # part by part, (L, B, H)


def check_stacked(parts: tuple | None, layers: int, batch: int, hidden: int, name: str) -> None:
    """Every part of a stacked state (a tuple, or None) must be (L*D, B, H) or None."""
    for part in parts or ():
        if part is not None and tuple(part.shape) != (layers, batch, hidden):
            raise ValueError(
                f"expected {name} of shape (L*D, B, H) = ({layers}, {batch}, {hidden}), "
                f"got {tuple(part.shape)}"
            )


def state_parts(kind: CellKind, state, batch: int, hidden: int, noun: str = "arrays") -> tuple:
    """A cell's state as its tuple of parts, the form checked; None gives every part None.

    ``(h0,)`` or ``(h0, c0)`` as :mod:`bptt.cells` declares the parts; the shapes are checked
    by each engine as it converts the parts.
    """
    n = len(kind.state)
    if state is None:
        return (None,) * n
    if type(state) is tuple and len(state) == n:
        return state
    if not isinstance(state, tuple | list) or len(state) != n:
        if hasattr(state, "shape"):
            got = f"a single array of shape {tuple(state.shape)}"
        else:
            got = type(state).__name__ + (f" of length {len(state)}"
                                          if isinstance(state, tuple | list) else "")
        form = "a pair" if n == 2 else "a tuple"
        names = ", ".join(f"{p}0" for p in kind.state) + ("," if n == 1 else "")
        raise ValueError(f"expected the {kind.title} state as {form} ({names}) of "
                         f"({batch}, {hidden}) {noun}, got {got}")
    return tuple(state)


def split_state(parts: tuple | None, index: int) -> tuple | None:
    """The state parts of one (layer, direction) from the stacked parts; None parts stay None."""
    if parts is None:
        return None
    return tuple([None if s is None else s[index] for s in parts])


def gate_shape(kind: CellKind) -> str:
    """``"4H"`` for a cell of four gates, ``"H"`` for one."""
    G = kind.num_gates
    return "H" if G == 1 else f"{G}H"


def check_gate_weights(kind: CellKind | str, weight_ih, weight_hh, bias_ih, bias_hh) -> int:
    """Validate torch-shaped parameters of a cell (G*H rows, G its number of gates); return H.

    Arrays or tensors alike: only shapes are read.
    """
    kind = get_cell(kind)
    gates = kind.num_gates
    if len(weight_hh.shape) != 2 or weight_hh.shape[0] != gates * weight_hh.shape[1]:
        raise ValueError(
            f"expected weight_hh of shape ({gate_shape(kind)}, H), got {tuple(weight_hh.shape)}"
        )
    H = weight_hh.shape[1]
    if len(weight_ih.shape) != 2 or weight_ih.shape[0] != gates * H:
        raise ValueError(
            f"expected weight_ih of shape ({gates * H}, I), got {tuple(weight_ih.shape)}"
        )
    for name, b in (("bias_ih", bias_ih), ("bias_hh", bias_hh)):
        if b is not None and tuple(b.shape) != (gates * H,):
            raise ValueError(f"expected {name} of shape ({gates * H},), got {tuple(b.shape)}")
    return H


def check_own_params(kind: CellKind, H: int, given: dict) -> None:
    """Validate a cell's own parameters (``CellKind.params``), given by their keywords: each a
    vector of ``blocks * H`` values; only a bias may be None (absent).

    Arrays or tensors alike: only shapes are read.
    """
    for p in kind.params:
        value = given.get(p.key)
        if value is None:
            if p.bias:
                continue
            raise ValueError(f"expected {p.key} of shape ({p.blocks * H},) for the "
                             f"{kind.title}, got None")
        if tuple(value.shape) != (p.blocks * H,):
            raise ValueError(f"expected {p.key} of shape ({p.blocks * H},), got "
                             f"{tuple(value.shape)}")


def sum_biases(*biases):
    """The sum of the biases that exist (``b_ih + b_hh``, once for all steps); None when none."""
    total = None
    for b in biases:
        if b is not None:
            total = b if total is None else total + b
    return total
