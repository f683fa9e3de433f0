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

Packed sequences (``batch_sizes``, the torch engine): x is padded, (T, B, ...), its sequences
sorted by length, longest first, b_t = ``batch_sizes[t]`` of them still running at step t. The
cells step over the first b_t rows only (the batch shrinks as sequences end); the reverse
direction reads each sequence from its own last element (``ops.flip(x, batch_sizes)``), as
torch does. The padding rows of the outputs are not part of the result.

Symbols: T steps, B batch, H hidden size, L layers, D directions (1 or 2), P state parts,
S the size of a state part (H; the projected h of an LSTM with ``proj_size``: P < H).
  x      (T, B, I) float or (T, B) token ids
  out    (T, B, D*S0), S0 the size of h (what the layer outputs)
  parts  P stacked states (L*D, B, S), indexed ``l * D + d`` as torch
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import NamedTuple

from ..cells import CELL_NAMES, CellKind
from .layout import check_batch_sizes, check_stacked, layer_params, split_state, state_sizes, suffix
from .protocol import ArrayOps
from .recursion import check_truncate


class StackCache(NamedTuple):
    """What :func:`forward` keeps for :func:`backward`."""

    kind: CellKind
    num_layers: int          # L
    directions: int          # D
    sizes: tuple             # S of each state part; sizes[0] is the width of h (the output)
    batch: int               # B
    caches: list             # L*D cell caches, index l * D + d
    masks: list              # L dropout masks (T, B, D*S0) or None, one per layer
    token_input: bool        # x is (T, B) token ids (no dx)
    batch_sizes: tuple | None  # packed sequences: b_t per step (None: every row every step)


def cell_options(kind: CellKind, nonlinearity: str, precision: str) -> dict:
    """The keyword options of a cell's forward and step in every engine: the registry's, and
    ``precision`` unless it is the default fp32 (which every cell takes)."""
    options = kind.options(nonlinearity)
    if precision != "fp32":
        options["precision"] = precision
    return options


def check_precision(cell_module: Callable, kind: CellKind, precision: str) -> None:
    """fp32 for every cell; bf16 (bfloat16 matrix products) for the cells whose module in the
    engine (``cell_module(kind)``) lists it in its ``PRECISIONS``."""
    if precision in cell_module(kind).PRECISIONS:
        return
    if precision == "bf16":
        with_bf16 = [c for c in CELL_NAMES if "bf16" in cell_module(c).PRECISIONS]
        raise ValueError(
            f"expected precision 'fp32', got 'bf16' for the {kind.name} cell (bfloat16 products "
            f"are implemented for the {', '.join(with_bf16)} cells)"
        )
    raise ValueError(f"expected precision 'fp32' or 'bf16', got {precision!r}")


Mask = Callable[[int, object], object]
"""``mask(layer, out)``: the dropout mask for the outputs ``out`` (T, B, D*S0) of ``layer``
(never the last), or None while not dropping out."""


def forward(ops: ArrayOps, mod: ModuleType, kind: CellKind, params: dict, x, parts: tuple | None,
            *, num_layers: int, bidirectional: bool, options: dict, mask: Mask,
            batch_sizes: tuple[int, ...] | None = None):
    """Run the stack; return ``(out (T, B, D*S0), parts_n, cache)``, parts_n P (L*D, B, S).

    ``batch_sizes``: packed sequences (the module docstring), passed to the cells with their
    ``options``; None: every row runs every step.
    """
    D = 2 if bidirectional else 1
    sizes = state_sizes(kind, params)
    check_stacked(parts, num_layers * D, x.shape[1], sizes, "hx")
    check_batch_sizes(batch_sizes, x.shape[0], x.shape[1])
    if batch_sizes is not None:
        options = {**options, "batch_sizes": batch_sizes}
    layer_in = x
    caches, masks, finals = [], [], []
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            seq = ops.flip(layer_in, batch_sizes) if d else layer_in
            hs, state_n, c = mod.forward(seq, split_state(parts, layer * D + d),
                                         **layer_params(params, layer, d, kind), **options)
            outs.append(ops.flip(hs, batch_sizes) if d else hs)
            caches.append(c)
            finals.append(state_n)
        out = outs[0] if D == 1 else ops.concat(outs)    # (T, B, D*S0)
        m = mask(layer, out) if layer < num_layers - 1 else None
        if m is not None:
            out = out * m
        masks.append(m)
        layer_in = out
    parts_n = tuple(ops.stack([f[p] for f in finals]) for p in range(kind.num_state_parts))
    cache = StackCache(kind=kind, num_layers=num_layers, directions=D, sizes=sizes,
                       batch=x.shape[1], caches=caches, masks=masks, token_input=x.ndim == 2,
                       batch_sizes=batch_sizes)
    return layer_in, parts_n, cache


def backward(ops: ArrayOps, mod: ModuleType, dout, dparts_n: tuple | None, cache: StackCache,
             truncate: int | None = None, need_dx: bool = True):
    """Backward through the stack: ``(dx, dparts_0, grads)`` with torch-named grads.

    ``dout`` (T, B, D*S0) or None; ``dparts_n`` None or P (L*D, B, S) (parts may be None).
    dx is None for token-id input or when not ``need_dx``; dparts_0 are P (L*D, B, S).
    """
    check_truncate(truncate)
    L, D, H = cache.num_layers, cache.directions, cache.sizes[0]
    bs = cache.batch_sizes
    check_stacked(dparts_n, L * D, cache.batch, cache.sizes, "dh_n")
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
                dhs = ops.flip(dhs, bs) if d else dhs
            dx, dstate0[i], g = mod.backward(dhs, split_state(dparts_n, i), cache.caches[i],
                                             truncate, need_dx=want_dx)
            if dx is not None:
                dx = ops.flip(dx, bs) if d else dx
                d_in = dx if d_in is None else d_in + dx
            s = suffix(layer, d)
            for k, v in g.items():
                grads[cache.kind.param_name(k, s)] = v
        d_layer_out = d_in
    dparts0 = tuple(ops.stack([s[p] for s in dstate0]) for p in range(cache.kind.num_state_parts))
    dx = None if cache.token_input or not need_dx else d_layer_out
    return dx, dparts0, grads
