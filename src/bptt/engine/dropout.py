"""Where a model drops out, and its masks, written once for every engine.

A mask is Bernoulli(1 - p) / (1 - p), multiplied into an activation in the forward and into
that activation's gradient in the backward (the same array: the backward reuses the forward's
mask exactly). The model's spec says where (``ModelSpec.dropout_placement``) and how
(``ModelSpec.dropout_mode``):

  between-layers  the outputs of every layer but the last (torch.nn.RNN/LSTM/GRU's dropout;
                  the book's one-hot models)
  non-recurrent   Zaremba et al. (2014): also the embedding's output (layer 0's input) and the
                  top layer's output before the head; a model without an embedding has no input
                  mask. The recurrent connections h_{t-1} -> h_t are never dropped.

  standard        a fresh mask for every time step and unit: (T, B, width)
  variational     Gal & Ghahramani (2016): one mask per sequence, the same at every time step,
                  (1, B, width), broadcast over time in both the forward and the backward

The masks of one training call are drawn in one fixed order, input, layers bottom-up, output,
so two engines drawing from generators in the same state draw the same masks, and a model
without input and output masks draws its layers' masks exactly as before those places existed.

Symbols: T steps, B batch, E embedding size, H hidden size, S = P (the LSTM's proj_size) or H
the features of h_t, D directions, L layers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from ..model import ModelSpec


class Masks(NamedTuple):
    """The dropout masks of one forward pass (None: that place is not dropped)."""

    input: Any               # (T, B, E) or (1, B, E): the embedding's output
    layers: tuple | None     # L - 1 masks (T, B, D*S) or (1, B, D*S): between the layers
    output: Any              # (T, B, D*S) or (1, B, D*S): the top layer's, before the head


NO_MASKS = Masks(None, None, None)


def mask_steps(spec: ModelSpec, T: int) -> int:
    """The time extent of a mask: T for standard dropout, 1 (broadcast) for variational."""
    return 1 if spec.dropout_mode == "variational" else T


def draw_masks(spec: ModelSpec, T: int, B: int, draw: Callable[[tuple], Any], *,
               layers: bool = True) -> Masks:
    """Every mask of a training call over (T, B), drawn by ``draw(shape)`` in the fixed order
    input, layers bottom-up, output; :data:`NO_MASKS` when the spec drops nothing out.
    ``layers=False`` leaves the layers' masks to the stack itself (``Masks.layers`` None)."""
    if not spec.drops_out:
        return NO_MASKS
    t, W = mask_steps(spec, T), spec.directions * spec.out_size
    everywhere = spec.dropout_placement == "non-recurrent"
    inp = (draw((t, B, spec.embedding_size))
           if everywhere and spec.embedding_size is not None else None)
    between = tuple(draw((t, B, W)) for _ in range(spec.num_layers - 1)) if layers else None
    out = draw((t, B, W)) if everywhere else None
    return Masks(inp, between, out)


def check_mask(mask, like, name: str) -> None:
    """A given mask must be ``like``'s shape (T, B, W), or (1, B, W) (variational)."""
    shape, want = tuple(mask.shape), tuple(like.shape)
    if shape != want and shape != (1, *want[1:]):
        raise ValueError(f"expected {name} dropout mask of shape {want} or "
                         f"{(1, *want[1:])}, got {shape}")
