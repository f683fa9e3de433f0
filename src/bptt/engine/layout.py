"""How a stack of recurrent layers is laid out, shared by every engine's stack.

torch's conventions: parameters ``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``,
``bias_hh_l{k}`` with suffix ``_reverse`` for the backward direction; stacked states (L*D, B, H)
indexed ``l * D + d``; the LSTM's state the pair ``(h, c)``. Nothing here touches array values,
so the same code serves NumPy arrays and torch tensors.
"""

from __future__ import annotations

import importlib
from types import ModuleType

CELLS = ("rnn", "lstm", "gru")


def cell_module(package: str, cell: str) -> ModuleType:
    """``package.<cell>``: the module holding a cell's forward/backward pair."""
    if cell not in CELLS:
        raise ValueError(f"expected cell 'rnn', 'lstm' or 'gru', got {cell!r}")
    return importlib.import_module(f"{package}.{cell}")


def suffix(layer: int, direction: int) -> str:
    return f"_l{layer}" + ("_reverse" if direction else "")


def param_names(num_layers: int, bidirectional: bool, bias: bool) -> list[str]:
    """torch's parameter names, in torch's order."""
    names = []
    for layer in range(num_layers):
        for d in range(2 if bidirectional else 1):
            s = suffix(layer, d)
            names += [f"weight_ih{s}", f"weight_hh{s}"]
            if bias:
                names += [f"bias_ih{s}", f"bias_hh{s}"]
    return names


def layer_params(params: dict, layer: int, direction: int) -> dict:
    """One (layer, direction)'s weights under the cell's argument names."""
    s = suffix(layer, direction)
    return {
        "weight_ih": params[f"weight_ih{s}"],
        "weight_hh": params[f"weight_hh{s}"],
        "bias_ih": params.get(f"bias_ih{s}"),
        "bias_hh": params.get(f"bias_hh{s}"),
    }


def check_stacked(hx, cell: str, layers: int, batch: int, hidden: int, name: str) -> None:
    """A stacked state must be (L*D, B, H) (for the LSTM a pair (h, c) of them), or None."""
    if hx is None:
        return
    if cell == "lstm" and (not isinstance(hx, tuple | list) or len(hx) != 2):
        raise ValueError(
            f"expected the LSTM {name} as a pair (h, c) of (L*D, B, H) arrays, "
            f"got {type(hx).__name__}"
        )
    for part in hx if cell == "lstm" else (hx,):
        if part is not None and tuple(part.shape) != (layers, batch, hidden):
            raise ValueError(
                f"expected {name} of shape (L*D, B, H) = ({layers}, {batch}, {hidden}), "
                f"got {tuple(part.shape)}"
            )


def split_state(hx, cell: str, index: int):
    """The state of one (layer, direction) from the stacked state(s); None parts stay None."""
    if hx is None:
        return None
    if cell == "lstm":
        return tuple(None if s is None else s[index] for s in hx)
    return hx[index]


def check_gate_weights(weight_ih, weight_hh, bias_ih, bias_hh, gates: int) -> int:
    """Validate torch-shaped parameters of a cell with ``gates`` gates; return H.

    Arrays or tensors alike: only shapes are read.
    """
    g = {3: "3H", 4: "4H"}.get(gates, f"{gates}H")
    if len(weight_hh.shape) != 2 or weight_hh.shape[0] != gates * weight_hh.shape[1]:
        raise ValueError(
            f"expected weight_hh of shape ({g}, H), got {tuple(weight_hh.shape)}"
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
