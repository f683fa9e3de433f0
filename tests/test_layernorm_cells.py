"""The layer-normalised LSTM and GRU (``lnlstm``, ``lngru``): hand-written BPTT in both engines
against torch autograd and finite differences, their parameters, and every job through the CLI.

The references: torch.nn.LayerNorm modules written out step by step here (independent of the
package), the check package's unrolled loop under autograd (stacks, directions, truncation),
and central finite differences.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bptt import checkpoint as ck
from bptt.cells import get_cell
from bptt.check import check_against_torch, check_finite_differences
from bptt.check.model import check_model_against_torch, check_model_finite_differences
from bptt.check.ours import reference_params
from bptt.engine import get_engine
from bptt.engine.numpy import lngru as np_lngru
from bptt.engine.numpy import lnlstm as np_lnlstm
from bptt.engine.numpy import stack as numpy_stack
from bptt.engine.torch import lngru as torch_lngru
from bptt.engine.torch import lnlstm as torch_lnlstm
from bptt.engine.torch import stack as torch_stack
from bptt.memory import estimate
from bptt.model import ModelSpec, init_params, param_shapes
from conftest import run_cli

LN_CELLS = ("lnlstm", "lngru")
PLAIN = {"lnlstm": "lstm", "lngru": "gru"}
MODULES = {("numpy", "lnlstm"): np_lnlstm, ("numpy", "lngru"): np_lngru,
           ("torch", "lnlstm"): torch_lnlstm, ("torch", "lngru"): torch_lngru}
TINY = ("--hidden-size", "8", "--batch-size", "4", "--num-steps", "6", "--optimizer", "adam",
        "--lr", "0.02", "--sample-every", "0", "--progress", "log")


def rel(a, b) -> float:
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def spec_of(cell, I=3, H=4, **kw) -> ModelSpec:
    return ModelSpec(cell=cell, input_size=I, hidden_size=H, output_size=2, task="regression",
                     **kw)


# -- one layer against torch.nn.LayerNorm modules, step by step -----------------------------------

def layer_norms(cell: str, params: dict) -> dict[str, torch.nn.LayerNorm]:
    """torch.nn.LayerNorm modules holding a layer's gains and biases: gain only for the
    gate-wide norms (their biases are b_ih, b_hh), gain and bias for the LSTM's cell state."""
    norms = {}
    for part in ("ih", "hh", "c"):
        if f"ln_weight_{part}" not in params:
            continue
        gain = params[f"ln_weight_{part}"]
        norms[part] = torch.nn.LayerNorm(gain.shape[0], bias=part == "c", dtype=torch.float64)
        with torch.no_grad():
            norms[part].weight.copy_(torch.tensor(gain))
            if part == "c":
                norms[part].bias.copy_(torch.tensor(params["ln_bias_c"]))
    return norms


def modules_reference(cell: str, p: dict, ln: dict, x: torch.Tensor, state: tuple) -> tuple:
    """One layer written with torch.nn.LayerNorm modules ``ln``, looped over time."""
    outs = []
    for x_t in x:
        a = ln["ih"](x_t @ p["weight_ih"].T) + p["bias_ih"]
        s = ln["hh"](state[0] @ p["weight_hh"].T) + p["bias_hh"]
        if cell == "lnlstm":
            i, f, g, o = (a + s).chunk(4, dim=1)
            c = torch.sigmoid(f) * state[1] + torch.sigmoid(i) * torch.tanh(g)
            state = (torch.sigmoid(o) * torch.tanh(ln["c"](c)), c)
        else:
            (ar, az, an), (sr, sz, sn) = a.chunk(3, dim=1), s.chunk(3, dim=1)
            r, u = torch.sigmoid(ar + sr), torch.sigmoid(az + sz)
            n = torch.tanh(an + r * sn)                  # r multiplies the normalised s^n
            state = ((1 - u) * n + u * state[0],)
        outs.append(state[0])
    return torch.stack(outs), state


