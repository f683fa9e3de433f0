"""Tests for the torch engine's hand-written BPTT (bptt.engine.torch) and the engines' interface.

The stack's backward is our derivation, wrapped in ``StackFunction``; it is checked against
finite differences (``torch.autograd.gradcheck`` in float64), against the NumPy engine's BPTT,
against autograd through torch.nn.RNN/LSTM/GRU on the same weights, and (for truncation)
against the definition: each loss term differentiated on its own graph cut after k steps,
built from torch.nn.RNNCell/LSTMCell/GRUCell.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.autograd.gradcheck import GradcheckError

from bptt.engine import get_engine
from bptt.engine.numpy import stack as np_stack
from bptt.engine.torch import stack
from bptt.engine.torch.model import TORCH_ENGINES, TorchEngine
from bptt.model import ModelSpec, init_params

VARIANTS = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")]
VARIANT_IDS = ["rnn-tanh", "rnn-relu", "lstm", "gru"]
F64 = torch.float64


def rel_err(a, b) -> float:
    """max |a - b| / max |b| (the reference is ``b``)."""
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = np.abs(b).max() if b.size else 0.0
    return float(np.abs(a - b).max() / max(scale, 1e-300)) if b.size else 0.0


def stack_weights(cell, num_layers, bidirectional, bias, input_size, hidden, seed,
                  scale=1.5) -> dict[str, np.ndarray]:
    """Float64 stack parameters named as torch (the head dropped), a bit larger than torch's
    init so that the gates leave their linear range."""
    spec = ModelSpec(cell=cell, input_size=input_size, hidden_size=hidden, output_size=1,
                     num_layers=num_layers, bidirectional=bidirectional, bias=bias,
                     task="regression")
    params = init_params(spec, rng=seed, dtype="float64")
    return {k: v * scale for k, v in params.items() if not k.startswith("head.")}


def leaves(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, dtype=F64, requires_grad=True) for k, v in arrays.items()}


def config(cell, nonlinearity, names, num_layers, bidirectional, truncate=None, dropout=0.0,
           masks=None) -> stack.StackConfig:
    return stack.StackConfig(
        cell=cell, names=tuple(names), num_layers=num_layers, bidirectional=bidirectional,
        nonlinearity=nonlinearity, dropout=dropout, training=dropout > 0, truncate=truncate,
        masks=masks,
    )


def differentiable(cfg):
    """StackFunction as a function of tensors only, returning its differentiable outputs."""
    def f(x, h0, c0, *weights):
        out, h_n, c_n, _ = stack.StackFunction.apply(cfg, x, h0, c0, *weights)
        return (out, h_n) if c_n is None else (out, h_n, c_n)
    return f


# -- finite differences --------------------------------------------------------------------

GRADCHECK_CONFIGS = [
    # (layers, bidirectional, initial state, truncate)  truncate=T keeps T+1 ages, cuts nothing
    (1, False, False, None),
    (1, False, True, "T"),
    (1, True, True, None),
    (2, False, True, "T"),
    (2, True, False, None),
    (2, True, True, "T"),
]


@pytest.mark.parametrize("layers,bidirectional,init,truncate", GRADCHECK_CONFIGS)
@pytest.mark.parametrize("cell,nonlinearity", VARIANTS, ids=VARIANT_IDS)
def test_gradcheck_stack_function(cell, nonlinearity, layers, bidirectional, init, truncate):
    T, B, I, H = 4, 2, 3, 2
    D = 2 if bidirectional else 1
    rng = np.random.default_rng(1)
    w = leaves(stack_weights(cell, layers, bidirectional, True, I, H, seed=2))
    x = torch.tensor(rng.normal(size=(T, B, I)), dtype=F64, requires_grad=True)
    h0 = c0 = None
    if init:
        h0 = torch.tensor(rng.normal(size=(layers * D, B, H)), dtype=F64, requires_grad=True)
        if cell == "lstm":
            c0 = torch.tensor(rng.normal(size=(layers * D, B, H)), dtype=F64,
                              requires_grad=True)
    cfg = config(cell, nonlinearity, w, layers, bidirectional,
                 truncate=T if truncate == "T" else None)
    assert torch.autograd.gradcheck(differentiable(cfg), (x, h0, c0, *w.values()))


@pytest.mark.parametrize("cell,nonlinearity", VARIANTS, ids=VARIANT_IDS)
def test_gradcheck_with_dropout_and_token_input(cell, nonlinearity):
    """Token ids (T, B) into a 2-layer bidirectional stack with fixed dropout masks."""
    T, B, V, H = 5, 3, 4, 2
    rng = np.random.default_rng(3)
    w = leaves(stack_weights(cell, 2, True, True, V, H, seed=4))
    x = torch.tensor(rng.integers(0, V, size=(T, B)))             # ids repeat: index_add_ sums
    h0 = torch.tensor(rng.normal(size=(4, B, H)), dtype=F64, requires_grad=True)
    c0 = torch.zeros(4, B, H, dtype=F64, requires_grad=True) if cell == "lstm" else None
    mask = stack.draw_mask((T, B, 2 * H), 0.4, like=h0.detach(),
                           generator=torch.Generator().manual_seed(5))
    assert set(mask.unique().tolist()) == {0.0, 1 / 0.6}
    cfg = config(cell, nonlinearity, w, 2, True, dropout=0.4, masks=(mask,))
    assert torch.autograd.gradcheck(differentiable(cfg), (x, h0, c0, *w.values()))


def test_gradcheck_detects_truncation():
    """With k < T the hand gradient is the truncated one, which gradcheck must reject: the
    check is not vacuous and truncation does cut something."""
    T, B, I, H = 4, 2, 3, 2
    w = leaves(stack_weights("rnn", 1, False, True, I, H, seed=6))
    x = torch.randn(T, B, I, dtype=F64, generator=torch.Generator().manual_seed(0),
                    requires_grad=True)
    cfg = config("rnn", "tanh", w, 1, False, truncate=1)
    with pytest.raises(GradcheckError):
        torch.autograd.gradcheck(differentiable(cfg), (x, None, None, *w.values()))


# -- against the NumPy engine and torch.nn ---------------------------------------------------

def builtin_module(cell, nonlinearity, I, H, layers, bidirectional, bias):
    cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    kwargs = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
    return cls(I, H, num_layers=layers, bias=bias, bidirectional=bidirectional, dtype=F64,
               **kwargs)


STACK_CONFIGS = [(1, False, True), (2, False, True), (2, True, True), (3, True, False)]


@pytest.mark.parametrize("layers,bidirectional,bias", STACK_CONFIGS)
@pytest.mark.parametrize("cell,nonlinearity", VARIANTS, ids=VARIANT_IDS)
def test_hand_backward_matches_numpy_and_torch_nn(cell, nonlinearity, layers, bidirectional,
                                                  bias):
    """Every gradient (input, initial state(s), weights) of the torch engine's BPTT equals the
    NumPy engine's and autograd through torch.nn.RNN/LSTM/GRU to 1e-10 (relative)."""
    T, B, I, H = 7, 3, 4, 5
    D = 2 if bidirectional else 1
    rng = np.random.default_rng(7)
    arrays = stack_weights(cell, layers, bidirectional, bias, I, H, seed=8)
    x_np = rng.normal(size=(T, B, I))
    h0_np = rng.normal(size=(layers * D, B, H))
    c0_np = rng.normal(size=(layers * D, B, H))
    dout = rng.normal(size=(T, B, D * H))
    dh_n = rng.normal(size=(layers * D, B, H))
    dc_n = rng.normal(size=(layers * D, B, H))
    lstm = cell == "lstm"

    # ours: StackFunction, differentiated through autograd
    w = leaves(arrays)
    x = torch.tensor(x_np, requires_grad=True)
    h0 = torch.tensor(h0_np, requires_grad=True)
    c0 = torch.tensor(c0_np, requires_grad=True) if lstm else None
    cfg = config(cell, nonlinearity, w, layers, bidirectional)
    out, h_n, c_n, masks = stack.StackFunction.apply(cfg, x, h0, c0, *w.values())
    assert masks.numel() == 0 and not masks.requires_grad
    outputs = [out, h_n] + ([c_n] if lstm else [])
    upstream = [torch.tensor(dout), torch.tensor(dh_n)] + ([torch.tensor(dc_n)] if lstm else [])
    inputs = [x, h0] + ([c0] if lstm else []) + list(w.values())
    ours = torch.autograd.grad(outputs, inputs, upstream)

    # torch.nn on the same weights
    w_ref = leaves(arrays)
    x_ref = torch.tensor(x_np, requires_grad=True)
    h0_ref = torch.tensor(h0_np, requires_grad=True)
    c0_ref = torch.tensor(c0_np, requires_grad=True)
    module = builtin_module(cell, nonlinearity, I, H, layers, bidirectional, bias)
    hx = (h0_ref, c0_ref) if lstm else h0_ref
    out_ref, state_ref = torch.func.functional_call(module, w_ref, (x_ref, hx))
    ref_outputs = [out_ref] + (list(state_ref) if lstm else [state_ref])
    ref_inputs = [x_ref, h0_ref] + ([c0_ref] if lstm else []) + list(w_ref.values())
    ref = torch.autograd.grad(ref_outputs, ref_inputs, upstream)

    # NumPy
    hx_np = (h0_np, c0_np) if lstm else h0_np
    out_np, _, cache = np_stack.forward(cell, arrays, x_np, hx_np, num_layers=layers,
                                        bidirectional=bidirectional, nonlinearity=nonlinearity)
    dx_np, dhx_np, g_np = np_stack.backward(dout, (dh_n, dc_n) if lstm else dh_n, cache)
    numpy_grads = [dx_np] + (list(dhx_np) if lstm else [dhx_np]) + [g_np[k] for k in arrays]

    assert rel_err(out, out_ref) <= 1e-12
    assert rel_err(out, out_np) <= 1e-12
    names = ["x", "h0"] + (["c0"] if lstm else []) + list(arrays)
    for name, a, b, c in zip(names, ours, ref, numpy_grads, strict=True):
        assert rel_err(a, b) <= 1e-10, (name, rel_err(a, b))
        assert rel_err(a, c) <= 1e-10, (name, rel_err(a, c))


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_token_ids_equal_one_hot_input(cell):
    """Ids (T, B) take the gather / index_add_ path; the same sequence as one-hot floats takes
    the product path: same outputs and same weight gradients (repeated ids are summed)."""
    T, B, V, H = 6, 4, 5, 3
    rng = np.random.default_rng(9)
    arrays = stack_weights(cell, 2, False, True, V, H, seed=10)
    ids = torch.tensor(rng.integers(0, V, size=(T, B)))
    ids[0, :] = 2                                             # a repeated id for certain
    one_hot = torch.nn.functional.one_hot(ids, V).to(F64)
    upstream = torch.tensor(rng.normal(size=(T, B, H)))
    results = []
    for x in (ids, one_hot):
        w = leaves(arrays)
        cfg = config(cell, "tanh", w, 2, False)
        out, _, _, _ = stack.StackFunction.apply(cfg, x, None, None, *w.values())
        results.append((out, torch.autograd.grad(out, list(w.values()), upstream)))
    (out_ids, g_ids), (out_hot, g_hot) = results
    assert rel_err(out_ids, out_hot) <= 1e-13
    for a, b in zip(g_ids, g_hot, strict=True):
        assert rel_err(a, b) <= 1e-12
    assert g_ids[0].abs().sum() > 0


