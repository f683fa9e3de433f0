"""Gradient verification as a library: the hand-written BPTT against two independent references.

Every check builds one recurrent stack (cell, sizes, layers, directions), draws random inputs,
initial states and upstream gradients, and compares our ``bptt.engine.numpy.stack`` forward and
backward with a reference. The scalar loss behind every gradient is

    L = sum(out * dout) + sum(h_n * dh_n)   [+ sum(c_n * dc_n) for the LSTM]

so ``dout`` is the upstream gradient on every output step and ``dh_n`` (``dc_n``) the one on the
final state(s). Methods:

  torch      ``torch.nn.RNN/LSTM/GRU(...).double()`` differentiated by autograd; its float64
             weights are copied into our parameter dict (torch names). With ``truncate = k``
             the reference recomputes the output at every step t from the state at step t-k-1
             detached, which is the semantics of :func:`bptt.engine.numpy.common.bptt_loop`.
  fd         central finite differences of L in float64, one entry at a time, for every
             parameter, input and initial-state entry; needs no torch.
  gradcheck  ``torch.autograd.gradcheck`` (rows contributed by the torch engine's hook).

Errors are relative: ``max|ours - ref| / max(max|ref|, tiny)`` per array, then the maximum over
the arrays of a column. A row is ok when its worst error is at most its tolerance (1e-9 in
float64). torch is imported inside the functions that need it, never at module import.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

CELLS = ("rnn", "lstm", "gru")
METHODS = ("torch", "fd", "gradcheck")
ERROR_COLUMNS = ("out", "h_n", "params", "dx", "dh0")
TOLERANCE = {"float64": 1e-9}   # vs autograd: both sides round at 1e-16, a margin of 1e6
# Central differences with eps = 1e-6 cannot reach 1e-9: each difference quotient carries the
# loss's rounding (~1e-16 per unit of loss) divided by 2 eps, ~1e-10, and an array whose
# gradient is small (a lower layer, a bias) sees that as several 1e-9 relative. A wrong
# gradient is off by far more than 1e-6, so that is the tolerance of the "fd" rows.
FD_TOLERANCE = 1e-6
TINY = float(np.finfo(np.float64).tiny)


@dataclass
class CheckRow:
    """One configuration checked by one method, with its maximum relative errors.

    ``out``/``h_n``: the forward outputs (every step) and final state(s) (h_n and, for the
    LSTM, c_n); ``params``: the gradient of every parameter (the max over them); ``dx``: the
    input gradient; ``dh0``: the initial-state gradient (h0 and, for the LSTM, c0). A column
    is None where the method does not measure it (finite differences have no forward to
    compare).
    """

    cell: str
    engine: str
    nonlinearity: str
    batch: int
    steps: int
    input_size: int
    hidden_size: int
    layers: int
    bidirectional: bool
    with_h0: bool
    truncate: int | None
    method: str
    out: float | None = None
    h_n: float | None = None
    params: float | None = None
    dx: float | None = None
    dh0: float | None = None
    bias: bool = True
    dtype: str = "float64"
    tolerance: float = TOLERANCE["float64"]

    @property
    def worst(self) -> float:
        """The largest measured error of the row (NaN when any of them is NaN)."""
        return _max_error(getattr(self, c) for c in ERROR_COLUMNS)

    @property
    def ok(self) -> bool:
        return bool(self.worst <= self.tolerance)  # False for NaN

    def to_dict(self) -> dict:
        d = asdict(self)
        d["worst"] = self.worst
        d["ok"] = self.ok
        return d


# -- errors -------------------------------------------------------------------------------------

def rel_error(ours, ref) -> float:
    """``max|ours - ref| / max(max|ref|, tiny)``; inf when the shapes differ or ours is missing."""
    if ours is None or ref is None:
        return 0.0 if ours is None and ref is None else math.inf
    a = np.asarray(ours, dtype=np.float64)
    b = np.asarray(ref, dtype=np.float64)
    if a.shape != b.shape:
        return math.inf
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), TINY))


def _max_error(errors) -> float:
    """The max of the measured (non-None) errors; NaN wins; 0.0 when none is measured."""
    worst = 0.0
    for e in errors:
        if e is None:
            continue
        if math.isnan(e):
            return math.nan
        worst = max(worst, e)
    return worst


def _grads_error(ours: dict, ref: dict) -> float:
    """Max relative error over every parameter; a missing or unexpected gradient is inf."""
    if set(ours) != set(ref):
        return math.inf
    return _max_error(rel_error(ours[k], ref[k]) for k in ref)


def _pair(state) -> tuple:
    """A state as a tuple of arrays: ``(h,)``, or ``(h, c)`` for the LSTM."""
    return tuple(state) if isinstance(state, tuple | list) else (state,)


def _pair_error(ours, ref) -> float:
    ours, ref = _pair(ours), _pair(ref)
    if len(ours) != len(ref):
        return math.inf
    return _max_error(rel_error(a, b) for a, b in zip(ours, ref, strict=True))


# -- which cells exist ----------------------------------------------------------------------------

def cell_unavailable(cell: str) -> str | None:
    """None when the NumPy module of ``cell`` imports and has forward/backward; else why not."""
    if cell not in CELLS:
        raise ValueError(f"expected cell 'rnn', 'lstm' or 'gru', got {cell!r}")
    try:
        mod = importlib.import_module(f"bptt.engine.numpy.{cell}")
    except Exception as e:  # a module being written may not even parse yet
        return f"bptt.engine.numpy.{cell} does not import ({type(e).__name__}: {e})"
    missing = [f for f in ("forward", "backward") if not callable(getattr(mod, f, None))]
    if missing:
        return f"bptt.engine.numpy.{cell} has no {' or '.join(missing)}"
    return None


def available_cells() -> list[str]:
    return [c for c in CELLS if cell_unavailable(c) is None]


# -- shared set-up ----------------------------------------------------------------------------

def _check_config(cell, nonlinearity, batch, steps, input_size, hidden_size, num_layers,
                  truncate, bidirectional) -> str:
    """Validate a configuration; return the nonlinearity as the row shows it."""
    if cell not in CELLS:
        raise ValueError(f"expected cell 'rnn', 'lstm' or 'gru', got {cell!r}")
    for name, v in (("batch", batch), ("steps", steps), ("input_size", input_size),
                    ("hidden_size", hidden_size), ("num_layers", num_layers)):
        if not isinstance(v, int | np.integer) or v < 1:
            raise ValueError(f"expected {name} a positive integer, got {v!r}")
    if truncate is not None and (num_layers != 1 or bidirectional):
        raise ValueError(
            "expected truncate only with num_layers=1 and bidirectional=False, got "
            f"truncate={truncate} with num_layers={num_layers}, bidirectional={bidirectional}"
        )
    if cell != "rnn":
        return "-"
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"expected nonlinearity 'tanh' or 'relu', got {nonlinearity!r}")
    return nonlinearity


def _draws(cell, batch, steps, input_size, hidden_size, num_layers, bidirectional, seed):
    """Random x, initial state(s) and upstream gradients, all float64, from one seed."""
    rng = np.random.default_rng(seed)
    D = 2 if bidirectional else 1
    S = num_layers * D
    n_states = 2 if cell == "lstm" else 1
    return {
        "x": rng.standard_normal((steps, batch, input_size)),
        "state0": tuple(0.5 * rng.standard_normal((S, batch, hidden_size))
                        for _ in range(n_states)),
        "dout": rng.standard_normal((steps, batch, D * hidden_size)),
        "dstate_n": tuple(rng.standard_normal((S, batch, hidden_size))
                          for _ in range(n_states)),
    }


def _as_state(cell: str, states: tuple):
    """Our stack's layout: the pair (h, c) for the LSTM, the single array otherwise."""
    return tuple(states) if cell == "lstm" else states[0]


