"""``bptt bench`` end to end, and the correctness of every speed optimisation (no timings here).

The optimised NumPy paths are checked in float64 against torch autograd (torch.nn.RNN + Linear +
cross-entropy, or the torch-autograd engine's unrolled loop for truncation); the bf16 torch
engine against its own float32 results within bfloat16's tolerance; and the NumPy engine's
import graph (training and generation must never load torch).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bptt import bench
from bptt.cli import main
from bptt.engine import as_numpy, get_engine, kernel
from bptt.engine.numpy import rnn
from bptt.engine.numpy.loss import softmax_cross_entropy, softmax_cross_entropy_
from bptt.engine.numpy.model import NumpyEngine
from bptt.model import ModelSpec, init_params


def rel(a, b) -> float:
    """max |a - b| / max |b|."""
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def lm_spec(cell="rnn", V=7, H=5, L=1, nonlinearity="tanh") -> ModelSpec:
    return ModelSpec(cell=cell, input_size=V, hidden_size=H, output_size=V, num_layers=L,
                     nonlinearity=nonlinearity, task="lm")


def batch(V, B, T, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T)), rng


def torch_nn_reference(spec, params, X, Y, state):
    """Loss, gradients and final state of torch.nn.RNN + Linear + cross-entropy, float64."""
    module = torch.nn.RNN(spec.input_size, spec.hidden_size, nonlinearity=spec.nonlinearity,
                          dtype=torch.float64)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.from_numpy(params[name]))
    W = torch.tensor(params["head.weight"], requires_grad=True)
    b = torch.tensor(params["head.bias"], requires_grad=True)
    x = F.one_hot(torch.as_tensor(X).T, spec.input_size).double()
    out, h_n = module(x, torch.as_tensor(state))
    logits = out.reshape(-1, spec.hidden_size) @ W.T + b
    loss = F.cross_entropy(logits, torch.as_tensor(Y).T.reshape(-1))
    loss.backward()
    grads = {n: p.grad for n, p in module.named_parameters()}
    grads |= {"head.weight": W.grad, "head.bias": b.grad}
    return float(loss.detach()), grads, h_n.detach()


# -- the NumPy engine's optimised paths, float64, against torch autograd -------------------------

@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("chunk_rows", [None, 6, 1])
def test_fused_rnn_path_matches_torch_nn(monkeypatch, nonlinearity, chunk_rows):
    """The book's model skips the stack: forward into one state buffer, head + in-place softmax
    over all T*B rows, the head's gradient handed lazily chunk by chunk to the RNN backward.
    chunk_rows forces several chunks (6 rows = 2 steps of B = 3; 1 = one step per chunk)."""
    if chunk_rows is not None:
        monkeypatch.setattr(rnn, "CHUNK_ROWS", chunk_rows)
        assert rnn._chunk_steps(9, 3) < 9                  # several chunks indeed
    spec = lm_spec(V=7, H=5, nonlinearity=nonlinearity)
    engine = NumpyEngine(spec, dtype="float64")
    assert engine._fused()
    params = init_params(spec, rng=1, dtype="float64")
    X, Y, rng = batch(7, 3, 9, seed=2)
    state = 0.5 * rng.standard_normal((1, 3, 5))

    loss, grads, state_n = engine.loss_and_grads(engine.from_numpy(params), X, Y, state)
    ref_loss, ref_grads, ref_state = torch_nn_reference(spec, params, X, Y, state)

    assert abs(loss - ref_loss) <= 1e-12 * abs(ref_loss)
    assert set(grads) == set(ref_grads)
    for name in grads:
        assert grads[name].dtype == np.float64
        assert rel(grads[name], ref_grads[name]) <= 1e-10, name
    assert rel(state_n, ref_state) <= 1e-12


@pytest.mark.parametrize("k", [0, 1, 3, 8, 20])
@pytest.mark.parametrize("chunk_rows", [None, 5])
def test_fused_rnn_truncation_matches_torch_autograd_engine(monkeypatch, k, chunk_rows):
    """Truncated BPTT through the chunked backward (ages in two preallocated buffers used in
    turn, no per-step zeros) against the torch-autograd engine's recomputed windows."""
    if chunk_rows is not None:
        monkeypatch.setattr(rnn, "CHUNK_ROWS", chunk_rows)
        assert rnn._chunk_steps(8, 3) == 1
    spec = lm_spec(V=6, H=4)
    params = init_params(spec, rng=3, dtype="float64")
    X, Y, rng = batch(6, 3, 8, seed=4)
    state = 0.5 * rng.standard_normal((1, 3, 4))

    ours = NumpyEngine(spec, dtype="float64")
    loss, grads, _ = ours.loss_and_grads(ours.from_numpy(params), X, Y, state, truncate=k)
    ref = get_engine("torch-autograd", spec, device="cpu", dtype="float64")
    ref_loss, ref_grads, _ = ref.loss_and_grads(ref.from_numpy(params), X, Y,
                                                ref.state_from_numpy(state), truncate=k)
    assert abs(loss - float(ref_loss)) <= 1e-12 * abs(float(ref_loss))
    for name in grads:
        assert rel(grads[name], ref_grads[name]) <= 1e-10, name


