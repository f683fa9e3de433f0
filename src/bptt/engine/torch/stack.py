"""Layers x directions on torch tensors, and the whole stack as a ``torch.autograd.Function``.

:func:`forward` and :func:`backward` are :mod:`bptt.engine.stack` (the stack written once, as
torch.nn.RNN/LSTM/GRU stack layers) with torch's operations, this engine's cells and dropout
masks drawn by :func:`draw_mask` (from a ``torch.Generator`` or the global torch RNG) or given.

:class:`StackFunction` wraps them for autograd: its forward runs the hand-written forward (under
no_grad, as every Function's forward) and saves the caches; its backward is our derived BPTT,
not autograd of the loop. Use it through :func:`apply`.

Packed sequences: ``batch_sizes`` (torch's ``PackedSequence.batch_sizes`` as a tuple of ints)
with x padded, (T, B, ...), its sequences sorted by length (:mod:`bptt.engine.stack`).

Symbols: T steps, B batch, H hidden size, L layers, D directions (1 or 2), S the size of h (H,
or P for an LSTM with a projection).
  x    (T, B, I) float or (T, B) int64 token ids
  out  (T, B, D*S)
  h_n  (L*D, B, S), indexed ``l * D + d`` as torch; the LSTM state is the pair ``(h_n, c_n)``,
       c_n (L*D, B, H)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...cells import CellKind, get_cell
from .. import stack as shared
from ..dropout import check_mask
from ..layout import cell_module as _cell_module
from ..layout import (
    param_names,  # noqa: F401 (re-exported for callers)
    state_sizes,
)
from ..stack import cell_options  # the engines' options (the registry's and the precision)
from .common import OPS, check_truncate


def cell_module(cell: str | CellKind):
    """This engine's module of a cell (``bptt.engine.torch.<name>``): forward, backward, step."""
    return _cell_module(__package__, cell)


def check_precision(cell: str | CellKind, precision: str) -> None:
    """fp32 for every cell; bf16 (bfloat16 matrix products) for the cells whose torch module
    lists it in its ``PRECISIONS`` (:func:`bptt.engine.stack.check_precision`)."""
    shared.check_precision(cell_module, get_cell(cell), precision)


