"""The training core both jobs share (bptt/training.py): clipping with its norm records, the
divergence test and its snapshot, and the run's arrays into and out of a checkpoint file."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bptt import checkpoint as ck
from bptt import optim, training
from bptt.cells import get_cell
from bptt.engine import get_engine
from bptt.model import ModelSpec, init_params


def _grads(scale: float = 1.0) -> dict:
    rng = np.random.default_rng(0)
    return {"a": scale * rng.standard_normal((3, 4)), "b": scale * rng.standard_normal(5)}


def _norm(arrays: dict) -> float:
    return math.sqrt(sum(float((v * v).sum()) for v in arrays.values()))


@pytest.mark.parametrize("clip, mode", [(None, "norm"), (0.5, "norm"), (0.1, "value"),
                                        (1e6, "norm"), (1e6, "value")])
def test_clip_and_step_clips_steps_and_reports_the_norms(clip, mode):
    grads = _grads(3.0)
    raw = {k: v.copy() for k, v in grads.items()}
    params = {k: np.zeros_like(v) for k, v in grads.items()}
    before, after = training.clip_and_step(optim.SGD(lr=1.0), params, grads, clip, mode,
                                           measure_clipped=True)
    assert float(before) == pytest.approx(_norm(raw), rel=1e-12)
    for k in grads:                                  # SGD took the clipped gradients
        np.testing.assert_array_equal(params[k], -grads[k])
    if clip is None:
        assert after is None
        np.testing.assert_array_equal(grads["a"], raw["a"])
    else:
        assert float(after) == pytest.approx(_norm(grads), rel=1e-12)
    if clip is not None and mode == "value":
        assert all(np.abs(g).max() <= clip for g in grads.values())
    rec = training.norm_record(float(before), None if after is None else float(after), clip, mode)
    if clip is None:
        fired = False
    elif mode == "norm":
        fired = _norm(raw) > clip
    else:
        fired = any(np.abs(g).max() > clip for g in raw.values())
    assert rec["clipped"] is fired
    assert rec["grad_norm"] == float(before)
    if clip is not None and mode == "norm" and fired:
        assert rec["grad_norm_clipped"] == pytest.approx(clip, rel=1e-6)


def test_unmeasured_norm_clipping_records_the_threshold():
    """The language model does not measure the norm after norm clipping: its step line says
    min(before, clip)."""
    grads = _grads(3.0)
    before, after = training.clip_and_step(optim.SGD(lr=0.1), {k: v * 0 for k, v in
                                                               grads.items()}, grads, 1.0)
    assert after is None
    assert training.norm_record(float(before), after, 1.0, "norm") == {
        "grad_norm": float(before), "grad_norm_clipped": 1.0, "clipped": True}
    assert training.norm_record(0.25, None, 1.0, "norm")["grad_norm_clipped"] == 0.25
    assert training.norm_record(0.25, None, None, "value") == {
        "grad_norm": 0.25, "grad_norm_clipped": 0.25, "clipped": False}
    assert training.norm_threshold(1.0, "norm") == 1.0
    assert training.norm_threshold(1.0, "value") is None
    assert training.norm_threshold(None, "norm") is None
    with pytest.raises(ValueError, match="expected clip mode 'norm' or 'value', got 'max'"):
        training.clip_and_step(optim.SGD(), {}, _grads(), 1.0, "max")


def test_sound_refuses_nan_inf_large_losses_and_nonfinite_parameters():
    assert training.sound(1.0, 2.0)
    assert training.sound(2.0, 2.0)
    for bad in (2.5, math.nan, math.inf):
        assert not training.sound(bad, 2.0)
    assert training.sound(1.0, 2.0, {"w": np.ones(3)})
    assert not training.sound(1.0, 2.0, {"w": np.array([1.0, np.nan])})
    assert not training.sound(1.0, math.inf, {"w": np.array([np.inf])})


def test_a_snapshot_restores_parameters_optimizer_and_state():
    params = {k: v.copy() for k, v in _grads().items()}
    opt = optim.Adam(lr=0.1)
    opt.step(params, _grads())
    snap = training.Snapshot.take(params, opt, state="carried")
    kept = {k: v.copy() for k, v in params.items()}
    m = opt.state["exp_avg.a"].copy()
    for _ in range(2):                               # the steps a divergence undoes
        opt.step(params, _grads(10.0))
    assert opt.state["step"] == 3
    assert snap.restore(params, opt) == "carried"
    assert opt.state["step"] == 1
    np.testing.assert_array_equal(opt.state["exp_avg.a"], m)
    for k in kept:
        np.testing.assert_array_equal(params[k], kept[k])


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_the_run_goes_into_a_checkpoint_file_and_back(tmp_path, cell):
    spec = ModelSpec(cell=cell, input_size=1, hidden_size=4, output_size=1, num_layers=2,
                     task="regression")
    engine = get_engine("numpy", spec, dtype="float64")
    params = engine.from_numpy(init_params(spec, "torch", np.random.default_rng(1),
                                           dtype="float64"))
    opt = optim.Adam(lr=0.01)
    X = np.random.default_rng(2).standard_normal((3, 5, 1))
    state = engine.begin_state(3)
    for _ in range(2):
        _, grads, state = engine.loss_and_grads(params, X, X, state, training=True)
        opt.step(params, grads)

    ckpt = training.to_checkpoint(spec, engine, params, opt, state, train={"iterations": 2},
                                  config={"kind": "test"})
    assert ckpt.train == {"iterations": 2, "optim_scalars": {"step": 2}}
    assert set(ckpt.optim) == {k for k in opt.state if k != "step"}
    assert len(ckpt.state) == get_cell(cell).num_state_parts     # (h, c) or (h,)
    back = ck.load(ck.save(ckpt, tmp_path / "last.safetensors"))

    fresh = optim.Adam(lr=0.01)
    training.restore_optimizer(engine, fresh, back)
    assert fresh.state.keys() == opt.state.keys() and fresh.state["step"] == 2
    for k, v in opt.state.items():
        np.testing.assert_array_equal(fresh.state[k], v)
    carried = training.state_from_parts(engine, spec.cell, back.state)
    for a, b in zip(spec_parts(cell, carried), spec_parts(cell, state), strict=True):
        np.testing.assert_array_equal(a, b)
    assert training.state_parts(engine, spec.cell, None) is None


def spec_parts(cell: str, state) -> tuple:
    """The public state (h, or the LSTM's pair (h, c)) as a tuple, checked for its form."""
    if get_cell(cell).paired_state:
        assert isinstance(state, tuple) and len(state) == 2
        return state
    assert isinstance(state, np.ndarray)
    return (state,)