# -- truncation against its definition ----------------------------------------------------------

def reference_truncated_grads(cell, arrays, x, state0, dhs, k):
    """The definition of truncated BPTT, one loss term at a time: the gradient of
    <dhs_t, h_t> on the graph where the state before step t - k is detached (the initial state
    is kept when t - k < 0), summed over t. Cells are torch.nn.*Cell (not our code)."""
    T, B, _ = x.shape
    H = arrays["weight_hh"].shape[1]
    cls = {"rnn": torch.nn.RNNCell, "lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}[cell]
    module = cls(x.shape[2], H, dtype=F64)
    w = leaves(arrays)
    s0 = tuple(torch.tensor(s, requires_grad=True) for s in state0)
    inputs = [*s0, *w.values()]
    total = [torch.zeros_like(t) for t in inputs]

    def step(x_t, state):
        new = torch.func.functional_call(module, w, (x_t, state if cell == "lstm" else state[0]))
        return new if cell == "lstm" else (new,)

    with torch.no_grad():                                 # the states before each step
        befores, s = [], s0
        for t in range(T):
            befores.append(tuple(v.detach() for v in s))
            s = step(torch.tensor(x[t]), s)
    for t in range(T):
        first = t - k
        state = s0 if first < 0 else befores[first]
        for j in range(max(first, 0), t + 1):
            state = step(torch.tensor(x[j]), state)
        loss = (state[0] * torch.tensor(dhs[t])).sum()
        for acc, g in zip(total, torch.autograd.grad(loss, inputs, allow_unused=True),
                          strict=True):
            if g is not None:
                acc += g
    return total


@pytest.mark.parametrize("k", [0, 1, 3])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_truncation_matches_its_definition(cell, k):
    T, B, I, H = 6, 2, 3, 4
    rng = np.random.default_rng(11)
    arrays = {k_[:-3]: v for k_, v in stack_weights(cell, 1, False, True, I, H, 12).items()}
    x = rng.normal(size=(T, B, I))
    state0 = [rng.normal(size=(B, H)) for _ in range(2 if cell == "lstm" else 1)]
    dhs = rng.normal(size=(T, B, H))
    ref = reference_truncated_grads(cell, arrays, x, state0, dhs, k)

    w = leaves({f"{n}_l0": v for n, v in arrays.items()})
    s0 = [torch.tensor(s[None], requires_grad=True) for s in state0]
    cfg = config(cell, "tanh", w, 1, False, truncate=k)
    c0 = s0[1] if cell == "lstm" else None
    out, _, _, _ = stack.StackFunction.apply(cfg, torch.tensor(x), s0[0], c0, *w.values())
    ours = torch.autograd.grad(out, [*s0, *w.values()], torch.tensor(dhs))
    for a, b in zip(ours, ref, strict=True):
        assert rel_err(a.reshape(b.shape), b) <= 1e-10
    full = torch.autograd.grad(
        stack.StackFunction.apply(config(cell, "tanh", w, 1, False), torch.tensor(x), s0[0], c0,
                                  *w.values())[0],
        list(w.values()), torch.tensor(dhs))
    assert rel_err(ours[len(s0)], full[0]) > 1e-3          # the truncation did cut paths


# -- the engines' interface ---------------------------------------------------------------------

def lm_spec(cell="rnn", **kw):
    return ModelSpec(cell=cell, input_size=6, hidden_size=5, output_size=6, **kw)


def lm_batch(B=3, T=4, V=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, size=(B, T)), rng.integers(0, V, size=(B, T))


@pytest.mark.parametrize("name", sorted(TORCH_ENGINES))
def test_engine_construction(name):
    spec = lm_spec("lstm", num_layers=2)
    engine = get_engine(name, spec, device="cpu", dtype="float64")
    assert engine.name == name and engine.device == torch.device("cpu")
    assert engine.dtype == F64
    h, c = engine.begin_state(3)
    assert h.shape == c.shape == (2, 3, 5) and h.dtype == F64 and not h.any()
    if name == "torch":                                  # bf16 for every cell
        assert get_engine(name, spec, precision="bf16").precision == "bf16"
    else:
        with pytest.raises(ValueError, match="expected precision 'fp32', got 'bf16'"):
            get_engine(name, spec, precision="bf16")
    with pytest.raises(ValueError, match="expected dtype"):
        TORCH_ENGINES[name](spec, dtype="float16")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            TORCH_ENGINES[name](spec, device="cuda")
        assert TORCH_ENGINES[name](spec).device == torch.device("cpu")


@pytest.mark.parametrize("name", sorted(TORCH_ENGINES))
def test_params_and_state_conversions(name):
    spec = lm_spec("gru")
    engine = get_engine(name, spec, device="cpu")
    arrays = init_params(spec, rng=0)
    params = engine.from_numpy(arrays)
    assert list(params) == list(arrays)
    for v in params.values():
        assert isinstance(v, torch.Tensor) and v.dtype == torch.float32
        assert not v.requires_grad
    params["head.bias"] += 1.0                                # a copy: the array is untouched
    assert np.array_equal(arrays["head.bias"], init_params(spec, rng=0)["head.bias"])
    back = engine.to_numpy(params)
    assert isinstance(back["head.bias"], np.ndarray) and back["head.bias"].dtype == np.float32
    np.testing.assert_array_equal(back["head.bias"], arrays["head.bias"] + 1.0)
    params["head.bias"] += 1.0                                # to_numpy was a snapshot
    np.testing.assert_array_equal(back["head.bias"], arrays["head.bias"] + 1.0)
    state = np.arange(15, dtype=np.float32).reshape(1, 3, 5)
    s = engine.state_from_numpy(state)
    assert s.shape == (1, 3, 5) and s.dtype == torch.float32
    np.testing.assert_array_equal(engine.state_to_numpy(s), state)
    assert engine.state_from_numpy(None) is None
    with pytest.raises(ValueError, match="expected parameters"):
        engine.from_numpy({k: v for k, v in arrays.items() if k != "head.bias"})


@pytest.mark.parametrize("name", sorted(TORCH_ENGINES))
def test_loss_and_grads_contract(name):
    spec = lm_spec("lstm", num_layers=2)
    engine = get_engine(name, spec, device="cpu")
    params = engine.from_numpy(init_params(spec, rng=1))
    before = {k: v.clone() for k, v in params.items()}
    X, Y = lm_batch()
    state = engine.begin_state(3)
    loss, grads, new_state = engine.loss_and_grads(params, X, Y, state)
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0 and not loss.requires_grad
    assert isinstance(engine.scalar(loss), float) and 0 < engine.scalar(loss) < 10
    assert list(grads) == list(params)
    for k, g in grads.items():
        assert g.shape == params[k].shape and g.dtype == torch.float32 and not g.requires_grad
        assert torch.equal(params[k], before[k]) and params[k].grad is None
    for s in new_state:
        assert s.shape == (2, 3, 5) and not s.requires_grad and s.grad_fn is None
    out, state2 = engine.forward(params, X, state)
    assert out.shape == (3, 4, 6) and not out.requires_grad
    for a, b in zip(state2, new_state, strict=True):
        torch.testing.assert_close(a, b)
    # the loss is the mean cross-entropy of those logits
    ref = torch.nn.functional.cross_entropy(out.reshape(-1, 6), torch.tensor(Y).reshape(-1))
    torch.testing.assert_close(loss, ref)


def test_forward_matches_numpy_engine_regression():
    spec = ModelSpec(cell="gru", input_size=3, hidden_size=4, output_size=2, num_layers=2,
                     bidirectional=True, task="regression")
    arrays = init_params(spec, rng=2, dtype="float64")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2, 5, 3))
    ref, ref_state = get_engine("numpy", spec, dtype="float64").forward(arrays, X)
    for name in TORCH_ENGINES:
        engine = get_engine(name, spec, device="cpu", dtype="float64")
        out, state = engine.forward(engine.from_numpy(arrays), X)
        assert out.shape == (2, 5, 2)
        assert rel_err(out, ref) <= 1e-12 and rel_err(state, ref_state) <= 1e-12