@pytest.mark.parametrize("truncate", [None, 2])
def test_chunked_layer_backward_equals_one_chunk(monkeypatch, truncate):
    """rnn.backward with float inputs (dx written chunk by chunk) and an upstream on h_n: the
    same gradients whatever the chunk size."""
    rng = np.random.default_rng(5)
    T, B, I, H = 7, 2, 3, 4
    w = {"weight_ih": rng.standard_normal((H, I)), "weight_hh": 0.5 * rng.standard_normal((H, H)),
         "bias_ih": rng.standard_normal(H), "bias_hh": rng.standard_normal(H)}
    x, h0 = rng.standard_normal((T, B, I)), rng.standard_normal((B, H))
    dhs, dh_n = rng.standard_normal((T, B, H)), rng.standard_normal((B, H))
    _, _, cache = rnn.forward(x, (h0,), **w)
    whole = rnn.backward(dhs, (dh_n,), cache, truncate)
    monkeypatch.setattr(rnn, "CHUNK_ROWS", 3)             # one step per chunk
    assert rnn._chunk_steps(T, B) == 1
    chunked = rnn.backward(dhs, (dh_n,), cache, truncate)
    for a, b in zip((whole[0], *whole[1]), (chunked[0], *chunked[1]), strict=True):
        assert rel(b, a) <= 1e-13
    for name in whole[2]:
        assert rel(chunked[2][name], whole[2][name]) <= 1e-13, name


@pytest.mark.parametrize("one_hot_max", [0, 256])
def test_token_weight_gradient_both_ways_equal_torch(monkeypatch, one_hot_max):
    """dW_ih for token ids: a one-hot product (small vocabularies) or a sort and segment sum
    (large ones), against autograd of the one-hot input through torch.nn.RNN."""
    from bptt.engine.numpy import common

    monkeypatch.setattr(common, "ONE_HOT_MAX_VOCAB", one_hot_max)
    spec = lm_spec(V=9, H=4)
    engine = NumpyEngine(spec, dtype="float64")
    params = init_params(spec, rng=18, dtype="float64")
    X, Y, rng = batch(9, 4, 6, seed=19)
    X[0, :3] = 2                                          # repeated ids add up
    state = rng.standard_normal((1, 4, 4))
    _, grads, _ = engine.loss_and_grads(engine.from_numpy(params), X, Y, state)
    _, ref, _ = torch_nn_reference(spec, params, X, Y, state)
    assert rel(grads["weight_ih_l0"], ref["weight_ih_l0"]) <= 1e-10


