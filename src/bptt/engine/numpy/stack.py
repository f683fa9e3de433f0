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

import numpy as np

from ..layout import (  # noqa: F401 (CELLS, param_names: re-exported for callers)
    CELLS,
    check_stacked,
    layer_params,
    param_names,
    split_state,
    suffix,
)
from ..layout import cell_module as _cell_module


def cell_module(cell: str):
    """The module (``rnn``, ``lstm`` or ``gru``) of this engine holding a cell's pair."""
    return _cell_module(__package__, cell)


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
    check_stacked(hx, cell, num_layers * D, x.shape[1], params["weight_hh_l0"].shape[1], "hx")
    opts = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
    layer_in = x
    caches, masks, finals = [], [], []
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            p = layer_params(params, layer, d)
            seq = layer_in[::-1] if d else layer_in
            hs, state_n, c = mod.forward(seq, split_state(hx, cell, layer * D + d), **p, **opts)
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
    check_stacked(dh_n, cell, num_layers * D, B, H, "dh_n")
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
            dsn = split_state(dh_n, cell, i)
            dx, ds0, g = mod.backward(dhs, dsn, c, truncate)
            if dx is not None:
                dx = dx[::-1] if d else dx
                d_in = dx if d_in is None else d_in + dx
            dstate0[i] = ds0
            s = suffix(layer, d)
            for k, v in g.items():
                grads[f"{k}{s}"] = v
        d_layer_out = d_in
    if cell == "lstm":
        dhx = (np.stack([s[0] for s in dstate0]), np.stack([s[1] for s in dstate0]))
    else:
        dhx = np.stack(dstate0)
    return (None if token_input else d_layer_out), dhx, grads