def test_builtin_rejects_truncation():
    spec = lm_spec()
    engine = get_engine("torch-builtin", spec, device="cpu")
    params = engine.from_numpy(init_params(spec, rng=0))
    X, Y = lm_batch()
    with pytest.raises(ValueError, match="'torch' and 'torch-autograd'"):
        engine.loss_and_grads(params, X, Y, truncate=3)
    with pytest.raises(ValueError, match="bptt_truncate"):
        get_engine("torch", spec, device="cpu").loss_and_grads(params, X, Y, truncate=-1)


@pytest.mark.parametrize("name", sorted(TORCH_ENGINES))
def test_input_validation(name):
    spec = lm_spec()
    engine = get_engine(name, spec, device="cpu")
    params = engine.from_numpy(init_params(spec, rng=0))
    X, Y = lm_batch()
    with pytest.raises(ValueError, match=r"token ids in \[0, 6\)"):
        engine.loss_and_grads(params, X + 6, Y)
    with pytest.raises(ValueError, match="Y token ids"):
        engine.loss_and_grads(params, X, Y[:, :2])
    with pytest.raises(ValueError, match="X token ids of shape"):
        engine.forward(params, X.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(L\*D, B, H\) = \(1, 3, 5\)"):
        engine.loss_and_grads(params, X, Y, torch.zeros(1, 2, 5))
    with pytest.raises(ValueError, match="as one tensor"):
        engine.forward(params, X, (engine.begin_state(3), engine.begin_state(3)))


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_dropout_masks_shared_by_torch_and_autograd_engines(cell):
    """Generators in the same state draw the same masks in both engines: equal gradients; the
    masks do change them (another seed gives other gradients)."""
    spec = ModelSpec(cell=cell, input_size=4, hidden_size=5, output_size=3, num_layers=3,
                     dropout=0.5, bidirectional=True, task="regression")
    arrays = init_params(spec, rng=3, dtype="float64")
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(2, 6, 4)), rng.normal(size=(2, 6, 3))
    grads = {}
    for name, seed in (("torch", 0), ("torch-autograd", 0), ("torch", 1)):
        engine = get_engine(name, spec, device="cpu", dtype="float64")
        _, g, _ = engine.loss_and_grads(engine.from_numpy(arrays), X, Y,
                                        rng=torch.Generator().manual_seed(seed))
        grads[name, seed] = g
    for k in arrays:
        assert rel_err(grads["torch", 0][k], grads["torch-autograd", 0][k]) <= 1e-10
    assert rel_err(grads["torch", 1]["weight_ih_l0"], grads["torch", 0]["weight_ih_l0"]) > 1e-3
    # a NumPy Generator works too, and evaluation mode draws nothing
    e1, e2 = TorchEngine(spec, device="cpu", dtype="float64"), TorchEngine(spec, device="cpu",
                                                                          dtype="float64")
    _, g1, _ = e1.loss_and_grads(e1.from_numpy(arrays), X, Y, rng=np.random.default_rng(5))
    _, g2, _ = e2.loss_and_grads(e2.from_numpy(arrays), X, Y, rng=np.random.default_rng(5))
    assert all(torch.equal(g1[k], g2[k]) for k in arrays)
    _, g_eval, _ = e1.loss_and_grads(e1.from_numpy(arrays), X, Y, training=False)
    _, g_np, _ = get_engine("numpy", spec, dtype="float64").loss_and_grads(
        arrays, X, Y, training=False)
    assert all(rel_err(g_eval[k], g_np[k]) <= 1e-10 for k in arrays)


