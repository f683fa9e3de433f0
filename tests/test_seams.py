"""The seams of the engine layer: every registered cell has a NumPy and a torch module keeping
the cell contract, and every engine keeps the Engine contract (bptt.engine.protocol), each
checked by signature and by a real call."""

from __future__ import annotations

import importlib
import inspect

import numpy as np
import pytest
import torch

from bptt.cells import CELL_NAMES, get_cell
from bptt.engine import ENGINES, get_engine, layout
from bptt.engine.numpy import stack as numpy_stack
from bptt.engine.numpy.model import NumpyEngine
from bptt.engine.protocol import CellModule, Engine
from bptt.engine.torch import stack as torch_stack
from bptt.engine.torch import unrolled
from bptt.engine.torch.model import TORCH_ENGINES
from bptt.model import ModelSpec, init_params

PACKAGES = {"numpy": numpy_stack, "torch": torch_stack}


def assert_signature(impl, proto, what: str) -> None:
    """``impl`` takes the protocol's parameters, in order, of the same kinds and with defaults
    where the protocol has them; any further parameter is optional."""
    want = list(inspect.signature(proto).parameters.values())[1:]        # without self
    got = list(inspect.signature(impl).parameters.values())
    assert [p.name for p in got[:len(want)]] == [p.name for p in want], what
    for w, g in zip(want, got, strict=False):
        assert g.kind == w.kind, f"{what}: {g.name} is {g.kind}, expected {w.kind}"
        assert (g.default is inspect.Parameter.empty) == (w.default is inspect.Parameter.empty), \
            f"{what}: {g.name} default"
    for extra in got[len(want):]:
        assert extra.default is not inspect.Parameter.empty, f"{what}: {extra.name} required"


def _as(engine: str, a):
    return torch.tensor(a) if engine == "torch" and a is not None else a


# -- cells ------------------------------------------------------------------------------------

@pytest.mark.parametrize("engine", sorted(PACKAGES))
@pytest.mark.parametrize("cell", CELL_NAMES)
def test_every_cell_has_a_module_keeping_the_cell_contract(engine, cell):
    kind = get_cell(cell)
    mod = PACKAGES[engine].cell_module(cell)
    assert mod.__name__ == f"bptt.engine.{engine}.{cell}"
    assert isinstance(mod, CellModule)
    assert mod.KIND is kind
    for name in ("forward", "backward", "step"):
        assert_signature(getattr(mod, name), getattr(CellModule, name), f"{mod.__name__}.{name}")
    for name in ("forward", "step"):                     # the registry's options, both engines
        params = inspect.signature(getattr(mod, name)).parameters
        assert set(kind.options()) <= set(params), f"{mod.__name__}.{name}"
    assert issubclass(mod.Cache, tuple) and hasattr(mod.Cache, "_fields")  # a NamedTuple
    if engine == "torch":
        assert "fp32" in mod.PRECISIONS

    # a real call: forward, backward and step on state tuples
    T, B, I, H, G = 3, 2, 4, 5, kind.num_gates
    rng = np.random.default_rng(0)
    w = {"weight_ih": 0.3 * rng.standard_normal((G * H, I)),
         "weight_hh": 0.3 * rng.standard_normal((G * H, H)),
         "bias_ih": rng.standard_normal(G * H), "bias_hh": rng.standard_normal(G * H)}
    for p in kind.params:                                # the cell's own, by their keywords
        w[p.key] = p.fill + 0.3 * rng.standard_normal(p.blocks * H)
    w = {k: _as(engine, v) for k, v in w.items()}
    x = _as(engine, rng.standard_normal((T, B, I)))
    state0 = tuple(_as(engine, rng.standard_normal((B, H))) for _ in kind.state)
    hs, state_n, cache = mod.forward(x, state0, **w, **kind.options())
    assert isinstance(cache, mod.Cache)
    assert tuple(hs.shape) == (T, B, H) and len(state_n) == kind.num_state_parts
    dstate_n = tuple(_as(engine, np.ones((B, H))) for _ in kind.state)
    dx, dstate0, grads = mod.backward(_as(engine, np.ones((T, B, H))), dstate_n, cache, 1)
    assert tuple(dx.shape) == (T, B, I) and len(dstate0) == kind.num_state_parts
    assert set(grads) == set(w)
    new = mod.step(x[0], state0, **w, **kind.options())
    assert isinstance(new, tuple) and len(new) == kind.num_state_parts
    for a, b in zip(new, state_n if T == 1 else mod.forward(x[:1], state0, **w,
                                                            **kind.options())[1], strict=True):
        assert np.allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)