@pytest.mark.parametrize("engine", ["numpy", "torch"])
@pytest.mark.parametrize("cell", LN_CELLS)
def test_one_layer_matches_torch_layernorm_modules(cell, engine):
    T, B, I, H = 5, 3, 4, 6
    kind = get_cell(cell)
    spec = spec_of(cell, I, H)
    params = {k[:-len("_l0")] if k.endswith("_l0") else k: v
              for k, v in reference_params(spec, seed=3).items()}
    own = {p.key: params.pop(p.param_name("_l0")) for p in kind.params}
    params.update(own)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((T, B, I))
    state0 = tuple(0.5 * rng.standard_normal((B, H)) for _ in kind.state)
    dout, dstate = rng.standard_normal((T, B, H)), tuple(rng.standard_normal((B, H))
                                                         for _ in kind.state)

    mod = MODULES[engine, cell]
    conv = (lambda a: torch.tensor(a)) if engine == "torch" else (lambda a: a)
    hs, state_n, cache = mod.forward(conv(x), tuple(map(conv, state0)),
                                     **{k: conv(v) for k, v in params.items()})
    dx, dstate0, grads = mod.backward(conv(dout), tuple(map(conv, dstate)), cache)

    p = {k: torch.tensor(v, requires_grad=True) for k, v in params.items() if k not in own}
    ln = layer_norms(cell, params)
    xt = torch.tensor(x, requires_grad=True)
    s0 = tuple(torch.tensor(s, requires_grad=True) for s in state0)
    ref_hs, ref_state = modules_reference(cell, p, ln, xt, s0)
    loss = (ref_hs * torch.tensor(dout)).sum() + sum(
        (s * torch.tensor(d)).sum() for s, d in zip(ref_state, dstate, strict=True))
    loss.backward()
    assert rel(hs, ref_hs) < 1e-12
    for a, b in zip(state_n, ref_state, strict=True):
        assert rel(a, b) < 1e-12
    want = {k: v.grad for k, v in p.items()}
    want |= {f"ln_{field}_{part}": getattr(m, field).grad for part, m in ln.items()
             for field in ("weight", "bias") if getattr(m, field) is not None}
    assert set(grads) == set(want) == set(params)
    for k, v in want.items():
        assert rel(grads[k], v) < 1e-10, k
    assert rel(dx, xt.grad) < 1e-10
    for a, b in zip(dstate0, s0, strict=True):
        assert rel(a, b.grad) < 1e-10


# -- stacks, directions, truncation: against the unrolled loop under autograd -------------------

CONFIGS = [{}, {"with_h0": False}, {"bias": False}, {"num_layers": 2, "bidirectional": True},
           {"num_layers": 3, "with_h0": False}, {"truncate": 0}, {"truncate": 1},
           {"truncate": 3}, {"truncate": 5}, {"truncate": 9}]


@pytest.mark.parametrize("engine", ["numpy", "torch"])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in
                                                                    c.items()) or "plain")
@pytest.mark.parametrize("cell", LN_CELLS)
def test_stacks_and_truncation_match_autograd(cell, config, engine):
    row = check_against_torch(cell, batch=3, steps=5, input_size=4, hidden_size=5,
                              engine=engine, **config)
    assert row.ok and row.worst <= 1e-9, row.to_dict()


@pytest.mark.parametrize("config", [{}, {"num_layers": 2, "bidirectional": True,
                                         "with_h0": False}, {"bias": False}])
@pytest.mark.parametrize("cell", LN_CELLS)
def test_central_finite_differences(cell, config):
    row = check_finite_differences(cell, batch=2, steps=3, input_size=2, hidden_size=3,
                                   **config)
    assert row.ok, row.to_dict()


@pytest.mark.parametrize("cell", LN_CELLS)
def test_a_wrong_layer_norm_gradient_is_caught(cell, monkeypatch):
    """The check's rows notice a gain gradient off by 1e-4 relative, both references."""
    real = MODULES["numpy", cell].backward

    def off(*args, **kwargs):
        dx, dstate0, grads = real(*args, **kwargs)
        grads["ln_weight_hh"] = grads["ln_weight_hh"] * (1 + 1e-4)
        return dx, dstate0, grads

    monkeypatch.setattr(MODULES["numpy", cell], "backward", off)
    assert not check_against_torch(cell, batch=2, steps=4, input_size=3, hidden_size=4).ok
    assert not check_finite_differences(cell, batch=2, steps=3, input_size=2, hidden_size=3).ok


