"""The configurations ``bptt check`` runs, and running them.

:func:`default_table` lists the rows of the NumPy engine as keyword dicts, for every cell of the
registry (``bptt.cells``): the Elman RNN's pruned factorial grid, a set of shapes for the gated
cells, and a few finite-difference rows for each; then the model rows (``"model": True``,
:mod:`bptt.check.model`): the word language model whole, embedding, stack and head, tied or not,
with fixed dropout masks. The torch engine's rows come from :mod:`bptt.check.torch_engine`.
:func:`run_checks` runs both.
"""

from __future__ import annotations

from ..cells import CELL_NAMES, CELLS, get_cell
from ..engine import kernel
from ..errors import has_module
from .model import model_rows, run_model_config
from .record import CheckRow
from .references import check_against_torch, check_finite_differences, has_torch_reference


def _rnn_grid(cell: str) -> list[dict]:
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
                            "method": "torch", "cell": cell,
                            "nonlinearity": ("tanh", "relu")[a],
                            "batch": (1, 3)[b], "steps": (1, 5)[c],
                            "input_size": (1, 4)[d], "hidden_size": (1, 5)[e],
                            "with_h0": (a ^ b ^ c ^ d) == 0,
                            "truncate": None if (a ^ b ^ d ^ e) == 0 else 2,
                        })
    return rows


def _shape(B, T, I, H, **kw) -> dict:
    return {"batch": B, "steps": T, "input_size": I, "hidden_size": H, **kw}


def _nonlinearity_rows(cell: str, quick: bool) -> list[dict]:
    """A cell with a nonlinearity (the Elman RNN): tanh and relu, truncation depths, stacks."""
    def row(method, nonlinearity, **shape):
        return {"method": method, "cell": cell, "nonlinearity": nonlinearity, **shape}

    if quick:
        table = [
            row("torch", "tanh", **_shape(3, 5, 4, 5, with_h0=True)),
            row("torch", "relu", **_shape(3, 5, 4, 5, with_h0=False, truncate=2)),
            row("torch", "tanh", **_shape(1, 1, 1, 1, with_h0=True)),
            row("torch", "relu", **_shape(2, 4, 3, 4, num_layers=2, bidirectional=True)),
        ]
    else:
        table = _rnn_grid(cell)
        for k in (0, 1, 3, 5):                       # depths; k = 5 >= T-1 cuts nothing
            table.append(row("torch", "tanh", **_shape(2, 6, 3, 4, with_h0=True, truncate=k)))
        table += [
            row("torch", "tanh", **_shape(2, 4, 3, 4, num_layers=2)),
            row("torch", "relu", **_shape(3, 5, 2, 3, num_layers=3, with_h0=False)),
            row("torch", "tanh", **_shape(2, 5, 3, 4, bidirectional=True)),
            row("torch", "relu",
                **_shape(2, 4, 3, 4, num_layers=2, bidirectional=True, with_h0=False)),
            row("torch", "tanh", **_shape(2, 5, 3, 4, bias=False, truncate=1)),
        ]
    table.append(row("fd", "tanh", **_shape(2, 3, 2, 3)))
    if not quick:
        table += [
            row("fd", "relu", **_shape(2, 3, 2, 3, with_h0=False)),
            row("fd", "tanh", **_shape(2, 3, 2, 2, num_layers=2, bidirectional=True)),
        ]
    return table


def _gated_rows(cell: str, quick: bool) -> list[dict]:
    """A gated cell (LSTM, GRU): shapes, no initial state, truncation, stacks, no bias."""
    def row(method, **shape):
        return {"method": method, "cell": cell, **shape}

    if quick:
        table = [row("torch", **_shape(2, 4, 3, 4, num_layers=2, bidirectional=True))]
    else:
        table = [
            row("torch", **_shape(3, 5, 4, 5)),
            row("torch", **_shape(3, 5, 4, 5, with_h0=False)),
            row("torch", **_shape(1, 1, 1, 1)),
            row("torch", **_shape(2, 6, 3, 4, truncate=0)),
            row("torch", **_shape(2, 6, 3, 4, truncate=2)),
            row("torch", **_shape(2, 4, 3, 4, num_layers=2, with_h0=False)),
            row("torch", **_shape(2, 4, 3, 4, num_layers=3, bidirectional=True)),
            row("torch", **_shape(2, 4, 3, 4, bias=False)),
        ]
    table.append(row("fd", **_shape(2, 3, 2, 3)))
    if not quick:
        table.append(row("fd", **_shape(2, 3, 2, 2, num_layers=2, bidirectional=True,
                                        with_h0=False)))
    return table


