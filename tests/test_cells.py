"""The cell registry: one description per cell kind, and the public <-> engine state forms."""

from __future__ import annotations

import numpy as np
import pytest

from bptt.cells import CELL_NAMES, CELLS, get_cell


def test_registry_describes_every_cell_once():
    assert CELL_NAMES == ("rnn", "lstm", "gru", "lnlstm", "lngru")
    assert {c: CELLS[c].num_gates for c in CELL_NAMES} == {"rnn": 1, "lstm": 4, "gru": 3,
                                                          "lnlstm": 4, "lngru": 3}
    assert CELLS["lstm"].gates == ("i", "f", "g", "o")     # torch's gate order
    assert CELLS["gru"].gates == ("r", "z", "n")
    assert CELLS["lnlstm"].gates == CELLS["lstm"].gates and CELLS["lngru"].gates == ("r", "z", "n")
    assert [c for c in CELL_NAMES if CELLS[c].paired_state] == ["lstm", "lnlstm"]
    assert [c for c in CELL_NAMES if CELLS[c].takes_nonlinearity] == ["rnn"]
    assert [c for c in CELL_NAMES if CELLS[c].torch_name is None] == ["lnlstm", "lngru"]
    assert get_cell(CELLS["gru"]) is CELLS["gru"]


def test_unknown_cell_names_what_was_expected():
    with pytest.raises(ValueError, match=r"expected cell one of 'rnn', 'lstm', 'gru', 'lnlstm', "
                                         r"'lngru', got 'lsmt'"):
        get_cell("lsmt")


def test_the_layer_norm_parameters_are_declared_in_torch_style():
    """The layer-normalised cells declare their own parameters once: names in torch's style
    with the layer's suffix, lengths in units of H, gains 1 and biases 0 at initialisation."""
    def declared(cell):
        return [(p.key, p.param_name("_l1_reverse"), p.blocks, p.fill, p.bias)
                for p in CELLS[cell].params]

    assert declared("lnlstm") == [
        ("ln_weight_ih", "layernorm_ih_l1_reverse.weight", 4, 1.0, False),
        ("ln_weight_hh", "layernorm_hh_l1_reverse.weight", 4, 1.0, False),
        ("ln_weight_c", "layernorm_c_l1_reverse.weight", 1, 1.0, False),
        ("ln_bias_c", "layernorm_c_l1_reverse.bias", 1, 0.0, True)]
    assert declared("lngru") == [
        ("ln_weight_ih", "layernorm_ih_l1_reverse.weight", 3, 1.0, False),
        ("ln_weight_hh", "layernorm_hh_l1_reverse.weight", 3, 1.0, False)]
    assert all(not CELLS[c].params for c in ("rnn", "lstm", "gru"))
    kind = CELLS["lnlstm"]
    assert kind.param_name("ln_weight_c", "_l0") == "layernorm_c_l0.weight"
    assert kind.param_name("weight_hh", "_l0") == "weight_hh_l0"      # torch's four as they are


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