@pytest.mark.parametrize("cell", LN_CELLS)
def test_token_ids_are_one_hot_inputs(cell):
    """Token ids (T, B) give the outputs and gradients of their one-hot vectors, both engines."""
    V, H = 7, 5
    spec = ModelSpec(cell=cell, input_size=V, hidden_size=H, output_size=V, num_layers=2)
    params = {k: v for k, v in reference_params(spec, 1).items()}
    ids = np.random.default_rng(2).integers(0, V, size=(6, 3))
    one_hot = np.eye(V)[ids]
    dout = np.random.default_rng(3).standard_normal((6, 3, H))
    a = numpy_stack.forward(cell, params, ids, num_layers=2)
    b = numpy_stack.forward(cell, params, one_hot, num_layers=2)
    assert rel(a[0], b[0]) < 1e-13
    ga, gb = numpy_stack.backward(dout, None, a[2])[2], numpy_stack.backward(dout, None, b[2])[2]
    tp = {k: torch.tensor(v) for k, v in params.items()}
    c = torch_stack.forward(cell, tp, torch.tensor(ids), num_layers=2)
    gc = torch_stack.backward(torch.tensor(dout), None, c[2])[2]
    assert rel(c[0], b[0]) < 1e-13
    for k in gb:
        assert rel(ga[k], gb[k]) < 1e-12 and rel(gc[k], gb[k]) < 1e-12, k


# -- the engines, float32 and float64 -----------------------------------------------------------

@pytest.mark.parametrize("cell", LN_CELLS)
def test_every_engine_computes_the_same_model(cell):
    """numpy, torch and torch-autograd: the same loss, gradients and state in float64, with
    truncation; torch-builtin refuses the cell in one line."""
    spec = ModelSpec(cell=cell, input_size=6, hidden_size=5, output_size=6, num_layers=2)
    params = init_params(spec, rng=0, dtype="float64")
    rng = np.random.default_rng(1)
    X, Y = rng.integers(0, 6, (3, 7)), rng.integers(0, 6, (3, 7))
    got = {}
    for name in ("numpy", "torch", "torch-autograd"):
        engine = get_engine(name, spec, device="cpu", dtype="float64")
        loss, grads, state = engine.loss_and_grads(engine.from_numpy(params), X, Y, truncate=2)
        got[name] = (engine.scalar(loss), {k: np.asarray(v) for k, v in grads.items()},
                     [np.asarray(s) for s in spec.kind.to_parts(engine.state_to_numpy(state))])
    for name in ("torch", "torch-autograd"):
        assert got[name][0] == pytest.approx(got["numpy"][0], rel=1e-12)
        for k, g in got["numpy"][1].items():
            assert rel(got[name][1][k], g) < 1e-9, (name, k)
        for a, b in zip(got[name][2], got["numpy"][2], strict=True):
            assert rel(a, b) < 1e-12
    with pytest.raises(ValueError, match=f"torch has no {spec.kind.title}"):
        get_engine("torch-builtin", spec, device="cpu")


@pytest.mark.parametrize("engine", ["numpy", "torch"])
@pytest.mark.parametrize("cell", LN_CELLS)
def test_float32_in_float32_out(cell, engine):
    spec = ModelSpec(cell=cell, input_size=5, hidden_size=6, output_size=5)
    eng = get_engine(engine, spec, device="cpu", dtype="float32")
    params = eng.from_numpy(init_params(spec, rng=0))
    X = np.random.default_rng(0).integers(0, 5, (2, 8))
    loss, grads, state = eng.loss_and_grads(params, X, X)
    dtype = np.float32 if engine == "numpy" else torch.float32
    assert all(g.dtype == dtype for g in grads.values())
    assert all(s.dtype == dtype for s in spec.kind.to_parts(state))
    ref = get_engine("numpy", spec, dtype="float64")
    loss64, grads64, _ = ref.loss_and_grads(ref.from_numpy(init_params(spec, rng=0)), X, X)
    assert float(loss) == pytest.approx(float(loss64), rel=1e-5)
    for k, g in grads64.items():
        assert rel(np.asarray(grads[k], dtype=np.float64), g) < 1e-3, k