def _projection_rows(cell: str, quick: bool) -> list[dict]:
    """A cell that projects its output (the LSTM's proj_size): h_t = m_t W_hr^T, P < H."""
    def row(method, **shape):
        return {"method": method, "cell": cell, **shape}

    table = [row("torch", **_shape(2, 4, 3, 4, num_layers=2, bidirectional=True, proj_size=2)),
             row("fd", **_shape(2, 3, 2, 3, proj_size=2))]
    if not quick:
        table += [
            row("torch", **_shape(3, 5, 4, 5, proj_size=3)),
            row("torch", **_shape(3, 5, 4, 5, proj_size=1, with_h0=False, bias=False)),
            row("torch", **_shape(2, 6, 3, 4, proj_size=2, truncate=2)),
            row("torch", **_shape(2, 4, 3, 4, num_layers=3, proj_size=3)),
            row("fd", **_shape(2, 3, 2, 3, num_layers=2, bidirectional=True, proj_size=2,
                               with_h0=False)),
        ]
    return table


def default_table(quick: bool = False) -> list[dict]:
    """The configurations ``run_checks`` runs on the NumPy engine, as keyword dicts.

    Each dict has ``method`` ("torch" or "fd"), ``cell`` and the keyword arguments of
    :func:`check_against_torch` or :func:`check_finite_differences`, for every registered cell
    in the registry's order; "torch" rows only for a cell with a torch reference (torch.nn's
    class, or the autograd step of the unrolled loop). "torch" rows need torch installed, "fd"
    rows do not. Rows of the torch engine come from
    :func:`bptt.check.torch_engine.rows`, not from here.
    """
    table: list[dict] = []
    for kind in CELLS.values():
        rows = (_nonlinearity_rows if kind.takes_nonlinearity else _gated_rows)(kind.name, quick)
        if kind.projects:
            rows += _projection_rows(kind.name, quick)
        rows += model_rows(kind.name, quick)
        referenced = has_torch_reference(kind)
        table += [r for r in rows if r["method"] != "torch" or referenced]
    return table


def run_config(config: dict) -> CheckRow:
    """Run one ``default_table`` entry."""
    if config.get("model"):
        return run_model_config(config)
    kw = dict(config)
    method = kw.pop("method")
    cell = kw.pop("cell")
    if method == "torch":
        return check_against_torch(cell, **kw)
    if method == "fd":
        return check_finite_differences(cell, **kw)
    raise ValueError(f"expected method 'torch' or 'fd' in a table entry, got {method!r}")


def run_checks(quick: bool = False, cells=None, torch: bool | None = None) -> list[CheckRow]:
    """Every row of :func:`default_table`, then the torch engine's rows, for ``cells`` (names
    of the registry; default: every cell). ``torch=False`` runs the finite-difference rows
    alone, which need no torch; None (the default): the rows against torch when it is
    installed.

    The rows run the engines as they are installed: with the compiled kernel where it is built
    (``bptt.engine.kernel``; the ``kernel`` column says so). The full table (not ``quick``)
    then runs the quick rows of both engines once more with the kernel off, so that both paths,
    the kernel and the Python code it replaces, are checked to the same tolerances."""
    if torch is None:
        torch = has_module("torch")
    wanted = set(CELL_NAMES if cells is None else (get_cell(c).name for c in cells))
    rows = _rows(quick, wanted, torch)
    if not quick and kernel.enabled():
        with kernel.disabled():
            rows += _rows(True, wanted, torch)
    return rows


def _rows(quick: bool, wanted: set, torch: bool) -> list[CheckRow]:
    """The rows of both engines for the cells ``wanted``, marked with the kernel's state."""
    rows = [run_config(c) for c in default_table(quick)
            if c["cell"] in wanted and (torch or c["method"] != "torch")]
    if torch:
        from . import torch_engine

        rows += [r for r in torch_engine.rows(quick) if r.cell in wanted]
    on = kernel.enabled()
    for r in rows:                  # the kernel runs the layers of these cells, unprojected
        r.kernel = on and (r.cell in kernel.CELL_CODES or r.cell in kernel.LN_CELL_CODES) \
            and not r.proj_size
    return rows
