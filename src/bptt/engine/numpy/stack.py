"""Layers x directions: stacking single-layer cells as torch.nn.RNN/LSTM/GRU stack them.

Layer l (l >= 1) reads the concatenated outputs of both directions of layer l - 1; with
``dropout = p`` those outputs are multiplied by a Bernoulli(1 - p) mask scaled by 1 / (1 - p)
while training (never after the last layer). The reverse direction runs its cell on the
time-reversed sequence. The mask is drawn in the forward pass and reused by the backward pass.
Truncation (``truncate=k``) applies within each layer's recursion: in a stack the loss at step
t can still reach layer 0 at steps down to t - L*k through the layers above, as when each
layer's carried state is detached separately.

Symbols: T steps, B batch, H hidden size, L layers, D directions (1 or 2).
  x    (T, B, I) float or (T, B) token ids
  out  (T, B, D*H)
  h_n  (L*D, B, H), indexed ``l * D + d`` as torch; the LSTM state is the pair ``(h_n, c_n)``
"""

from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np

CELLS = ("rnn", "lstm", "gru")


def cell_module(cell: str) -> ModuleType:
    """The module (``rnn``, ``lstm`` or ``gru``) holding a cell's forward/backward pair."""
    if cell not in CELLS:
        raise ValueError(f"expected cell 'rnn', 'lstm' or 'gru', got {cell!r}")
    return importlib.import_module(f"{__package__}.{cell}")


def _suffix(layer: int, direction: int) -> str:
    return f"_l{layer}" + ("_reverse" if direction else "")


def param_names(num_layers: int, bidirectional: bool, bias: bool) -> list[str]:
    """torch's parameter names, in torch's order."""
    names = []
    for layer in range(num_layers):
        for d in range(2 if bidirectional else 1):
            s = _suffix(layer, d)
            names += [f"weight_ih{s}", f"weight_hh{s}"]
            if bias:
                names += [f"bias_ih{s}", f"bias_hh{s}"]
    return names


def _layer_params(params: dict, layer: int, direction: int) -> dict:
    s = _suffix(layer, direction)
    return {
        "weight_ih": params[f"weight_ih{s}"],
        "weight_hh": params[f"weight_hh{s}"],
        "bias_ih": params.get(f"bias_ih{s}"),
        "bias_hh": params.get(f"bias_hh{s}"),
    }


def _check_stacked(hx, cell: str, layers: int, batch: int, hidden: int, name: str) -> None:
    """A stacked state must be (L*D, B, H) (a pair of them for the LSTM), or None."""
    if hx is None:
        return
    parts = hx if cell == "lstm" and isinstance(hx, tuple | list) else (hx,)
    for part in parts:
        if part is not None and tuple(np.shape(part)) != (layers, batch, hidden):
            raise ValueError(
                f"expected {name} of shape (L*D, B, H) = ({layers}, {batch}, {hidden}), "
                f"got {tuple(np.shape(part))}"
            )


def _split_state(hx, cell: str, index: int, name: str = "hx"):
    """The initial state of one (layer, direction) from the stacked (L*D, B, H) state(s)."""
    if hx is None:
        return None
    if cell == "lstm":
        if not isinstance(hx, tuple | list) or len(hx) != 2:
            raise ValueError(
                f"expected the LSTM {name} as a pair (h, c) of (L*D, B, H) arrays, "
                f"got {type(hx).__name__}"
            )
        return tuple(None if s is None else s[index] for s in hx)
    return hx[index]


def forward(
    cell: str,
    params: dict[str, np.ndarray],
    x: np.ndarray,
    hx=None,
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    nonlinearity: str = "tanh",
    dropout: float = 0.0,
    training: bool = False,
    rng: np.random.Generator | None = None,
):
    """Run the stack; return ``(out, h_n, cache)`` (h_n is ``(h_n, c_n)`` for the LSTM)."""
    mod = cell_module(cell)
    D = 2 if bidirectional else 1
    _check_stacked(hx, cell, num_layers * D, x.shape[1], params["weight_hh_l0"].shape[1], "hx")
    opts = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
    layer_in = x
    caches, masks, finals = [], [], []
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            p = _layer_params(params, layer, d)
            seq = layer_in[::-1] if d else layer_in
            hs, state_n, c = mod.forward(seq, _split_state(hx, cell, layer * D + d), **p, **opts)
            outs.append(hs[::-1] if d else hs)
            caches.append(c)
            finals.append(state_n)
        out = outs[0] if D == 1 else np.concatenate(outs, axis=2)  # (T, B, D*H)
        mask = None
        if training and dropout > 0 and layer < num_layers - 1:
            if rng is None:
                raise ValueError("expected an rng for training with dropout > 0, got None")
            keep = 1.0 - dropout
            mask = (rng.random(out.shape) < keep).astype(out.dtype) / keep
            out = out * mask
        masks.append(mask)
        layer_in = out
    if cell == "lstm":
        h_n = (np.stack([f[0] for f in finals]), np.stack([f[1] for f in finals]))
    else:
        h_n = np.stack(finals)
    hidden = params["weight_hh_l0"].shape[1]
    cache = (cell, num_layers, D, hidden, x.shape[1], caches, masks, x.ndim == 2)
    return layer_in, h_n, cache


def backward(dout: np.ndarray | None, dh_n, cache, truncate: int | None = None):
    """Backward through the stack: ``(dx, dhx, grads)`` with torch-named grads.

    ``dout`` (T, B, D*H) or None; ``dh_n`` (L*D, B, H) or None (a pair for the LSTM).
    dx is None for token-id input; dhx has the layout of h_n.
    """
    cell, num_layers, D, H, B, caches, masks, token_input = cache
    mod = cell_module(cell)
    _check_stacked(dh_n, cell, num_layers * D, B, H, "dh_n")
    grads: dict[str, np.ndarray] = {}
    dstate0 = [None] * (num_layers * D)
    d_layer_out = dout
    for layer in reversed(range(num_layers)):
        if masks[layer] is not None and d_layer_out is not None:
            d_layer_out = d_layer_out * masks[layer]     # dropout: same mask as the forward
        d_in = None
        for d in range(D):
            i = layer * D + d
            c = caches[i]
            dhs = None
            if d_layer_out is not None:
                dhs = d_layer_out[:, :, d * H:(d + 1) * H]
                dhs = dhs[::-1] if d else dhs
            dsn = _split_state(dh_n, cell, i, name="dh_n")
            dx, ds0, g = mod.backward(dhs, dsn, c, truncate)
            if dx is not None:
                dx = dx[::-1] if d else dx
                d_in = dx if d_in is None else d_in + dx
            dstate0[i] = ds0
            s = _suffix(layer, d)
            for k, v in g.items():
                grads[f"{k}{s}"] = v
        d_layer_out = d_in
    if cell == "lstm":
        dhx = (np.stack([s[0] for s in dstate0]), np.stack([s[1] for s in dstate0]))
    else:
        dhx = np.stack(dstate0)
    return (None if token_input else d_layer_out), dhx, grads
