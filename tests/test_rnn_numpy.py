"""The NumPy vanilla RNN layer and its hand-written BPTT, against torch and finite differences.

References: ``torch.nn.RNN`` in float64 differentiated by autograd, a hand-unrolled torch loop
with detached states for truncated BPTT, and central finite differences for the layer, the
losses and a whole tiny language model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bptt.check import numerical_gradient
from bptt.engine.numpy import rnn, stack
from bptt.engine.numpy.loss import mse, softmax_cross_entropy
from bptt.engine.numpy.model import NumpyEngine
from bptt.model import ModelSpec, init_params

FD_TOL = 1e-6       # central differences with eps = 1e-6 in float64 are good to ~1e-9


def assert_close(ours, ref, rtol: float, what: str = "") -> None:
    """max|ours - ref| <= rtol * max|ref| (shapes equal)."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != {ref.shape}"
    scale = max(float(np.max(np.abs(ref))) if ref.size else 0.0, 1e-300)
    err = float(np.max(np.abs(ours - ref))) / scale if ref.size else 0.0
    assert err <= rtol, f"{what}: relative error {err:.2e} > {rtol:.0e}"


def torch_rnn(input_size, hidden_size, *, nonlinearity="tanh", bias=True, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = torch.nn.RNN(input_size, hidden_size, nonlinearity=nonlinearity, bias=bias)
    return module.double()


def layer_weights(module) -> dict[str, np.ndarray]:
    """torch's l0 parameters as the keyword arguments of ``rnn.forward``."""
    return {k.removesuffix("_l0"): p.detach().numpy().copy()
            for k, p in module.named_parameters()}


def torch_reference(module, x, h0, dhs, dh_n):
    """Autograd through ``module`` of sum(out * dhs) + sum(h_n * dh_n): outputs and grads."""
    x_t = torch.tensor(x, requires_grad=True)
    h0_t = torch.tensor(h0[None], requires_grad=True)
    out, h_n = module(x_t, h0_t)
    loss = (out * torch.tensor(dhs)).sum() + (h_n[0] * torch.tensor(dh_n)).sum()
    loss.backward()
    grads = {k.removesuffix("_l0"): p.grad.numpy() for k, p in module.named_parameters()}
    return (out.detach().numpy(), h_n[0].detach().numpy(), x_t.grad.numpy(),
            h0_t.grad[0].numpy(), grads)


# -- the seed scenario ------------------------------------------------------------------------

def test_seed_scenario_torch_nn_rnn_4_5():
    """torch.nn.RNN(4, 5), float64, seeded; T = 3, B = 3, random h0 and upstream gradients."""
    torch.manual_seed(0)
    module = torch.nn.RNN(4, 5).double()
    T, B = 3, 3
    x = torch.randn(T, B, 4, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, B, 5, dtype=torch.float64, requires_grad=True)
    dout = torch.randn(T, B, 5, dtype=torch.float64)
    out, h_n = module(x, h0)
    (out * dout).sum().backward()

    w = layer_weights(module)
    hs, (ours_h_n,), cache = rnn.forward(x.detach().numpy(), (h0.detach().numpy()[0],), **w)
    dx, (dh0,), grads = rnn.backward(dout.numpy(), None, cache)

    assert_close(hs, out.detach().numpy(), 1e-12, "hidden states")
    assert_close(ours_h_n, h_n.detach().numpy()[0], 1e-12, "h_n")
    assert_close(dx, x.grad.numpy(), 1e-12, "dx")
    assert_close(dh0, h0.grad.numpy()[0], 1e-12, "dh0")
    assert set(grads) == {"weight_ih", "weight_hh", "bias_ih", "bias_hh"}
    for name, p in module.named_parameters():
        assert_close(grads[name.removesuffix("_l0")], p.grad.numpy(), 1e-12, name)


# -- property: any small shape, both nonlinearities, with/without h0 and bias --------------------

@settings(max_examples=40, deadline=None)
@given(
    T=st.integers(1, 6), B=st.integers(1, 4), I=st.integers(1, 5), H=st.integers(1, 6),
    nonlinearity=st.sampled_from(["tanh", "relu"]), with_h0=st.booleans(),
    bias=st.booleans(), seed=st.integers(0, 2**16),
)
def test_matches_torch_autograd(T, B, I, H, nonlinearity, with_h0, bias, seed):
    module = torch_rnn(I, H, nonlinearity=nonlinearity, bias=bias, seed=seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((B, H)) if with_h0 else np.zeros((B, H))
    dhs, dh_n = rng.standard_normal((T, B, H)), rng.standard_normal((B, H))

    hs, (h_n,), cache = rnn.forward(x, (h0,) if with_h0 else None, **layer_weights(module),
                                    nonlinearity=nonlinearity)
    dx, (dh0,), grads = rnn.backward(dhs, (dh_n,), cache)
    ref_out, ref_h_n, ref_dx, ref_dh0, ref_grads = torch_reference(module, x, h0, dhs, dh_n)

    assert_close(hs, ref_out, 1e-12, "out")
    assert_close(h_n, ref_h_n, 1e-12, "h_n")
    assert_close(dx, ref_dx, 1e-10, "dx")
    assert_close(dh0, ref_dh0, 1e-10, "dh0")
    assert set(grads) == set(ref_grads)
    for k in ref_grads:
        assert_close(grads[k], ref_grads[k], 1e-10, k)


# -- finite differences -------------------------------------------------------------------------

@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False])
def test_layer_finite_differences(nonlinearity, bias):
    rng = np.random.default_rng(3)
    T, B, I, H = 4, 2, 3, 3
    w = {"weight_ih": rng.uniform(-0.6, 0.6, (H, I)), "weight_hh": rng.uniform(-0.6, 0.6, (H, H))}
    if bias:
        w |= {"bias_ih": rng.uniform(-0.5, 0.5, H), "bias_hh": rng.uniform(-0.5, 0.5, H)}
    x, h0 = rng.standard_normal((T, B, I)), rng.standard_normal((B, H))
    dhs, dh_n = rng.standard_normal((T, B, H)), rng.standard_normal((B, H))

    def loss() -> float:
        hs, (h_n,), _ = rnn.forward(x, (h0,), **w, nonlinearity=nonlinearity)
        return float(np.vdot(hs, dhs) + np.vdot(h_n, dh_n))

    _, _, cache = rnn.forward(x, (h0,), **w, nonlinearity=nonlinearity)
    if nonlinearity == "relu":   # no pre-activation near the kink, where differences lie
        hs = cache.states[1:]
        assert np.all((hs == 0) | (hs > 1e-4))
    dx, (dh0,), grads = rnn.backward(dhs, (dh_n,), cache)
    for name, value in w.items():
        assert_close(grads[name], numerical_gradient(loss, value), FD_TOL, name)
    assert_close(dx, numerical_gradient(loss, x), FD_TOL, "dx")
    assert_close(dh0, numerical_gradient(loss, h0), FD_TOL, "dh0")