def _ours(cell, params, d, with_h0, num_layers, bidirectional, nonlinearity, truncate,
          engine: str = "numpy"):
    """Our forward and hand-written backward; returns (out, h_n, dx, dstate0, grads).

    ``engine="torch"`` runs the torch engine's ``StackFunction`` (its backward is the same
    hand-written BPTT on tensors) instead of the NumPy stack.
    """
    if engine == "torch":
        from .engine.torch.check import ours

        return ours(cell, params, d, with_h0, num_layers, bidirectional, nonlinearity, truncate)
    if engine != "numpy":
        raise ValueError(f"expected engine 'numpy' or 'torch', got {engine!r}")
    from .engine.numpy import stack

    hx = _as_state(cell, d["state0"]) if with_h0 else None
    out, h_n, cache = stack.forward(
        cell, params, d["x"], hx, num_layers=num_layers, bidirectional=bidirectional,
        nonlinearity=nonlinearity,
    )
    out = np.array(out)
    h_n = tuple(np.array(s) for s in _pair(h_n))
    dx, dstate0, grads = stack.backward(d["dout"], _as_state(cell, d["dstate_n"]), cache,
                                        truncate)
    return out, h_n, dx, dstate0, grads


# -- against torch.nn autograd --------------------------------------------------------------------

