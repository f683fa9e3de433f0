r"""The book's way: a Python loop over time steps with torch ops, differentiated by autograd.

Each step computes the cell's equations from scratch for one (B, ...) slice (the d2l style
``H = tanh(X W_xh + H W_hh + b_h)``), the token input being the row gather ``W_ih^T[x_t]`` (the
product of a one-hot vector and W_ih^T). No hand-written gradient anywhere: this is the slow
reference the hand-written engines are proven against.

    rnn   h_t = f(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)
    lstm  [i|f|g|o] = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh,  c_t = s(f) c_{t-1} + s(i) tanh(g),
          h_t = s(o) tanh(c_t)
    gru   r, u = s(x_t W_i{r,z}^T + b_i{r,z} + h_{t-1} W_h{r,z}^T + b_h{r,z}),
          n = tanh(x_t W_in^T + b_in + r * (h_{t-1} W_hn^T + b_hn)),  h_t = (1 - u) n + u h_{t-1}

Truncation ``truncate = k`` (the semantics of :func:`bptt.engine.numpy.common.bptt_loop`, layer
by layer): the gradient of whatever reads h_t crosses at most k recurrent transitions of the
layer, reaching z_{t-k} but not the state before step t-k. Implemented by recomputation: the
output at step t is recomputed from the state before step t - k, detached (from the initial state,
not detached, when t - k < 0), so autograd sees exactly the truncated graph. It costs
O(T * (k + 1)) steps per layer, which is fine for a reference.
"""

from __future__ import annotations

import torch

from ..layout import layer_params, split_state
from .stack import draw_mask


def _input_term(x_t: torch.Tensor, weight_ih: torch.Tensor) -> torch.Tensor:
    """x_t W_ih^T for one step: a row gather for token ids (B,), a product for floats (B, I)."""
    if x_t.is_floating_point():
        return x_t @ weight_ih.t()
    return weight_ih.t()[x_t]


def cell_step(cell: str, x_t: torch.Tensor, state, p: dict, nonlinearity: str = "tanh"):
    """One step of ``cell`` from ``state`` (h, or the pair (h, c)); returns the new state."""
    b_ih, b_hh = p["bias_ih"], p["bias_hh"]
    xw = _input_term(x_t, p["weight_ih"])
    if b_ih is not None:
        xw = xw + b_ih
    if cell == "gru":
        h = state
        hw = h @ p["weight_hh"].t()
        if b_hh is not None:
            hw = hw + b_hh
        xr, xz, xn = xw.chunk(3, dim=1)
        hr, hz, hn = hw.chunk(3, dim=1)
        r = torch.sigmoid(xr + hr)
        u = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return (1.0 - u) * n + u * h
    h = state[0] if cell == "lstm" else state
    z = xw + h @ p["weight_hh"].t()
    if b_hh is not None:
        z = z + b_hh
    if cell == "rnn":
        return torch.tanh(z) if nonlinearity == "tanh" else torch.relu(z)
    c = state[1]
    zi, zf, zg, zo = z.chunk(4, dim=1)
    c = torch.sigmoid(zf) * c + torch.sigmoid(zi) * torch.tanh(zg)
    h = torch.sigmoid(zo) * torch.tanh(c)
    return (h, c)


def _hidden(cell: str, state) -> torch.Tensor:
    return state[0] if cell == "lstm" else state


def _detach(state):
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def layer_forward(cell: str, x: torch.Tensor, state0, p: dict, nonlinearity: str = "tanh",
                  truncate: int | None = None):
    """One layer, one direction, over ``x`` (T, B[, I]); returns ``(hs (T, B, H), state_n)``."""
    T = x.shape[0]
    if truncate is not None and truncate >= T:
        truncate = None                                  # no gradient path is ever cut
    state = state0
    outs = []
    if truncate is None:
        for t in range(T):
            state = cell_step(cell, x[t], state, p, nonlinearity)
            outs.append(_hidden(cell, state))
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
        outs.append(_hidden(cell, state))
    return torch.stack(outs), state


def stack_forward(cell: str, params: dict, x: torch.Tensor, hx=None, *, num_layers: int = 1,
                  bidirectional: bool = False, nonlinearity: str = "tanh", dropout: float = 0.0,
                  training: bool = False, generator: torch.Generator | None = None,
                  truncate: int | None = None):
    """The stack as torch.nn.RNN/LSTM/GRU stack it; returns ``(out (T, B, D*H), h_n)``.

    ``hx`` None (zeros), (L*D, B, H), or the LSTM pair. The dropout masks come from
    :func:`bptt.engine.torch.stack.draw_mask` in the same order as the hand-written stack.
    """
    D = 2 if bidirectional else 1
    T, B = x.shape[:2]
    ref = params["weight_hh_l0"]
    H = ref.shape[1]
    layer_in = x
    finals = []
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            p = layer_params(params, layer, d)
            s0 = split_state(hx, cell, layer * D + d)
            if cell == "lstm":
                h0, c0 = (None, None) if s0 is None else s0
                s0 = (ref.new_zeros((B, H)) if h0 is None else h0,
                      ref.new_zeros((B, H)) if c0 is None else c0)
            elif s0 is None:
                s0 = ref.new_zeros((B, H))
            seq = layer_in.flip(0) if d else layer_in
            hs, state_n = layer_forward(cell, seq, s0, p, nonlinearity, truncate)
            outs.append(hs.flip(0) if d else hs)
            finals.append(state_n)
        out = outs[0] if D == 1 else torch.cat(outs, dim=2)
        if training and dropout > 0 and layer < num_layers - 1:
            out = out * draw_mask(out.shape, dropout, like=out, generator=generator)
        layer_in = out
    if cell == "lstm":
        h_n = (torch.stack([f[0] for f in finals]), torch.stack([f[1] for f in finals]))
    else:
        h_n = torch.stack(finals)
    return layer_in, h_n

