r"""The book's way: a Python loop over time steps with torch ops, differentiated by autograd.

Each step computes the cell's equations from scratch for one (B, ...) slice (the d2l style
``H = tanh(X W_xh + H W_hh + b_h)``), the token input being the row gather ``W_ih^T[x_t]`` (the
product of a one-hot vector and W_ih^T). No hand-written gradient anywhere: this is the slow
reference the hand-written engines are proven against.

    rnn   h_t = f(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)
    lstm  [i|f|g|o] = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh,  c_t = s(f) c_{t-1} + s(i) tanh(g),
          h_t = s(o) tanh(c_t)  (times W_hr^T with a projection)
    gru   r, u = s(x_t W_i{r,z}^T + b_i{r,z} + h_{t-1} W_h{r,z}^T + b_h{r,z}),
          n = tanh(x_t W_in^T + b_in + r * (h_{t-1} W_hn^T + b_hn)),  h_t = (1 - u) n + u h_{t-1}
    lnlstm  the lstm with LN(x_t W_ih^T) g_ih and LN(h_{t-1} W_hh^T) g_hh in place of the two
          products, and h_t = s(o) tanh(LN(c_t) g_c + b_c)   (LN: torch.nn.functional.layer_norm)
    lngru   the gru with the same two normalised products (r multiplies the normalised s^n)

Truncation ``truncate = k`` (the semantics of :func:`bptt.engine.numpy.common.bptt_loop`, layer
by layer): the gradient of whatever reads h_t crosses at most k recurrent transitions of the
layer, reaching z_{t-k} but not the state before step t-k. Implemented by recomputation: the
output at step t is recomputed from the state before step t - k, detached (from the initial state,
not detached, when t - k < 0), so autograd sees exactly the truncated graph. It costs
O(T * (k + 1)) steps per layer, which is fine for a reference.

One function per cell kind (:data:`STEPS`, keyed by the names of :mod:`bptt.cells`), each taking
and returning the tuple of the state's parts; adding a cell adds its equations here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ...cells import CellKind, get_cell
from ..layout import layer_params, split_state, state_sizes
from .layernorm import EPS as LN_EPS
from .stack import draw_mask


def _project(x_t: torch.Tensor, weight_ih: torch.Tensor) -> torch.Tensor:
    """x_t W_ih^T for one step: a row gather for token ids (B,), a product for floats."""
    return x_t @ weight_ih.t() if x_t.is_floating_point() else weight_ih.t()[x_t]


def _input_term(x_t: torch.Tensor, p: dict) -> torch.Tensor:
    """x_t W_ih^T + b_ih for one step."""
    xw = _project(x_t, p["weight_ih"])
    return xw if p["bias_ih"] is None else xw + p["bias_ih"]


def _plus(y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return y if bias is None else y + bias


def _ln(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Layer normalisation over the last axis (torch's own), then the gain and the bias."""
    return F.layer_norm(y, y.shape[-1:], weight, bias, LN_EPS)


def _hidden_term(h: torch.Tensor, p: dict) -> torch.Tensor:
    """h_{t-1} W_hh^T + b_hh (the GRU keeps it apart)."""
    hw = h @ p["weight_hh"].t()
    return hw if p["bias_hh"] is None else hw + p["bias_hh"]


def _preactivation(x_t: torch.Tensor, h: torch.Tensor, p: dict) -> torch.Tensor:
    """z_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh, added in that order."""
    z = _input_term(x_t, p) + h @ p["weight_hh"].t()
    return z if p["bias_hh"] is None else z + p["bias_hh"]


def rnn_step(x_t, state: tuple, p: dict, nonlinearity: str = "tanh") -> tuple:
    """h_t = f(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)."""
    (h,) = state
    z = _preactivation(x_t, h, p)
    return (torch.tanh(z) if nonlinearity == "tanh" else torch.relu(z),)


def lstm_step(x_t, state: tuple, p: dict) -> tuple:
    """[i|f|g|o] = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh;  c_t = s(f) c_{t-1} + s(i)
    tanh(g);  h_t = s(o) tanh(c_t), projected by W_hr^T when ``p`` has ``weight_hr``."""
    h, c = state
    zi, zf, zg, zo = _preactivation(x_t, h, p).chunk(4, dim=1)
    c = torch.sigmoid(zf) * c + torch.sigmoid(zi) * torch.tanh(zg)
    m = torch.sigmoid(zo) * torch.tanh(c)
    return (m if p.get("weight_hr") is None else m @ p["weight_hr"].t(), c)


def gru_step(x_t, state: tuple, p: dict) -> tuple:
    """r, u = s(x W_i{r,z}^T + b_i{r,z} + h W_h{r,z}^T + b_h{r,z});
    n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn));  h_t = (1 - u) n + u h_{t-1}."""
    (h,) = state
    xr, xz, xn = _input_term(x_t, p).chunk(3, dim=1)
    hr, hz, hn = _hidden_term(h, p).chunk(3, dim=1)
    r = torch.sigmoid(xr + hr)
    u = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return ((1.0 - u) * n + u * h,)