def test_softmax_cross_entropy_finite_differences():
    rng = np.random.default_rng(4)
    logits = 3.0 * rng.standard_normal((6, 5))
    targets = rng.integers(0, 5, 6)
    _, dlogits = softmax_cross_entropy(logits.copy(), targets)
    numeric = numerical_gradient(lambda: softmax_cross_entropy(logits, targets)[0], logits)
    assert_close(dlogits, numeric, FD_TOL, "dlogits")


def test_mse_finite_differences():
    rng = np.random.default_rng(5)
    pred, target = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    _, dpred = mse(pred, target)
    assert_close(dpred, numerical_gradient(lambda: mse(pred, target)[0], pred), FD_TOL, "dpred")


@pytest.mark.parametrize("num_layers", [1, 2])
def test_language_model_loss_and_grads_finite_differences(num_layers):
    """The whole NumpyEngine: token ids -> RNN stack -> head -> softmax cross-entropy."""
    V, H, B, T = 5, 4, 2, 4
    spec = ModelSpec(cell="rnn", input_size=V, hidden_size=H, output_size=V,
                     num_layers=num_layers, task="lm")
    engine = NumpyEngine(spec, dtype="float64")
    params = engine.from_numpy(init_params(spec, "torch", rng=6, dtype="float64"))
    rng = np.random.default_rng(7)
    X, Y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    state = 0.5 * rng.standard_normal((num_layers, B, H))

    _, grads, _ = engine.loss_and_grads(params, X, Y, state)

    def loss() -> float:
        return engine.loss_and_grads(params, X, Y, state)[0]

    assert set(grads) == set(params)
    for name, value in params.items():
        assert_close(grads[name], numerical_gradient(loss, value), FD_TOL, name)


