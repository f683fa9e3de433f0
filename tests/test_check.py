"""``bptt.check`` and ``bptt check``: the verification table and its command."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest

from bptt.cells import CELL_NAMES
from bptt.check import (
    CheckRow,
    check_against_torch,
    check_finite_differences,
    default_table,
    format_table,
    rel_error,
    run_checks,
)
from bptt.engine.numpy import rnn

TORCH_NN_CELLS = ("rnn", "lstm", "gru")


@pytest.fixture
def main(monkeypatch):
    """``bptt.cli.main`` with only the verbs whose modules exist (others are being written)."""
    from bptt import cli

    present = tuple(v for v in cli.VERBS if importlib.util.find_spec(f"bptt.cli.{v}"))
    assert "check" in present
    monkeypatch.setattr(cli, "VERBS", present)
    return cli.main


@pytest.fixture
def broken_rnn_backward(monkeypatch):
    """The RNN backward with dW_hh off by 1e-4 relative: every check must notice."""
    good = rnn.backward

    def broken(*args, **kwargs):
        dx, dh0, grads = good(*args, **kwargs)
        grads["weight_hh"] = grads["weight_hh"] * (1 + 1e-4)
        return dx, dh0, grads

    monkeypatch.setattr(rnn, "backward", broken)


def test_verb_is_registered():
    from bptt import cli

    assert "check" in cli.VERBS


def test_quick_rows_are_all_ok():
    rows = run_checks(quick=True)
    # the torch.nn cells' rows with the projected LSTM's two and the word models': a quick
    # table stays small
    assert 5 <= len([r for r in rows if r.engine == "numpy" and r.cell in TORCH_NN_CELLS]) <= 14
    for cell in set(CELL_NAMES) - set(TORCH_NN_CELLS):   # two numpy rows each: torch, fd
        assert {r.method for r in rows if r.engine == "numpy" and r.cell == cell} == {"torch",
                                                                                     "fd"}
        assert len([r for r in rows if r.engine == "numpy" and r.cell == cell]) == 2
    assert all(r.ok for r in rows), format_table(rows)
    assert {("rnn", "torch"), ("rnn", "fd")} <= {(r.cell, r.method) for r in rows}
    assert any(r.truncate is not None for r in rows)
    assert any(r.bidirectional and r.layers > 1 for r in rows)
    for r in rows:
        tol = 1e-9 if r.method == "torch" else r.tolerance
        assert r.worst <= tol


def test_full_table_size_and_rnn_grid():
    table = default_table()
    rnn_torch = [c for c in table if c["cell"] == "rnn" and c["method"] == "torch"]
    assert 40 <= len(rnn_torch) <= 60
    for key, values in [("nonlinearity", {"tanh", "relu"}), ("batch", {1, 3}), ("steps", {1, 5}),
                        ("input_size", {1, 4}), ("hidden_size", {1, 5}),
                        ("with_h0", {True, False}), ("truncate", {None, 2})]:
        assert values <= {c.get(key) for c in rnn_torch}, key
    quick = default_table(quick=True)
    assert len([c for c in quick if c["cell"] in TORCH_NN_CELLS]) <= 14   # with the projection's
    assert all(len([c for c in quick if c["cell"] == cell]) <= 2
               for cell in set(CELL_NAMES) - set(TORCH_NN_CELLS))


def test_cli_quick_prints_the_table(main, capsys, tmp_path):
    path = tmp_path / "rows.json"
    assert main(["check", "--quick", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["cell", "engine", "method"]
    assert "rows, all under" in out.splitlines()[-1]
    rows = json.loads(path.read_text())
    assert rows and all(r["ok"] for r in rows)
    assert {"out", "h_n", "params", "dx", "dh0", "worst", "method"} <= set(rows[0])


def test_cli_cell_filter(main, capsys):
    assert main(["check", "--quick", "--cell", "rnn"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:-1]
    assert lines and all(line.startswith("rnn") for line in lines)


def test_a_broken_backward_fails_the_check(broken_rnn_backward, main, capsys):
    row = check_against_torch("rnn", nonlinearity="tanh", batch=2, steps=3, input_size=2,
                              hidden_size=3)
    assert not row.ok and row.params == pytest.approx(1e-4, rel=1e-3)
    assert row.out < 1e-15 and row.dx < 1e-12          # the forward and dx are still right
    assert not check_finite_differences("rnn").ok
    assert main(["check", "--quick", "--cell", "rnn"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out
    assert " of " in out.splitlines()[-1] and "rows over" in out.splitlines()[-1]


def test_help_explains_every_column(main, capsys):
    with pytest.raises(SystemExit) as info:
        main(["check", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for word in ("out", "h_n", "params", "dx", "dh0", "worst", "torch", "fd", "gradcheck",
                 "1e-9", "--quick", "--cell", "--json"):
        assert word in text, word


def test_truncation_needs_one_layer_one_direction():
    with pytest.raises(ValueError, match="expected truncate only with num_layers=1"):
        check_against_torch("rnn", batch=1, steps=3, input_size=1, hidden_size=2,
                            num_layers=2, truncate=1)


def test_rel_error_and_worst():
    assert rel_error(np.ones(3), np.ones(3)) == 0.0
    assert rel_error(np.array([1.0, 2.0]), np.array([1.0, 4.0])) == 0.5
    assert rel_error(np.zeros(2), np.zeros(2)) == 0.0
    assert rel_error(np.zeros(2), np.zeros(3)) == math.inf
    base = dict(cell="rnn", engine="numpy", nonlinearity="tanh", batch=1, steps=1,
                input_size=1, hidden_size=1, layers=1, bidirectional=False, with_h0=True,
                truncate=None, method="torch")
    row = CheckRow(**base, out=1e-16, h_n=None, params=2e-10, dx=1e-12, dh0=0.0)
    assert row.worst == 2e-10 and row.ok
    assert not CheckRow(**base, out=math.nan, params=0.0).ok
    assert not CheckRow(**base, params=2e-9).ok
    assert format_table([row]).splitlines()[-1] == "1 rows, all under 1e-09"


def test_a_parameter_is_measured_against_the_rows_largest_gradient_at_least():
    from bptt.check.record import grads_error

    ref = {"w": np.array([0.25, -0.5]), "gain": np.array([-2.2e-16])}   # a zero, rounded
    assert grads_error({"w": ref["w"], "gain": np.zeros(1)}, ref) < 1e-9
    assert rel_error(np.zeros(1), ref["gain"]) == 1.0                 # alone: all of it
    small = {"w": ref["w"], "gain": np.array([3e-7])}                  # a small true gradient
    assert grads_error({"w": ref["w"], "gain": np.array([3.3e-7])}, small) > 1e-3  # 10% off
    assert grads_error({"w": ref["w"], "gain": np.array([3e-7 * (1 + 1e-12)])}, small) < 1e-9
    # the 1x1 LN-LSTM: its cell norm over one unit is constant, its gain's gradient zero
    row = check_against_torch("lnlstm", batch=1, steps=1, input_size=1, hidden_size=1)
    assert row.ok, row


def test_torch_engine_rows_are_included(monkeypatch):
    from bptt.check import rows, torch_engine

    extra = CheckRow(cell="rnn", engine="torch", nonlinearity="tanh", batch=1, steps=2,
                     input_size=1, hidden_size=1, layers=1, bidirectional=False, with_h0=True,
                     truncate=None, method="gradcheck", params=0.0, dx=0.0, dh0=0.0)
    monkeypatch.setattr(torch_engine, "rows", lambda quick: [extra])
    monkeypatch.setattr(rows, "default_table", lambda quick=False: [])
    assert run_checks(quick=True) == [extra]
    assert run_checks(quick=True, cells=["rnn"]) == [extra]


def test_torch_engine_rows_are_present_and_under_tolerance():
    from bptt.check.torch_engine import rows

    got = rows(quick=True)
    assert {r.method for r in got} == {"torch", "gradcheck"}
    assert {r.cell for r in got} == set(CELL_NAMES)
    for cell in CELL_NAMES:                              # every cell both ways
        assert {r.method for r in got if r.cell == cell} == {"torch", "gradcheck"}, cell
    assert all(r.engine == "torch" and r.ok for r in got), [r.to_dict() for r in got if not r.ok]


def test_torch_engine_row_fails_when_its_backward_is_wrong(monkeypatch):
    from bptt.check.torch_engine import gradcheck_row
    from bptt.engine.torch import rnn as torch_rnn

    real = torch_rnn.backward

    def off_by_a_bit(*args, **kwargs):
        dx, dh0, grads = real(*args, **kwargs)
        grads["weight_hh"] = grads["weight_hh"] * 1.001
        return dx, dh0, grads

    monkeypatch.setattr(torch_rnn, "backward", off_by_a_bit)
    assert not check_against_torch("rnn", batch=2, steps=3, input_size=2, hidden_size=3,
                                   engine="torch").ok
    assert not gradcheck_row("rnn").ok


def test_default_table_covers_every_registered_cell():
    from bptt.cells import CELL_NAMES

    for quick in (True, False):
        table = default_table(quick=quick)
        assert [c["cell"] for c in table] == sorted((c["cell"] for c in table),
                                                    key=CELL_NAMES.index)
        for cell in CELL_NAMES:
            assert {c["method"] for c in table if c["cell"] == cell} == {"torch", "fd"}, cell


def test_a_cell_without_a_torch_reference_gets_finite_differences_only(monkeypatch):
    from bptt import cells
    from bptt.check import rows

    lone = cells.CellKind("lone", "no torch.nn twin", gates=("a", "b"))
    monkeypatch.setattr(rows, "CELLS", {**cells.CELLS, "lone": lone})
    table = [c for c in default_table() if c["cell"] == "lone"]
    assert table and {c["method"] for c in table} == {"fd"}


def test_run_checks_rejects_an_unknown_cell():
    with pytest.raises(ValueError, match="expected cell one of 'rnn', 'lstm', 'gru', 'lnlstm', "
                                         "'lngru', got 'elman'"):
        run_checks(quick=True, cells=["elman"])


def test_the_full_check_verifies_the_kernel_and_the_python_path(monkeypatch):
    """With the compiled kernel built, the full table runs it (``kernel`` yes), then its quick
    rows again with the kernel off: the Python path it replaces, to the same tolerances. A
    broken kernel loop shows in the kernel rows alone."""
    from bptt.check import rows, torch_engine
    from bptt.engine import kernel

    table = {False: [{"method": "torch", "cell": "lstm", "batch": 2, "steps": 4,
                      "input_size": 3, "hidden_size": 4, "num_layers": 2}],
             True: [{"method": "fd", "cell": "gru", "batch": 2, "steps": 3, "input_size": 2,
                     "hidden_size": 3}]}
    monkeypatch.setattr(rows, "default_table", lambda quick=False: table[quick])
    monkeypatch.setattr(torch_engine, "rows", lambda quick: [check_against_torch(
        "rnn", engine="torch", batch=2, steps=3, input_size=2, hidden_size=3)])
    got = run_checks(quick=False)
    assert all(r.ok for r in got), format_table(got)
    paths = [(r.cell, r.engine, r.kernel) for r in got]
    if kernel.enabled():
        assert paths == [("lstm", "numpy", True), ("rnn", "torch", True),
                         ("gru", "numpy", False), ("rnn", "torch", False)]
    else:                                         # no kernel built: the Python path alone
        assert paths == [("lstm", "numpy", False), ("rnn", "torch", False)]
    assert "kernel" in format_table(got).splitlines()[0]
    with kernel.disabled():
        assert [r.kernel for r in run_checks(quick=True)] == [False, False]


def test_a_broken_kernel_fails_its_rows(monkeypatch):
    """The kernel rows check the kernel: its LSTM loop computing a wrong state fails them."""
    from bptt.engine import kernel

    if not kernel.enabled():                      # nothing compiled to break: it says why
        assert kernel.status().startswith(("not available", "off"))
        return
    real = kernel.forward

    def broken(kind, x, h0, hs, *args, **kw):
        real(kind, x, h0, hs, *args, **kw)
        hs[-1] *= 1.001                           # the last step's state, slightly off

    monkeypatch.setattr(kernel, "forward", broken)
    row = check_against_torch("lstm", batch=2, steps=3, input_size=2, hidden_size=3)
    assert not row.ok and row.out > 1e-6
