"""The compiled kernel's products: every operand layout (a plain matrix, a transposed view,
other strides), odd and blocked sizes, the rows split among threads, equal to the product of
the operands (bf16: rounded to bfloat16, the Python path's definition) accumulated in float32;
and the kernel's bf16 loops against the Python path's."""

from __future__ import annotations

import numpy as np
import pytest

from bptt.engine import kernel, products
from bptt.engine import threads as threads_mod


@pytest.fixture(autouse=True)
def kernel_products(monkeypatch):
    """The kernel's products wherever it is on (else the Python path's, the same contract)."""
    monkeypatch.setenv(products.ENV, "kernel")


def _operand(rng, rows: int, cols: int, layout: str) -> np.ndarray:
    """A (rows, cols) float32 matrix: C-contiguous, a transposed view, or every other column."""
    if layout == "plain":
        return rng.standard_normal((rows, cols), dtype=np.float32)
    if layout == "transposed":
        return rng.standard_normal((cols, rows), dtype=np.float32).T
    return rng.standard_normal((rows, 2 * cols), dtype=np.float32)[:, ::2]


def _rounded(a: np.ndarray, precision: str) -> np.ndarray:
    """The operand as the product takes it, in float64: rounded to bfloat16 under bf16."""
    return (products.bf16_round(a) if precision == "bf16" else a).astype(np.float64)


LAYOUTS = ("plain", "transposed", "strided")


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
@pytest.mark.parametrize("nth", [1, 2, 3])
@pytest.mark.parametrize(("M", "K", "N"), [(400, 200, 200), (37, 1031, 45), (13, 7, 300),
                                           (70, 300, 200), (300, 600, 40), (1, 2, 1)])
def test_products_equal_rounded_operands_in_every_layout(monkeypatch, precision, nth, M, K, N):
    """Blocks of rows or of columns, one K block or several (a step each), every layout."""
    monkeypatch.setattr(threads_mod, "_SETTING", [nth])
    rng = np.random.default_rng(M * K + N)
    for la in LAYOUTS:
        for lb in LAYOUTS:
            a, b = _operand(rng, M, K, la), _operand(rng, K, N, lb)
            ra, rb = _rounded(a, precision), _rounded(b, precision)
            out = products.matmul(a, b, precision=precision)
            scale = np.abs(ra) @ np.abs(rb)                   # float32 accumulation's bound
            assert np.all(np.abs(out - ra @ rb) <= 1e-6 * K * scale + 1e-30), (la, lb)
            acc = np.ones_like(out)
            products.matmul(a, b, acc, accumulate=True, precision=precision)
            assert np.allclose(acc, out + 1, rtol=1e-6, atol=1e-5), (la, lb)


def test_bf16_products_round_to_nearest_even_and_keep_nan(monkeypatch):
    monkeypatch.setattr(threads_mod, "_SETTING", [2])
    for la in ("plain", "transposed"):
        for lb in ("plain", "transposed"):
            a = np.full((20, 40), 1 + 2 ** -8, dtype=np.float32)   # rounds to 1 (even)
            b = np.full((40, 50), 1 + 3 * 2 ** -8, dtype=np.float32)  # rounds up to 1 + 2^-6
            a, b = (np.ascontiguousarray(a.T).T if la == "transposed" else a,
                    np.ascontiguousarray(b.T).T if lb == "transposed" else b)
            out = products.matmul(a, b, precision="bf16")
            assert np.all(out == np.float32(40 * (1 + 2 ** -6))), (la, lb)
            a = a.copy()
            a[3, 5] = np.nan
            out = products.matmul(a, b, precision="bf16")
            assert np.isnan(out[3]).all() and not np.isnan(np.delete(out, 3, axis=0)).any()


@pytest.mark.parametrize(("engine_name", "cell"), [
    (e, c) for e in ("numpy", "torch") for c in ("rnn", "lstm", "gru")] + [
    ("numpy", "lnlstm"), ("numpy", "lngru")])
def test_bf16_kernel_loops_match_the_python_path(engine_name, cell):
    """The kernel's bf16 loops (the recurrent weight packed to bfloat16 a vector at a time, H
    not a multiple of a panel) against the Python path's bf16 (operands rounded, float32
    products): the same numbers up to float32 rounding, far inside bf16's own tolerance."""
    from bptt.engine import as_numpy, get_engine
    from bptt.model import ModelSpec, init_params

    spec = ModelSpec(cell=cell, input_size=30, hidden_size=37, output_size=30, num_layers=2,
                     embedding_size=19, task="lm")
    params = init_params(spec, rng=3)
    rng = np.random.default_rng(4)
    X, Y = rng.integers(0, 30, (5, 9)), rng.integers(0, 30, (5, 9))
    results = []
    for off in (False, True):
        with kernel.disabled(off):
            engine = get_engine(engine_name, spec, device="cpu", precision="bf16")
            loss, grads, _ = engine.loss_and_grads(engine.from_numpy(params), X, Y,
                                                   engine.begin_state(5))
            results.append((float(loss), {k: as_numpy(v) for k, v in grads.items()}))
    if not kernel.enabled():                             # the Python path on both sides
        assert kernel.status().startswith(("not available", "off"))
    (lk, gk), (lp, gp) = results
    assert abs(lk - lp) <= 1e-4 * abs(lp)
    for name in gp:
        err = float(np.linalg.norm(gk[name] - gp[name]) / np.linalg.norm(gp[name]))
        assert err <= 1e-2, (name, err)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("V", [37, 1000, 10_001])
def test_softmax_cross_entropy_kernel_matches_python(dtype, V):
    """The kernel's softmax cross-entropy (the row maximum a vector at a time) against the
    Python lines it replaces: the maximum anywhere in a row (first, in the vector part, in the
    tail), a huge logit, the same loss and gradient."""
    from bptt.engine.numpy.loss import softmax_cross_entropy_

    rng = np.random.default_rng(V)
    logits = (3.0 * rng.standard_normal((9, V))).astype(dtype)
    for row, col in enumerate((0, V // 2, V - 1, V - 2)):
        logits[row, col] = 40.0 + row
    logits[5, 3] = 1e4                                    # exp never overflows
    targets = rng.integers(0, V, 9)
    got = []
    for off in (False, True):
        with kernel.disabled(off):
            buf = logits.copy()
            got.append(softmax_cross_entropy_(buf, targets))
    (lk, gk), (lp, gp) = got
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert abs(lk - lp) <= tol * abs(lp)
    assert np.abs(gk - gp).max() <= tol * np.abs(gp).max()
