"""Layers x directions on NumPy arrays: :mod:`bptt.engine.stack` with NumPy's operations, this
engine's cells and dropout masks drawn from a ``numpy.random.Generator``.

Symbols: T steps, B batch, H hidden size, L layers, D directions (1 or 2).
  x    (T, B, I) float or (T, B) token ids
  out  (T, B, D*H)
  h_n  (L*D, B, H), indexed ``l * D + d`` as torch; the LSTM state is the pair ``(h_n, c_n)``
"""

from __future__ import annotations

import numpy as np

from ...cells import CellKind, get_cell
from .. import stack as shared
from ..dropout import check_mask
from ..layout import cell_module as _cell_module
from .common import OPS


def cell_module(cell: str | CellKind):
    """This engine's module of a cell (``bptt.engine.numpy.<name>``): forward, backward, step."""
    return _cell_module(__package__, cell)


def forward(
    cell: str | CellKind,
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
    masks: list | tuple | None = None,
):
    """Run the stack; return ``(out, h_n, cache)`` (h_n is ``(h_n, c_n)`` for the LSTM).

    While training with ``dropout > 0`` the masks between layers are drawn from ``rng``
    (:func:`draw_mask`), unless ``masks`` gives them: one per layer but the last, (T, B, D*H),
    or (1, B, D*H) for one mask per sequence (variational dropout).
    """
    kind = get_cell(cell)
    if masks is not None and training and dropout > 0 and len(masks) != num_layers - 1:
        raise ValueError(f"expected {num_layers - 1} dropout masks, got {len(masks)}")

    def mask(layer: int, out: np.ndarray) -> np.ndarray | None:
        if not (training and dropout > 0):
            return None
        if masks is not None:
            check_mask(masks[layer], out, f"layer {layer}'s")
            return masks[layer]
        if rng is None:
            raise ValueError("expected an rng for training with dropout > 0, got None")
        return draw_mask(rng, out.shape, dropout, out.dtype)

    out, parts_n, cache = shared.forward(
        OPS, cell_module(kind), kind, params, x, kind.to_parts(hx), num_layers=num_layers,
        bidirectional=bidirectional, options=kind.options(nonlinearity), mask=mask)
    return out, kind.from_parts(parts_n), cache


def draw_mask(rng: np.random.Generator, shape: tuple, dropout: float,
              dtype: np.dtype) -> np.ndarray:
    """A dropout mask Bernoulli(1 - p) / (1 - p) of ``shape``: every NumPy mask is drawn here."""
    keep = 1.0 - dropout
    return (rng.random(shape) < keep).astype(dtype) / keep


def backward(dout: np.ndarray | None, dh_n, cache: shared.StackCache,
             truncate: int | None = None, need_dx: bool = True):
    """Backward through the stack: ``(dx, dhx, grads)`` with torch-named grads.

    ``dout`` (T, B, D*H) or None; ``dh_n`` (L*D, B, H) or None (a pair for the LSTM).
    dx is None for token-id input (or when not ``need_dx``); dhx has the layout of h_n.
    """
    kind = cache.kind
    dx, dparts0, grads = shared.backward(OPS, cell_module(kind), dout, kind.to_parts(dh_n),
                                         cache, truncate, need_dx)
    return dx, kind.from_parts(dparts0), grads
