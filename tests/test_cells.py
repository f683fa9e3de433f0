"""The cell registry: one description per cell kind, and the public <-> engine state forms."""

from __future__ import annotations

import numpy as np
import pytest

from bptt.cells import CELL_NAMES, CELLS, get_cell


def test_registry_describes_every_cell_once():
    assert CELL_NAMES == ("rnn", "lstm", "gru")
    assert {c: CELLS[c].num_gates for c in CELL_NAMES} == {"rnn": 1, "lstm": 4, "gru": 3}
    assert CELLS["lstm"].gates == ("i", "f", "g", "o")     # torch's gate order
    assert CELLS["gru"].gates == ("r", "z", "n")
    assert [c for c in CELL_NAMES if CELLS[c].paired_state] == ["lstm"]
    assert [c for c in CELL_NAMES if CELLS[c].takes_nonlinearity] == ["rnn"]
    assert get_cell(CELLS["gru"]) is CELLS["gru"]


def test_unknown_cell_names_what_was_expected():
    with pytest.raises(ValueError, match=r"expected cell one of 'rnn', 'lstm', 'gru', got 'lsmt'"):
        get_cell("lsmt")


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_state_parts_round_trip(cell):
    kind = get_cell(cell)
    parts = tuple(np.full((1, 2, 3), i, dtype=np.float32) for i in range(kind.num_state_parts))
    public = kind.from_parts(parts)
    assert all(a is b for a, b in zip(kind.to_parts(public), parts, strict=True))
    assert (public is parts[0]) != kind.paired_state        # torch's forms: h, or (h, c)
    assert kind.to_parts(None) is None and kind.from_parts(None) is None


def test_state_form_mismatch_is_refused():
    h = np.zeros((1, 2, 3))
    with pytest.raises(ValueError, match=r"expected the LSTM state as a tuple \(h, c\), got an "
                                         r"array of shape \(1, 2, 3\)"):
        get_cell("lstm").to_parts(h)
    with pytest.raises(ValueError, match="expected the GRU state as one array h, got a tuple"):
        get_cell("gru").to_parts((h, h))