@pytest.mark.parametrize("cell", LN_CELLS)
def test_a_missing_or_misshapen_gain_is_refused(cell):
    H, I = 4, 3
    G = get_cell(cell).num_gates
    w = {"weight_ih": np.zeros((G * H, I)), "weight_hh": np.zeros((G * H, H)),
         "ln_weight_ih": np.ones(G * H), "ln_weight_hh": np.ones(G * H)}
    if cell == "lnlstm":
        w["ln_weight_c"] = np.ones(H)
    x = np.zeros((2, 1, I))
    for engine, conv in (("numpy", np.asarray), ("torch", torch.tensor)):
        mod = MODULES[engine, cell]
        with pytest.raises(ValueError, match=rf"expected ln_weight_hh of shape \({G * H},\) "
                                             rf"for the {get_cell(cell).title}, got None"):
            mod.forward(conv(x), None, **{k: conv(v) for k, v in w.items()
                                          if k != "ln_weight_hh"})
        with pytest.raises(ValueError, match=rf"expected ln_weight_ih of shape \({G * H},\), "
                                             rf"got \({H},\)"):
            mod.forward(conv(x), None, **{k: conv(v) for k, v in
                                          {**w, "ln_weight_ih": np.ones(H)}.items()})


# -- the word models: embedding, tied head, dropout masks ---------------------------------------

@pytest.mark.parametrize("engine", ["numpy", "torch"])
@pytest.mark.parametrize("cell", LN_CELLS)
def test_word_models_match_autograd_and_finite_differences(cell, engine):
    """The embedding, two layers of the cell, fixed variational or standard masks and the tied
    head, whole, against the same model under autograd (the cell's unrolled loop)."""
    row = check_model_against_torch(cell, tied=True, dropout="var", engine=engine)
    assert row.ok and max(row.out, row.h_n, row.params, row.dh0) < 1e-9, row
    row = check_model_finite_differences(cell, dropout="std", engine=engine)
    assert row.ok, row


@pytest.mark.parametrize("cell", LN_CELLS)
def test_word_model_every_engine_and_the_builtin_refusal(cell):
    spec = ModelSpec(cell=cell, input_size=9, hidden_size=5, output_size=9, num_layers=2,
                     embedding_size=5, tie_weights=True, dropout=0.3,
                     dropout_placement="non-recurrent", dropout_mode="variational")
    params = init_params(spec, "uniform", 0, "float64", scale=0.4)
    rng = np.random.default_rng(1)
    X, Y = rng.integers(0, 9, (3, 7)), rng.integers(0, 9, (3, 7))
    got = {}
    for name in ("torch", "torch-autograd"):             # the same generator: the same masks
        eng = get_engine(name, spec, device="cpu", dtype="float64")
        loss, grads, _ = eng.loss_and_grads(eng.from_numpy(params), X, Y,
                                            rng=torch.Generator().manual_seed(3))
        got[name] = (float(loss), {k: v.numpy() for k, v in grads.items()})
    assert "layernorm_hh_l1.weight" in got["torch"][1] and "head.weight" not in got["torch"][1]
    assert got["torch"][0] == pytest.approx(got["torch-autograd"][0], rel=1e-12)
    for k, g in got["torch-autograd"][1].items():
        assert rel(got["torch"][1][k], g) < 1e-9, k
    with pytest.raises(ValueError, match=f"torch has no {spec.kind.title}"):
        get_engine("torch-builtin", spec, device="cpu")


# -- parameters ---------------------------------------------------------------------------------

def test_parameters_are_named_in_torch_style_and_start_as_identity_norms():
    spec = spec_of("lnlstm", I=3, H=4, num_layers=2, bidirectional=True)
    shapes = param_shapes(spec)
    assert list(shapes)[:8] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                                "layernorm_ih_l0.weight", "layernorm_hh_l0.weight",
                                "layernorm_c_l0.weight", "layernorm_c_l0.bias"]
    assert shapes["layernorm_ih_l1_reverse.weight"] == (16,)
    assert shapes["layernorm_c_l1_reverse.bias"] == (4,)
    assert shapes["weight_ih_l1"] == (16, 8)
    no_bias = param_shapes(spec_of("lnlstm", H=4, bias=False))
    assert "layernorm_c_l0.bias" not in no_bias and "layernorm_c_l0.weight" in no_bias
    assert not any(k.startswith("bias_") for k in no_bias)
    gru = param_shapes(spec_of("lngru", H=4))
    assert gru["layernorm_ih_l0.weight"] == gru["layernorm_hh_l0.weight"] == (12,)
    for init in ("torch", "d2l", "uniform"):
        params = init_params(spec, init, rng=0)
        assert all((params[k] == 1).all() for k in params if k.endswith("norm_ih_l0.weight"))
        assert (params["layernorm_c_l1.bias"] == 0).all()
        # the other parameters draw exactly what the plain LSTM's do
        plain = init_params(spec_of("lstm", I=3, H=4, num_layers=2, bidirectional=True), init,
                            rng=0)
        for k, v in plain.items():
            np.testing.assert_array_equal(params[k], v, err_msg=k)


