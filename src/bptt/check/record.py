"""The record of one check (:class:`CheckRow`), its tolerances and how its errors are measured.

Errors are relative: ``max|ours - ref| / max(max|ref|, tiny)`` per array, then the maximum over
the arrays of a column. A row is ok when its worst error is at most its tolerance (1e-9 in
float64 against autograd, 1e-6 against finite differences).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

METHODS = ("torch", "fd", "gradcheck")
ERROR_COLUMNS = ("out", "h_n", "params", "dx", "dh0")
TOLERANCE = {"float64": 1e-9}   # vs autograd: both sides round at 1e-16, a margin of 1e6
# Central differences with eps = 1e-6 cannot reach 1e-9: each difference quotient carries the
# loss's rounding (~1e-16 per unit of loss) divided by 2 eps, ~1e-10, and an array whose
# gradient is small (a lower layer, a bias) sees that as several 1e-9 relative. A wrong
# gradient is off by far more than 1e-6, so that is the tolerance of the "fd" rows.
FD_TOLERANCE = 1e-6
TINY = float(np.finfo(np.float64).tiny)
# A parameter's error is relative to its own gradient's size, but never to less than this
# fraction of the largest gradient of the row: a gradient that is exactly zero (the gain of a
# layer norm over one unit, whose output is constant) comes back from autograd as rounding
# (~1e-15 of the others), which relative to itself reads 1, and relative to the floor 1e-10.
# Below the floor a parameter is checked to 1e-14 of the largest gradient (the tolerance times
# the floor), which any wrong gradient not itself at rounding level exceeds.
GRAD_FLOOR = 1e-5


@dataclass
class CheckRow:
    """One configuration checked by one method, with its maximum relative errors.

    A stack row checks one recurrent stack; a model row (``embedding`` set, bptt.check.model)
    a whole language model: embedding, stack and head (``tied`` or not) with fixed dropout
    masks, its ``out`` the logits and its loss the cross-entropy.

    ``out``/``h_n``: the forward outputs (every step) and final state(s) (h_n and, for the
    LSTM, c_n); ``params``: the gradient of every parameter (the max over them); ``dx``: the
    input gradient; ``dh0``: the initial-state gradient (h0 and, for the LSTM, c0). A column
    is None where the method does not measure it (finite differences have no forward to
    compare). ``kernel``: the engine ran with its compiled kernel on and the kernel covers the
    row's layers (the RNN, LSTM and GRU without projection, the LN-LSTM and LN-GRU; a truncated
    backward stays Python), or not (the Python path, the reference).
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
    proj_size: int = 0         # > 0: an LSTM whose h is projected to P features
    dtype: str = "float64"
    tolerance: float = TOLERANCE["float64"]
    embedding: int | None = None  # a model-level row: the embedding size E (None: a stack row)
    tied: bool = False            # the head's weight is the embedding's
    dropout: str = "-"            # fixed masks: - none, std a mask per step, var per sequence
    kernel: bool = False          # the compiled kernel was on (bptt.engine.kernel) for the row

    @property
    def worst(self) -> float:
        """The largest measured error of the row (NaN when any of them is NaN)."""
        return max_error(getattr(self, c) for c in ERROR_COLUMNS)

    @property
    def ok(self) -> bool:
        return bool(self.worst <= self.tolerance)  # False for NaN

    def to_dict(self) -> dict:
        d = asdict(self)
        d["worst"] = self.worst
        d["ok"] = self.ok
        return d


# -- errors -------------------------------------------------------------------------------------

def rel_error(ours, ref, floor: float = 0.0) -> float:
    """``max|ours - ref| / max(max|ref|, floor, tiny)``; inf when the shapes differ or ours is
    missing."""
    if ours is None or ref is None:
        return 0.0 if ours is None and ref is None else math.inf
    a = np.asarray(ours, dtype=np.float64)
    b = np.asarray(ref, dtype=np.float64)
    if a.shape != b.shape:
        return math.inf
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), floor, TINY))


def max_error(errors) -> float:
    """The max of the measured (non-None) errors; NaN wins; 0.0 when none is measured."""
    worst = 0.0
    for e in errors:
        if e is None:
            continue
        if math.isnan(e):
            return math.nan
        worst = max(worst, e)
    return worst


def grads_error(ours: dict, ref: dict) -> float:
    """Max relative error over every parameter, each relative to its own gradient's size but
    at least :data:`GRAD_FLOOR` times the row's largest; a missing or unexpected gradient is
    inf."""
    if set(ours) != set(ref):
        return math.inf
    largest = max((float(np.max(np.abs(v))) for v in ref.values() if np.size(v)), default=0.0)
    return max_error(rel_error(ours[k], ref[k], floor=GRAD_FLOOR * largest) for k in ref)


def parts(state) -> tuple:
    """A state as a tuple of arrays: ``(h,)``, or ``(h, c)`` for the LSTM.

    Deliberately lenient (not :func:`bptt.cells.to_parts`): a state of the wrong form must show
    up as an infinite error in the row, not as an exception.
    """
    return tuple(state) if isinstance(state, tuple | list) else (state,)


def parts_error(ours, ref) -> float:
    """Max relative error over the parts of two states; inf when they have different parts."""
    ours, ref = parts(ours), parts(ref)
    if len(ours) != len(ref):
        return math.inf
    return max_error(rel_error(a, b) for a, b in zip(ours, ref, strict=True))