def lnlstm_step(x_t, state: tuple, p: dict) -> tuple:
    """[i|f|g|o] = LN(x_t W_ih^T) g_ih + b_ih + LN(h_{t-1} W_hh^T) g_hh + b_hh;
    c_t = s(f) c_{t-1} + s(i) tanh(g);  h_t = s(o) tanh(LN(c_t) g_c + b_c)."""
    h, c = state
    z = (_plus(_ln(_project(x_t, p["weight_ih"]), p["ln_weight_ih"]), p["bias_ih"])
         + _plus(_ln(h @ p["weight_hh"].t(), p["ln_weight_hh"]), p["bias_hh"]))
    zi, zf, zg, zo = z.chunk(4, dim=1)
    c = torch.sigmoid(zf) * c + torch.sigmoid(zi) * torch.tanh(zg)
    return (torch.sigmoid(zo) * torch.tanh(_ln(c, p["ln_weight_c"], p["ln_bias_c"])), c)


def lngru_step(x_t, state: tuple, p: dict) -> tuple:
    """a = LN(x_t W_ih^T) g_ih + b_ih,  s = LN(h_{t-1} W_hh^T) g_hh + b_hh;
    r, u = s(a^{r,z} + s^{r,z});  n = tanh(a^n + r * s^n);  h_t = (1 - u) n + u h_{t-1}."""
    (h,) = state
    xr, xz, xn = _plus(_ln(_project(x_t, p["weight_ih"]), p["ln_weight_ih"]),
                       p["bias_ih"]).chunk(3, dim=1)
    hr, hz, hn = _plus(_ln(h @ p["weight_hh"].t(), p["ln_weight_hh"]), p["bias_hh"]).chunk(3, dim=1)
    r = torch.sigmoid(xr + hr)
    u = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return ((1.0 - u) * n + u * h,)


STEPS: dict[str, Callable[..., tuple]] = {"rnn": rnn_step, "lstm": lstm_step, "gru": gru_step,
                                          "lnlstm": lnlstm_step, "lngru": lngru_step}
"""Each cell's step, by its name in :mod:`bptt.cells`: ``step(x_t, state parts, p, **options)``
with ``p`` one layer's weights (``layer_params``) and the options of ``CellKind.options``."""


def cell_step(cell: str | CellKind, x_t: torch.Tensor, state: tuple, p: dict,
              nonlinearity: str = "tanh") -> tuple:
    """One step of ``cell`` from the state parts ``state``; returns the new parts."""
    kind = get_cell(cell)
    return STEPS[kind.name](x_t, state, p, **kind.options(nonlinearity))


def _detach(state: tuple) -> tuple:
    return tuple(s.detach() for s in state)


def layer_forward(cell: str | CellKind, x: torch.Tensor, state0: tuple, p: dict,
                  nonlinearity: str = "tanh", truncate: int | None = None):
    """One layer, one direction, over ``x`` (T, B[, I]) from the state parts ``state0``;
    returns ``(hs (T, B, H), state_n parts)``."""
    T = x.shape[0]
    if truncate is not None and truncate >= T:
        truncate = None                                  # no gradient path is ever cut
    state = state0
    outs = []
    if truncate is None:
        for t in range(T):
            state = cell_step(cell, x[t], state, p, nonlinearity)
            outs.append(state[0])
        return torch.stack(outs), state
    # the states before every step, without a graph: the starting points of the windows
    with torch.no_grad():
        starts = [state0]
        s = state0
        for t in range(T - 1):
            s = cell_step(cell, x[t], s, p, nonlinearity)
            starts.append(s)
    for t in range(T):
        first = t - truncate
        if first < 0:
            first, state = 0, state0                     # the window reaches the initial state
        else:
            state = _detach(starts[first])               # cut before step t - k
        for j in range(first, t + 1):
            state = cell_step(cell, x[j], state, p, nonlinearity)
        outs.append(state[0])
    return torch.stack(outs), state


def stack_forward(cell: str | CellKind, params: dict, x: torch.Tensor, hx=None, *,
                  num_layers: int = 1, bidirectional: bool = False, nonlinearity: str = "tanh",
                  dropout: float = 0.0, training: bool = False,
                  generator: torch.Generator | None = None, truncate: int | None = None,
                  masks: list | tuple | None = None):
    """The stack as torch.nn.RNN/LSTM/GRU stack it; returns ``(out (T, B, D*H), h_n)``.

    ``hx`` None (zeros), (L*D, B, H), or the LSTM pair. The dropout masks are ``masks`` (one
    per layer but the last, (T, B, D*H) or (1, B, D*H)) when given, else drawn by
    :func:`bptt.engine.torch.stack.draw_mask` in the same order as the hand-written stack.
    """
    kind = get_cell(cell)
    D = 2 if bidirectional else 1
    B = x.shape[1]
    ref = params["weight_hh_l0"]
    sizes = state_sizes(kind, params)
    parts = kind.to_parts(hx)
    layer_in = x
    finals = []
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            s0 = split_state(parts, layer * D + d) or (None,) * kind.num_state_parts
            s0 = tuple(ref.new_zeros((B, n)) if s is None else s
                       for s, n in zip(s0, sizes, strict=True))
            seq = layer_in.flip(0) if d else layer_in
            hs, state_n = layer_forward(kind, seq, s0, layer_params(params, layer, d, kind),
                                        nonlinearity, truncate)
            outs.append(hs.flip(0) if d else hs)
            finals.append(state_n)
        out = outs[0] if D == 1 else torch.cat(outs, dim=2)
        if training and dropout > 0 and layer < num_layers - 1:
            out = out * (masks[layer] if masks is not None else
                         draw_mask(out.shape, dropout, like=out, generator=generator))
        layer_in = out
    parts_n = tuple(torch.stack([f[p] for f in finals]) for p in range(kind.num_state_parts))
    return layer_in, kind.from_parts(parts_n)
