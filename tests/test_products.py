"""The large products: chosen per machine by measurement at first use, kept in a file, forced
by ``BPTT_PRODUCTS``; every candidate computes the same product (bf16: on operands rounded to
bfloat16, accumulated in float32)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bptt.engine import kernel, products


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """No choice known: an empty cache folder, nothing remembered in this process."""
    monkeypatch.setenv(products.CACHE_ENV, str(tmp_path))
    monkeypatch.delenv(products.ENV, raising=False)
    monkeypatch.setattr(products, "_CHOSEN", {})
    monkeypatch.setattr(products, "_FILE", {})
    return tmp_path


def test_the_choice_is_measured_once_kept_and_read_back(fresh, monkeypatch):
    calls = {"slow": 0, "fast": 0}
    monkeypatch.setitem(products.CANDIDATES, "test", ("slow", "fast"))

    def runner(name, seconds):
        def run():
            calls[name] += 1
            products.time.sleep(seconds)
        return run

    runners = {"slow": runner("slow", 0.004), "fast": runner("fast", 0.0)}
    assert products.choose("test", "k", runners) == "fast"
    assert calls == {"slow": 1 + products.ROUNDS, "fast": 1 + products.ROUNDS}
    assert products.choose("test", "k", runners) == "fast"             # known: not measured
    assert calls["slow"] == 1 + products.ROUNDS
    saved = json.loads((fresh / "products-v2.json").read_text())
    (machine, choices), = saved.items()
    assert products.cpu_model() in machine and choices == {"test|k": "fast"}
    monkeypatch.setattr(products, "_CHOSEN", {})                       # a new process
    monkeypatch.setattr(products, "_FILE", {})
    assert products.choose("test", "k", runners) == "fast"
    assert calls["slow"] == 1 + products.ROUNDS                        # read from the file
    monkeypatch.setenv(products.ENV, "library")                        # forced
    assert products.choose("numpy", "k", {"kernel": runners["fast"],
                                           "numpy": runners["slow"]}) == "numpy"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_every_candidate_computes_the_same_product(fresh, monkeypatch, precision):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((70, 300), dtype=np.float32)
    b = rng.standard_normal((200, 300), dtype=np.float32).T              # a transposed view
    if precision == "bf16":
        ref = products.bf16_round(a).astype(np.float64) @ products.bf16_round(b)
    else:
        ref = a.astype(np.float64) @ b
    for forced in ("kernel", "library"):
        monkeypatch.setenv(products.ENV, forced)
        out = products.matmul(a, b, precision=precision)
        assert out.dtype == np.float32
        assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max(), forced
        acc = out.copy()
        products.matmul(a, b, acc, accumulate=True, precision=precision)
        assert np.allclose(acc, 2 * out, rtol=1e-5, atol=1e-4)
    assert products.bf16_round(np.float32([1 + 2 ** -8, np.nan]))[0] == 1.0   # to nearest even
    assert np.isnan(products.bf16_round(np.float32([np.nan]))[0])
    if not kernel.enabled():                                           # the Python path alone
        assert kernel.status().startswith(("not available", "off"))


def test_a_product_of_a_view_with_gaps_is_chosen_apart():
    """A slice of a wider array's columns (the layer-normalised cells' dv, 9H apart) runs
    fastest on another product than the dense operand of the same shape: its own choice."""
    wide = np.ones((6, 9), dtype=np.float32)
    dense, b = np.ones((6, 4), dtype=np.float32), np.ones((6, 3), dtype=np.float32)
    gapped = wide[:, 2:6]
    assert products.shape_key(dense.T, b, "fp32") == products.shape_key(
        np.ascontiguousarray(dense.T), b, "fp32")
    assert products.shape_key(gapped.T, b, "fp32") == (products.shape_key(dense.T, b, "fp32")
                                                        + "|gaps")


def test_torch_bf16_products_keep_a_float32_result_whatever_the_timing(fresh, monkeypatch):
    """torch's own bfloat16 products round their result to bfloat16; under bf16 the torch
    engine's large products are chosen between the kernel and MKL's float32-result product
    only, so no measured choice can change more than the float32 summation order. Without
    both, torch's product is the fallback."""
    torch = pytest.importorskip("torch")
    from bptt.engine.torch import mkl
    from bptt.engine.torch.common import matmul

    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 200, generator=g)
    b = torch.randn(10_000, 200, generator=g).t()                      # the head's W^T
    ref = (a.bfloat16().double() @ b.bfloat16().double())
    rounded = (a.bfloat16() @ b.bfloat16()).float()
    assert (rounded.double() - ref).abs().max() > 1e-3                   # what the fallback does
    seen = set()
    for forced in ("kernel", "library", None):
        if forced is None:
            monkeypatch.delenv(products.ENV, raising=False)
        else:
            monkeypatch.setenv(products.ENV, forced)
        out = matmul(a, b, precision="bf16")
        err = (out.double() - ref).abs().max().item()
        seen |= set(products.chosen().values())
        if kernel.enabled() or mkl.available():
            assert out.dtype == torch.float32 and err <= 1e-4, forced
        else:
            assert (out - rounded).abs().max() <= 0.02 * ref.abs().max(), forced
    assert not seen & {"onednn", "mm"} or not (kernel.enabled() or mkl.available())


@pytest.mark.parametrize("layout", ["plain", "a transposed", "b transposed", "both", "sliced"])
def test_mkl_bf16_product_in_every_layout(layout):
    """MKL's bfloat16 product with a float32 result (where libtorch has it) equals the product
    of the operands rounded to bfloat16, for plain, transposed and sliced operands."""
    torch = pytest.importorskip("torch")
    from bptt.engine.torch import mkl

    if not mkl.available():
        pytest.skip("this torch build has no MKL bf16 product")
    g = torch.Generator().manual_seed(1)
    a = torch.randn(37, 53, generator=g)
    b = torch.randn(53, 29, generator=g)
    if layout in ("a transposed", "both"):
        a = a.t().contiguous().t()
    if layout in ("b transposed", "both"):
        b = b.t().contiguous().t()
    if layout == "sliced":
        a = torch.randn(37, 80, generator=g)[:, 10:63]
    out = mkl.bf16_matmul(a, b)
    ref = a.bfloat16().double() @ b.bfloat16().double()
    assert out.dtype == torch.float32 and out.shape == (37, 29)
    assert (out.double() - ref).abs().max() <= 1e-5 * ref.abs().max()
    assert mkl.bf16_matmul(a[:, :0], b[:0]).abs().max() == 0