def test_in_place_cross_entropy_equals_the_copying_one_and_torch():
    rng = np.random.default_rng(6)
    logits = 4.0 * rng.standard_normal((12, 9))
    logits[0, 3] = 1e4                                    # huge logits stay finite
    targets = rng.integers(0, 9, 12)
    loss, grad = softmax_cross_entropy(logits, targets)
    buf = logits.copy()
    loss_, grad_ = softmax_cross_entropy_(buf, targets)
    assert grad_ is buf                                   # in place: no (N, V) allocation
    assert loss_ == loss and np.array_equal(grad_, grad)
    t = torch.tensor(logits, requires_grad=True)
    ref = F.cross_entropy(t, torch.as_tensor(targets))
    ref.backward()
    assert abs(loss - ref.detach().item()) <= 1e-12 * abs(ref.detach().item())
    assert rel(grad, t.grad) <= 1e-12


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 2])
def test_step_path_equals_the_sequence_forward(cell, layers):
    """forward() over one step goes through NumpyEngine.step (generation's path, no stack
    bookkeeping): fed token by token it gives the sequence forward's logits and state."""
    spec = lm_spec(cell=cell, V=6, H=5, L=layers)
    engine = NumpyEngine(spec, dtype="float64")
    params = engine.from_numpy(init_params(spec, rng=7, dtype="float64"))
    X, _, rng = batch(6, 2, 5, seed=8)
    state0 = engine.begin_state(2)
    state0 = (tuple(s + rng.standard_normal(s.shape) for s in state0) if cell == "lstm"
              else state0 + rng.standard_normal(state0.shape))
    whole, whole_state = engine.forward(params, X, state0)
    state, rows = state0, []
    for t in range(X.shape[1]):
        y, state = engine.forward(params, X[:, t:t + 1], state)
        assert y.shape == (2, 1, 6)
        rows.append(y[:, 0])
    assert rel(np.stack(rows, axis=1), whole) <= 1e-13
    for a, b in zip(state if cell == "lstm" else (state,),
                    whole_state if cell == "lstm" else (whole_state,), strict=True):
        assert rel(a, b) <= 1e-13


def test_step_path_rejects_bad_ids_and_states():
    spec = lm_spec(V=6, H=5)
    engine = NumpyEngine(spec)
    params = engine.from_numpy(init_params(spec, rng=0))
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        engine.forward(params, np.array([[6]]), None)
    with pytest.raises(ValueError, match="expected a state of shape"):
        engine.forward(params, np.array([[1]]), np.zeros((1, 2, 5), np.float32))


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_float32_end_to_end(cell):
    """Every gradient, output and state of a float32 engine is float32 (no silent upcast)."""
    spec = lm_spec(cell=cell, V=6, H=5)
    engine = NumpyEngine(spec)
    params = engine.from_numpy(init_params(spec, rng=0))
    X, Y, _ = batch(6, 3, 4, seed=9)
    loss, grads, state = engine.loss_and_grads(params, X, Y, engine.begin_state(3), truncate=2)
    assert np.isfinite(loss)
    for g in grads.values():
        assert g.dtype == np.float32
    for s in state if cell == "lstm" else (state,):
        assert s.dtype == np.float32
    y, _ = engine.forward(params, X[:, :1], None)
    assert y.dtype == np.float32


