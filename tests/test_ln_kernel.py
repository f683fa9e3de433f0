"""The layer-normalised LSTM and GRU in the compiled kernel (``engine/csrc/ln.hpp``): its loops
against the Python path they replace (float64, both engines, one layer and whole stacks), its
rows in ``bptt check``, the cases it leaves to Python (truncation, packed sequences, the kernel
off), and bf16 training through the command line.

Without a built kernel the agreement tests compare the Python path with itself and the kernel
rows say ``no``: the tests still run, and say what they ran.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bptt import checkpoint as ck
from bptt.check import check_against_torch
from bptt.check.ours import reference_params
from bptt.engine import as_numpy, kernel
from bptt.engine.numpy import lngru as np_lngru
from bptt.engine.numpy import lnlstm as np_lnlstm
from bptt.engine.numpy import stack as numpy_stack
from bptt.engine.threads import set_threads, threads
from bptt.engine.torch import lngru as torch_lngru
from bptt.engine.torch import lnlstm as torch_lnlstm
from bptt.engine.torch import stack as torch_stack
from bptt.model import ModelSpec
from conftest import run_cli

LN_CELLS = ("lnlstm", "lngru")
MODULES = {("numpy", "lnlstm"): np_lnlstm, ("numpy", "lngru"): np_lngru,
           ("torch", "lnlstm"): torch_lnlstm, ("torch", "lngru"): torch_lngru}


def rel(a, b) -> float:
    a, b = np.asarray(as_numpy(a)), np.asarray(as_numpy(b))
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def layer_inputs(engine: str, cell: str, T=5, B=3, I=4, H=37, seed=0):
    """One layer's arguments in float64: weights, gains and biases, a float input, initial
    states and upstream gradients on every output and on the final states."""
    rng = np.random.default_rng(seed)
    G = 4 if cell == "lnlstm" else 3
    p = {"weight_ih": rng.normal(size=(G * H, I)), "weight_hh": 0.5 * rng.normal(size=(G * H, H)),
         "bias_ih": rng.normal(size=G * H), "bias_hh": rng.normal(size=G * H),
         "ln_weight_ih": 1 + 0.1 * rng.normal(size=G * H),
         "ln_weight_hh": 1 + 0.1 * rng.normal(size=G * H)}
    if cell == "lnlstm":
        p |= {"ln_weight_c": 1 + 0.1 * rng.normal(size=H), "ln_bias_c": 0.1 * rng.normal(size=H)}
    parts = 2 if cell == "lnlstm" else 1
    arrays = (p, rng.normal(size=(T, B, I)), tuple(rng.normal(size=(B, H)) for _ in range(parts)),
              rng.normal(size=(T, B, H)), tuple(rng.normal(size=(B, H)) for _ in range(parts)))
    if engine == "torch":
        def to(a):
            return torch.from_numpy(a) if isinstance(a, np.ndarray) else a
        p, x, s0, dhs, dn = arrays
        arrays = ({k: to(v) for k, v in p.items()}, to(x), tuple(map(to, s0)), to(dhs),
                  tuple(map(to, dn)))
    return arrays


def run_layer(engine: str, cell: str, off: bool, truncate=None, **kw):
    """forward and backward of one layer, the kernel on or off: (hs, state_n, dx, dstate0,
    grads)."""
    mod = MODULES[engine, cell]
    p, x, s0, dhs, dn = layer_inputs(engine, cell, **kw)
    with kernel.disabled(off):
        hs, state_n, cache = mod.forward(x, s0, **p)
        dx, d0, grads = mod.backward(dhs, dn, cache, truncate=truncate)
    return hs, state_n, dx, d0, grads


def assert_same(a, b, tol):
    hs, sn, dx, d0, grads = a
    assert rel(hs, b[0]) <= tol and rel(dx, b[2]) <= tol
    for u, v in zip((*sn, *d0), (*b[1], *b[3]), strict=True):
        assert rel(u, v) <= tol
    assert grads.keys() == b[4].keys()
    for k in grads:
        assert rel(grads[k], b[4][k]) <= tol, k


# -- the kernel's loops against the Python path ---------------------------------------------------

@pytest.mark.parametrize("engine", ["numpy", "torch"])
@pytest.mark.parametrize("cell", LN_CELLS)
def test_kernel_loops_equal_the_python_path_in_float64(engine, cell):
    """Forward (hs, the final states) and backward (dx, the initial states' gradients, every
    parameter's), H = 37: panels and vectors with a ragged end."""
    assert_same(run_layer(engine, cell, off=False), run_layer(engine, cell, off=True), 1e-12)


@pytest.mark.parametrize("cell", LN_CELLS)
def test_kernel_loops_on_two_threads(cell):
    """The team's schedule: every step's product shared by panels, its rows by rows."""
    was = threads()
    try:
        set_threads(2)
        two = run_layer("numpy", cell, off=False, B=9, H=70)
    finally:
        set_threads(was)
    assert_same(two, run_layer("numpy", cell, off=True, B=9, H=70), 1e-12)


@pytest.mark.parametrize("engine", ["numpy", "torch"])
@pytest.mark.parametrize("cell", LN_CELLS)
def test_whole_stacks_equal_the_python_path(engine, cell):
    """Two bidirectional layers with dropout between them (masks held fixed) and given initial
    states: outputs, final states and every gradient, kernel on and off, float64."""
    stack = {"numpy": numpy_stack, "torch": torch_stack}[engine]
    L, D, T, B, I, H = 2, 2, 6, 3, 4, 7
    spec = ModelSpec(cell=cell, input_size=I, hidden_size=H, output_size=2, num_layers=L,
                     bidirectional=True, task="regression")
    rng = np.random.default_rng(6)
    arrays = {k: v for k, v in reference_params(spec, 1).items()}
    arrays |= {"x": rng.normal(size=(T, B, I)), "dout": rng.normal(size=(T, B, D * H)),
               "mask": (rng.random((T, B, D * H)) > 0.3) / 0.7}
    parts = len(spec.kind.state)
    hx = [rng.normal(size=(L * D, B, H)) for _ in range(parts)]
    dh_n = [rng.normal(size=(L * D, B, H)) for _ in range(parts)]
    if engine == "torch":
        arrays = {k: torch.from_numpy(v) for k, v in arrays.items()}
        hx, dh_n = [torch.from_numpy(a) for a in hx], [torch.from_numpy(a) for a in dh_n]
    hx, dh_n = spec.kind.from_parts(hx), spec.kind.from_parts(dh_n)
    got = {}
    for off in (False, True):
        with kernel.disabled(off):
            out, h_n, cache = stack.forward(cell, arrays, arrays["x"], hx, num_layers=L,
                                            bidirectional=True, dropout=0.3, training=True,
                                            masks=[arrays["mask"]])
            dx, dhx, grads = stack.backward(arrays["dout"], dh_n, cache)
            got[off] = (out, [*spec.kind.to_parts(h_n)], dx, [*spec.kind.to_parts(dhx)], grads)
    (o1, s1, x1, d1, g1), (o0, s0, x0, d0, g0) = got[False], got[True]
    assert rel(o1, o0) <= 1e-12 and rel(x1, x0) <= 1e-12
    assert all(rel(a, b) <= 1e-12 for a, b in zip(s1 + d1, s0 + d0, strict=True))
    assert g1.keys() == g0.keys()
    assert all(rel(g1[k], g0[k]) <= 1e-12 for k in g0), {k: rel(g1[k], g0[k]) for k in g0}


# -- what stays on the Python path ---------------------------------------------------------------

@pytest.mark.parametrize("engine", ["numpy", "torch"])
@pytest.mark.parametrize("cell", LN_CELLS)
def test_truncation_falls_back_to_the_python_loop(engine, cell, monkeypatch):
    """A truncated backward never calls the kernel's backward loop, and agrees with the
    kernel off throughout."""
    def refuse(*args, **kw):
        raise AssertionError("the kernel's backward ran a truncated backward")

    monkeypatch.setattr(kernel, "ln_backward", refuse)
    assert_same(run_layer(engine, cell, off=False, truncate=2),
                run_layer(engine, cell, off=True, truncate=2), 1e-12)


@pytest.mark.parametrize("cell", LN_CELLS)
def test_packed_sequences_fall_back_to_the_python_loop(cell, monkeypatch):
    """The torch engine's packed sequences (rows ending early) stay in Python."""
    def refuse(*args, **kw):
        raise AssertionError("the kernel ran packed sequences")

    monkeypatch.setattr(kernel, "ln_forward", refuse)
    monkeypatch.setattr(kernel, "ln_backward", refuse)
    p, x, s0, dhs, dn = layer_inputs("torch", cell)
    mod = MODULES["torch", cell]
    hs, _, cache = mod.forward(x, s0, **p, batch_sizes=(3, 3, 2, 2, 1))
    mod.backward(dhs, dn, cache)
    assert hs[-1, 1:].abs().max() == 0                   # rows past their end stay zero


# -- bptt check ----------------------------------------------------------------------------------

@pytest.mark.parametrize("engine", ["numpy", "torch"])
@pytest.mark.parametrize("cell", LN_CELLS)
def test_check_rows_run_the_kernel(engine, cell):
    row = check_against_torch(cell, engine=engine, batch=3, steps=5, input_size=4,
                              hidden_size=5, num_layers=2, bidirectional=True)
    assert row.ok and row.worst <= 1e-9, row
    from bptt.check.rows import _rows

    marked = [r for r in _rows(True, {cell}, True) if r.cell == cell]
    assert marked and all(r.kernel == kernel.enabled() for r in marked)


@pytest.mark.parametrize("cell", LN_CELLS)
def test_a_broken_kernel_fails_its_rows(cell, monkeypatch):
    """The kernel rows check the kernel: its backward loop slightly off fails them."""
    if not kernel.enabled():                             # nothing compiled to break
        assert kernel.status().startswith(("not available", "off"))
        return
    real = kernel.ln_backward

    def broken(*args, out, **kw):
        real(*args, out=out, **kw)
        out[0] *= 1.001                                  # the first step's gradients

    monkeypatch.setattr(kernel, "ln_backward", broken)
    row = check_against_torch(cell, batch=2, steps=3, input_size=2, hidden_size=3)
    assert not row.ok and row.params > 1e-6


# -- bf16 through the command line ---------------------------------------------------------------

@pytest.mark.parametrize("engine", ["numpy", "torch"])
@pytest.mark.parametrize("cell", LN_CELLS)
def test_bf16_trains_through_the_cli(engine, cell, tmp_path, capsys, hello_corpus):
    run = tmp_path / "run"
    rc, out, err = run_cli(capsys, "train", "--data", hello_corpus, "--out", run, "--cell", cell,
                           "--engine", engine, "--precision", "bf16", "--epochs", "2",
                           "--hidden-size", "16", "--batch-size", "4", "--num-steps", "6",
                           "--optimizer", "adam", "--lr", "0.02", "--sample-every", "0",
                           "--progress", "log")
    assert rc == 0, err
    saved = ck.load(run / "last.safetensors")
    assert saved.spec.cell == cell and saved.params["weight_hh_l0"].dtype == np.float32
    assert saved.train["epoch"] == 2 and saved.config["precision"] == "bf16"
    assert all(np.isfinite(v).all() for v in saved.params.values())