def draw_mask(shape, dropout: float, *, like: torch.Tensor,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """A dropout mask: Bernoulli(1 - p) / (1 - p), of ``like``'s dtype and device; p = 1 drops
    everything (zeros, as torch: not 0 / 0).

    Every torch engine draws its masks here, layer by layer in order, so two engines given
    generators in the same state draw the same masks.
    """
    keep = 1.0 - dropout
    if keep <= 0.0:
        return like.new_zeros(shape)
    mask = like.new_empty(shape)
    mask.bernoulli_(keep, generator=generator)
    return mask.div_(keep)


def forward(
    cell: str | CellKind,
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    hx=None,
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    nonlinearity: str = "tanh",
    dropout: float = 0.0,
    training: bool = False,
    generator: torch.Generator | None = None,
    masks: list | tuple | None = None,
    precision: str = "fp32",
    batch_sizes: tuple[int, ...] | None = None,
):
    """Run the stack; return ``(out, h_n, cache)`` (h_n is ``(h_n, c_n)`` for the LSTM).

    While training with ``dropout > 0`` the masks are drawn from ``generator`` (None: the global
    torch RNG), unless ``masks`` gives them: one (T, B, D*S) tensor per layer but the last, or
    (1, B, D*S) for one mask per sequence (variational dropout).
    ``precision="bf16"`` (the rnn cell): bfloat16 matrix products, float32 everything else
    (:mod:`bptt.engine.torch.rnn`). ``batch_sizes``: packed sequences, x padded (the module
    docstring). A projected LSTM's parameters include ``weight_hr_l{k}`` (torch's names).
    """
    kind = get_cell(cell)
    check_precision(kind, precision)
    mask = _dropout(num_layers, dropout, training, generator, masks)
    out, parts_n, cache = shared.forward(
        OPS, cell_module(kind), kind, params, x, kind.to_parts(hx), num_layers=num_layers,
        bidirectional=bidirectional, options=cell_options(kind, nonlinearity, precision),
        mask=mask, batch_sizes=batch_sizes)
    return out, kind.from_parts(parts_n), cache


def backward(dout: torch.Tensor | None, dh_n, cache: shared.StackCache,
             truncate: int | None = None, need_dx: bool = True):
    """Backward through the stack: ``(dx, dhx, grads)`` with torch-named grads.

    ``dout`` (T, B, D*H) or None; ``dh_n`` (L*D, B, H) or None (for the LSTM a pair whose parts
    may be None). dx is None for token-id input or when not ``need_dx``; dhx has the layout of
    h_n.
    """
    kind = cache.kind
    dx, dparts0, grads = shared.backward(OPS, cell_module(kind), dout, kind.to_parts(dh_n),
                                         cache, truncate, need_dx)
    return dx, kind.from_parts(dparts0), grads


# -- the stack as an autograd.Function -------------------------------------------------------

@dataclass(frozen=True, eq=False)
class StackConfig:
    """Everything :class:`StackFunction` needs besides tensors.

    ``names`` lists the parameters passed after the state, in order (see :func:`param_names`).
    ``masks`` fixes the dropout masks (e.g. for gradcheck, whose repeated forwards must see the
    same ones); otherwise they are drawn from ``generator`` (None: the global torch RNG).
    """

    cell: str
    names: tuple[str, ...]
    num_layers: int = 1
    bidirectional: bool = False
    nonlinearity: str = "tanh"
    dropout: float = 0.0
    training: bool = False
    truncate: int | None = None
    generator: torch.Generator | None = None
    masks: tuple[torch.Tensor, ...] | None = None
    precision: str = "fp32"
    batch_sizes: tuple[int, ...] | None = None   # packed sequences (x padded, sorted by length)


class _Slot:
    """A placeholder for the i-th tensor of a flattened cache."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


def _rebuild(obj, items):
    """A tuple, NamedTuple or list like ``obj`` holding ``items``."""
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*items)                         # a NamedTuple: fields by position
    return type(obj)(items)


def _flatten(obj, tensors: list):
    """Replace every tensor in nested tuples, NamedTuples and lists by a :class:`_Slot`,
    collecting them (what ``save_for_backward`` takes)."""
    if isinstance(obj, torch.Tensor):
        tensors.append(obj)
        return _Slot(len(tensors) - 1)
    if isinstance(obj, tuple | list):
        return _rebuild(obj, [_flatten(o, tensors) for o in obj])
    return obj


def _unflatten(obj, tensors):
    if isinstance(obj, _Slot):
        return tensors[obj.index]
    if isinstance(obj, tuple | list):
        return _rebuild(obj, [_unflatten(o, tensors) for o in obj])
    return obj


STATE_SLOTS = 2
""":class:`StackFunction` takes and returns the state parts in two slots, ``h`` and ``c``
(the parts of :mod:`bptt.cells`, in order; a slot past the cell's parts is None)."""


def _slots(parts: tuple) -> tuple:
    """The state parts padded with None to :data:`STATE_SLOTS`."""
    return (*parts, *(None,) * (STATE_SLOTS - len(parts)))


class StackFunction(torch.autograd.Function):
    """The recurrent stack with our hand-derived BPTT as its backward.

    ``StackFunction.apply(cfg, x, h0, c0, *weights)`` with ``weights`` in ``cfg.names`` order and
    the initial state in its slots: ``h0`` (L*D, B, S) or None, ``c0`` the LSTM's cell state
    (L*D, B, H) or None (always None for a cell whose state is ``h`` alone). Returns
    ``(out, h_n, c_n, masks)``; ``c_n`` is None for the RNN and GRU, and ``masks``
    ((L-1, T, B, D*S) while dropping out, else empty) is marked non-differentiable. An empty
    batch (B = 0) computes nothing and returns empty outputs (zero gradients).

    The backward returns gradients for ``x`` (float input only, when it requires grad), ``h0``,
    ``c0`` and every weight; it honours ``cfg.truncate`` (the gradient is then the truncated
    BPTT one, not the exact gradient of the forward). It is the fast in-place BPTT; when a
    graph of the gradient is requested (``create_graph=True``: double backward), the same
    labelled equations run out of place on a recomputed forward (:mod:`.graph`), so autograd
    can differentiate the gradient itself.
    """

    @staticmethod
    def forward(ctx, cfg: StackConfig, x, h0, c0, *weights):
        if len(weights) != len(cfg.names):
            raise ValueError(f"expected {len(cfg.names)} weights {cfg.names}, got {len(weights)}")
        check_truncate(cfg.truncate)
        kind = get_cell(cfg.cell)
        n = kind.num_state_parts
        slots = (h0, c0)
        if any(s is not None for s in slots[n:]):
            raise ValueError(f"expected no c0 for the {kind.title} (its state is h alone), "
                             f"got a tensor")
        hx = None if all(s is None for s in slots[:n]) else kind.from_parts(slots[:n])
        params = dict(zip(cfg.names, weights, strict=True))
        ctx.cfg = cfg
        ctx.set_materialize_grads(False)                 # absent output gradients stay None
        if x.shape[1] == 0:                              # an empty batch: nothing to compute
            return _empty_forward(ctx, kind, x, params)
        ctx.empty = None
        # autograd runs Function.forward with grad mode off: the hand forward builds no graph
        out, h_n, cache = forward(
            kind, params, x, hx, num_layers=cfg.num_layers, bidirectional=cfg.bidirectional,
            nonlinearity=cfg.nonlinearity, dropout=cfg.dropout, training=cfg.training,
            generator=cfg.generator, masks=cfg.masks, precision=cfg.precision,
            batch_sizes=cfg.batch_sizes,
        )
        tensors: list[torch.Tensor] = []
        ctx.skeleton = _flatten(cache, tensors)
        # the inputs too, for the recomputation of a double backward (references, no copies)
        ctx.inputs = _flatten((x, h0, c0, *weights), tensors)
        ctx.save_for_backward(*tensors)
        used = [m for m in cache.masks if m is not None]
        masks = torch.stack(used) if used else out.new_empty((0,))
        ctx.mark_non_differentiable(masks)
        return out, *_slots(kind.to_parts(h_n)), masks

    @staticmethod
    def backward(ctx, dout, dh_n, dc_n, _dmasks):
        cfg = ctx.cfg
        if ctx.empty is not None:                        # an empty batch: zero gradients
            return (None, *(None if z is None or not need else z for z, need in
                            zip(ctx.empty, ctx.needs_input_grad[1:], strict=True)))
        saved = ctx.saved_tensors
        cache = _unflatten(ctx.skeleton, saved)
        kind = cache.kind
        dslots = (dh_n, dc_n)[:kind.num_state_parts]
        dparts_n = None if all(d is None for d in dslots) else dslots
        if torch.is_grad_enabled():                      # create_graph: the gradient's graph
            from .graph import stack_backward

            x, *rest = _unflatten(ctx.inputs, saved)
            dx, dparts0, grads = stack_backward(cfg, cache, x, tuple(rest[:2]),
                                                dict(zip(cfg.names, rest[2:], strict=True)),
                                                dout, dparts_n)
        else:
            dx, dparts0, grads = shared.backward(OPS, cell_module(kind), dout, dparts_n, cache,
                                                 cfg.truncate, need_dx=ctx.needs_input_grad[1])
        need = ctx.needs_input_grad
        dstate0 = tuple(d if n else None for d, n in zip(_slots(dparts0), need[2:4], strict=True))
        return (None, dx if need[1] else None, *dstate0, *(grads[n] for n in cfg.names))


def _empty_forward(ctx, kind: CellKind, x: torch.Tensor, params: dict):
    """:class:`StackFunction` on B = 0: empty outputs of the right shapes; the backward's
    gradients (zeros) are made here."""
    cfg = ctx.cfg
    w = params["weight_hh_l0"]
    L, D = cfg.num_layers, 2 if cfg.bidirectional else 1
    sizes = state_sizes(kind, params)
    out = w.new_zeros((x.shape[0], 0, D * sizes[0]))
    parts = tuple(w.new_zeros((L * D, 0, size)) for size in sizes)
    ctx.empty = (torch.zeros_like(x) if x.is_floating_point() else None, *_slots(parts),
                 *(torch.zeros_like(p) for p in params.values()))
    masks = out.new_empty((0,))
    ctx.mark_non_differentiable(masks)
    return out, *_slots(parts), masks


def _dropout(num_layers: int, dropout: float, training: bool,
             generator: torch.Generator | None, masks) -> shared.Mask:
    """The ``mask(layer, out)`` of :func:`bptt.engine.stack.forward`: given ``masks`` (one per
    layer but the last), else drawn by :func:`draw_mask`; None when not dropping out."""
    use_dropout = training and dropout > 0 and num_layers > 1
    if masks is not None and use_dropout and len(masks) != num_layers - 1:
        raise ValueError(f"expected {num_layers - 1} dropout masks, got {len(masks)}")

    def mask(layer: int, out: torch.Tensor) -> torch.Tensor | None:
        if not use_dropout:
            return None
        if masks is None:
            return draw_mask(out.shape, dropout, like=out, generator=generator)
        m = masks[layer].to(out.dtype)
        check_mask(m, out, f"layer {layer}'s")
        return m

    return mask


def apply(cfg: StackConfig, x: torch.Tensor, params: dict[str, torch.Tensor], hx=None):
    """Run :class:`StackFunction`; return ``(out, h_n, masks)`` (h_n the pair for the LSTM).

    ``hx`` is None, or the state in torch's form: the (L*D, B, H) state, or for the LSTM the
    pair ``(h0, c0)``.
    """
    kind = get_cell(cfg.cell)
    parts = kind.to_parts(hx)
    slots = _slots(parts) if parts is not None else (None,) * STATE_SLOTS
    out, *parts_n, masks = StackFunction.apply(cfg, x, *slots,
                                               *(params[n] for n in cfg.names))
    return out, kind.from_parts(tuple(parts_n[:kind.num_state_parts])), masks
