r"""The hand-written BPTT in a differentiable form: the double backward of ``StackFunction``.

``StackFunction.backward`` is fast because it writes into preallocated buffers in place, which
autograd cannot differentiate. When a graph of the gradient is requested (``create_graph=True``,
e.g. ``torch.autograd.gradgradcheck``, a gradient penalty), the backward instead recomputes the
forward from the saved inputs and runs the same labelled equations out of place
(:func:`stack_backward`), so that the gradient it returns is itself a function autograd can
differentiate. The layers, directions, dropout masks and packed sequences are the shared stack's
(:mod:`bptt.engine.stack`), with :class:`GraphCell` as the cell module; truncation keeps the
pending gradients by age as :class:`bptt.engine.recursion.Recursion` does, as a tensor
(A, b, S) rebuilt at every step.

Per cell, one step forward and one step backward (:data:`STEPS`); the step backward returns the
gradients of the input term a_t and of the recurrent product (``d_ih``, ``d_hh``: the same dz_t
for the RNN and the LSTM, da_t and ds_t for the GRU, dz_t and dv_t for the layer-normalised
cells), the state gradients for step t-1 and any further parameter's gradient (the LSTM's W_hr,
the layer-normalised cells' recurrent gain and bias). Every array carries a leading axis of
ages. The input term of every step is made at once before the loop, a_t = x_t W_ih^T + b_ih or
for the layer-normalised cells LN(x_t W_ih^T) g_ih + b_ih, by the cell's input pair.

    rnn   dz_t = dh_t * f'(z_t)                          dh_{t-1} = dz_t W_hh
    lstm  dm_t = dh_t W_hr (or dh_t);  dc_t = dc_{t+1} f_{t+1} + dm_t o_t (1 - tanh^2 c_t)
          dz_t = [dc g i(1-i) | dc c_{t-1} f(1-f) | dc i (1-g^2) | dm tanh(c) o(1-o)]
          dh_{t-1} = dz_t W_hh,  dc_{t-1} = dc_t f_t,  dW_hr += dh_t^T m_t
    gru   da^n = dh (1-u)(1-n^2),  da^z = dh (h_{t-1} - n) u(1-u),  da^r = da^n s^n r(1-r)
          ds_t = [da^r | da^z | da^n r],  dh_{t-1} = ds_t W_hh + dh_t u_t
    lnlstm  dk_t = dh_t o (1 - tanh^2 k_t);  dc_t = dc_{t+1} f_{t+1} + LN'(dk_t g_c);  dz_t as
          the lstm's with tanh(k_t) for tanh(c_t);  dv_t = LN'(dz_t g_hh);  dh_{t-1} = dv_t W_hh
    lngru   da_t, ds_t as the gru's;  dv_t = LN'(ds_t g_hh);  dh_{t-1} = dv_t W_hh + dh_t u_t
    LN'(dy) = rstd (dy - mean(dy) - y^ mean(dy y^)) is the backward of y^ = LN(y)
    (docs/bptt_layernorm.md).

After the loop, for every cell: dW_ih = sum_t d_xw^T x_t, dx_t = d_xw W_ih, with d_xw = d_ih (or
LN'(d_ih g_ih)), db_ih = sum d_ih; dW_hh = sum_t d_hh^T h_{t-1}, db_hh = sum d_hh (the
layer-normalised cells: sum ds_t, from their steps).

Symbols: T steps, B batch, b_t the running rows at step t, S a state part's size, A ages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from ...cells import CellKind, get_cell
from .. import stack as shared
from ..layout import check_batch_sizes, state_sizes
from ..recursion import effective_truncate
from .common import OPS, is_tokens
from .layernorm import EPS


def _linear(a: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    return a @ w.t() if b is None else a @ w.t() + b


def _plus(y: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return y if b is None else y + b


# -- the cells' steps, out of place ---------------------------------------------------------------
# What one step's forward keeps for its backward, per cell (b = b_t rows, H hidden size).

class RnnSaved(NamedTuple):
    h: torch.Tensor           # (b, H) h_t = f(z_t): f'(z_t) reads it


class LstmSaved(NamedTuple):
    i: torch.Tensor           # (b, H) the gates after their activations
    f: torch.Tensor           # (b, H)
    g: torch.Tensor           # (b, H)
    o: torch.Tensor           # (b, H)
    tanh_c: torch.Tensor      # (b, H) tanh(c_t)
    m: torch.Tensor           # (b, H) m_t = o_t tanh(c_t), before the projection


class GruSaved(NamedTuple):
    r: torch.Tensor           # (b, H) the reset gate
    u: torch.Tensor           # (b, H) the update gate z_t
    n: torch.Tensor           # (b, H) the candidate
    s_n: torch.Tensor         # (b, H) h_{t-1} W_hn^T + b_hn


class Normed(NamedTuple):
    y: torch.Tensor           # (..., N) y^ = LN(y)
    rstd: torch.Tensor        # (..., 1) 1 / sqrt(var(y) + eps)


class LnLstmSaved(NamedTuple):
    i: torch.Tensor           # (b, H) the gates after their activations
    f: torch.Tensor           # (b, H)
    g: torch.Tensor           # (b, H)
    o: torch.Tensor           # (b, H)
    v: Normed                 # LN(h_{t-1} W_hh^T), (b, 4H)
    c: Normed                 # LN(c_t), (b, H)
    tanh_k: torch.Tensor      # (b, H) tanh(k_t), k_t = LN(c_t) g_c + b_c


class LnGruSaved(NamedTuple):
    gru: GruSaved             # r, u, n and s^n_t = LN(h_{t-1} W_hh^T)^n g_hh^n + b_hh^n
    v: Normed                 # LN(h_{t-1} W_hh^T), (b, 3H)


def _ln(y: torch.Tensor) -> Normed:
    """LN(y) over the last axis, out of place, its rstd too a function of y that autograd
    differentiates (the gradient's graph goes through it)."""
    centred = y - y.mean(dim=-1, keepdim=True)
    rstd = torch.rsqrt((centred * centred).mean(dim=-1, keepdim=True) + EPS)
    return Normed(y=centred * rstd, rstd=rstd)


def _ln_backward(dy: torch.Tensor, n: Normed) -> torch.Tensor:
    """LN'(dy) = rstd (dy - mean(dy) - y^ mean(dy y^)): the gradient reaching y from dy on y^."""
    return n.rstd * (dy - dy.mean(dim=-1, keepdim=True)
                     - n.y * (dy * n.y).mean(dim=-1, keepdim=True))


def _sum_rows(a: torch.Tensor) -> torch.Tensor:
    """The sum over every axis but the last (ages and rows): a vector parameter's gradient."""
    return a.reshape(-1, a.shape[-1]).sum(0)


def rnn_forward(a, state, p):
    """z_t = a_t + h_{t-1} W_hh^T + b_hh, h_t = f(z_t); saves h_t (f' reads it)."""
    (h,) = state
    z = a + _linear(h, p["weight_hh"], p["bias_hh"])
    h = torch.tanh(z) if p["nonlinearity"] == "tanh" else torch.relu(z)
    return (h,), RnnSaved(h=h)


def rnn_backward(dstate, saved: RnnSaved, prev, p):
    (dh,), h = dstate, saved.h
    fprime = 1 - h * h if p["nonlinearity"] == "tanh" else (h > 0).to(h.dtype)
    dz = dh * fprime                                     # dz_t = dh_t * f'(z_t)
    return dz, dz, (dz @ p["weight_hh"],), {}            # dh_{t-1} = dz_t W_hh


def lstm_forward(a, state, p):
    """The gates, c_t, m_t = o_t tanh(c_t) and h_t (projected by W_hr when given)."""
    h, c = state
    i, f, g, o = (a + _linear(h, p["weight_hh"], p["bias_hh"])).chunk(4, dim=-1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c = f * c + i * g                                    # c_t = f_t c_{t-1} + i_t g_t
    tc = torch.tanh(c)
    m = o * tc                                           # m_t = o_t tanh(c_t)
    w_hr = p.get("weight_hr")
    return (m if w_hr is None else m @ w_hr.t(), c), LstmSaved(i=i, f=f, g=g, o=o, tanh_c=tc, m=m)


def lstm_backward(dstate, saved: LstmSaved, prev, p):
    """k_c = o_t (1 - tanh(c_t)^2), the factor of dc_t."""
    (dh, dc), c_prev = dstate, prev[1]
    f, o, tc, m = saved.f, saved.o, saved.tanh_c, saved.m
    w_hr = p.get("weight_hr")
    dm = dh if w_hr is None else dh @ w_hr               # dm_t = dh_t W_hr
    dc = dc + dm * o * (1 - tc * tc)                     # dc_t = dc_{t+1} f_{t+1} + dm_t k_c
    dz = _lstm_dz(dc, dm, c_prev, saved, tc)
    extra = {} if w_hr is None else {"weight_hr": dh.sum(0).t() @ m}  # dW_hr += dh_t^T m_t
    return dz, dz, (dz @ p["weight_hh"], dc * f), extra  # dh_{t-1} = dz_t W_hh, dc_t f_t


def _lstm_dz(dc, dm, c_prev, gates, tanh_out):
    """dz_t from dc_t and the gradient reaching the output product o_t * tanh_out."""
    i, f, g, o = gates.i, gates.f, gates.g, gates.o
    return torch.cat([dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g * g),
                      dm * tanh_out * o * (1 - o)], dim=-1)  # dz^i, dz^f, dz^g, dz^o


def gru_forward(a, state, p):
    """s_t = h_{t-1} W_hh^T + b_hh; r, u; n_t = tanh(a^n + r s^n); h_t = n + u (h_{t-1} - n)."""
    (h,) = state
    return _gru_gates(a, _linear(h, p["weight_hh"], p["bias_hh"]), h)


def _gru_gates(a, s, h):
    """r, u, n and h_t from the input term a_t and the recurrent term s_t."""
    a_r, a_z, a_n = a.chunk(3, dim=-1)
    s_r, s_z, s_n = s.chunk(3, dim=-1)
    r, u = torch.sigmoid(a_r + s_r), torch.sigmoid(a_z + s_z)
    n = torch.tanh(a_n + r * s_n)
    return (n + u * (h - n),), GruSaved(r=r, u=u, n=n, s_n=s_n)


def gru_backward(dstate, saved: GruSaved, prev, p):
    (dh,) = dstate
    da, ds = _gru_gates_backward(dh, saved, prev[0])
    return da, ds, (ds @ p["weight_hh"] + dh * saved.u,), {}  # dh_{t-1} = ds_t W_hh + dh_t u_t


def _gru_gates_backward(dh, saved: GruSaved, h_prev):
    """(da_t, ds_t): the gradients of the input and the recurrent terms."""
    r, u, n, s_n = saved.r, saved.u, saved.n, saved.s_n
    da_n = dh * (1 - u) * (1 - n * n)                    # da^n_t = dh_t (1 - u_t)(1 - n_t^2)
    da_z = dh * (h_prev - n) * u * (1 - u)               # da^z_t = dh_t (h_{t-1} - n_t) u(1-u)
    da_r = da_n * s_n * r * (1 - r)                      # da^r_t = da^n_t s^n_t r_t(1-r_t)
    ds = torch.cat([da_r, da_z, da_n * r], dim=-1)       # ds_t = [da^r | da^z | da^n r_t]
    return torch.cat([da_r, da_z, da_n], dim=-1), ds


def lnlstm_forward(a, state, p):
    """z_t = a_t + LN(h_{t-1} W_hh^T) g_hh + b_hh; the gates, c_t, h_t = o_t tanh(k_t)."""
    h, c = state
    v = _ln(h @ p["weight_hh"].t())
    i, f, g, o = _plus(a + v.y * p["ln_weight_hh"], p["bias_hh"]).chunk(4, dim=-1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c = f * c + i * g                                    # c_t = f_t c_{t-1} + i_t g_t
    c_n = _ln(c)
    tk = torch.tanh(_plus(c_n.y * p["ln_weight_c"], p["ln_bias_c"]))  # tanh(k_t)
    return (o * tk, c), LnLstmSaved(i=i, f=f, g=g, o=o, v=v, c=c_n, tanh_k=tk)


def lnlstm_backward(dstate, saved: LnLstmSaved, prev, p):
    (dh, dc), c_prev = dstate, prev[1]
    tk = saved.tanh_k
    dk = dh * saved.o * (1 - tk * tk)                    # dk_t = dh_t o_t (1 - tanh(k_t)^2)
    dc = dc + _ln_backward(dk * p["ln_weight_c"], saved.c)  # dc_t = dc_{t+1} f_{t+1} + LN'
    dz = _lstm_dz(dc, dh, c_prev, saved, tk)
    dv = _ln_backward(dz * p["ln_weight_hh"], saved.v)  # dv_t = LN'(dz_t g_hh)
    extra = {"ln_weight_hh": _sum_rows(dz * saved.v.y), "ln_weight_c": _sum_rows(dk * saved.c.y)}
    if p["ln_bias_c"] is not None:
        extra["ln_bias_c"] = _sum_rows(dk)
    if p["bias_hh"] is not None:
        extra["bias_hh"] = _sum_rows(dz)
    return dz, dv, (dv @ p["weight_hh"], dc * saved.f), extra  # dh_{t-1} = dv_t W_hh


def lngru_forward(a, state, p):
    """s_t = LN(h_{t-1} W_hh^T) g_hh + b_hh; then the gru's gates and h_t."""
    (h,) = state
    v = _ln(h @ p["weight_hh"].t())
    s = _plus(v.y * p["ln_weight_hh"], p["bias_hh"])
    new, gru = _gru_gates(a, s, h)
    return new, LnGruSaved(gru=gru, v=v)


def lngru_backward(dstate, saved: LnGruSaved, prev, p):
    (dh,) = dstate
    da, ds = _gru_gates_backward(dh, saved.gru, prev[0])
    dv = _ln_backward(ds * p["ln_weight_hh"], saved.v)  # dv_t = LN'(ds_t g_hh)
    extra = {"ln_weight_hh": _sum_rows(ds * saved.v.y)}
    if p["bias_hh"] is not None:
        extra["bias_hh"] = _sum_rows(ds)
    dh_prev = dv @ p["weight_hh"] + dh * saved.gru.u   # dh_{t-1} = dv_t W_hh + dh_t u_t
    return da, dv, (dh_prev,), extra


# -- the input term a_t of every step at once, and its backward ----------------------------------

def affine_input(xw, p):
    """a_t = x_t W_ih^T + b_ih (nothing kept)."""
    return _plus(xw, p["bias_ih"]), None


def affine_input_backward(da, kept, p):
    """(d_xw, grads): the gradient of x_t W_ih^T is da_t itself; db_ih = sum da."""
    return da, ({} if p["bias_ih"] is None else {"bias_ih": _sum_rows(da)})


def ln_input(xw, p):
    """a_t = LN(x_t W_ih^T) g_ih + b_ih; keeps the norm."""
    u = _ln(xw)
    return _plus(u.y * p["ln_weight_ih"], p["bias_ih"]), u


def ln_input_backward(da, kept: Normed, p):
    """d_xw = LN'(da g_ih); dg_ih = sum da u^, db_ih = sum da."""
    grads = {"ln_weight_ih": _sum_rows(da * kept.y)}
    if p["bias_ih"] is not None:
        grads["bias_ih"] = _sum_rows(da)
    return _ln_backward(da * p["ln_weight_ih"], kept), grads


class Steps(NamedTuple):
    forward: Callable         # (a_t, state parts, p) -> (new parts, saved)
    backward: Callable        # (dstate by age, saved, prev parts, p) -> (d_ih, d_hh, dprev, extra)
    input: Callable = affine_input  # (x W_ih^T (T, B, W), p) -> (a (T, B, W), kept)
    input_backward: Callable = affine_input_backward  # (d_ih, kept, p) -> (d_xw, grads)


STEPS: dict[str, Steps] = {"rnn": Steps(rnn_forward, rnn_backward),
                           "lstm": Steps(lstm_forward, lstm_backward),
                           "gru": Steps(gru_forward, gru_backward),
                           "lnlstm": Steps(lnlstm_forward, lnlstm_backward, ln_input,
                                           ln_input_backward),
                           "lngru": Steps(lngru_forward, lngru_backward, ln_input,
                                          ln_input_backward)}
"""Each cell's out-of-place step pair, by its name in :mod:`bptt.cells`."""


# -- one layer, one direction: the cell module the shared stack drives -----------------------------

class Cache(NamedTuple):
    """What :meth:`GraphCell.forward` keeps for :meth:`GraphCell.backward`."""

    x: torch.Tensor            # (T, B, I) floats or (T, B) token ids
    p: dict                    # the layer's weights and options
    kept: object               # what the input term's backward reads (the LN cells' LN(x W_ih^T))
    prevs: list                # T tuples of state parts before step t, (b_t, S) each
    saved: list                # T per-step records (RnnSaved, ...): what the step's backward reads
    sizes: tuple               # b_t per step
    state_sizes: tuple         # S per part


class GraphCell:
    """A cell module for :mod:`bptt.engine.stack` whose forward and backward are out of place
    and differentiable (the shared stack's contract: ``forward`` -> ``(hs, state_n, cache)``,
    ``backward`` -> ``(dx, dstate0, grads)``)."""

    def __init__(self, kind: CellKind) -> None:
        if kind.name not in STEPS:
            raise RuntimeError(f"expected a cell with a differentiable backward (graph.STEPS: "
                               f"{', '.join(STEPS)}) for a double backward, got {kind.name!r}")
        self.kind, self.steps = kind, STEPS[kind.name]

    def forward(self, x, state0, weight_ih, weight_hh, bias_ih=None, bias_hh=None, *,
                batch_sizes=None, nonlinearity="tanh", weight_hr=None, precision="fp32",
                **own):
        T, B = x.shape[:2]
        check_batch_sizes(batch_sizes, T, B)
        sizes = batch_sizes or (B,) * T
        p = {"weight_ih": weight_ih, "weight_hh": weight_hh, "bias_ih": bias_ih,
             "bias_hh": bias_hh, "weight_hr": weight_hr, "nonlinearity": nonlinearity, **own}
        S = state_sizes(self.kind, {"weight_hh_l0": weight_hh})
        state = tuple(weight_hh.new_zeros((B, n)) if s is None else s
                      for s, n in zip(state0 or (None,) * len(S), S, strict=True))
        xw = weight_ih.t()[x] if is_tokens(x) else x @ weight_ih.t()  # x_t W_ih^T, every t
        a, kept = self.steps.input(xw, p)                # a_t, every t
        prevs, saved, outs = [], [], []
        for t, b in enumerate(sizes):
            prev = tuple(s[:b] for s in state)
            new, keep = self.steps.forward(a[t, :b], prev, p)
            prevs.append(prev)
            saved.append(keep)
            outs.append(_pad(new[0], B))
            state = new if b == B else tuple(torch.cat([n, s[b:]]) for n, s in
                                             zip(new, state, strict=True))  # ended: kept
        cache = Cache(x=x, p=p, kept=kept, prevs=prevs, saved=saved, sizes=sizes, state_sizes=S)
        return torch.stack(outs), state, cache

    def backward(self, dhs, dstate_n, cache: Cache, truncate=None, need_dx=True):
        T, sizes, S = len(cache.sizes), cache.sizes, cache.state_sizes
        B = sizes[0]
        like = cache.p["weight_hh"]
        k = effective_truncate(truncate, T)
        A = 1 if k is None else k + 1
        dstate_n = tuple(like.new_zeros((B, n)) if d is None else d for d, n in
                         zip(dstate_n or (None,) * len(S), S, strict=True))
        pending = tuple(like.new_zeros((A, 0, n)) for n in S)     # (A, rows, S) by age
        d_ih, d_hh, extras = [None] * T, [None] * T, {}
        for t in range(T - 1, -1, -1):
            b = sizes[t]
            if b > pending[0].shape[1]:                  # sequences ending at t join, age 0
                pending = tuple(torch.cat([q, _at_age0(d[q.shape[1]:b], A)], dim=1)
                                for q, d in zip(pending, dstate_n, strict=True))
            if dhs is not None:                          # dh_t += dL/dh_t (age 0)
                pending = (pending[0] + _at_age0(dhs[t, :b], A), *pending[1:])
            g_ih, g_hh, dprev, extra = self.steps.backward(pending, cache.saved[t],
                                                           cache.prevs[t], cache.p)
            d_ih[t], d_hh[t] = _pad(g_ih.sum(0), B), _pad(g_hh.sum(0), B)
            for name, g in extra.items():
                extras[name] = g if name not in extras else extras[name] + g
            pending = _older(dprev, k)
        return self._weight_grads(cache, torch.stack(d_ih), torch.stack(d_hh), need_dx,
                                  tuple(q.sum(0) for q in pending), extras)

    def _weight_grads(self, cache: Cache, d_ih, d_hh, need_dx, dstate0, extras):
        """dW_ih, db_ih, dW_hh, db_hh (and the extras) from every step's d_ih, d_hh (T, B, W)."""
        p, x, B = cache.p, cache.x, cache.sizes[0]
        W = d_ih.shape[-1]
        h_prev = torch.stack([_pad(prev[0], B) for prev in cache.prevs])  # h_{t-1}, every t
        grads = {"weight_hh": d_hh.reshape(-1, W).t() @ h_prev.reshape(-1, h_prev.shape[-1])}
        d_xw, in_grads = self.steps.input_backward(d_ih, cache.kept, p)
        rows = d_xw.reshape(-1, W)
        if is_tokens(x):
            table = rows.new_zeros((p["weight_ih"].shape[1], W)).index_add(0, x.reshape(-1), rows)
            grads["weight_ih"], dx = table.t(), None
        else:
            grads["weight_ih"] = rows.t() @ x.reshape(-1, x.shape[-1])
            dx = d_xw @ p["weight_ih"] if need_dx else None
        grads.update(in_grads)
        if p["bias_hh"] is not None and "bias_hh" not in extras:  # (the LN cells' own: sum ds)
            grads["bias_hh"] = d_hh.sum(dim=(0, 1))
        grads.update(extras)
        return dx, dstate0, grads


def _pad(rows: torch.Tensor, batch: int) -> torch.Tensor:
    """(b, ...) rows as (B, ...), zeros below (the sequences that have ended)."""
    if rows.shape[0] == batch:
        return rows
    return torch.cat([rows, rows.new_zeros((batch - rows.shape[0], *rows.shape[1:]))])


def _at_age0(rows: torch.Tensor, ages: int) -> torch.Tensor:
    """(b, S) rows as (A, b, S): at age 0, zeros at the older ages."""
    return torch.cat([rows[None], rows.new_zeros((ages - 1, *rows.shape))])


def _older(dprev: tuple, k: int | None) -> tuple:
    """The state gradients of step t-1 by age: every age one older, the oldest (k) dropped;
    without truncation the single age as it is."""
    if k is None:
        return dprev
    return tuple(torch.cat([d.new_zeros((1, *d.shape[1:])), d[:k]]) for d in dprev)


def stack_backward(cfg, cache: shared.StackCache, x: torch.Tensor, state0: tuple,
                   params: dict, dout, dparts_n):
    """StackFunction's backward with a graph: ``(dx, dparts0, grads)`` as the fast backward
    returns them, differentiable with respect to the inputs and the upstream gradients. The
    forward is recomputed from the saved inputs with the forward's dropout masks."""
    kind = get_cell(cfg.cell)
    masks = cache.masks
    parts = state0[:kind.num_state_parts]
    parts = None if all(s is None for s in parts) else parts
    options = kind.options(cfg.nonlinearity)
    cell = GraphCell(kind)
    _, _, gcache = shared.forward(OPS, cell, kind, params, x, parts,
                                  num_layers=cfg.num_layers, bidirectional=cfg.bidirectional,
                                  options=options, mask=lambda layer, out: masks[layer],
                                  batch_sizes=cfg.batch_sizes)
    return shared.backward(OPS, cell, dout, dparts_n, gcache, cfg.truncate,
                           need_dx=not is_tokens(x))