def test_memory_estimate_counts_what_the_norms_keep():
    args = dict(batch_size=32, num_steps=35)
    for cell in LN_CELLS:
        ln = estimate(ModelSpec(cell=cell, hidden_size=64), **args).device["activations"]
        plain = estimate(ModelSpec(cell=PLAIN[cell], hidden_size=64), **args).device["activations"]
        assert ln > 2 * plain


# -- the jobs, through the command line ----------------------------------------------------------

@pytest.mark.parametrize("cell", LN_CELLS)
def test_train_resume_generate_evaluate(cell, tmp_path, capsys, hello_corpus):
    run = tmp_path / "run"
    rc, out, err = run_cli(capsys, "train", "--data", hello_corpus, "--out", run, "--cell", cell,
                           "--epochs", "2", "--num-layers", "2", "--dropout", "0.1",
                           "--truncate", "3", *TINY)
    assert rc == 0, err
    first = ck.load(run / "last.safetensors")
    assert first.spec.cell == cell and "layernorm_ih_l1.weight" in first.params
    rc, out, err = run_cli(capsys, "train", "--resume", "--out", run, "--epochs", "4")
    assert rc == 0, err
    last = ck.load(run / "last.safetensors")
    assert last.train["epoch"] == 4
    assert not np.array_equal(last.params["layernorm_hh_l0.weight"],
                              first.params["layernorm_hh_l0.weight"])   # the gains learn
    for engine in ("numpy", "torch"):
        rc, out, err = run_cli(capsys, "generate", run, "--prefix", "hello", "--length", "10",
                               "--engine", engine)
        assert rc == 0, err
        assert out.strip().startswith("hello")
    rc, out, err = run_cli(capsys, "evaluate", run, "--data", hello_corpus)
    assert rc == 0 and "perplexity" in out, err


def test_word_model_through_the_cli(tmp_path, capsys, hello_corpus):
    run = tmp_path / "run"
    rc, out, err = run_cli(capsys, "train", "--data", hello_corpus, "--out", run, "--cell",
                           "lnlstm", "--tokenization", "word", "--embedding-size", "8",
                           "--tie-weights", "--num-layers", "2", "--dropout", "0.2",
                           "--dropout-mode", "variational", "--init", "uniform", "--epochs",
                           "2", *TINY)
    assert rc == 0, err
    saved = ck.load(run / "last.safetensors")
    assert saved.spec.cell == "lnlstm" and saved.spec.tie_weights
    assert "layernorm_c_l1.bias" in saved.params and "head.weight" not in saved.params
    assert (saved.params["layernorm_c_l0.weight"] != 1).any()      # started at 1, learned
    rc, out, err = run_cli(capsys, "generate", run, "--prefix", "hello", "--length", "3")
    assert rc == 0 and out.startswith("hello"), err
    rc, out, err = run_cli(capsys, "evaluate", run, "--data", hello_corpus)
    assert rc == 0 and "perplexity" in out, err


@pytest.mark.parametrize("cell", LN_CELLS)
def test_the_builtin_engine_refuses_in_one_line_before_writing(cell, tmp_path, capsys,
                                                               hello_corpus):
    run = tmp_path / "run"
    rc, out, err = run_cli(capsys, "train", "--data", hello_corpus, "--out", run, "--cell", cell,
                           "--engine", "torch-builtin", *TINY)
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("bptt train: error: ") and "use the 'torch' engine" in lines[0]
    assert not run.exists()