def _torch_module(cell, nonlinearity, input_size, hidden_size, num_layers, bidirectional, bias,
                  seed):
    import torch

    kwargs = {"input_size": input_size, "hidden_size": hidden_size, "num_layers": num_layers,
              "bias": bias, "bidirectional": bidirectional}
    with torch.random.fork_rng(devices=[]):          # seeded init, global RNG untouched
        torch.manual_seed(seed)
        if cell == "rnn":
            module = torch.nn.RNN(nonlinearity=nonlinearity, **kwargs)
        elif cell == "lstm":
            module = torch.nn.LSTM(**kwargs)
        else:
            module = torch.nn.GRU(**kwargs)
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
) -> CheckRow:
    """Our stack forward/backward vs ``torch.nn.RNN/LSTM/GRU(...).double()`` and autograd.

    Without ``with_h0`` our stack gets no initial state and torch gets zeros that require
    grad, so the dh0 column checks the gradient reaching the zero state in both cases.
    """
    import torch

    nl = _check_config(cell, nonlinearity, batch, steps, input_size, hidden_size, num_layers,
                       truncate, bidirectional)
    module = _torch_module(cell, nonlinearity, input_size, hidden_size, num_layers,
                           bidirectional, bias, seed)
    params = {k: p.detach().numpy().copy() for k, p in module.named_parameters()}
    d = _draws(cell, batch, steps, input_size, hidden_size, num_layers, bidirectional, seed)
    if not with_h0:
        d["state0"] = tuple(np.zeros_like(s) for s in d["state0"])

    out, h_n, dx, dstate0, grads = _ours(cell, params, d, with_h0, num_layers, bidirectional,
                                         nonlinearity, truncate, engine)

    # the reference: autograd through torch.nn on the same weights and draws
    x_t = torch.tensor(d["x"], requires_grad=True)
    s0_t = tuple(torch.tensor(s, requires_grad=True) for s in d["state0"])
    dout_t = torch.tensor(d["dout"])
    dsn_t = tuple(torch.tensor(s) for s in d["dstate_n"])

    def hx(states):
        return tuple(states) if cell == "lstm" else states[0]

    def state_loss(state_n) -> torch.Tensor:
        return sum((s * g).sum() for s, g in zip(_pair(state_n), dsn_t, strict=True))

    if truncate is None:
        ref_out, ref_state = module(x_t, hx(s0_t))
        loss = (ref_out * dout_t).sum() + state_loss(ref_state)
    else:
        with torch.no_grad():
            ref_out, ref_state = module(x_t, hx(s0_t))
        loss = _truncated_loss(module, x_t, s0_t, hx, dout_t, state_loss, truncate)
    loss.backward()

    def grad_of(t: torch.Tensor) -> np.ndarray:
        return np.zeros(tuple(t.shape)) if t.grad is None else t.grad.numpy()

    ref_grads = {k: grad_of(p) for k, p in module.named_parameters()}
    return CheckRow(
        cell=cell, engine=engine, nonlinearity=nl, batch=batch, steps=steps,
        input_size=input_size, hidden_size=hidden_size, layers=num_layers,
        bidirectional=bidirectional, with_h0=with_h0, truncate=truncate, method="torch",
        out=rel_error(out, ref_out.detach().numpy()),
        h_n=_pair_error(h_n, tuple(s.detach().numpy() for s in _pair(ref_state))),
        params=_grads_error(grads, ref_grads),
        dx=rel_error(dx, grad_of(x_t)),
        dh0=_pair_error(dstate0, tuple(grad_of(s) for s in s0_t)),
        bias=bias,
    )


