"""Layers x directions on torch tensors, and the whole stack as a ``torch.autograd.Function``.

:func:`forward` and :func:`backward` stack the single-layer cells exactly as
:mod:`bptt.engine.numpy.stack` does (and as torch.nn.RNN/LSTM/GRU do): layer l >= 1 reads the
concatenated outputs of both directions of layer l - 1, multiplied while training by a
Bernoulli(1 - p) mask scaled by 1 / (1 - p) (never after the last layer); the reverse direction
runs its cell on the time-reversed sequence. The masks are drawn in the forward pass (by
:func:`draw_mask`, from a ``torch.Generator`` or the global torch RNG) and reused by the backward.

:class:`StackFunction` wraps them for autograd: its forward runs the hand-written forward (under
no_grad, as every Function's forward) and saves the caches; its backward is our derived BPTT,
not autograd of the loop. Use it through :func:`apply`.

Symbols: T steps, B batch, H hidden size, L layers, D directions (1 or 2).
  x    (T, B, I) float or (T, B) int64 token ids
  out  (T, B, D*H)
  h_n  (L*D, B, H), indexed ``l * D + d`` as torch; the LSTM state is the pair ``(h_n, c_n)``
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layout import (  # noqa: F401 (CELLS, param_names: re-exported for callers)
    CELLS,
    check_stacked,
    layer_params,
    param_names,
    split_state,
    suffix,
)
from ..layout import cell_module as _cell_module
from .common import check_truncate, is_tokens


def check_precision(cell: str, precision: str) -> None:
    """fp32 for every cell; bf16 (bfloat16 matrix products) for the rnn cell."""
    if precision == "fp32" or (precision == "bf16" and cell == "rnn"):
        return
    if precision == "bf16":
        raise ValueError(
            f"expected precision 'fp32', got 'bf16' for the {cell} cell (bfloat16 products are "
            f"implemented for the rnn cell, the book's model)"
        )
    raise ValueError(f"expected precision 'fp32' or 'bf16', got {precision!r}")


def draw_mask(shape, dropout: float, *, like: torch.Tensor,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """A dropout mask: Bernoulli(1 - p) / (1 - p), of ``like``'s dtype and device.

    Every torch engine draws its masks here, layer by layer in order, so two engines given
    generators in the same state draw the same masks.
    """
    keep = 1.0 - dropout
    mask = like.new_empty(shape)
    mask.bernoulli_(keep, generator=generator)
    return mask.div_(keep)


def cell_module(cell: str):
    """The module (``rnn``, ``lstm`` or ``gru``) of this engine holding a cell's pair."""
    return _cell_module(__package__, cell)


def forward(
    cell: str,
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
):
    """Run the stack; return ``(out, h_n, cache)`` (h_n is ``(h_n, c_n)`` for the LSTM).

    While training with ``dropout > 0`` the masks are drawn from ``generator`` (None: the global
    torch RNG), unless ``masks`` gives them: one (T, B, D*H) tensor per layer but the last.
    ``precision="bf16"`` (the rnn cell): bfloat16 matrix products, float32 everything else
    (:mod:`bptt.engine.torch.rnn`).
    """
    mod = cell_module(cell)
    D = 2 if bidirectional else 1
    hidden = params["weight_hh_l0"].shape[1]
    check_stacked(hx, cell, num_layers * D, x.shape[1], hidden, "hx")
    check_precision(cell, precision)
    opts = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
    if precision != "fp32":
        opts["precision"] = precision
    use_dropout = training and dropout > 0 and num_layers > 1
    if masks is not None and use_dropout and len(masks) != num_layers - 1:
        raise ValueError(f"expected {num_layers - 1} dropout masks, got {len(masks)}")
    layer_in = x
    caches, used_masks, finals = [], [], []
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            p = layer_params(params, layer, d)
            seq = layer_in.flip(0) if d else layer_in
            hs, state_n, c = mod.forward(seq, split_state(hx, cell, layer * D + d), **p, **opts)
            outs.append(hs.flip(0) if d else hs)
            caches.append(c)
            finals.append(state_n)
        out = outs[0] if D == 1 else torch.cat(outs, dim=2)   # (T, B, D*H)
        mask = None
        if use_dropout and layer < num_layers - 1:
            if masks is not None:
                mask = masks[layer].to(out.dtype)
                if mask.shape != out.shape:
                    raise ValueError(
                        f"expected dropout mask of shape {tuple(out.shape)}, "
                        f"got {tuple(mask.shape)}"
                    )
            else:
                mask = draw_mask(out.shape, dropout, like=out, generator=generator)
            out = out * mask
        used_masks.append(mask)
        layer_in = out
    if cell == "lstm":
        h_n = (torch.stack([f[0] for f in finals]), torch.stack([f[1] for f in finals]))
    else:
        h_n = torch.stack(finals)
    cache = (cell, num_layers, D, hidden, caches, used_masks, is_tokens(x))
    return layer_in, h_n, cache


