r"""Gradient flow through time: the exact Jacobians dh_T/dh_t of a recurrent layer, by lag.

The gradient a loss at step T sends back to step t is ``dL/dh_t = dL/dh_T . dh_T/dh_t`` with

    dh_T/dh_t = prod_{s=t+1..T} dh_s/dh_{s-1}        (RNN: dh_s/dh_{s-1} = diag(f'(z_s)) W_hh)

so the norm of that product, as a function of the lag k = T - t, says whether the gradient
vanishes (norms -> 0), explodes (norms -> inf) or survives. For the tanh RNN each factor has
``||diag(1 - h_s^2) W_hh|| <= ||W_hh||``, hence ``||dh_T/dh_t|| <= ||W_hh||^k``: small weights
make the gradient vanish at least geometrically.

How the Jacobian is measured (exactly, with the hand-written backward of ``bptt.engine.numpy``):
the layer runs forward once to get every state s_t (h_t, or (h_t, c_t) for the LSTM). For each t
the cell's own ``forward`` runs again over the inputs x_{t+1} .. x_T starting from s_t, on a batch
of H copies of each sequence, and the cell's own ``backward`` runs with no gradient on the outputs
and the upstream gradient ``dh_T = e_j`` (the j-th basis row) on copy j. Backward is linear in
its upstream gradient, so copy j's ``dstate0`` is row j of the Jacobian, ``e_j^T dh_T/dh_t``: the
H copies give the whole H x H matrix at once, with no finite differences and no autograd.

A state of several parts (the LSTM's (h, c), :mod:`bptt.cells`) gives one Jacobian per part,
(dh_T/dh_t, dh_T/dc_t): the main norm reported is the h-part, dh_T/dh_t with c_t held fixed as
its own variable (the gradient reaching h_t along every path that leaves through h_t). The norm
of the whole H x 2H Jacobian dh_T/d(h_t, c_t) is kept too (``state_spectral``): it includes the
cell path c_t -> c_{t+1} -> ... that the forget gates keep open, which is where the LSTM's
memory lives.

Lag 0 is the identity (norm 1) by definition; lags 1 .. T follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .cells import CELLS, NONLINEARITIES, get_cell, layer_suffix
from .engine import layout
from .engine.numpy import stack
from .model import ModelSpec, init_params


# -- parameters and inputs ------------------------------------------------------------------------
def layer_params(params: dict, layer: int = 0, reverse: bool = False,
                 cell: str | None = None) -> dict[str, np.ndarray]:
    """One recurrent layer's weights (``weight_ih``, ``weight_hh``, biases or None, and the own
    parameters of ``cell``, ``CellKind.params``) in float64, under the cell's argument names."""
    s = layer_suffix(layer, int(reverse))
    if f"weight_hh{s}" not in params:
        raise ValueError(f"expected parameters of recurrent layer {s[1:]}, found none")
    lp = layout.layer_params(params, layer, int(reverse), None if cell is None else get_cell(cell))
    return {k: None if v is None else np.array(v, dtype=np.float64) for k, v in lp.items()}


