"""The references our hand-written BPTT is compared with, one row per configuration.

The scalar loss behind every gradient is

    L = sum(out * dout) + sum(h_n * dh_n)   [+ sum(c_n * dc_n) for the LSTM]

so ``dout`` is the upstream gradient on every output step and ``dh_n`` (``dc_n``) the one on the
final state(s).

  torch  :func:`check_against_torch`: ``torch.nn.RNN/LSTM/GRU(...).double()`` (the cell's
         ``torch_name`` in ``bptt.cells``) differentiated by autograd; its float64 weights are
         copied into our parameter dict (torch names). A cell torch.nn lacks is compared with
         the same equations as an unrolled loop under autograd
         (:mod:`bptt.check.autograd_reference`). With ``truncate = k`` the reference is
         :func:`truncated_loss`: the output at every step t recomputed from the state at step
         t-k-1 detached, which is the semantics of the engines' truncated BPTT.
  fd     :func:`check_finite_differences`: central finite differences of L in float64 with one
         Richardson step (:func:`numerical_gradient`), one entry at a time, for every
         parameter, input and initial-state entry; needs no torch.

torch is imported inside the functions that need it, never at module import.
"""

from __future__ import annotations

import numpy as np

from ..cells import get_cell
from ..errors import has_module
from .ours import check_config, draws, ours, reference_params
from .record import FD_TOLERANCE, CheckRow, grads_error, parts, parts_error, rel_error

# -- against torch.nn autograd --------------------------------------------------------------------

def has_torch_reference(cell) -> bool:
    """torch.nn has the cell, or the unrolled loop of the torch-autograd engine has its step
    (:mod:`bptt.check.autograd_reference`); False without torch installed."""
    kind = get_cell(cell)
    if kind.torch_name is not None:
        return True
    if not has_module("torch"):
        return False
    from .autograd_reference import has_step

    return has_step(kind)


def torch_module(cell, nonlinearity, input_size, hidden_size, num_layers, bidirectional, bias,
                 seed, proj_size: int = 0):
    """The cell's ``torch.nn`` module in float64, initialised from ``seed`` (global RNG kept);
    for a cell torch.nn lacks, its :class:`~bptt.check.autograd_reference.AutogradReference`
    (the same equations as an unrolled loop under autograd)."""
    import torch

    kind = get_cell(cell)
    if kind.torch_name is None:
        from .autograd_reference import AutogradReference

        return AutogradReference(kind, nonlinearity, input_size, hidden_size, num_layers,
                                 bidirectional, bias, seed)
    kwargs = {"input_size": input_size, "hidden_size": hidden_size, "num_layers": num_layers,
              "bias": bias, "bidirectional": bidirectional}
    if kind.takes_nonlinearity:
        kwargs["nonlinearity"] = nonlinearity
    if proj_size:
        kwargs["proj_size"] = proj_size
    with torch.random.fork_rng(devices=[]):          # seeded init, global RNG untouched
        torch.manual_seed(seed)
        module = getattr(torch.nn, kind.torch_name)(**kwargs)
    return module.double()


def check_against_torch(
    cell: str,
    *,
    nonlinearity: str = "tanh",
    batch: int,
    steps: int,
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    bidirectional: bool = False,
    with_h0: bool = True,
    truncate: int | None = None,
    bias: bool = True,
    seed: int = 0,
    engine: str = "numpy",
    proj_size: int = 0,
) -> CheckRow:
    """Our stack forward/backward vs ``torch.nn.RNN/LSTM/GRU(...).double()`` and autograd.

    Without ``with_h0`` our stack gets no initial state and torch gets zeros that require
    grad, so the dh0 column checks the gradient reaching the zero state in both cases.
    ``engine`` is whose forward and backward are checked: "numpy" or "torch". ``proj_size``
    (the LSTM): torch.nn.LSTM(proj_size=P), its ``weight_hr_l{k}`` among the parameters.
    """
    nl = check_config(cell, nonlinearity, batch, steps, input_size, hidden_size, num_layers,
                      truncate, bidirectional, proj_size)
    module = torch_module(cell, nonlinearity, input_size, hidden_size, num_layers,
                          bidirectional, bias, seed, proj_size)
    params = {k: p.detach().numpy().copy() for k, p in module.named_parameters()}
    d = draws(cell, batch, steps, input_size, hidden_size, num_layers, bidirectional, seed,
              proj_size)
    if not with_h0:
        d["state0"] = tuple(np.zeros_like(s) for s in d["state0"])

    out, h_n, dx, dstate0, grads = ours(cell, params, d, with_h0, num_layers, bidirectional,
                                        nonlinearity, truncate, engine)
    ref = autograd_reference(cell, module, d, truncate)
    return CheckRow(
        cell=cell, engine=engine, nonlinearity=nl, batch=batch, steps=steps,
        input_size=input_size, hidden_size=hidden_size, layers=num_layers,
        bidirectional=bidirectional, with_h0=with_h0, truncate=truncate, method="torch",
        out=rel_error(out, ref["out"]),
        h_n=parts_error(h_n, ref["h_n"]),
        params=grads_error(grads, ref["grads"]),
        dx=rel_error(dx, ref["dx"]),
        dh0=parts_error(dstate0, ref["dstate0"]),
        bias=bias, proj_size=proj_size,
    )


