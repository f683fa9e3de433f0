"""The four engines compute the same model: same losses while training, same gradients, same
truncation. numpy and torch are hand-written BPTT, torch-autograd the book's loop under
autograd, torch-builtin torch.nn.RNN/LSTM/GRU; the CUDA variants run when a GPU is present.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from bptt.engine import ENGINES, get_engine
from bptt.model import ModelSpec, init_params
from bptt.optim import SGD, clip_grad_norm_

CELLS = ["rnn", "lstm", "gru"]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=[cuda, pytest.mark.cuda])]


def as_numpy(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def rel_err(a, b) -> float:
    a, b = as_numpy(a), as_numpy(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def engine_for(name: str, spec: ModelSpec, device: str, dtype: str):
    return get_engine(name, spec, device=None if name == "numpy" else device, dtype=dtype)


def sequential_batches(steps: int, batch: int, num_steps: int, vocab: int, seed: int):
    """Sequential partitioning of one random corpus (the book's): batch i+1 continues batch i
    row by row, so the state is carried from one batch to the next."""
    rng = np.random.default_rng(seed)
    n = batch * (steps * num_steps + 1)
    # a learnable corpus: mostly "next = previous + 1", sometimes a random token
    corpus = np.empty(n, dtype=np.int64)
    corpus[0] = 0
    jumps = rng.integers(0, vocab, size=n)
    noisy = rng.random(n) < 0.2
    for i in range(1, n):
        corpus[i] = jumps[i] if noisy[i] else (corpus[i - 1] + 1) % vocab
    rows = corpus.reshape(batch, -1)
    for i in range(steps):
        window = rows[:, i * num_steps:(i + 1) * num_steps + 1]
        yield window[:, :-1], window[:, 1:]


def train_losses(name: str, spec: ModelSpec, device: str, steps: int = 20) -> list[float]:
    """Per-step losses of ``steps`` SGD steps (lr 1, global norm clipped to 1), the state
    carried sequentially and detached between batches."""
    engine = engine_for(name, spec, device, "float32")
    params = engine.from_numpy(init_params(spec, rng=0))
    optimizer = SGD(lr=1.0)
    state = engine.begin_state(4)
    losses = []
    for X, Y in sequential_batches(steps, 4, 6, spec.input_size, seed=1):
        loss, grads, state = engine.loss_and_grads(params, X, Y, state)
        state = engine.detach_state(state)
        clip_grad_norm_(grads, 1.0)
        optimizer.step(params, grads)
        losses.append(engine.scalar(loss))
    return losses


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", CELLS)
def test_training_losses_equal(cell, device):
    spec = ModelSpec(cell=cell, input_size=12, hidden_size=16, output_size=12, num_layers=2)
    context = (torch.backends.cudnn.flags(enabled=True, allow_tf32=False)
               if device == "cuda" else contextlib.nullcontext())
    with context:
        losses = {name: train_losses(name, spec, device) for name in ENGINES}
    ref = np.array(losses["numpy"])
    assert np.ptp(ref) > 1e-2                                 # the steps do change the loss
    for name in ENGINES:
        np.testing.assert_allclose(losses[name], ref, rtol=0, atol=1e-5, err_msg=name)


GRAD_SPECS = [
    dict(num_layers=2),
    dict(num_layers=2, bias=False),
    dict(num_layers=3, bidirectional=True, task="regression", output_size=3),
    dict(num_layers=1, nonlinearity="relu"),
]


def batch_for(spec: ModelSpec, B: int, T: int, seed: int):
    rng = np.random.default_rng(seed)
    if spec.task == "lm":
        return (rng.integers(0, spec.input_size, size=(B, T)),
                rng.integers(0, spec.output_size, size=(B, T)))
    return rng.normal(size=(B, T, spec.input_size)), rng.normal(size=(B, T, spec.output_size))


def all_grads(spec, device, names, truncate=None, with_state=True):
    arrays = init_params(spec, rng=4, dtype="float64")
    X, Y = batch_for(spec, 3, 7, seed=5)
    rng = np.random.default_rng(6)
    shape = (spec.num_layers * spec.directions, 3, spec.hidden_size)
    state0 = None
    if with_state:
        state0 = rng.normal(size=shape)
        if spec.cell == "lstm":
            state0 = (state0, rng.normal(size=shape))
    results = {}
    for name in names:
        engine = engine_for(name, spec, device, "float64")
        loss, grads, state = engine.loss_and_grads(
            engine.from_numpy(arrays), X, Y, engine.state_from_numpy(state0), truncate=truncate)
        results[name] = (float(loss), {k: as_numpy(v) for k, v in grads.items()},
                         engine.state_to_numpy(state))
    return results


GRAD_CASES = [
    pytest.param(cell, kw, id=f"{cell}-{label}")
    for cell in CELLS
    for label, kw in zip(["lm-2layer", "no-bias", "bi-3layer", "relu"], GRAD_SPECS, strict=True)
    if cell == "rnn" or "nonlinearity" not in kw                 # relu: the RNN cell's option
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell,kw", GRAD_CASES)
def test_gradients_equal_float64(cell, kw, device):
    kw = dict(kw)
    spec = ModelSpec(cell=cell, input_size=5, hidden_size=4, output_size=kw.pop("output_size", 5),
                     **kw)
    results = all_grads(spec, device, ENGINES)
    ref_loss, ref, ref_state = results["numpy"]
    for name in ENGINES:
        loss, grads, state = results[name]
        assert abs(loss - ref_loss) <= 1e-12 * abs(ref_loss)
        assert set(grads) == set(ref)
        for k in ref:
            assert rel_err(grads[k], ref[k]) <= 1e-10, (name, k, rel_err(grads[k], ref[k]))
        pairs = zip(state, ref_state, strict=True) if cell == "lstm" else [(state, ref_state)]
        for a, b in pairs:
            assert rel_err(a, b) <= 1e-12


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("truncate", [0, 2, 5])
@pytest.mark.parametrize("cell", CELLS)
def test_truncation_equal_numpy(cell, truncate, device):
    """truncate=k on "torch" (age ring in the hand BPTT) and "torch-autograd" (recomputation
    from detached states) equals the NumPy engine's, layer by layer and per direction."""
    spec = ModelSpec(cell=cell, input_size=3, hidden_size=4, output_size=2, num_layers=2,
                     bidirectional=True, task="regression")
    names = ("numpy", "torch", "torch-autograd")
    results = all_grads(spec, device, names, truncate=truncate)
    full = all_grads(spec, device, ("numpy",))["numpy"][1]
    ref = results["numpy"][1]
    assert rel_err(ref["weight_hh_l0"], full["weight_hh_l0"]) > 1e-6   # truncation matters
    for name in names:
        for k in ref:
            assert rel_err(results[name][1][k], ref[k]) <= 1e-10, (name, k)