def test_every_cell_has_an_autograd_reference_step():
    assert set(unrolled.STEPS) == set(CELL_NAMES)


def test_cell_modules_are_resolved_once(monkeypatch):
    """The look-up that the stacks and engines do on every call never reaches importlib once
    a module is known (torch.compile breaks its graph on import_module)."""
    for cell in CELL_NAMES:
        for pkg in PACKAGES.values():
            pkg.cell_module(cell)

    def refuse(name, package=None):
        raise AssertionError(f"imported {name} on a hot path")

    monkeypatch.setattr(importlib, "import_module", refuse)
    for cell in CELL_NAMES:
        assert layout.cell_module("bptt.engine.numpy", cell).KIND is get_cell(cell)
        assert torch_stack.cell_module(get_cell(cell)).KIND is get_cell(cell)


# -- engines ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ENGINES)
@pytest.mark.parametrize("cell", CELL_NAMES)
def test_every_engine_keeps_the_engine_contract(name, cell):
    spec = ModelSpec(cell=cell, input_size=6, hidden_size=4, output_size=6, num_layers=2)
    if name == "torch-builtin" and spec.kind.torch_name is None:   # torch.nn has no such cell
        with pytest.raises(ValueError, match=rf"torch-builtin engine, got '{cell}' \(torch has "
                                             rf"no {spec.kind.title}\); use the 'torch' engine"):
            get_engine(name, spec, device="cpu", dtype="float64")
        return
    engine = get_engine(name, spec, device="cpu", dtype="float64")
    assert isinstance(engine, Engine)
    for method in ("from_numpy", "to_numpy", "begin_state", "state_from_numpy",
                   "state_to_numpy", "detach_state", "scalar", "loss_and_grads", "forward"):
        assert_signature(getattr(engine, method), getattr(Engine, method), f"{name}.{method}")
    assert engine.name == name and engine.spec is spec
    assert str(engine.device) == "cpu"

    # a real call through every method
    numpy_params = init_params(spec, rng=0, dtype="float64")
    params = engine.from_numpy(numpy_params)
    back = engine.to_numpy(params)
    assert set(back) == set(numpy_params)
    assert all(np.array_equal(np.asarray(back[k]), v) for k, v in numpy_params.items())
    state = engine.begin_state(3)
    parts = spec.kind.to_parts(state)
    assert [tuple(p.shape) for p in parts] == [(2, 3, 4)] * spec.kind.num_state_parts
    state = engine.state_from_numpy(spec.kind.from_parts(
        tuple(np.full((2, 3, 4), 0.1) for _ in spec.kind.state)))
    X = np.random.default_rng(1).integers(0, 6, size=(3, 5))
    Y = np.roll(X, -1, axis=1)
    loss, grads, state_n = engine.loss_and_grads(params, X, Y, state, truncate=None,
                                                 training=True, rng=None)
    assert np.isfinite(engine.scalar(loss)) and set(grads) == set(numpy_params)
    state_n = engine.detach_state(state_n)
    out, state_f = engine.forward(params, X, state)
    assert tuple(out.shape) == (3, 5, 6)
    on_host = engine.state_to_numpy(state_f)
    for a, b in zip(spec.kind.to_parts(on_host), spec.kind.to_parts(engine.state_to_numpy(
            state_n)), strict=True):
        assert np.allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls", [NumpyEngine, *TORCH_ENGINES.values()])
def test_unknown_engine_arguments_are_errors(cls):
    with pytest.raises(TypeError, match="devise"):
        cls(ModelSpec(), devise="cpu")


