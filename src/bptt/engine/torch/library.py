"""The torch engine's stack as two ``torch.library`` custom operators, so that ``torch.compile``
(``fullgraph=True`` included) takes a :mod:`bptt.nn` module whole, with no graph break.

Dynamo cannot trace :class:`.stack.StackFunction`: its forward hands tensors to the compiled
kernel as NumPy views and keeps a Python structure of caches. Here the same forward and the
same hand-written backward are operators that the compiler treats as opaque calls:

    bptt::stack_forward(x, h0, c0, weights, <settings>) -> (out, h_n, c_n, saved)
    bptt::stack_backward(dout, dh_n, dc_n, x, h0, c0, weights, saved, <settings>, need_dx)
        -> [dx, dh0, dc0, *grads]

``saved`` (with ``out, h_n, c_n`` before it in the backward) is the forward's cache
(:class:`bptt.engine.stack.StackCache`) as a list of tensors: every tensor of the cache that is
not an input or one of ``out, h_n, c_n`` (an operator's outputs may not alias its inputs nor
each other: a cache tensor that is a view of one of them is copied). Its structure -- which
slot of the cache holds which tensor -- is the same for every call with the same settings and
shapes (a :class:`_Plan`, kept per signature by the real forward), so the backward rebuilds
the cache from the list. The shapes the compiler needs (``register_fake``) come from the same
forward run on the meta device (the Python path; the kernel runs on real CPU tensors only).
``register_autograd`` makes ``stack_backward`` the forward's gradient: the
derived BPTT, in the kernel where it covers the layer. A tensor that is absent (no h0, a cell
without c, a gradient not wanted) travels as an empty tensor.

A graph of the gradient (``create_graph=True``, double backward) is not available through
these operators; eager :class:`.stack.StackFunction` has it (:mod:`.graph`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import torch

from ...cells import get_cell
from ..layout import state_sizes
from . import stack
from .common import OPS


class Settings(NamedTuple):
    """The operators' non-tensor arguments, in their order (:class:`.stack.StackConfig`'s
    fields but the generator and fixed masks)."""

    cell: str
    names: str                 # the parameters' names, comma-separated (no str lists in a schema)
    num_layers: int
    bidirectional: bool
    nonlinearity: str
    dropout: float
    training: bool
    truncate: int | None
    precision: str
    batch_sizes: list[int] | None

    def config(self) -> stack.StackConfig:
        bs = None if self.batch_sizes is None else tuple(self.batch_sizes)
        return stack.StackConfig(
            cell=self.cell, names=tuple(self.names.split(",")), num_layers=self.num_layers,
            bidirectional=self.bidirectional, nonlinearity=self.nonlinearity,
            dropout=self.dropout, training=self.training, truncate=self.truncate,
            precision=self.precision, batch_sizes=bs)


class _Plan(NamedTuple):
    """Where each tensor of a flattened cache comes from: ``("in", k)`` the k-th input tensor
    (x, h0, c0, *weights), ``("out", j)`` the j-th output (out, h_n, c_n, *saved)."""

    skeleton: object           # the cache with its tensors replaced by slots (.stack._flatten)
    sources: tuple             # one ("in" | "out", index) per slot


_PLANS: OrderedDict = OrderedDict()
PLANS_KEPT = 512
"""Plans kept, the most recently used: each is a few kilobytes, and a model fed many shapes
(packed batches of every length) would otherwise collect one per shape for ever. A backward
runs long after its forward only when hundreds of other forwards ran in between."""


def _keep_plan(key: tuple, plan: _Plan) -> None:
    _PLANS[key] = plan
    _PLANS.move_to_end(key)
    while len(_PLANS) > PLANS_KEPT:
        _PLANS.popitem(last=False)


def _plan(key: tuple) -> _Plan:
    plan = _PLANS.get(key)
    if plan is None:
        raise RuntimeError(f"expected the plan of this backward's forward among the last "
                           f"{PLANS_KEPT} stack shapes, got it evicted: more than {PLANS_KEPT} "
                           f"other input shapes ran between the forward and its backward")
    _PLANS.move_to_end(key)
    return plan


def _signature(inputs: list, s: Settings) -> tuple:
    shapes = tuple(None if t is None else (tuple(t.shape), t.dtype, tuple(t.stride()))
                   for t in inputs)
    bs = None if s.batch_sizes is None else tuple(s.batch_sizes)
    return (*s[:9], bs, shapes)


def _keys(t: torch.Tensor) -> set:
    """What ``t`` shares memory through: its base tensor (meta tensors have no memory) and, on
    a device, its storage (a tensor's ``_base`` is not always kept where the compiler runs)."""
    base = t
    while base._base is not None:
        base = base._base
    keys = {("base", id(base))}
    if t.device.type != "meta" and t.untyped_storage().data_ptr():
        keys.add(("storage", t.untyped_storage().data_ptr()))
    return keys


def _unaliased(tensors: list, others: list) -> list:
    """``tensors``, each one that is, or is a view of, a tensor of ``others`` or an earlier one
    copied (an operator's outputs alias neither its inputs nor each other)."""
    seen = set().union(*(_keys(t) for t in others if t is not None))
    out = []
    for t in tensors:
        if _keys(t) & seen:
            t = t.clone()
        seen |= _keys(t)
        out.append(t)
    return out


def _outputs(inputs: list, results: list, tensors: list) -> tuple[list, tuple]:
    """The operator's outputs (``results``, then the cache tensors that are neither inputs nor
    results) and each cache tensor's source."""
    outs = list(results)
    sources, own = [], []
    for t in tensors:
        k = next((i for i, a in enumerate(inputs) if a is t), None)
        j = next((i for i, a in enumerate(outs) if a is t), None)
        if k is not None:
            sources.append(("in", k))
        elif j is not None:
            sources.append(("out", j))
        else:
            outs.append(t)
            own.append(t)
            sources.append(("out", len(outs) - 1))
    outs[len(results):] = _unaliased(own, [*inputs, *results])
    return outs, tuple(sources)


def _run_forward(x, h0, c0, weights, settings: Settings):
    """The stack's forward: ``(out, h_n, c_n, saved)`` and its plan (kept per signature)."""
    kind = get_cell(settings.cell)
    cfg = settings.config()
    parts = (h0, c0)[:kind.num_state_parts]
    hx = None if all(p is None for p in parts) else kind.from_parts(parts)
    out, h_n, cache = stack.forward(
        kind, dict(zip(cfg.names, weights, strict=True)), x, hx, num_layers=cfg.num_layers,
        bidirectional=cfg.bidirectional, nonlinearity=cfg.nonlinearity, dropout=cfg.dropout,
        training=cfg.training, precision=cfg.precision, batch_sizes=cfg.batch_sizes)
    parts_n = kind.to_parts(h_n)
    c_n = parts_n[1] if len(parts_n) > 1 else out.new_empty((0,))
    tensors: list[torch.Tensor] = []
    skeleton = stack._flatten(cache, tensors)
    inputs = [x, h0, c0, *weights]
    outs, sources = _outputs(inputs, [out, parts_n[0], c_n], tensors)
    if x.device.type != "meta":                          # the plan of the real run
        _keep_plan(_signature(inputs, settings), _Plan(skeleton, sources))
    return outs


@torch.library.custom_op("bptt::stack_forward", mutates_args=())
def stack_forward(x: torch.Tensor, h0: torch.Tensor | None, c0: torch.Tensor | None,
                  weights: list[torch.Tensor], cell: str, names: str, num_layers: int,
                  bidirectional: bool, nonlinearity: str, dropout: float, training: bool,
                  truncate: int | None, precision: str, batch_sizes: list[int] | None,
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """The stack's hand-written forward (the kernel where it covers a layer): ``(out, h_n,
    c_n, saved)``; c_n is empty for a cell without c."""
    settings = Settings(cell, names, num_layers, bidirectional, nonlinearity, dropout,
                        training, truncate, precision, batch_sizes)
    with torch.no_grad():
        outs = _run_forward(x, h0, c0, weights, settings)
    return outs[0], outs[1], outs[2], outs[3:]


@stack_forward.register_fake
def _(x, h0, c0, weights, *settings):
    """The shapes and strides of the outputs: the same forward on the meta device."""
    def meta(t):
        return None if t is None else torch.empty_strided(t.shape, t.stride(), dtype=t.dtype,
                                                          device="meta")

    outs = _run_forward(meta(x), meta(h0), meta(c0), [meta(w) for w in weights],
                        Settings(*settings))
    fake = [x.new_empty_strided(o.shape, o.stride(), dtype=o.dtype) for o in outs]
    return fake[0], fake[1], fake[2], fake[3:]


@torch.library.custom_op("bptt::stack_backward", mutates_args=())
def stack_backward(dout: torch.Tensor | None, dh_n: torch.Tensor | None,
                   dc_n: torch.Tensor | None, x: torch.Tensor, h0: torch.Tensor | None,
                   c0: torch.Tensor | None, weights: list[torch.Tensor],
                   saved: list[torch.Tensor], cell: str, names: str, num_layers: int,
                   bidirectional: bool, nonlinearity: str, dropout: float, training: bool,
                   truncate: int | None, precision: str, batch_sizes: list[int] | None,
                   need_dx: bool) -> list[torch.Tensor]:
    """The hand-written BPTT of :func:`stack_forward`: ``[dx, dh0, dc0, *grads]`` (grads in
    ``names`` order; dx empty for token ids or when not ``need_dx``, dc0 for a cell without
    c)."""
    settings = Settings(cell, names, num_layers, bidirectional, nonlinearity, dropout,
                        training, truncate, precision, batch_sizes)
    inputs = [x, h0, c0, *weights]
    plan = _plan(_signature(inputs, settings))
    kind = get_cell(cell)
    cache = stack._unflatten(plan.skeleton, [inputs[i] if src == "in" else saved[i]
                                             for src, i in plan.sources])
    dparts = (dh_n, dc_n)[:kind.num_state_parts]
    dparts_n = None if all(d is None for d in dparts) else dparts
    with torch.no_grad():
        dx, dparts0, grads = stack.shared.backward(
            OPS, stack.cell_module(kind), dout, dparts_n, cache, truncate, need_dx)
    empty = x.new_empty((0,), dtype=weights[0].dtype)
    dc0 = dparts0[1] if len(dparts0) > 1 else empty.clone()
    results = [empty if dx is None else dx, dparts0[0], dc0,
               *(grads[n] for n in names.split(","))]
    return _unaliased(results, [*inputs, dout, dh_n, dc_n, *saved])


@stack_backward.register_fake
def _(dout, dh_n, dc_n, x, h0, c0, weights, saved, cell, names, num_layers, bidirectional,
      *rest):
    need_dx = rest[-1]
    kind = get_cell(cell)
    D = 2 if bidirectional else 1
    sizes = state_sizes(kind, dict(zip(names.split(","), weights, strict=True)))
    dx = (x.new_empty(x.shape, dtype=weights[0].dtype) if need_dx and x.is_floating_point()
          else weights[0].new_empty((0,)))
    parts = [weights[0].new_empty((num_layers * D, x.shape[1], s)) for s in sizes]
    dc0 = parts[1] if len(parts) > 1 else weights[0].new_empty((0,))
    return [dx, parts[0], dc0, *(torch.empty_like(w) for w in weights)]


def _setup_context(ctx, inputs, output):
    x, h0, c0, weights, *settings = inputs
    ctx.settings = settings
    ctx.counts = len(weights)
    ctx.token_input = not x.is_floating_point()
    ctx.save_for_backward(x, h0, c0, *weights, *output[:3], *output[3])


def _backward(ctx, dout, dh_n, dc_n, _dsaved):
    x, h0, c0, *rest = ctx.saved_tensors
    weights, saved = rest[:ctx.counts], rest[ctx.counts:]
    need_dx = ctx.needs_input_grad[0] and not ctx.token_input
    dx, dh0, dc0, *grads = stack_backward(dout, dh_n, dc_n, x, h0, c0, weights, saved,
                                          *ctx.settings, need_dx)
    return (dx if need_dx else None, dh0 if h0 is not None else None,
            dc0 if c0 is not None else None, grads, *(None,) * len(ctx.settings))


stack_forward.register_autograd(_backward, setup_context=_setup_context)


def apply(cfg: stack.StackConfig, x: torch.Tensor, params: dict[str, torch.Tensor], hx=None):
    """:func:`.stack.apply` through the operators: ``(out, h_n)`` (h_n the pair for the LSTM).
    ``cfg`` may not fix dropout masks nor hold a generator (they are no operator arguments)."""
    if cfg.masks is not None or cfg.generator is not None:
        raise ValueError("expected no fixed masks and no generator in the config of the "
                         "compiled stack, got them")
    kind = get_cell(cfg.cell)
    parts = kind.to_parts(hx) or ()
    h0, c0 = (*parts, None, None)[:2]
    bs = None if cfg.batch_sizes is None else list(cfg.batch_sizes)
    out, h_n, c_n, _ = stack_forward(
        x, h0, c0, [params[n] for n in cfg.names], cfg.cell, ",".join(cfg.names), cfg.num_layers,
        cfg.bidirectional, cfg.nonlinearity, cfg.dropout, cfg.training, cfg.truncate,
        cfg.precision, bs)
    return out, kind.from_parts((h_n, c_n)[:kind.num_state_parts])