def test_numpy_engine_never_imports_torch():
    """Training and generation with the NumPy engine, in a fresh interpreter: no torch."""
    code = textwrap.dedent("""
        import sys
        import numpy as np
        import bptt.engine.numpy.model, bptt.lm.generate
        from bptt import optim
        from bptt.data import Vocab
        from bptt.engine import get_engine
        from bptt.lm.generate import LanguageModel, generate
        from bptt.model import ModelSpec, init_params
        vocab = Vocab(list("abcdefghijklmnopqrstuvwxyz "))
        spec = ModelSpec(input_size=len(vocab), hidden_size=8, output_size=len(vocab))
        engine = get_engine("numpy", spec)
        params = engine.from_numpy(init_params(spec, rng=0))
        X = np.random.default_rng(0).integers(0, len(vocab), (2, 5))
        loss, grads, state = engine.loss_and_grads(params, X, X, engine.begin_state(2))
        optim.clip_grad_norm_(grads, 1.0)
        optim.SGD(lr=1.0).step(params, grads)
        text = generate(LanguageModel(spec, params, vocab), "time ", 5)
        assert len(text) == 10, text
        assert "torch" not in sys.modules, "the NumPy path imported torch"
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_package_reexports_the_public_names_lazily():
    """Every name in bptt.__all__ resolves to the object its module defines, and loading them
    all imports neither torch nor matplotlib (a fresh interpreter)."""
    code = textwrap.dedent("""
        import importlib, sys
        import bptt
        assert "numpy" not in sys.modules, "import bptt loaded numpy"
        for name in bptt.__all__:
            value = getattr(bptt, name)
            if name != "__version__":
                module, attr = bptt._LAZY[name]
                assert value is getattr(importlib.import_module(module), attr), name
        assert bptt.train.__module__ == "bptt.lm.train"
        assert bptt.load_checkpoint.__module__ == "bptt.checkpoint"
        assert sorted(bptt.__all__) == sorted(set(bptt.__all__))
        assert set(bptt.__all__) <= set(dir(bptt))
        assert "torch" not in sys.modules and "matplotlib" not in sys.modules
        try:
            bptt.no_such_name
        except AttributeError as e:
            assert "no_such_name" in str(e)
        print(len(bptt.__all__))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 30


@pytest.mark.parametrize("layers", [1, 2])
def test_torch_engine_step_path_equals_the_sequence_forward(layers):
    """TorchEngine.forward over one step runs rnn.step per layer (generation's path)."""
    spec = lm_spec(V=6, H=5, L=layers)
    engine = get_engine("torch", spec, device="cpu", dtype="float64")
    params = engine.from_numpy(init_params(spec, rng=14, dtype="float64"))
    X, _, rng = batch(6, 2, 5, seed=15)
    state0 = torch.as_tensor(rng.standard_normal((layers, 2, 5)))
    whole, whole_state = engine.forward(params, X, state0)
    state, rows = state0, []
    for t in range(X.shape[1]):
        y, state = engine.forward(params, X[:, t:t + 1], state)
        rows.append(y[:, 0])
    assert rel(torch.stack(rows, dim=1), whole) <= 1e-13
    assert rel(state, whole_state) <= 1e-13
    y, state = engine.forward(params, X[:, :1])                 # no state: zeros
    assert y.shape == (2, 1, 6) and state.shape == (layers, 2, 5)


@pytest.mark.parametrize("truncate", [None, 2])
def test_torch_engine_fp32_products_through_onednn_equal_torch_mm(monkeypatch, truncate):
    """Float32 CPU products go through torch's oneDNN linear when the build has it (and the
    activation through NumPy's tanh); the results equal the torch.mm path and the NumPy
    engine to float32 rounding."""
    from bptt.engine.torch import common

    spec = lm_spec(V=28, H=48)
    params = init_params(spec, rng=16)
    X, Y, rng = batch(28, 8, 10, seed=17)
    state = 0.3 * rng.standard_normal((1, 8, 48)).astype(np.float32)

    def run():
        engine = get_engine("torch", spec, device="cpu")
        loss, grads, st = engine.loss_and_grads(engine.from_numpy(params), X, Y,
                                                engine.state_from_numpy(state),
                                                truncate=truncate)
        y, _ = engine.forward(engine.from_numpy(params), X, engine.state_from_numpy(state))
        return float(loss), grads, st, y

    fast = run()
    monkeypatch.setattr(common, "_ONEDNN", [None])             # torch.mm everywhere
    plain = run()
    ref_engine = NumpyEngine(spec)
    ref_loss, ref_grads, ref_state = ref_engine.loss_and_grads(
        ref_engine.from_numpy(params), X, Y, state, truncate=truncate)
    for ours in (fast, plain):
        assert abs(ours[0] - ref_loss) <= 1e-5 * abs(ref_loss)
        for name in ref_grads:
            assert rel(ours[1][name], ref_grads[name]) <= 1e-4, name
        assert rel(ours[2], ref_state) <= 1e-5
    assert rel(fast[3], plain[3]) <= 1e-5


def test_head_function_gradients():
    """The torch engine's head (products through oneDNN) against gradcheck in float64, and its
    float32 and bfloat16 forms against F.linear's autograd."""
    from bptt.engine.torch.model import HeadFunction

    gen = torch.Generator().manual_seed(0)
    x, W, b = (torch.randn(*s, generator=gen, dtype=torch.float64, requires_grad=True)
               for s in ((6, 5), (3, 5), (3,)))
    assert torch.autograd.gradcheck(lambda x, W, b: HeadFunction.apply(x, W, b, "fp32"),
                                    (x, W, b))
    dy = torch.randn(40, 7, generator=gen)
    ref_in = [torch.randn(*s, generator=gen, requires_grad=True) for s in ((40, 16), (7, 16), (7,))]
    F.linear(*ref_in).backward(dy)
    for precision, tol in (("fp32", 1e-5), ("bf16", 2e-2)):
        ins = [t.detach().clone().requires_grad_() for t in ref_in]
        y = HeadFunction.apply(*ins, precision)
        assert y.dtype == torch.float32
        assert rel(y, F.linear(*ref_in)) <= tol
        y.backward(dy)
        for ours, ref in zip(ins, ref_in, strict=True):
            assert ours.grad.dtype == torch.float32 and rel(ours.grad, ref.grad) <= tol


def test_tanh_into_equals_torch_tanh():
    from bptt.engine.torch.common import tanh_into

    z = torch.randn(4, 6) * 4
    z[0, :3] = torch.tensor([1e-8, 30.0, -30.0])
    out = torch.empty_like(z)
    assert tanh_into(z, out) is out
    assert torch.allclose(out, torch.tanh(z), rtol=3e-7, atol=0)
    g = z.clone().requires_grad_()                             # autograd tensors: torch's own
    assert torch.allclose(tanh_into(g.detach(), g.detach().clone()), torch.tanh(z), rtol=3e-7)


def test_numpy_engine_bf16_needs_float32():
    with pytest.raises(ValueError, match="dtype 'float32' with precision 'bf16'"):
        get_engine("numpy", lm_spec(), dtype="float64", precision="bf16")
    with pytest.raises(ValueError, match="expected precision 'fp32' or 'bf16', got 'fp8'"):
        get_engine("numpy", lm_spec(), precision="fp8")


# -- bf16 -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("engine_name", ["torch", "numpy"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru", "lnlstm", "lngru"])
@pytest.mark.parametrize("truncate", [None, 3])
def test_bf16_engines_within_bf16_tolerance_of_fp32(engine_name, cell, truncate):
    """precision='bf16': products in bfloat16, float32 master weights, state and loss -- every
    cell, both hand-written engines (compiled kernel or Python path, whichever runs)."""
    assert_bf16_near_fp32(engine_name, lm_spec(V=28, H=64, cell=cell, L=2), truncate,
                          BF16_GRAD_TOL.get(cell, 5e-2))


BF16_GRAD_TOL = {"lnlstm": 1.5e-1, "lngru": 1.5e-1}
"""The layer norms rescale small pre-activations to unit spread, and the bf16 rounding with
them: at initialisation the LN-LSTM's gradients differ from fp32 by 3 to 9% (by seed, kernel
and Python path alike), the plain cells' by under 1%."""


@pytest.mark.parametrize("engine_name", ["torch", "numpy"])
def test_bf16_projected_lstm_runs_the_python_path(engine_name):
    """proj_size: the layers the compiled kernel does not cover take bf16 in Python too."""
    spec = ModelSpec(cell="lstm", input_size=28, hidden_size=64, output_size=28, num_layers=2,
                     proj_size=24, task="lm")
    assert_bf16_near_fp32(engine_name, spec, None)


@pytest.mark.parametrize("engine_name", ["torch", "numpy"])
@pytest.mark.parametrize("cell", ["lnlstm", "lngru"])
def test_bf16_layer_normalised_cells_on_the_python_path(engine_name, cell):
    """The layer-normalised cells take bf16 where the compiled kernel does not run too (it
    used to refuse them in one line)."""
    with kernel.disabled():
        assert_bf16_near_fp32(engine_name, lm_spec(V=28, H=64, cell=cell, L=2), None,
                              BF16_GRAD_TOL[cell])


def assert_bf16_near_fp32(engine_name, spec, truncate, grad_tol=5e-2):
    """Loss, gradients and state under bf16 within bf16 tolerance of fp32, all float32."""
    params = init_params(spec, rng=10)
    X, Y, _ = batch(28, 8, 12, seed=11)
    results = {}
    for precision in ("fp32", "bf16"):
        engine = get_engine(engine_name, spec, device="cpu", precision=precision)
        loss, grads, state = engine.loss_and_grads(engine.from_numpy(params), X, Y,
                                                   engine.begin_state(8), truncate=truncate)
        grads = {k: np.asarray(as_numpy(v)) for k, v in grads.items()}
        state = np.concatenate([as_numpy(s).ravel() for s in spec.kind.to_parts(state)])
        results[precision] = (float(loss), grads, state)
        for g in grads.values():
            assert g.dtype == np.float32                   # master weights' gradients
        assert state.dtype == np.float32
    (l32, g32, s32), (l16, g16, s16) = results["fp32"], results["bf16"]
    assert abs(l16 - l32) <= 1e-2 * abs(l32)
    for name in g32:
        err = float(np.linalg.norm(g16[name] - g32[name]) / np.linalg.norm(g32[name]))
        assert err <= grad_tol, (name, err)
    assert float(np.abs(s16 - s32).max() / np.abs(s32).max()) <= 5e-2


def test_bf16_forward_and_other_engines():
    spec = lm_spec(V=28, H=32)
    params = init_params(spec, rng=12)
    X, _, _ = batch(28, 2, 6, seed=13)
    e32 = get_engine("torch", spec, device="cpu")
    e16 = get_engine("torch", spec, device="cpu", precision="bf16")
    y32, _ = e32.forward(e32.from_numpy(params), X)
    y16, _ = e16.forward(e16.from_numpy(params), X)
    assert y16.dtype == torch.float32
    assert rel(y16, y32) <= 5e-2
    y1, s1 = e16.forward(e16.from_numpy(params), X[:, :1])      # the single-step path
    assert y1.dtype == torch.float32 and rel(y1[:, 0], y32[:, 0]) <= 5e-2
    with pytest.raises(ValueError, match="expected precision 'fp32' or 'bf16', got 'fp8'"):
        get_engine("torch", spec, device="cpu", precision="fp8")
    with pytest.raises(ValueError, match="dtype 'float32' with precision 'bf16'"):
        get_engine("torch", spec, device="cpu", dtype="float64", precision="bf16")
    for name in ("torch-autograd", "torch-builtin"):
        with pytest.raises(ValueError, match="expected precision 'fp32', got 'bf16'"):
            get_engine(name, spec, device="cpu", precision="bf16")
    for cell in ("lstm", "gru"):                                # bf16 for every cell
        e = get_engine("torch", lm_spec(cell=cell, V=28), device="cpu", precision="bf16")
        y, _ = e.forward(e.from_numpy(init_params(e.spec, rng=1)), X[:, :1])
        assert y.dtype == torch.float32 and torch.isfinite(y).all()


# -- bptt bench -----------------------------------------------------------------------------------

def test_bench_quick_json_end_to_end(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--json", str(path)]) == 0
    table = capsys.readouterr().out
    out = json.loads(path.read_text())
    assert set(out["results"]) == set(bench.CONFIGS)
    for name, rows in out["results"].items():
        cfg = bench.QUICK_CONFIGS[name]
        assert set(rows) == {s for s in bench.SUBJECTS if cfg.takes(s)}, name
        if cfg.cell == "rnn":                            # the book's model: every subject but
            assert set(rows) == set(bench.SUBJECTS) - {  # the other cells' modules
                s for s in bench.MODULE_SUBJECTS if not s.endswith(".RNN")}
        else:                                            # the engines (fp32 and bf16) and both
            assert set(rows) == {*bench.ENGINE_SUBJECTS, *bench.BF16_SUBJECTS,  # modules
                                 cfg.reference, f"bptt.nn.{cfg.module}"}, name
        for subject, r in rows.items():
            assert r["train"]["error"] is None, (name, subject, r["train"]["error"])
            assert r["train"]["tokens_per_s"] > 0
            assert r["train"]["ratio_to_reference"] > 0
            if cfg.embedding is None:
                assert r["generate"]["error"] is None, (name, subject, r["generate"]["error"])
                assert r["generate"]["chars_per_s"] > 0
            else:                                         # word models: training only
                assert "generate" not in r
            if subject.startswith(("numpy", "torch-bf16")):   # our engines' products
                assert r["library"]["kernel"] and isinstance(r["library"]["products"], dict)
        assert rows[cfg.reference]["train"]["ratio_to_reference"] == pytest.approx(1.0)
        assert cfg.reference == bench.REFERENCE or cfg.cell != "rnn"
        assert out["configs"][name]["reference"] == cfg.reference == (
            "torch.nn." + {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}[cfg.cell])
    assert out["configs"]["word"]["reference_model"] == "torch.nn.Embedding + torch.nn.LSTM"
    assert out["machine"]["cpu"] and out["machine"]["kernel"]
    long = out["results"]["long"]
    for subject in long:
        assert long[subject]["memory"]["error"] is None, subject
        assert long[subject]["memory"]["peak_mb"] is not None
    assert long["numpy"]["memory"]["torch_imported"] is False    # its own process, no torch
    assert long["numpy"]["memory_tracemalloc"]["peak_mb"] > 0
    assert {t["target"] for t in out["targets"]} == {t[-1] for t in bench.TARGETS}
    assert all(t["value"] is not None for t in out["targets"]    # read on the config's cell
               if t["config"] in ("lstm", "gru"))
    assert "torch.nn.RNN" in table and "targets:" in table
    assert "torch.nn.LSTM" in table and out["machine"]["cpu"] in table


def test_bench_rejects_unknown_names():
    with pytest.raises(SystemExit):
        main(["bench", "--configs", "huge"])
    with pytest.raises(ValueError, match="subjects"):
        bench.run(bench.BenchSettings(subjects=("tensorflow",)))


def test_gemm_shapes_and_rates_are_sane():
    cfg = bench.QUICK_CONFIGS["book"]
    shapes = bench.gemm_shapes(cfg)
    assert shapes["step (B,H)x(H,H)"] == (cfg.batch, cfg.hidden, cfg.hidden)
    assert shapes["weight grad (H,TB)x(TB,H)"] == (cfg.hidden, cfg.tokens, cfg.hidden)
    rates = bench.gemm_rates(cfg, with_torch=False, min_seconds=0.001)
    assert all(r["numpy_fp32"] > 0 for r in rates.values())


def test_flops_per_token_and_the_roofline():
    """A training step's products per token: 6 G H (H + I) per layer (forward, the input
    gradient and the weight gradient; no input product over one-hot characters) and 6 H V for
    the head; the roofline spends each product's FLOPs at its shape's rate."""
    from bptt.bench.rates import flops_per_token, roofline, step_products

    book, word = bench.CONFIGS["book"], bench.CONFIGS["word"]
    H, V = book.hidden, book.vocab
    assert flops_per_token(book) == pytest.approx(6 * H * H + 6 * H * V)
    H, E, V = word.hidden, word.embedding, word.vocab
    assert flops_per_token(word) == pytest.approx(2 * 6 * 4 * H * (H + E) + 6 * H * V)
    rates = {name: {"r": 100.0} for name in step_products(word)}     # 100 GFLOP/s everywhere
    assert roofline(word, rates, "r") == pytest.approx(100e9 / flops_per_token(word))
def test_bench_runs_our_engines_on_several_cells(tmp_path, capsys):
    """--cell: one row per engine and cell, each with its speed over the first cell's; the
    references stay the book's RNN, and the targets read the engines' rnn rows."""
    path = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--configs", "small", "--subjects", "numpy,torch.nn.RNN",
                 "--parts", "train", "--cell", "rnn,gru", "--json", str(path)]) == 0
    out = json.loads(path.read_text())
    rows = out["results"]["small"]
    assert set(rows) == {"numpy rnn", "numpy gru", "torch.nn.RNN"}
    assert (rows["numpy gru"]["subject"], rows["numpy gru"]["cell"]) == ("numpy", "gru")
    assert rows["numpy gru"]["train"]["paired_ratio_to_first_cell"] > 0
    assert "paired_ratio_to_first_cell" not in rows["numpy rnn"]["train"]
    assert out["settings"]["cells"] == ["rnn", "gru"]
    assert "x rnn" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["bench", "--cell", "lstn"])


def test_a_closed_worker_leaves_no_open_pipe():
    from bptt.bench.worker import Worker

    w = Worker(threads=1)
    w.close()
    assert w.proc.returncode is not None
    assert w.proc.stdin.closed and w.proc.stdout.closed


def test_kernel_parts_time_each_call_of_the_kernel():
    from bptt.bench.rates import kernel_parts
    from bptt.engine import kernel

    parts = kernel_parts("numpy-bf16", bench.QUICK_CONFIGS["word"], steps=2)
    if not kernel.enabled():
        assert parts == {}
        return
    assert kernel._load() is kernel._STATE["module"]        # the module is given back
    assert {"step", "forward lstm", "backward lstm", "softmax_xent"} <= set(parts)
    assert any(k.startswith("gemm ") and k.endswith(" bf16") for k in parts)
    assert parts["step"] >= max(v for k, v in parts.items() if k != "step") > 0