def _truncated_loss(module, x_t, s0_t, hx, dout_t, state_loss, k: int):
    """The loss whose autograd gradient is BPTT truncated at k steps (one layer, one direction).

    The output at step t is recomputed from the state at step t-k-1, detached; when
    t-k-1 == -1 that is the initial state detached, and when t-k-1 < -1 the recomputation starts
    from the initial state with its gradient. The upstream gradient on the final state is
    applied to the state of the recomputation of step T-1, so it obeys the same cut.
    """
    import torch

    T = x_t.shape[0]

    def detached(state):
        return tuple(s.detach() for s in _pair(state))

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
) -> CheckRow:
    """Our backward vs central differences ``(L(v + eps) - L(v - eps)) / (2 eps)`` in float64.

    Every entry of every parameter, of the input and of the initial state(s) is perturbed in
    turn (the zero state too when ``with_h0`` is False: our forward then gets None). Keep the
    case small: it costs two forward passes per entry.
    """
    from .engine.numpy import stack
    from .model import ModelSpec, init_params

    nl = _check_config(cell, nonlinearity, batch, steps, input_size, hidden_size, num_layers,
                       None, bidirectional)
    spec = ModelSpec(cell=cell, input_size=input_size, hidden_size=hidden_size,
                     num_layers=num_layers, nonlinearity=nonlinearity, bias=bias,
                     bidirectional=bidirectional, task="regression")
    params = {k: v for k, v in init_params(spec, "torch", seed, "float64").items()
              if not k.startswith("head.")}
    d = _draws(cell, batch, steps, input_size, hidden_size, num_layers, bidirectional, seed + 1)
    if not with_h0:
        d["state0"] = tuple(np.zeros_like(s) for s in d["state0"])

    _, _, dx, dstate0, grads = _ours(cell, params, d, with_h0, num_layers, bidirectional,
                                     nonlinearity, None)

    def loss() -> float:
        out, h_n, _ = stack.forward(
            cell, params, d["x"], _as_state(cell, d["state0"]), num_layers=num_layers,
            bidirectional=bidirectional, nonlinearity=nonlinearity,
        )
        total = float(np.vdot(out, d["dout"]))
        for s, g in zip(_pair(h_n), d["dstate_n"], strict=True):
            total += float(np.vdot(s, g))
        return total

    num_params = {k: numerical_gradient(loss, v, eps) for k, v in params.items()}
    num_dx = numerical_gradient(loss, d["x"], eps)
    num_ds0 = tuple(numerical_gradient(loss, s, eps) for s in d["state0"])
    return CheckRow(
        cell=cell, engine="numpy", nonlinearity=nl, batch=batch, steps=steps,
        input_size=input_size, hidden_size=hidden_size, layers=num_layers,
        bidirectional=bidirectional, with_h0=with_h0, truncate=None, method="fd",
        params=_grads_error(grads, num_params),
        dx=rel_error(dx, num_dx),
        dh0=_pair_error(dstate0, num_ds0),
        bias=bias,
        tolerance=FD_TOLERANCE,
    )