def autograd_reference(cell, module, d: dict, truncate: int | None) -> dict:
    """``module``'s outputs and autograd's gradients of L on the draws ``d``, as NumPy arrays:
    ``out``, ``h_n`` and ``dstate0`` (tuples of parts), ``dx`` and ``grads`` (torch names)."""
    import torch

    kind = get_cell(cell)
    x_t = torch.tensor(d["x"], requires_grad=True)
    s0_t = tuple(torch.tensor(s, requires_grad=True) for s in d["state0"])
    dout_t = torch.tensor(d["dout"])
    dsn_t = tuple(torch.tensor(s) for s in d["dstate_n"])

    def state_loss(state_n) -> torch.Tensor:
        return sum((s * g).sum() for s, g in zip(parts(state_n), dsn_t, strict=True))

    if truncate is None:
        ref_out, ref_state = module(x_t, kind.from_parts(s0_t))
        loss = (ref_out * dout_t).sum() + state_loss(ref_state)
    else:
        with torch.no_grad():
            ref_out, ref_state = module(x_t, kind.from_parts(s0_t))
        loss = truncated_loss(module, x_t, s0_t, kind.from_parts, dout_t, state_loss, truncate)
    loss.backward()

    def grad_of(t: torch.Tensor) -> np.ndarray:
        return np.zeros(tuple(t.shape)) if t.grad is None else t.grad.numpy()

    return {
        "out": ref_out.detach().numpy(),
        "h_n": tuple(s.detach().numpy() for s in parts(ref_state)),
        "grads": {k: grad_of(p) for k, p in module.named_parameters()},
        "dx": grad_of(x_t),
        "dstate0": tuple(grad_of(s) for s in s0_t),
    }


def truncated_loss(module, x_t, s0_t, hx, dout_t, state_loss, k: int):
    """The loss whose autograd gradient is BPTT truncated at k steps (one layer, one direction).

    The output at step t is recomputed from the state at step t-k-1, detached; when
    t-k-1 == -1 that is the initial state detached, and when t-k-1 < -1 the recomputation starts
    from the initial state with its gradient. The upstream gradient on the final state is
    applied to the state of the recomputation of step T-1, so it obeys the same cut. ``hx``
    turns a tuple of state parts into the module's state.
    """
    import torch

    T = x_t.shape[0]

    def detached(state):
        return tuple(s.detach() for s in parts(state))

    loss = torch.zeros((), dtype=torch.float64)
    for t in range(T):
        start = t - k                                # the first step whose z_t gets a gradient
        if start > 0:
            with torch.no_grad():
                _, state = module(x_t[:start], hx(s0_t))   # the state at step t-k-1
            h_start = hx(detached(state))
        elif start == 0:
            h_start = hx(detached(s0_t))
        else:
            start, h_start = 0, hx(s0_t)
        out, state = module(x_t[start:t + 1], h_start)
        loss = loss + (out[-1] * dout_t[t]).sum()
        if t == T - 1:
            loss = loss + state_loss(state)
    return loss


# -- against central finite differences -------------------------------------------------------