def backward(dout: torch.Tensor | None, dh_n, cache, truncate: int | None = None,
             need_dx: bool = True):
    """Backward through the stack: ``(dx, dhx, grads)`` with torch-named grads.

    ``dout`` (T, B, D*H) or None; ``dh_n`` (L*D, B, H) or None (for the LSTM a pair whose parts
    may be None). dx is None for token-id input or when not ``need_dx``; dhx has the layout of
    h_n.
    """
    check_truncate(truncate)
    cell, num_layers, D, H, caches, masks, token_input = cache
    mod = cell_module(cell)
    if dout is not None:
        check_stacked(dh_n, cell, num_layers * D, dout.shape[1], H, "dh_n")
    grads: dict[str, torch.Tensor] = {}
    dstate0 = [None] * (num_layers * D)
    d_layer_out = dout
    for layer in reversed(range(num_layers)):
        if masks[layer] is not None and d_layer_out is not None:
            d_layer_out = d_layer_out * masks[layer]     # dropout: same mask as the forward
        want_dx = layer > 0 or (need_dx and not token_input)
        d_in = None
        for d in range(D):
            i = layer * D + d
            dhs = None
            if d_layer_out is not None:
                dhs = d_layer_out[:, :, d * H:(d + 1) * H]
                dhs = dhs.flip(0) if d else dhs
            dx, ds0, g = mod.backward(dhs, split_state(dh_n, cell, i), caches[i], truncate,
                                      need_dx=want_dx)
            if dx is not None:
                dx = dx.flip(0) if d else dx
                d_in = dx if d_in is None else d_in.add_(dx)
            dstate0[i] = ds0
            s = suffix(layer, d)
            for k, v in g.items():
                grads[f"{k}{s}"] = v
        d_layer_out = d_in
    if cell == "lstm":
        dhx = (torch.stack([s[0] for s in dstate0]), torch.stack([s[1] for s in dstate0]))
    else:
        dhx = torch.stack(dstate0)
    dx = None if token_input or not need_dx else d_layer_out
    return dx, dhx, grads


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


class _Slot:
    """A placeholder for the i-th tensor of a flattened cache."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


def _flatten(obj, tensors: list):
    """Replace every tensor in nested tuples/lists by a :class:`_Slot`, collecting them."""
    if isinstance(obj, torch.Tensor):
        tensors.append(obj)
        return _Slot(len(tensors) - 1)
    if isinstance(obj, tuple | list):
        return type(obj)(_flatten(o, tensors) for o in obj)
    return obj


def _unflatten(obj, tensors):
    if isinstance(obj, _Slot):
        return tensors[obj.index]
    if isinstance(obj, tuple | list):
        return type(obj)(_unflatten(o, tensors) for o in obj)
    return obj


class StackFunction(torch.autograd.Function):
    """The recurrent stack with our hand-derived BPTT as its backward.

    ``StackFunction.apply(cfg, x, h0, c0, *weights)`` with ``weights`` in ``cfg.names`` order,
    ``h0`` (L*D, B, H) or None, ``c0`` the LSTM's (L*D, B, H) or None (None for other cells).
    Returns ``(out, h_n, c_n, masks)``; ``c_n`` is None for the RNN and GRU, and ``masks``
    ((L-1, T, B, D*H) while dropping out, else empty) is marked non-differentiable.

    The backward returns gradients for ``x`` (float input only, when it requires grad), ``h0``,
    ``c0`` and every weight; it honours ``cfg.truncate`` (the gradient is then the truncated
    BPTT one, not the exact gradient of the forward).
    """

    @staticmethod
    def forward(ctx, cfg: StackConfig, x, h0, c0, *weights):
        if len(weights) != len(cfg.names):
            raise ValueError(f"expected {len(cfg.names)} weights {cfg.names}, got {len(weights)}")
        check_truncate(cfg.truncate)
        params = dict(zip(cfg.names, weights, strict=True))
        # autograd runs Function.forward with grad mode off: the hand forward builds no graph
        if cfg.cell == "lstm":
            hx = None if h0 is None and c0 is None else (h0, c0)
        else:
            hx = h0
        out, h_n, cache = forward(
            cfg.cell, params, x, hx, num_layers=cfg.num_layers,
            bidirectional=cfg.bidirectional, nonlinearity=cfg.nonlinearity,
            dropout=cfg.dropout, training=cfg.training, generator=cfg.generator,
            masks=cfg.masks, precision=cfg.precision,
        )
        tensors: list[torch.Tensor] = []
        ctx.skeleton = _flatten(cache, tensors)
        ctx.save_for_backward(*tensors)
        ctx.cfg = cfg
        ctx.set_materialize_grads(False)                 # absent output gradients stay None
        _, _, _, _, _, layer_masks, _ = cache
        used = [m for m in layer_masks if m is not None]
        masks = torch.stack(used) if used else out.new_empty((0,))
        ctx.mark_non_differentiable(masks)
        if cfg.cell == "lstm":
            return out, h_n[0], h_n[1], masks
        return out, h_n, None, masks

    @staticmethod
    def backward(ctx, dout, dh_n, dc_n, _dmasks):
        cfg = ctx.cfg
        cache = _unflatten(ctx.skeleton, ctx.saved_tensors)
        need_x, need_h0, need_c0 = ctx.needs_input_grad[1:4]
        dstate_n = (dh_n, dc_n) if cfg.cell == "lstm" else dh_n
        if cfg.cell == "lstm" and dh_n is None and dc_n is None:
            dstate_n = None
        dx, dhx, grads = backward(dout, dstate_n, cache, cfg.truncate, need_dx=need_x)
        if cfg.cell == "lstm":
            dh0, dc0 = dhx
        else:
            dh0, dc0 = dhx, None
        return (None, dx if need_x else None, dh0 if need_h0 else None,
                dc0 if need_c0 else None, *(grads[n] for n in cfg.names))


def apply(cfg: StackConfig, x: torch.Tensor, params: dict[str, torch.Tensor], hx=None):
    """Run :class:`StackFunction`; return ``(out, h_n, masks)`` (h_n the pair for the LSTM).

    ``hx`` is None, the (L*D, B, H) state, or for the LSTM the pair ``(h0, c0)``.
    """
    if cfg.cell == "lstm":
        h0, c0 = (None, None) if hx is None else hx
    else:
        h0, c0 = hx, None
    out, h_n, c_n, masks = StackFunction.apply(cfg, x, h0, c0, *(params[n] for n in cfg.names))
    return out, ((h_n, c_n) if cfg.cell == "lstm" else h_n), masks