def test_numpy_engine_checks_the_parameters_it_is_given():
    spec = ModelSpec(input_size=5, hidden_size=3, output_size=5)
    params = init_params(spec, rng=0)
    engine = NumpyEngine(spec)
    with pytest.raises(ValueError, match=r"missing \['head.bias'\]"):
        engine.from_numpy({k: v for k, v in params.items() if k != "head.bias"})
    with pytest.raises(ValueError, match=r"expected weight_hh_l0 of shape \(3, 3\)"):
        engine.from_numpy(params | {"weight_hh_l0": np.zeros((3, 4))})
    with pytest.raises(ValueError, match="expected device 'cpu' for the numpy engine"):
        NumpyEngine(spec, device="cuda")


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_one_step_fast_path_of_the_torch_engine(cell):
    """TorchEngine.forward over one step runs the cell's step per layer: the sequence forward's
    logits and state, token by token, for every cell."""
    spec = ModelSpec(cell=cell, input_size=6, hidden_size=5, output_size=6, num_layers=2)
    engine = get_engine("torch", spec, device="cpu", dtype="float64")
    params = engine.from_numpy(init_params(spec, rng=3, dtype="float64"))
    X = np.random.default_rng(4).integers(0, 6, size=(2, 4))
    whole, whole_state = engine.forward(params, X)
    state, rows = None, []
    for t in range(X.shape[1]):
        y, state = engine.forward(params, X[:, t:t + 1], state)
        rows.append(y[:, 0])
    assert torch.allclose(torch.stack(rows, dim=1), whole, rtol=1e-12, atol=1e-13)
    for a, b in zip(spec.kind.to_parts(state), spec.kind.to_parts(whole_state), strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-13)


def test_a_cells_own_parameters_reach_the_model_and_the_layout(monkeypatch):
    """Parameters a cell declares in the registry (``CellKind.params``) are named, shaped,
    initialised, checked and handed to the cell by the model and the layout, for any cell."""
    from bptt import cells
    from bptt.model import check_params, param_fills, param_shapes

    toy = cells.CellKind("toy", "toy cell", gates=("a", "b"), params=(
        cells.CellParam("norm_gain", "norm{}.weight", blocks=2, fill=1.0),
        cells.CellParam("norm_bias", "norm{}.bias", blocks=1, fill=0.0, bias=True)))
    monkeypatch.setitem(cells.CELLS, "toy", toy)
    spec = ModelSpec(cell="toy", input_size=3, hidden_size=4, output_size=2, num_layers=2,
                     bidirectional=True, task="regression")
    shapes = param_shapes(spec)
    assert shapes["norm_l1_reverse.weight"] == (8,) and shapes["norm_l0.bias"] == (4,)
    names = layout.param_names(2, True, True, toy)
    assert names == [k for k in shapes if not k.startswith("head.")]
    params = init_params(spec, rng=0)
    assert (params["norm_l1.weight"] == 1).all() and (params["norm_l0_reverse.bias"] == 0).all()
    assert set(param_fills(spec)) == {k for k in shapes if k.startswith("norm")}
    check_params(spec, params)
    lp = layout.layer_params(params, 1, 1, toy)
    assert lp["norm_gain"] is params["norm_l1_reverse.weight"]
    assert toy.param_name("norm_bias", "_l1") == "norm_l1.bias"
    assert toy.param_name("weight_hh", "_l1") == "weight_hh_l1"
    no_bias = param_shapes(ModelSpec(cell="toy", input_size=3, hidden_size=4, bias=False))
    assert "norm_l0.weight" in no_bias and "norm_l0.bias" not in no_bias
    (_, _, _, _, own), = layout.layer_keys(1, toy)
    assert own == (("norm_gain", "norm_l0.weight"), ("norm_bias", "norm_l0.bias"))
    with pytest.raises(ValueError, match=r"expected norm_gain of shape \(8,\) for the toy cell, "
                                         r"got None"):
        layout.check_own_params(toy, 4, {"norm_gain": None})