def check_finite_differences(
    cell: str,
    *,
    nonlinearity: str = "tanh",
    batch: int = 2,
    steps: int = 3,
    input_size: int = 2,
    hidden_size: int = 3,
    num_layers: int = 1,
    bidirectional: bool = False,
    with_h0: bool = True,
    bias: bool = True,
    seed: int = 0,
    eps: float = 1e-6,
    proj_size: int = 0,
) -> CheckRow:
    """Our backward vs central differences ``(L(v + eps) - L(v - eps)) / (2 eps)`` in float64,
    with one Richardson step (:func:`numerical_gradient`).

    Every entry of every parameter, of the input and of the initial state(s) is perturbed in
    turn (the zero state too when ``with_h0`` is False: our forward then gets None). Keep the
    case small: it costs two forward passes per entry.
    """
    from ..engine.numpy import stack
    from ..model import ModelSpec

    nl = check_config(cell, nonlinearity, batch, steps, input_size, hidden_size, num_layers,
                      None, bidirectional, proj_size)
    spec = ModelSpec(cell=cell, input_size=input_size, hidden_size=hidden_size,
                     num_layers=num_layers, nonlinearity=nonlinearity, bias=bias,
                     bidirectional=bidirectional, task="regression", proj_size=proj_size)
    params = reference_params(spec, seed)
    d = draws(cell, batch, steps, input_size, hidden_size, num_layers, bidirectional, seed + 1,
              proj_size)
    if not with_h0:
        d["state0"] = tuple(np.zeros_like(s) for s in d["state0"])

    _, _, dx, dstate0, grads = ours(cell, params, d, with_h0, num_layers, bidirectional,
                                    nonlinearity, None)
    kind = get_cell(cell)

    def loss() -> float:
        out, h_n, _ = stack.forward(
            cell, params, d["x"], kind.from_parts(d["state0"]), num_layers=num_layers,
            bidirectional=bidirectional, nonlinearity=nonlinearity,
        )
        total = float(np.vdot(out, d["dout"]))
        for s, g in zip(parts(h_n), d["dstate_n"], strict=True):
            total += float(np.vdot(s, g))
        return total

    num_params = {k: numerical_gradient(loss, v, eps, True) for k, v in params.items()}
    num_dx = numerical_gradient(loss, d["x"], eps, True)
    num_ds0 = tuple(numerical_gradient(loss, s, eps, True) for s in d["state0"])
    return CheckRow(
        cell=cell, engine="numpy", nonlinearity=nl, batch=batch, steps=steps,
        input_size=input_size, hidden_size=hidden_size, layers=num_layers,
        bidirectional=bidirectional, with_h0=with_h0, truncate=None, method="fd",
        params=grads_error(grads, num_params),
        dx=rel_error(dx, num_dx),
        dh0=parts_error(dstate0, num_ds0),
        bias=bias, proj_size=proj_size,
        tolerance=FD_TOLERANCE,
    )


def numerical_gradient(f, a: np.ndarray, eps: float = 1e-6,
                       richardson: bool = False) -> np.ndarray:
    """Central differences of the scalar ``f()`` w.r.t. every entry of ``a`` (changed in place,
    then restored exactly).

    ``richardson``: one Richardson step, ``(4 D(eps/2) - D(eps)) / 3`` from the quotients D at
    two steps, which cancels the eps^2 term of their error (twice the evaluations). A layer
    norm of a pre-activation that is exactly zero (an LN cell from a zero state) has third
    derivatives of order eps_LN^-3/2 ~ 3e7, which leave plain central differences 2e-6 off.
    """
    grad = np.zeros(a.shape, dtype=np.float64)
    flat = a.reshape(-1)                             # a view: ``a`` must be contiguous
    if not np.shares_memory(flat, a):
        raise ValueError("expected a contiguous array to perturb, got a non-contiguous one")

    def quotient(i: int, step: float) -> float:
        keep = flat[i]
        up, down = keep + step, keep - step          # rounded: divide by the step really taken
        flat[i] = up
        plus = f()
        flat[i] = down
        minus = f()
        flat[i] = keep
        return (plus - minus) / (up - down)          # up - down is exact (Sterbenz)

    g = grad.reshape(-1)
    for i in range(flat.size):
        g[i] = quotient(i, eps)
        if richardson:
            g[i] = (4.0 * quotient(i, eps / 2) - g[i]) / 3.0
    return grad