def numerical_gradient(f, a: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar ``f()`` w.r.t. every entry of ``a`` (changed in place,
    then restored exactly)."""
    grad = np.zeros(a.shape, dtype=np.float64)
    flat = a.reshape(-1)                             # a view: ``a`` must be contiguous
    if not np.shares_memory(flat, a):
        raise ValueError("expected a contiguous array to perturb, got a non-contiguous one")
    g = grad.reshape(-1)
    for i in range(flat.size):
        keep = flat[i]
        up, down = keep + eps, keep - eps            # rounded: divide by the step really taken
        flat[i] = up
        plus = f()
        flat[i] = down
        minus = f()
        flat[i] = keep
        g[i] = (plus - minus) / (up - down)          # up - down is exact (Sterbenz)
    return grad


# -- the table ------------------------------------------------------------------------------

def _rnn_grid() -> list[dict]:
    """The vanilla RNN grid, pruned to 32 of its 128 corners.

    Five factors in full (nonlinearity, batch, steps, input size, hidden size: 32 corners); the
    initial state and the truncation follow the 2^(7-2) design F = ABCD, G = ABDE (resolution
    IV), so every pair of the seven factors meets in all four level combinations.
    """
    rows = []
    for a in (0, 1):
        for b in (0, 1):
            for c in (0, 1):
                for d in (0, 1):
                    for e in (0, 1):
                        rows.append({
                            "method": "torch", "cell": "rnn",
                            "nonlinearity": ("tanh", "relu")[a],
                            "batch": (1, 3)[b], "steps": (1, 5)[c],
                            "input_size": (1, 4)[d], "hidden_size": (1, 5)[e],
                            "with_h0": (a ^ b ^ c ^ d) == 0,
                            "truncate": None if (a ^ b ^ d ^ e) == 0 else 2,
                        })
    return rows


def _shape(B, T, I, H, **kw) -> dict:
    return {"batch": B, "steps": T, "input_size": I, "hidden_size": H, **kw}


def default_table(quick: bool = False) -> list[dict]:
    """The configurations ``run_checks`` runs on the NumPy engine, as keyword dicts.

    Each dict has ``method`` ("torch" or "fd"), ``cell`` and the keyword arguments of
    :func:`check_against_torch` or :func:`check_finite_differences`. LSTM and GRU rows appear
    only when their NumPy modules import; "torch" rows need torch installed, "fd" rows do not.
    Rows of the torch engines come from its hook (see :func:`run_checks`), not from here.
    """
    cells = available_cells()
    table: list[dict] = []
    if "rnn" in cells:
        if quick:
            table += [
                {"method": "torch", "cell": "rnn", "nonlinearity": "tanh",
                 **_shape(3, 5, 4, 5, with_h0=True)},
                {"method": "torch", "cell": "rnn", "nonlinearity": "relu",
                 **_shape(3, 5, 4, 5, with_h0=False, truncate=2)},
                {"method": "torch", "cell": "rnn", "nonlinearity": "tanh",
                 **_shape(1, 1, 1, 1, with_h0=True)},
                {"method": "torch", "cell": "rnn", "nonlinearity": "relu",
                 **_shape(2, 4, 3, 4, num_layers=2, bidirectional=True)},
            ]
        else:
            table += _rnn_grid()
            for k in (0, 1, 3, 5):                   # depths; k = 5 >= T-1 cuts nothing
                table.append({"method": "torch", "cell": "rnn", "nonlinearity": "tanh",
                              **_shape(2, 6, 3, 4, with_h0=True, truncate=k)})
            table += [
                {"method": "torch", "cell": "rnn", "nonlinearity": "tanh",
                 **_shape(2, 4, 3, 4, num_layers=2)},
                {"method": "torch", "cell": "rnn", "nonlinearity": "relu",
                 **_shape(3, 5, 2, 3, num_layers=3, with_h0=False)},
                {"method": "torch", "cell": "rnn", "nonlinearity": "tanh",
                 **_shape(2, 5, 3, 4, bidirectional=True)},
                {"method": "torch", "cell": "rnn", "nonlinearity": "relu",
                 **_shape(2, 4, 3, 4, num_layers=2, bidirectional=True, with_h0=False)},
                {"method": "torch", "cell": "rnn", "nonlinearity": "tanh",
                 **_shape(2, 5, 3, 4, bias=False, truncate=1)},
            ]
        table.append({"method": "fd", "cell": "rnn", "nonlinearity": "tanh",
                      **_shape(2, 3, 2, 3)})
        if not quick:
            table += [
                {"method": "fd", "cell": "rnn", "nonlinearity": "relu",
                 **_shape(2, 3, 2, 3, with_h0=False)},
                {"method": "fd", "cell": "rnn", "nonlinearity": "tanh",
                 **_shape(2, 3, 2, 2, num_layers=2, bidirectional=True)},
            ]
    for cell in ("lstm", "gru"):
        if cell not in cells:
            continue
        if quick:
            table.append({"method": "torch", "cell": cell,
                          **_shape(2, 4, 3, 4, num_layers=2, bidirectional=True)})
        else:
            table += [
                {"method": "torch", "cell": cell, **_shape(3, 5, 4, 5)},
                {"method": "torch", "cell": cell, **_shape(3, 5, 4, 5, with_h0=False)},
                {"method": "torch", "cell": cell, **_shape(1, 1, 1, 1)},
                {"method": "torch", "cell": cell, **_shape(2, 6, 3, 4, truncate=0)},
                {"method": "torch", "cell": cell, **_shape(2, 6, 3, 4, truncate=2)},
                {"method": "torch", "cell": cell,
                 **_shape(2, 4, 3, 4, num_layers=2, with_h0=False)},
                {"method": "torch", "cell": cell,
                 **_shape(2, 4, 3, 4, num_layers=3, bidirectional=True)},
                {"method": "torch", "cell": cell, **_shape(2, 4, 3, 4, bias=False)},
            ]
        table.append({"method": "fd", "cell": cell, **_shape(2, 3, 2, 3)})
        if not quick:
            table.append({"method": "fd", "cell": cell,
                          **_shape(2, 3, 2, 2, num_layers=2, bidirectional=True,
                                   with_h0=False)})
    return table


def run_config(config: dict) -> CheckRow:
    """Run one ``default_table`` entry."""
    kw = dict(config)
    method = kw.pop("method")
    cell = kw.pop("cell")
    if method == "torch":
        return check_against_torch(cell, **kw)
    if method == "fd":
        return check_finite_differences(cell, **kw)
    raise ValueError(f"expected method 'torch' or 'fd' in a table entry, got {method!r}")


def torch_engine_rows(quick: bool = False) -> list[CheckRow]:
    """Rows from the torch engines' optional hook ``bptt.engine.torch.check.rows(quick)``.

    Absent package or module: no rows, and the torch package is not even imported (it may be
    half-written). A hook module that exists but fails to import is an error.
    """
    name = "bptt.engine.torch.check"
    if name not in sys.modules:
        package = importlib.util.find_spec("bptt.engine.torch")
        locations = [] if package is None else (package.submodule_search_locations or [])
        if not any(Path(d, "check.py").is_file() for d in locations):
            return []
    hook = importlib.import_module(name)
    rows = getattr(hook, "rows", None)
    return list(rows(quick)) if callable(rows) else []


def run_checks(quick: bool = False, cells=None) -> list[CheckRow]:
    """Every row of :func:`default_table` plus the torch engines' hook rows, for ``cells``
    (default: every cell whose NumPy module imports)."""
    if cells is not None:
        cells = list(dict.fromkeys(cells))
        for cell in cells:
            why = cell_unavailable(cell)
            if why is not None:
                raise ValueError(f"expected cell {cell!r} to be available, got: {why}")
    wanted = set(CELLS if cells is None else cells)
    rows = [run_config(c) for c in default_table(quick) if c["cell"] in wanted]
    rows += [r for r in torch_engine_rows(quick) if r.cell in wanted]
    return rows


def _fmt_error(e: float | None) -> str:
    return "-" if e is None else f"{e:.1e}"


def format_table(rows: list[CheckRow]) -> str:
    """Aligned columns, errors as %.1e, and a last line counting the rows over tolerance."""
    header = ("cell", "engine", "method", "nonlin", "B", "T", "I", "H", "L", "bidir", "h0",
              "trunc", "bias", *ERROR_COLUMNS, "worst", "tol", "ok")
    lines = [header]
    for r in rows:
        lines.append((
            r.cell, r.engine, r.method, r.nonlinearity, str(r.batch), str(r.steps),
            str(r.input_size), str(r.hidden_size), str(r.layers),
            "yes" if r.bidirectional else "no", "yes" if r.with_h0 else "no",
            "-" if r.truncate is None else str(r.truncate), "yes" if r.bias else "no",
            *(_fmt_error(getattr(r, c)) for c in ERROR_COLUMNS), _fmt_error(r.worst),
            f"{r.tolerance:.0e}", "ok" if r.ok else "FAIL",
        ))
    text_cols = 4                                    # left-aligned; numbers right-aligned
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for line in lines:
        cells = [v.ljust(w) if i < text_cols else v.rjust(w)
                 for i, (v, w) in enumerate(zip(line, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
    by_method: dict[str, set] = {}
    for r in rows:
        by_method.setdefault(r.method, set()).add(r.tolerance)
    tols = {t for ts in by_method.values() for t in ts} or {TOLERANCE["float64"]}
    if len(tols) == 1:
        tol = f"{tols.pop():.0e}"
    else:
        tol = "their tolerance (" + ", ".join(
            f"{m} {'/'.join(f'{t:.0e}' for t in sorted(ts))}" for m, ts in by_method.items()
        ) + ")"
    bad = sum(not r.ok for r in rows)
    if bad:
        out.append(f"{bad} of {len(rows)} rows over {tol}")
    else:
        out.append(f"{len(rows)} rows, all under {tol}")
    return "\n".join(out)