def test_sine_series_gradflow_and_check_take_the_cells(tmp_path, capsys):
    rc, out, err = run_cli(capsys, "sine", "--cell", "lngru", "--iterations", "200",
                           "--out", tmp_path / "sine")
    assert rc == 0, err
    assert ck.load(tmp_path / "sine" / "last.safetensors").spec.cell == "lngru"
    csv = tmp_path / "level.csv"
    t = np.arange(200)
    csv.write_text("level\n" + "\n".join(f"{v:.5f}" for v in np.sin(t / 5.0)) + "\n")
    rc, out, err = run_cli(capsys, "series", "--csv", csv, "--column", "level", "--cell",
                           "lnlstm", "--iterations", "100", "--out", tmp_path / "series")
    assert rc == 0, err
    assert ck.load(tmp_path / "series").spec.cell == "lnlstm"
    rc, out, err = run_cli(capsys, "gradflow", "--cell", "lnlstm", "--steps", "12",
                           "--hidden-size", "6", "--out", tmp_path / "flow")
    assert rc == 0, err
    flows = json.loads((tmp_path / "flow" / "gradflow.json").read_text())
    assert [f["label"] for f in flows] == ["LN-LSTM"] and "state_spectral" in flows[0]
    rc, out, err = run_cli(capsys, "check", "--quick", "--cell", "lnlstm", "lngru")
    assert rc == 0, out + err
    assert "lnlstm" in out and "lngru" in out and "FAIL" not in out


@pytest.mark.parametrize("cell", LN_CELLS)
def test_torchscript_exports_the_cells_and_onnx_refuses_them_in_one_line(cell, tmp_path,
                                                                         capsys):
    """The loop path's step of each cell (gains and biases away from 1 and 0, so that a step
    forgetting one differs), loaded by plain torch, equals the NumPy engine; ONNX, with no
    operator for the cell, refuses it in one line and writes nothing."""
    from bptt.data import Vocab
    from bptt.export import torchscript

    vocab = Vocab(list("abcdefgh ijk"))
    spec = ModelSpec(cell=cell, input_size=len(vocab), hidden_size=6, output_size=len(vocab),
                     num_layers=2)
    params = init_params(spec, rng=0)
    rng = np.random.default_rng(1)
    for name in params:
        if name.startswith("layernorm_"):
            params[name] += rng.uniform(-0.5, 0.5, size=params[name].shape).astype(np.float32)
    run = tmp_path / "run"
    ck.save(ck.Checkpoint(spec=spec, params=params, vocab=vocab,
                          text={"normalization": "none", "tokenization": "char"}),
            run / "best.safetensors")
    rc, out, err = run_cli(capsys, "export", run, "--format", "torchscript", "--out",
                           tmp_path / "m.pt")
    assert rc == 0 and "stack via loop" in out, err
    x = rng.integers(0, len(vocab), size=(3, 9))
    state = [(0.5 * rng.standard_normal((2, 3, 6))).astype(np.float32) for _ in spec.kind.state]
    y, final = torchscript.run(str(tmp_path / "m.pt"), x, state)
    engine = get_engine("numpy", spec)
    ref, ref_final = engine.forward(params, x, spec.kind.from_parts(tuple(state)))
    np.testing.assert_allclose(y, np.asarray(ref).reshape(y.shape), rtol=1e-4, atol=1e-5)
    for a, b in zip(final, spec.kind.to_parts(ref_final), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    rc, _, err = run_cli(capsys, "export", run, "--format", "onnx", "--out", tmp_path / "m.onnx")
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and f"'{cell}'" in lines[0], err
    assert not (tmp_path / "m.onnx").exists()


def test_bench_runs_cells_side_by_side(tmp_path, capsys):
    path = tmp_path / "bench.json"
    rc, out, err = run_cli(capsys, "bench", "--quick", "--configs", "small", "--subjects",
                           "numpy,torch,torch.nn.RNN", "--parts", "train", "--cell",
                           "lstm,lnlstm", "--json", path)
    assert rc == 0, err
    rows = json.loads(path.read_text())["results"]["small"]
    assert set(rows) == {"numpy lstm", "numpy lnlstm", "torch lstm", "torch lnlstm",
                         "torch.nn.RNN"}
    for name in ("numpy lnlstm", "torch lnlstm"):
        r = rows[name]
        assert r["cell"] == "lnlstm" and r["train"]["error"] is None
        assert r["train"]["paired_ratio_to_first_cell"] > 0
    assert "x lstm" in out
