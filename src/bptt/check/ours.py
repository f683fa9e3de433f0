"""What every check examines: our forward and hand-written backward, on random float64 draws.

A configuration (cell, sizes, layers, directions, truncation) is validated by
:func:`check_config`; :func:`draws` gives its random input, initial state(s) and upstream
gradients from one seed; :func:`ours` runs the forward and the hand-written backward of one
engine on them:

  numpy   ``bptt.engine.numpy.stack.forward`` / ``backward``
  torch   the torch engine's ``StackFunction`` (``bptt.engine.torch.stack.apply``), whose
          backward is the same hand-written BPTT on tensors, driven by ``loss.backward()``

Both return ``(out, h_n, dx, dstate0, grads)``: the outputs (T, B, D*H), the final state as a
tuple of parts, the input gradient, the initial-state gradient in the public form (``dh0`` or
``(dh0, dc0)``) and the parameter gradients by torch name. torch is imported only by the torch
engine's run.
"""

from __future__ import annotations

import numpy as np

from ..cells import NONLINEARITIES, get_cell
from .record import parts

ENGINES = ("numpy", "torch")


def check_config(cell, nonlinearity, batch, steps, input_size, hidden_size, num_layers,
                 truncate, bidirectional, proj_size: int = 0) -> str:
    """Validate a configuration; return the nonlinearity as the row shows it."""
    kind = get_cell(cell)
    for name, v in (("batch", batch), ("steps", steps), ("input_size", input_size),
                    ("hidden_size", hidden_size), ("num_layers", num_layers)):
        if not isinstance(v, int | np.integer) or v < 1:
            raise ValueError(f"expected {name} a positive integer, got {v!r}")
    if proj_size and not (kind.projects and 0 < proj_size < hidden_size):
        raise ValueError(f"expected proj_size 0, or below hidden_size {hidden_size} for a cell "
                         f"that projects, got {proj_size} for the {kind.name} cell")
    if truncate is not None and (num_layers != 1 or bidirectional):
        raise ValueError(
            "expected truncate only with num_layers=1 and bidirectional=False, got "
            f"truncate={truncate} with num_layers={num_layers}, bidirectional={bidirectional}"
        )
    if not kind.takes_nonlinearity:
        return "-"
    if nonlinearity not in NONLINEARITIES:
        names = " or ".join(repr(n) for n in NONLINEARITIES)
        raise ValueError(f"expected nonlinearity {names}, got {nonlinearity!r}")
    return nonlinearity


def draws(cell, batch, steps, input_size, hidden_size, num_layers, bidirectional, seed,
          proj_size: int = 0) -> dict:
    """Random x, initial state(s) and upstream gradients, all float64, from one seed.

    ``state0`` and ``dstate_n`` are tuples with one (L*D, B, S) array per state part (S: the
    part's size, P for a projected h).
    """
    rng = np.random.default_rng(seed)
    D = 2 if bidirectional else 1
    LD = num_layers * D
    n_states = get_cell(cell).num_state_parts
    sizes = (proj_size or hidden_size, *(hidden_size,) * (n_states - 1))
    return {
        "x": rng.standard_normal((steps, batch, input_size)),
        "state0": tuple(0.5 * rng.standard_normal((LD, batch, s)) for s in sizes),
        "dout": rng.standard_normal((steps, batch, D * sizes[0])),
        "dstate_n": tuple(rng.standard_normal((LD, batch, s)) for s in sizes),
    }


def reference_params(spec, seed: int) -> dict:
    """A configuration's float64 recurrent parameters (no head): torch's initialisation from
    ``seed``, with the cell's own parameters (``CellKind.params``, a layer norm's gains and
    biases) moved off their initial values by U(-0.5, 0.5): at a gain of exactly 1 and a bias
    of 0 a backward that forgot either would still pass."""
    from ..model import init_params, param_fills

    params = {k: v for k, v in init_params(spec, "torch", seed, "float64").items()
              if not k.startswith("head.")}
    rng = np.random.default_rng([seed, 7])
    for name in param_fills(spec):
        params[name] += rng.uniform(-0.5, 0.5, size=params[name].shape)
    return params


def ours(cell, params, d, with_h0, num_layers, bidirectional, nonlinearity, truncate,
         engine: str = "numpy"):
    """Our forward and hand-written backward on ``engine``; returns (out, h_n, dx, dstate0,
    grads)."""
    if engine == "numpy":
        run = numpy_stack
    elif engine == "torch":
        run = torch_stack
    else:
        names = " or ".join(repr(e) for e in ENGINES)
        raise ValueError(f"expected engine {names}, got {engine!r}")
    return run(cell, params, d, with_h0, num_layers, bidirectional, nonlinearity, truncate)


def numpy_stack(cell, params, d, with_h0, num_layers, bidirectional, nonlinearity, truncate):
    """The NumPy stack's forward and backward (no initial state at all without ``with_h0``)."""
    from ..engine.numpy import stack

    kind = get_cell(cell)
    hx = kind.from_parts(d["state0"]) if with_h0 else None
    out, h_n, cache = stack.forward(
        cell, params, d["x"], hx, num_layers=num_layers, bidirectional=bidirectional,
        nonlinearity=nonlinearity,
    )
    out = np.array(out)
    h_n = tuple(np.array(s) for s in parts(h_n))
    dx, dstate0, grads = stack.backward(d["dout"], kind.from_parts(d["dstate_n"]), cache,
                                        truncate)
    return out, h_n, dx, dstate0, grads


def torch_stack(cell, params, d, with_h0, num_layers, bidirectional, nonlinearity, truncate):
    """The torch engine's StackFunction, differentiated through its hand-written backward."""
    import torch

    from ..engine.torch.stack import StackConfig, apply

    kind = get_cell(cell)
    p = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    x = torch.tensor(d["x"], requires_grad=True)
    states = tuple(torch.tensor(s if with_h0 else np.zeros_like(s), requires_grad=True)
                   for s in d["state0"])
    cfg = StackConfig(cell, names=tuple(params), num_layers=num_layers,
                      bidirectional=bidirectional, nonlinearity=nonlinearity, truncate=truncate)
    out, h_n, _ = apply(cfg, x, p, kind.from_parts(states))
    finals = kind.to_parts(h_n)
    loss = (out * torch.tensor(d["dout"])).sum()
    for s, g in zip(finals, d["dstate_n"], strict=True):
        loss = loss + (s * torch.tensor(g)).sum()
    loss.backward()
    dstate0 = tuple(s.grad.numpy() for s in states)
    return (out.detach().numpy(), tuple(s.detach().numpy() for s in finals), x.grad.numpy(),
            kind.from_parts(dstate0), {k: v.grad.numpy() for k, v in p.items()})
