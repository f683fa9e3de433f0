"""torch.compile of models holding bptt.nn recurrent modules: one graph (``fullgraph=True``),
the stack an opaque operator pair (bptt::stack_forward / stack_backward) running the compiled
kernel, outputs and gradients equal to eager."""

from __future__ import annotations

import pytest
import torch

import bptt.nn as bnn
from bptt.engine import kernel
from bptt.engine.torch import library


class Tagger(torch.nn.Module):
    def __init__(self, cls, **kw) -> None:
        super().__init__()
        self.rnn = cls(5, 8, num_layers=2, **kw)
        D = 2 if kw.get("bidirectional") else 1
        self.head = torch.nn.Linear(8 * D, 3)

    def forward(self, x, hx):
        out, h_n = self.rnn(x, hx)
        h = h_n[0] if isinstance(h_n, tuple) else h_n
        return self.head(out).square().mean() + h.square().mean()


def _grads(model, x, hx):
    leaves = [x, *(hx if isinstance(hx, tuple) else (hx,)), *model.parameters()]
    loss = model(x, hx)
    return loss, torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("cls,kw", [(bnn.LSTM, {"bidirectional": True}), (bnn.GRU, {}),
                                    (bnn.RNN, {"nonlinearity": "relu"})])
def test_fullgraph_compile_equals_eager(cls, kw, monkeypatch):
    torch.manual_seed(0)
    model = Tagger(cls, **kw)
    D = 2 if kw.get("bidirectional") else 1
    x = torch.randn(4, 3, 5, requires_grad=True)
    h0 = torch.randn(2 * D, 3, 8, requires_grad=True)
    hx = (h0, torch.randn_like(h0).requires_grad_()) if cls is bnn.LSTM else h0
    loss, grads = _grads(model, x, hx)

    calls = []
    forward = kernel.forward
    monkeypatch.setattr(kernel, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    compiled = torch.compile(model, fullgraph=True)
    closs, cgrads = _grads(compiled, x, hx)
    torch.testing.assert_close(closs, loss, rtol=1e-6, atol=1e-6)
    for a, b in zip(cgrads, grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert all(g.abs().sum() > 0 for g in cgrads)
    assert bool(calls) == kernel.enabled()              # the kernel ran inside the graph


def test_operators_pass_opcheck():
    """Schema, fake tensors (shapes from the meta run), autograd registration and AOT
    dispatch with dynamic shapes, as torch checks a custom operator."""
    torch.manual_seed(0)
    lstm = bnn.LSTM(5, 8, num_layers=2).double()
    x = torch.randn(4, 3, 5, dtype=torch.double, requires_grad=True)
    h0 = torch.randn(2, 3, 8, dtype=torch.double, requires_grad=True)
    weights = [w.detach().clone().requires_grad_() for w in lstm._flat_weights]
    settings = library.Settings("lstm", ",".join(lstm._flat_weights_names), 2, False, "tanh",
                                0.0, False, None, "fp32", None)
    torch.library.opcheck(library.stack_forward, (x, h0, None, weights, *settings),
                          test_utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor", "test_aot_dispatch_dynamic"))


def test_config_with_fixed_masks_is_refused():
    from bptt.engine.torch.stack import StackConfig

    cfg = StackConfig(cell="gru", names=("weight_ih_l0",), masks=(torch.ones(1),))
    with pytest.raises(ValueError, match="expected no fixed masks"):
        library.apply(cfg, torch.zeros(2, 1, 1), {})


def test_fullgraph_compile_of_token_ids():
    """Token-id input: the id range is checked inside the graph (no value read back)."""
    torch.manual_seed(0)
    gru = bnn.GRU(6, 4)
    ids = torch.randint(0, 6, (3, 2))
    compiled = torch.compile(gru, fullgraph=True)
    torch.testing.assert_close(compiled(ids)[0], gru(ids)[0], rtol=1e-6, atol=1e-6)
    with pytest.raises(RuntimeError, match=r"expected token ids in \[0, 6\)"):
        compiled(torch.tensor([[1, 6]]))


def test_plans_are_kept_for_the_most_recent_shapes_only(monkeypatch):
    """One plan per input shape, the oldest dropped past PLANS_KEPT: a model fed packed batches
    of every length does not collect them for ever; a backward still finds its recent plan."""
    monkeypatch.setattr(library, "_PLANS", type(library._PLANS)())
    monkeypatch.setattr(library, "PLANS_KEPT", 2)
    torch.manual_seed(0)
    gru = bnn.GRU(3, 4)
    weights = [w.detach().clone().requires_grad_() for w in gru._flat_weights]
    settings = library.Settings("gru", ",".join(gru._flat_weights_names), 1, False, "tanh",
                                0.0, False, None, "fp32", None)
    losses = [library.stack_forward(torch.randn(T, 2, 3), None, None, weights, *settings)[0].sum()
              for T in (2, 3, 4)]
    assert len(library._PLANS) == 2
    losses[-1].backward()                                # the newest plan is kept
    assert all(w.grad.abs().sum() > 0 for w in weights)
    with pytest.raises(RuntimeError, match="among the last 2 stack shapes, got it evicted"):
        losses[0].backward()