# -- truncated BPTT ------------------------------------------------------------------------------

def truncated_reference(w, x, h0, dhs, dh_n, k):
    """Autograd of a hand-unrolled torch loop where the loss at step t starts from the state at
    step t-k-1 detached (h0 detached when t-k-1 = -1, h0 with its gradient when t-k-1 < -1);
    dh_n is applied at step T-1 under the same cut. ``k = None``: no cut."""
    W = {n: torch.tensor(v, requires_grad=True) for n, v in w.items()}
    x_t = torch.tensor(x, requires_grad=True)
    h0_t = torch.tensor(h0, requires_grad=True)
    T = x.shape[0]

    def step(h, t):
        return torch.tanh(x_t[t] @ W["weight_ih"].T + W["bias_ih"] + h @ W["weight_hh"].T
                          + W["bias_hh"])

    with torch.no_grad():                            # the forward states, no graph
        states, h = [], h0_t
        for t in range(T):
            h = step(h, t)
            states.append(h)
    loss = torch.zeros((), dtype=torch.float64)
    for t in range(T):
        start = 0 if k is None else t - k
        if start > 0:
            h = states[start - 1].detach()
        elif start == 0 and k is not None:
            h = h0_t.detach()
        else:
            start, h = 0, h0_t
        for s in range(start, t + 1):
            h = step(h, s)
        loss = loss + (h * torch.tensor(dhs[t])).sum()
        if t == T - 1:
            loss = loss + (h * torch.tensor(dh_n)).sum()
    loss.backward()

    def g(p):
        return np.zeros(tuple(p.shape)) if p.grad is None else p.grad.numpy()

    return g(x_t), g(h0_t), {n: g(p) for n, p in W.items()}


@pytest.mark.parametrize("k", [0, 1, 2, "T-1", None])
def test_truncation_matches_detached_reference(k):
    T, B, I, H = 6, 2, 3, 4
    k = T - 1 if k == "T-1" else k
    rng = np.random.default_rng(8)
    w = {"weight_ih": rng.uniform(-0.7, 0.7, (H, I)), "weight_hh": rng.uniform(-0.7, 0.7, (H, H)),
         "bias_ih": rng.uniform(-0.3, 0.3, H), "bias_hh": rng.uniform(-0.3, 0.3, H)}
    x, h0 = rng.standard_normal((T, B, I)), rng.standard_normal((B, H))
    dhs, dh_n = rng.standard_normal((T, B, H)), rng.standard_normal((B, H))

    _, _, cache = rnn.forward(x, (h0,), **w)
    dx, (dh0,), grads = rnn.backward(dhs, (dh_n,), cache, truncate=k)
    ref_dx, ref_dh0, ref_grads = truncated_reference(w, x, h0, dhs, dh_n, k)

    assert_close(dx, ref_dx, 1e-12, "dx")
    assert_close(dh0, ref_dh0, 1e-12, "dh0")
    for name in w:
        assert_close(grads[name], ref_grads[name], 1e-12, name)
    if k == 0:
        assert np.all(dh0 == 0)              # the loss at t reaches z_t only


def test_truncation_beyond_the_sequence_is_full_bptt():
    rng = np.random.default_rng(9)
    w = {"weight_ih": rng.standard_normal((3, 2)), "weight_hh": 0.5 * rng.standard_normal((3, 3))}
    x, h0 = rng.standard_normal((4, 2, 2)), rng.standard_normal((2, 3))
    dhs = rng.standard_normal((4, 2, 3))
    _, _, cache = rnn.forward(x, (h0,), **w)
    full, cut = rnn.backward(dhs, None, cache), rnn.backward(dhs, None, cache, truncate=4)
    for a, b in zip((full[0], *full[1]), (cut[0], *cut[1]), strict=True):
        assert_close(b, a, 1e-13)
    for name in full[2]:
        assert_close(cut[2][name], full[2][name], 1e-13, name)


# -- token ids and dtypes -----------------------------------------------------------------------

