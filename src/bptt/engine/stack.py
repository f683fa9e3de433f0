"""Layers x directions x dropout, written once for every engine: one-layer cells stacked as
torch.nn.RNN/LSTM/GRU stack them.

Layer l (l >= 1) reads the concatenated outputs of both directions of layer l - 1; while
training with dropout those outputs are multiplied by a mask (Bernoulli(1 - p) / (1 - p), drawn
by the engine, never after the last layer), and the backward reuses the same mask. The reverse
direction runs its cell on the time-reversed sequence. Truncation (``truncate=k``) applies
within each layer's recursion: in a stack the loss at step t can still reach layer 0 at steps
down to t - L*k through the layers above, as when each layer's carried state is detached
separately.

The engines' ``stack`` modules (``engine/numpy/stack.py``, ``engine/torch/stack.py``) bind this
to their array operations (:class:`bptt.engine.protocol.ArrayOps`), their cell modules and their
way of drawing masks, and convert the state between torch's public form (``h``, or the pair
``(h, c)``) and the tuple of parts used here.

Symbols: T steps, B batch, H hidden size, L layers, D directions (1 or 2), P state parts.
  x      (T, B, I) float or (T, B) token ids
  out    (T, B, D*H)
  parts  P stacked states (L*D, B, H), indexed ``l * D + d`` as torch
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import NamedTuple

from ..cells import CellKind
from .layout import check_stacked, layer_params, split_state, suffix
from .protocol import ArrayOps
from .recursion import check_truncate


class StackCache(NamedTuple):
    """What :func:`forward` keeps for :func:`backward`."""

    kind: CellKind
    num_layers: int          # L
    directions: int          # D
    hidden: int              # H
    batch: int               # B
    caches: list             # L*D cell caches, index l * D + d
    masks: list              # L dropout masks (T, B, D*H) or None, one per layer
    token_input: bool        # x is (T, B) token ids (no dx)


Mask = Callable[[int, object], object]
"""``mask(layer, out)``: the dropout mask for the outputs ``out`` (T, B, D*H) of ``layer``
(never the last), or None while not dropping out."""


def forward(ops: ArrayOps, mod: ModuleType, kind: CellKind, params: dict, x, parts: tuple | None,
            *, num_layers: int, bidirectional: bool, options: dict, mask: Mask):
    """Run the stack; return ``(out (T, B, D*H), parts_n, cache)``, parts_n P (L*D, B, H)."""
    D = 2 if bidirectional else 1
    H = params["weight_hh_l0"].shape[1]
    check_stacked(parts, num_layers * D, x.shape[1], H, "hx")
    layer_in = x
    caches, masks, finals = [], [], []
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            seq = ops.flip(layer_in) if d else layer_in
            hs, state_n, c = mod.forward(seq, split_state(parts, layer * D + d),
                                         **layer_params(params, layer, d, kind), **options)
            outs.append(ops.flip(hs) if d else hs)
            caches.append(c)
            finals.append(state_n)
        out = outs[0] if D == 1 else ops.concat(outs)    # (T, B, D*H)
        m = mask(layer, out) if layer < num_layers - 1 else None
        if m is not None:
            out = out * m
        masks.append(m)
        layer_in = out
    parts_n = tuple(ops.stack([f[p] for f in finals]) for p in range(kind.num_state_parts))
    cache = StackCache(kind=kind, num_layers=num_layers, directions=D, hidden=H,
                       batch=x.shape[1], caches=caches, masks=masks, token_input=x.ndim == 2)
    return layer_in, parts_n, cache


def backward(ops: ArrayOps, mod: ModuleType, dout, dparts_n: tuple | None, cache: StackCache,
             truncate: int | None = None, need_dx: bool = True):
    """Backward through the stack: ``(dx, dparts_0, grads)`` with torch-named grads.

    ``dout`` (T, B, D*H) or None; ``dparts_n`` None or P (L*D, B, H) (parts may be None).
    dx is None for token-id input or when not ``need_dx``; dparts_0 are P (L*D, B, H).
    """
    check_truncate(truncate)
    L, D, H = cache.num_layers, cache.directions, cache.hidden
    check_stacked(dparts_n, L * D, cache.batch, H, "dh_n")
    grads: dict = {}
    dstate0 = [None] * (L * D)
    d_layer_out = dout
    for layer in reversed(range(L)):
        if cache.masks[layer] is not None and d_layer_out is not None:
            d_layer_out = d_layer_out * cache.masks[layer]  # dropout: same mask as the forward
        want_dx = layer > 0 or (need_dx and not cache.token_input)
        d_in = None
        for d in range(D):
            i = layer * D + d
            dhs = None
            if d_layer_out is not None:
                dhs = d_layer_out[:, :, d * H:(d + 1) * H]
                dhs = ops.flip(dhs) if d else dhs
            dx, dstate0[i], g = mod.backward(dhs, split_state(dparts_n, i), cache.caches[i],
                                             truncate, need_dx=want_dx)
            if dx is not None:
                dx = ops.flip(dx) if d else dx
                d_in = dx if d_in is None else d_in + dx
            s = suffix(layer, d)
            for k, v in g.items():
                grads[cache.kind.param_name(k, s)] = v
        d_layer_out = d_in
    dparts0 = tuple(ops.stack([s[p] for s in dstate0]) for p in range(cache.kind.num_state_parts))
    dx = None if cache.token_input or not need_dx else d_layer_out
    return dx, dparts0, grads