def scale_to_radius(weight_hh: np.ndarray, radius: float) -> np.ndarray:
    """``weight_hh`` with every square gate block rescaled to spectral radius ``radius``."""
    H = weight_hh.shape[1]
    out = np.array(weight_hh, dtype=np.float64)
    for g in range(out.shape[0] // H):
        block = out[g * H:(g + 1) * H]
        rho = float(np.abs(np.linalg.eigvals(block)).max())
        if rho > 0:
            block *= radius / rho
    return out


def fresh_layer(
    cell: str,
    input_size: int,
    hidden_size: int,
    rng: np.random.Generator | int | None = 0,
    *,
    nonlinearity: str = "tanh",
    radius: float | None = None,
    nonnegative: bool = False,
    forget_bias: float | None = None,
) -> dict[str, np.ndarray]:
    """Layer-0 weights of a fresh model (torch's initialisation), in float64.

    ``nonnegative`` replaces W_hh by its entrywise absolute value (before any rescaling);
    ``radius`` rescales every gate block of W_hh to that spectral radius; ``forget_bias``
    (a cell with a forget gate ``f``: the LSTM) sets the forget gate's total bias
    (b_ih + b_hh) to that value, the usual trick (Jozefowicz et al., 2015) to keep the cell
    path open at initialisation.
    """
    spec = ModelSpec(cell=cell, input_size=input_size, hidden_size=hidden_size, output_size=1,
                     nonlinearity=nonlinearity, task="regression")
    lp = layer_params(init_params(spec, "torch", rng, dtype="float64"), cell=cell)
    if nonnegative:
        lp["weight_hh"] = np.abs(lp["weight_hh"])
    if radius is not None:
        lp["weight_hh"] = scale_to_radius(lp["weight_hh"], radius)
    if forget_bias is not None:
        gates = get_cell(cell).gates
        if "f" not in gates:
            raise ValueError(f"expected forget_bias only for an lstm (a cell with a forget "
                             f"gate), got cell {cell!r}")
        H, g = hidden_size, gates.index("f")
        lp["bias_ih"][g * H:(g + 1) * H] = forget_bias
        lp["bias_hh"][g * H:(g + 1) * H] = 0.0
    return lp


def random_inputs(input_size: int, steps: int, batch: int, rng: np.random.Generator | int | None,
                  *, tokens: bool = False, scale: float = 1.0) -> np.ndarray:
    """Time-major random inputs: (T, B, I) N(0, scale^2) floats, or (T, B) uniform token ids."""
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    if tokens:
        return rng.integers(0, input_size, size=(steps, batch))
    return scale * rng.standard_normal((steps, batch, input_size))


def weight_spectrum(cell: str, weight_hh: np.ndarray) -> dict[str, dict]:
    """Per gate block of W_hh, by the registry's gate names: spectral radius (largest
    |eigenvalue|) and singular values."""
    H = weight_hh.shape[1]
    out = {}
    for g, name in enumerate(get_cell(cell).gates):
        block = np.asarray(weight_hh[g * H:(g + 1) * H], dtype=np.float64)
        out[name] = {
            "radius": float(np.abs(np.linalg.eigvals(block)).max()),
            "singular_values": np.linalg.svd(block, compute_uv=False).tolist(),
        }
    return out


# -- the Jacobians --------------------------------------------------------------------------------
def trajectory(cell: str, lp: dict, x: np.ndarray, state0=None, nonlinearity: str = "tanh"):
    """Every state s_0 .. s_T (s_0 = ``state0`` or zeros), each (B, H) or the pair (h, c)."""
    kind = get_cell(cell)
    mod = stack.cell_module(kind)
    T, B = x.shape[:2]
    H = lp["weight_hh"].shape[1]
    parts = kind.to_parts(state0)
    if parts is None:
        parts = tuple(np.zeros((B, H)) for _ in kind.state)
    states = [kind.from_parts(parts)]
    for t in range(T):
        _, parts, _ = mod.forward(x[t:t + 1], parts, **lp, **kind.options(nonlinearity))
        parts = tuple(a.copy() for a in parts)
        states.append(kind.from_parts(parts))
    return states


def jacobians(cell: str, lp: dict, x: np.ndarray, state0=None,
              nonlinearity: str = "tanh") -> dict[str, np.ndarray]:
    """``{"h": J}`` with J[k] = dh_T/dh_{T-k}, shape (T+1, B, H, H), k = 0 .. T (J[0] = I).

    For every further state part (the LSTM's ``"c"``): dh_T/dc_{T-k} (zero at k = 0). Rows
    index h_T, columns the state at T - k. Computed by the cells' own backward (module
    docstring); float64 throughout.
    """
    kind = get_cell(cell)
    mod = stack.cell_module(kind)
    lp = {k: (None if v is None else np.asarray(v, dtype=np.float64)) for k, v in lp.items()}
    x = x if np.issubdtype(np.asarray(x).dtype, np.integer) else np.asarray(x, np.float64)
    T, B = x.shape[:2]
    H = lp["weight_hh"].shape[1]
    states = trajectory(cell, lp, x, state0, nonlinearity)
    eye_rows = np.tile(np.eye(H), (B, 1))                # copy b*H + j carries dh_T = e_j
    # the upstream gradient: dh_T = e_j on copy j, nothing on the other parts
    dstate_n = (eye_rows, *(np.zeros_like(eye_rows) for _ in kind.state[1:]))
    J = {p: np.empty((T + 1, B, H, H)) for p in kind.state}
    for p, Jp in J.items():
        Jp[0] = np.eye(H) if p == "h" else 0.0
    for t in range(T):                                   # lag k = T - t
        sub = np.repeat(x[t:], H, axis=1)                # (T - t, B*H[, I]): H copies each
        s_rep = tuple(np.repeat(a, H, axis=0) for a in kind.to_parts(states[t]))
        _, _, cache = mod.forward(sub, s_rep, **lp, **kind.options(nonlinearity))
        _, dstate0, _ = mod.backward(None, dstate_n, cache)
        for p, d in zip(kind.state, dstate0, strict=True):
            J[p][T - t] = d.reshape(B, H, H)
    return J


def memory_estimate(cell: str, hidden_size: int, input_size: int, steps: int, batch: int):
    """What :func:`jacobians` needs at its peak (a ``bptt.memory.Estimate``): the forward and
    backward of B*H copies over up to T steps, and the Jacobians kept, (T+1, B, H, H) (twice
    for the LSTM)."""
    from .memory import estimate

    spec = ModelSpec(cell=cell, input_size=input_size, hidden_size=hidden_size, output_size=1,
                     task="regression")
    est = estimate(spec, batch_size=batch * hidden_size, num_steps=steps, dtype="float64")
    est.device["jacobians"] = 2 * (steps + 1) * batch * hidden_size ** 2 * 8
    return est


def spectral_norms(J: np.ndarray) -> np.ndarray:
    """Largest singular value of every matrix in a stack (..., m, n)."""
    return np.linalg.svd(J, compute_uv=False)[..., 0]


def frobenius_norms(J: np.ndarray) -> np.ndarray:
    return np.sqrt((J * J).sum(axis=(-2, -1)))


@dataclass
class GradFlow:
    """Norms of dh_T/dh_t for lags 0 .. T on B sequences, and the spectrum of W_hh."""

    label: str
    cell: str
    nonlinearity: str
    spectral: np.ndarray                 # (B, T+1): ||dh_T/dh_{T-k}||_2
    frobenius: np.ndarray                # (B, T+1): ||dh_T/dh_{T-k}||_F
    weights: dict = field(default_factory=dict)        # weight_spectrum(...)
    state_spectral: np.ndarray | None = None           # LSTM: ||dh_T/d(h, c)_{T-k}||_2

    @property
    def lags(self) -> np.ndarray:
        return np.arange(self.spectral.shape[1])

    def typical(self, kind: str = "spectral") -> np.ndarray:
        """The geometric mean over the sequences, per lag (zeros stay zero)."""
        a = getattr(self, kind)
        with np.errstate(divide="ignore"):
            return np.exp(np.log(a).mean(axis=0))

    def to_dict(self) -> dict:
        d = {"label": self.label, "cell": self.cell, "nonlinearity": self.nonlinearity,
             "spectral": self.typical("spectral").tolist(),
             "frobenius": self.typical("frobenius").tolist(), "weights": self.weights}
        if self.state_spectral is not None:
            d["state_spectral"] = self.typical("state_spectral").tolist()
        return d


def analyse(label: str, cell: str, lp: dict, x: np.ndarray, state0=None,
            nonlinearity: str = "tanh") -> GradFlow:
    """Jacobian norms by lag for one layer on inputs ``x`` (T, B[, I])."""
    J = jacobians(cell, lp, x, state0, nonlinearity)
    state = None
    if len(J) > 1:                                       # d h_T / d(every state part)
        state = spectral_norms(np.concatenate(list(J.values()), axis=-1)).T
    kind = get_cell(cell)
    return GradFlow(label, cell, nonlinearity if kind.takes_nonlinearity else "-",
                    spectral_norms(J["h"]).T, frobenius_norms(J["h"]).T,
                    weight_spectrum(cell, lp["weight_hh"]), state)


# -- ready-made comparisons -----------------------------------------------------------------------
def _compare() -> tuple[tuple[str, str, str], ...]:
    """(label, cell, nonlinearity) for every cell of the registry, a cell taking a
    nonlinearity once per nonlinearity: tanh RNN, relu RNN, LSTM, GRU, ..."""
    cases = []
    for kind in CELLS.values():
        if kind.takes_nonlinearity:
            cases += [(f"{nl} {kind.name.upper()}", kind.name, nl) for nl in NONLINEARITIES]
        else:
            cases.append((kind.title, kind.name, "tanh"))
    return tuple(cases)


COMPARE = _compare()


def compare_cells(steps: int = 50, batch: int = 4, hidden_size: int = 32, input_size: int = 4,
                  seed: int = 0, cells=None, radius: float | None = None,
                  forget_bias: float | None = None) -> list[GradFlow]:
    """Fresh models of every cell (:data:`COMPARE`: tanh RNN, relu RNN, LSTM, GRU, ...; torch
    init) on the same random inputs."""
    x = random_inputs(input_size, steps, batch, np.random.default_rng([seed, 1]))
    flows = []
    for label, cell, nl in COMPARE:
        if cells is not None and cell not in cells:
            continue
        lp = fresh_layer(cell, input_size, hidden_size, np.random.default_rng([seed, 2]),
                         nonlinearity=nl, radius=radius,
                         forget_bias=forget_bias if "f" in get_cell(cell).gates else None)
        flows.append(analyse(label, cell, lp, x, nonlinearity=nl))
    return flows


# The demo's cases. Exploding uses a nonnegative W_hh: its largest eigenvalue is then real and
# positive with a positive eigenvector (Perron-Frobenius), the state drifts into the positive
# orthant where relu is the identity, and dh_T/dh_t grows like 1.5^k. A random-sign W_hh at the
# same radius may not explode under relu: relu switches about half the units off at every step,
# and whether the masked products still grow depends on the draw.
DEMO = (
    # label, cell, nonlinearity, W_hh spectral radius, nonnegative W_hh, LSTM forget-gate bias
    ("vanishing: tanh RNN, rho 0.5", "rnn", "tanh", 0.5, False, None),
    ("exploding: relu RNN, |W| rho 1.5", "rnn", "relu", 1.5, True, None),
    ("LSTM, forget bias 1", "lstm", "tanh", None, False, 1.0),
    ("GRU", "gru", "tanh", None, False, None),
)


def demo(steps: int = 50, batch: int = 4, hidden_size: int = 32, input_size: int = 4,
         seed: int = 0) -> list[GradFlow]:
    """Vanishing (tanh, small W_hh), exploding (relu, W_hh at spectral radius 1.5), LSTM, GRU."""
    x = random_inputs(input_size, steps, batch, np.random.default_rng([seed, 1]))
    flows = []
    for label, cell, nl, radius, nonneg, fb in DEMO:
        lp = fresh_layer(cell, input_size, hidden_size, np.random.default_rng([seed, 2]),
                         nonlinearity=nl, radius=radius, nonnegative=nonneg, forget_bias=fb)
        flows.append(analyse(label, cell, lp, x, nonlinearity=nl))
    return flows


def from_checkpoint(ckpt, steps: int = 50, batch: int = 4, seed: int = 0) -> GradFlow:
    """Layer 0 (forward direction) of a checkpoint's model, on random inputs of its kind."""
    spec = ckpt.spec
    lp = layer_params(ckpt.params, 0, cell=spec.cell)
    x = random_inputs(spec.input_size, steps, batch, np.random.default_rng([seed, 1]),
                      tokens=spec.task == "lm")
    label = f"checkpoint {spec.cell}" + (f" ({spec.nonlinearity})"
                                         if spec.kind.takes_nonlinearity else "")
    return analyse(label, spec.cell, lp, x, nonlinearity=spec.nonlinearity)


def table_lags(steps: int) -> list[int]:
    return [k for k in (1, 2, 5, 10, 20, 50, 100, 200) if k < steps] + [steps]


def format_table(flows: list[GradFlow], lags: list[int] | None = None) -> str:
    """A text table: per case, rho(W_hh), ||W_hh||_2 and ||dh_T/dh_t||_2 at a few lags."""
    steps = flows[0].spectral.shape[1] - 1
    lags = lags or table_lags(steps)
    width = max(len(f.label) for f in flows)
    head = f"{'case':<{width}}  {'rho(W)':>7} {'||W||':>7}  " + " ".join(
        f"{'k=' + str(k):>9}" for k in lags)
    lines = [head, "-" * len(head)]
    for f in flows:
        # the gated cells have one block per gate: show the largest
        rho = max(w["radius"] for w in f.weights.values())
        sig = max(w["singular_values"][0] for w in f.weights.values())
        typ = f.typical()
        lines.append(f"{f.label:<{width}}  {rho:7.3f} {sig:7.3f}  "
                     + " ".join(f"{typ[k]:9.2e}" for k in lags))
    return "\n".join(lines)