@pytest.mark.parametrize("truncate", [None, 1])
def test_token_ids_equal_one_hot_input(truncate):
    V, H, T, B = 6, 4, 5, 3
    rng = np.random.default_rng(10)
    w = {"weight_ih": rng.standard_normal((H, V)), "weight_hh": 0.4 * rng.standard_normal((H, H)),
         "bias_ih": rng.standard_normal(H), "bias_hh": rng.standard_normal(H)}
    ids = rng.integers(0, V, (T, B))
    ids[0, 0] = ids[1, 0]                   # a repeated token: its gradient rows must add up
    one_hot = np.eye(V)[ids]
    h0, dhs = rng.standard_normal((B, H)), rng.standard_normal((T, B, H))

    hs_ids, _, cache_ids = rnn.forward(ids, (h0,), **w)
    hs_hot, _, cache_hot = rnn.forward(one_hot, (h0,), **w)
    assert_close(hs_ids, hs_hot, 1e-14, "hs")
    dx_ids, (dh0_ids,), g_ids = rnn.backward(dhs, None, cache_ids, truncate)
    dx_hot, (dh0_hot,), g_hot = rnn.backward(dhs, None, cache_hot, truncate)
    assert dx_ids is None and dx_hot.shape == (T, B, V)
    assert_close(dh0_ids, dh0_hot, 1e-14, "dh0")
    for name in g_hot:
        assert_close(g_ids[name], g_hot[name], 1e-14, name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_in_equals_dtype_out(dtype):
    rng = np.random.default_rng(11)
    w = {"weight_ih": rng.standard_normal((4, 3)), "weight_hh": rng.standard_normal((4, 4)),
         "bias_ih": rng.standard_normal(4), "bias_hh": rng.standard_normal(4)}
    w = {k: v.astype(dtype) for k, v in w.items()}
    x, h0 = rng.standard_normal((5, 2, 3)).astype(dtype), rng.standard_normal((2, 4)).astype(dtype)
    hs, (h_n,), cache = rnn.forward(x, (h0,), **w)
    dx, (dh0,), grads = rnn.backward(np.ones_like(hs), (np.ones_like(h_n),), cache, truncate=2)
    for a in (hs, h_n, dx, dh0, *grads.values()):
        assert a.dtype == dtype


# -- bad input -------------------------------------------------------------------------------------

def _good():
    rng = np.random.default_rng(12)
    return {"x": rng.standard_normal((3, 2, 4)), "h0": np.zeros((2, 5)),
            "weight_ih": rng.standard_normal((5, 4)), "weight_hh": rng.standard_normal((5, 5))}


@pytest.mark.parametrize("change, expected, got", [
    ({"x": np.zeros((3, 4))}, "(T, B, 4)", "(3, 4)"),                     # wrong rank
    ({"x": np.zeros((3, 2, 6))}, "(T, B, 4)", "(3, 2, 6)"),               # wrong input size
    ({"h0": np.zeros((3, 5))}, "(2, 5)", "(3, 5)"),                       # h0 of another batch
    ({"nonlinearity": "sigmoid"}, "'tanh' or 'relu'", "'sigmoid'"),
    ({"x": np.array([[0, 9]])}, "[0, 4)", "[0, 9]"),                      # token id too large
])
def test_bad_forward_input_names_expected_and_got(change, expected, got):
    kw = _good() | change
    with pytest.raises(ValueError) as info:
        rnn.forward(kw.pop("x"), (kw.pop("h0"),), **kw)
    message = str(info.value)
    assert "expected" in message and expected in message and got in message


def test_negative_truncate_names_expected_and_got():
    kw = _good()
    hs, _, cache = rnn.forward(kw.pop("x"), (kw.pop("h0"),), **kw)
    with pytest.raises(ValueError, match=r"expected .*>= 0, got -1"):
        rnn.backward(np.ones_like(hs), None, cache, truncate=-1)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("shape", [(1, 3, 4), (3, 3, 4), (3, 4)])
def test_stacked_state_with_wrong_layer_count_is_rejected(cell, shape):
    from bptt.model import ModelSpec, init_params

    spec = ModelSpec(cell=cell, input_size=5, hidden_size=4, output_size=5, num_layers=2)
    params = init_params(spec, rng=0, dtype="float64")
    x = np.random.default_rng(0).standard_normal((6, 3, 5))
    h = np.zeros(shape)
    hx = (h, h) if cell == "lstm" else h
    with pytest.raises(ValueError, match=r"expected hx of shape \(L\*D, B, H\) = \(2, 3, 4\)"):
        stack.forward(cell, params, x, hx, num_layers=2)