def test_dropout_mask_output_is_not_differentiable():
    w = leaves(stack_weights("rnn", 2, False, True, 3, 4, seed=0))
    x = torch.randn(5, 2, 3, dtype=F64, requires_grad=True)
    cfg = stack.StackConfig(cell="rnn", names=tuple(w), num_layers=2, dropout=0.25,
                            training=True, generator=torch.Generator().manual_seed(0))
    out, h_n, c_n, masks = stack.StackFunction.apply(cfg, x, None, None, *w.values())
    assert c_n is None and out.requires_grad and h_n.requires_grad
    assert masks.shape == (1, 5, 2, 4) and not masks.requires_grad
    assert set(masks.unique().tolist()) <= {0.0, 1 / 0.75}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_cuda_training_step_never_synchronises(cell):
    """On a GPU the whole loss_and_grads (host batch in, hand BPTT, dropout, truncation) queues
    work without one host synchronisation (no .item(), no copy back)."""
    spec = ModelSpec(cell=cell, input_size=11, hidden_size=8, output_size=11, num_layers=2,
                     dropout=0.3)
    engine = get_engine("torch", spec, device="cuda")
    params = engine.from_numpy(init_params(spec, rng=0))
    X, Y = lm_batch(B=4, T=9, V=11)
    gen = torch.Generator(device="cuda").manual_seed(0)
    state = engine.begin_state(4)
    engine.loss_and_grads(params, X, Y, state, truncate=3, rng=gen)   # warm-up (allocations)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss, grads, state = engine.loss_and_grads(params, X, Y, state, truncate=3, rng=gen)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert loss.device.type == "cuda" and all(g.is_cuda for g in grads.values())
    assert np.isfinite(engine.scalar(loss))
