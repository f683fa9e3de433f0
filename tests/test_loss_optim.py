"""Losses and optimisers: numerically stable softmax cross-entropy and MSE against torch,
gradient clipping, and SGD / Adam / Adagrad trajectories equal to torch.optim."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bptt.engine.numpy.loss import mse, softmax_cross_entropy
from bptt.optim import SGD, Adagrad, Adam, clip_grad_norm_, clip_grad_value_, global_norm


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


# -- losses -------------------------------------------------------------------------------------

def torch_ce(logits: np.ndarray, targets: np.ndarray):
    s = torch.tensor(logits, requires_grad=True)
    loss = F.cross_entropy(s, torch.tensor(targets))
    loss.backward()
    return loss.item(), s.grad.numpy()


@pytest.mark.parametrize("big", [1e4, -1e4])
def test_cross_entropy_is_stable_for_huge_logits(big):
    logits = np.array([[big, 0.0, -3.0], [1.0, big, big], [0.5, -0.5, big], [big, big, big]])
    targets = np.array([0, 2, 1, 1])
    loss, dlogits = softmax_cross_entropy(logits.copy(), targets)
    assert np.isfinite(loss) and np.all(np.isfinite(dlogits))
    ref_loss, ref_grad = torch_ce(logits, targets)
    assert loss == pytest.approx(ref_loss, rel=1e-12, abs=1e-12)
    assert rel(dlogits, ref_grad) <= 1e-12


def test_cross_entropy_matches_torch():
    rng = np.random.default_rng(0)
    logits, targets = 2.0 * rng.standard_normal((12, 7)), rng.integers(0, 7, 12)
    loss, dlogits = softmax_cross_entropy(logits.copy(), targets)
    ref_loss, ref_grad = torch_ce(logits, targets)
    assert loss == pytest.approx(ref_loss, rel=1e-13)
    assert rel(dlogits, ref_grad) <= 1e-13


def test_cross_entropy_leaves_logits_alone_and_rejects_bad_targets():
    logits = np.arange(6.0).reshape(2, 3)
    softmax_cross_entropy(logits, np.array([0, 1]))
    assert np.array_equal(logits, np.arange(6.0).reshape(2, 3))
    with pytest.raises(ValueError, match=r"expected targets in \[0, 3\), got values in \[0, 3\]"):
        softmax_cross_entropy(logits, np.array([0, 3]))
    with pytest.raises(ValueError, match=r"expected 2 targets .* got 3"):
        softmax_cross_entropy(logits, np.array([0, 1, 2]))


def test_mse_matches_torch():
    rng = np.random.default_rng(1)
    pred, target = rng.standard_normal((5, 4, 2)), rng.standard_normal((5, 4, 2))
    loss, dpred = mse(pred, target)
    p = torch.tensor(pred, requires_grad=True)
    ref = F.mse_loss(p, torch.tensor(target))
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-13)
    assert rel(dpred, p.grad.numpy()) <= 1e-13
    with pytest.raises(ValueError, match=r"expected target of shape \(5, 4, 2\), got \(5, 4\)"):
        mse(pred, target[..., 0])


# -- clipping -------------------------------------------------------------------------------

grad_dicts = st.dictionaries(
    st.sampled_from(["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "head.weight", "head.bias"]),
    arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 4)),
           elements=st.floats(-1e3, 1e3, allow_nan=False)),
    min_size=1, max_size=5,
)


@settings(max_examples=150, deadline=None)
@given(grads=grad_dicts, max_norm=st.floats(1e-3, 1e3))
def test_clip_grad_norm(grads, max_norm):
    before = {k: v.copy() for k, v in grads.items()}
    expected_norm = np.sqrt(sum(float((v * v).sum()) for v in before.values()))
    norm = clip_grad_norm_(grads, max_norm)
    assert float(norm) == pytest.approx(expected_norm, rel=1e-12, abs=1e-300)  # before clipping
    after = float(global_norm(grads))
    scale = max_norm / (expected_norm * (1 + 8 * np.finfo(np.float64).eps) + 1e-6)
    if scale >= 1.0:
        for k in grads:                      # untouched, bit for bit
            assert np.array_equal(grads[k], before[k])
    else:
        assert after == pytest.approx(max_norm * expected_norm * scale / max_norm, rel=1e-12)
        for k in grads:                      # one common scale: directions kept
            assert np.allclose(grads[k], before[k] * scale, rtol=1e-12, atol=0)
    assert after <= max_norm                 # strictly: the clipped norm never exceeds theta


def test_clip_grad_norm_on_torch_tensors_matches_numpy():
    rng = np.random.default_rng(2)
    g_np = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)}
    g_t = {k: torch.tensor(v) for k, v in g_np.items()}
    n_np, n_t = clip_grad_norm_(g_np, 0.5), clip_grad_norm_(g_t, 0.5)
    assert float(n_np) == pytest.approx(float(n_t), rel=1e-14)
    for k in g_np:
        assert rel(g_t[k].numpy(), g_np[k]) <= 1e-14
    zero = {"a": torch.zeros(3, dtype=torch.float64)}
    assert float(clip_grad_norm_(zero, 1.0)) == 0.0 and torch.all(zero["a"] == 0)


@pytest.mark.parametrize("as_torch", [False, True])
def test_clip_grad_value(as_torch):
    g = {"a": np.array([-5.0, -0.5, 0.0, 0.25, 3.0]), "b": np.array([[2.0, -2.0]])}
    if as_torch:
        g = {k: torch.tensor(v) for k, v in g.items()}
    clip_grad_value_(g, 1.0)
    got = {k: np.asarray(v) for k, v in g.items()}
    assert np.array_equal(got["a"], [-1.0, -0.5, 0.0, 0.25, 1.0])
    assert np.array_equal(got["b"], [[1.0, -1.0]])


# -- optimisers ----------------------------------------------------------------------------------

OPTIMIZERS = [
    (SGD, torch.optim.SGD, {"lr": 0.1}),
    (Adam, torch.optim.Adam, {"lr": 0.01}),
    (Adam, torch.optim.Adam, {"lr": 0.05, "betas": (0.8, 0.99), "eps": 1e-6}),
    (Adagrad, torch.optim.Adagrad, {"lr": 0.1}),
    (Adagrad, torch.optim.Adagrad, {"lr": 0.3, "eps": 1e-6}),
]


def _trajectory_problem(seed: int = 3, steps: int = 10):
    rng = np.random.default_rng(seed)
    start = {"w": rng.standard_normal((3, 4)), "b": rng.standard_normal(4)}
    grads = [{k: rng.standard_normal(v.shape) * 10.0 ** rng.uniform(-2, 1)
              for k, v in start.items()} for _ in range(steps)]
    return start, grads


@pytest.mark.parametrize("ours, theirs, kw", OPTIMIZERS)
@pytest.mark.parametrize("on_torch", [False, True])
def test_optimizer_trajectory_equals_torch_optim(ours, theirs, kw, on_torch):
    start, grads = _trajectory_problem()
    ref = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in start.items()}
    ref_opt = theirs(list(ref.values()), **kw)
    if on_torch:
        params = {k: torch.tensor(v) for k, v in start.items()}
    else:
        params = {k: v.copy() for k, v in start.items()}
    opt = ours(**kw)
    for step, g in enumerate(grads):
        for k, p in ref.items():
            p.grad = torch.tensor(g[k])
        ref_opt.step()
        opt.step(params, {k: torch.tensor(v) for k, v in g.items()} if on_torch else g)
        for k in params:
            got = params[k].numpy() if on_torch else params[k]
            assert type(params[k]) is (torch.Tensor if on_torch else np.ndarray)
            err = rel(got, ref[k].detach().numpy())
            assert err <= 1e-12, f"{ours.__name__} step {step} {k}: {err:.1e}"


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(1e-3, 1e3), st.sampled_from(["numpy", "torch"]))
def test_clipped_float32_norm_never_exceeds_the_threshold(seed, max_norm, kind):
    rng = np.random.default_rng(seed)
    grads = {k: (rng.standard_normal(n) * rng.uniform(0.1, 1e3)).astype(np.float32)
             for k, n in (("a", 17), ("b", 300), ("c", 5))}
    if kind == "torch":
        grads = {k: torch.from_numpy(v) for k, v in grads.items()}
    clip_grad_norm_(grads, max_norm)
    assert float(global_norm(grads)) <= max_norm
