"""``bptt.nn.LayerNormLSTM`` / ``LayerNormGRU`` and their cells: the layer-normalised cells as
drop-in modules, against the check package's unrolled loop under autograd
(``bptt.engine.torch.unrolled``) in float64, run on each packed sequence alone; gradcheck; the
registry's parameter names and initial values; the state_dict; torch's exception types.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence, pad_packed_sequence
from torch.testing import assert_close

from bptt import nn as bnn
from bptt.engine.layout import param_names
from bptt.engine.torch.unrolled import cell_step, stack_forward

MODULES = {"lnlstm": bnn.LayerNormLSTM, "lngru": bnn.LayerNormGRU}
CELLS = {"lnlstm": bnn.LayerNormLSTMCell, "lngru": bnn.LayerNormGRUCell}
F64 = torch.float64
pytestmark = [pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]


def module(cell: str, *args, **kw):
    """A float64 module with its gains and biases moved off 1 and 0 (so a mix-up shows)."""
    torch.manual_seed(0)
    m = MODULES[cell](*args, **kw, dtype=F64)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("layernorm"):
                p.add_(0.3 * torch.randn_like(p))
    return m


def params_of(m) -> dict:
    return dict(m.named_parameters())


def grads_of(loss, tensors: dict) -> dict:
    gs = torch.autograd.grad(loss, list(tensors.values()))
    return dict(zip(tensors, gs, strict=True))


def state_like(cell: str, L: int, B: int, H: int):
    torch.manual_seed(1)
    parts = [torch.randn(L, B, H, dtype=F64, requires_grad=True)
             for _ in range(2 if cell == "lnlstm" else 1)]
    return tuple(parts) if cell == "lnlstm" else parts[0]


def flat(state) -> list:
    return list(state) if isinstance(state, tuple) else [state]


def weighted(out, state, weights) -> torch.Tensor:
    """A loss reading every output and every part of the final state."""
    loss = (out * weights[0]).sum()
    for part, w in zip(flat(state), weights[1:], strict=False):
        loss = loss + (part * w).sum()
    return loss


CONFIGS = [{}, {"bias": False}, {"num_layers": 2, "bidirectional": True},
           {"batch_first": True}, {"bptt_truncate": 2}]


@pytest.mark.parametrize("cell", MODULES)
@pytest.mark.parametrize("config", CONFIGS)
def test_module_matches_the_autograd_reference(cell, config):
    L = config.get("num_layers", 1) * (2 if config.get("bidirectional") else 1)
    m = module(cell, 3, 4, **config)
    torch.manual_seed(2)
    x = torch.randn(5, 2, 3, dtype=F64, requires_grad=True)
    hx = state_like(cell, L, 2, 4)
    out, state = m(x.transpose(0, 1) if m.batch_first else x, hx)
    out = out.transpose(0, 1) if m.batch_first else out
    ref_out, ref_state = stack_forward(
        cell, params_of(m), x, hx, num_layers=m.num_layers, bidirectional=m.bidirectional,
        truncate=m.bptt_truncate)
    assert_close(out, ref_out)
    assert_close(flat(state), flat(ref_state))
    weights = [torch.randn_like(t) for t in (out, *flat(state))]
    wrt = {**params_of(m), "x": x, **{f"hx{i}": h for i, h in enumerate(flat(hx))}}
    assert_close(grads_of(weighted(out, state, weights), wrt),
                 grads_of(weighted(ref_out, ref_state, weights), wrt))


@pytest.mark.parametrize("cell", MODULES)
@pytest.mark.parametrize("sort", [True, False])
@pytest.mark.parametrize("truncate", [None, 1])
def test_packed_sequences_match_each_sequence_alone(cell, sort, truncate):
    """The shrinking batch in the hand-written forward and BPTT: outputs, final states and
    every gradient equal those of the reference run on each sequence by itself."""
    m = module(cell, 3, 4, num_layers=2, bidirectional=True, bptt_truncate=truncate)
    torch.manual_seed(3)
    lengths = (5, 3, 3, 1) if sort else (2, 5, 1, 4)
    seqs = [torch.randn(n, 3, dtype=F64, requires_grad=True) for n in lengths]
    hx = state_like(cell, 4, len(seqs), 4)
    out, state = m(pack_sequence(seqs, enforce_sorted=sort), hx)
    padded, _ = pad_packed_sequence(out)
    weights = [torch.randn(n, 8, dtype=F64) for n in lengths]
    w_state = [torch.randn_like(p) for p in flat(state)]
    loss = sum((padded[:n, b] * w).sum() for b, (n, w) in enumerate(zip(lengths, weights,
                                                                         strict=True)))
    loss = loss + sum((p * w).sum() for p, w in zip(flat(state), w_state, strict=True))
    ref_loss = 0.0
    for b, (s, n) in enumerate(zip(seqs, lengths, strict=True)):
        h0 = tuple(p[:, b:b + 1] for p in flat(hx))
        r_out, r_state = stack_forward(cell, params_of(m), s[:, None],
                                       h0 if cell == "lnlstm" else h0[0], num_layers=2,
                                       bidirectional=True, truncate=truncate)
        assert_close(padded[:n, b], r_out[:, 0])
        assert_close([p[:, b] for p in flat(state)], [p[:, 0] for p in flat(r_state)])
        ref_loss = ref_loss + (r_out[:, 0] * weights[b]).sum() + sum(
            (p[:, 0] * w[:, b]).sum() for p, w in zip(flat(r_state), w_state, strict=True))
    wrt = {**params_of(m), **{f"x{i}": s for i, s in enumerate(seqs)},
           **{f"hx{i}": h for i, h in enumerate(flat(hx))}}
    assert_close(grads_of(loss, wrt), grads_of(ref_loss, wrt))


def derivatives_check(check, m, packed: bool, seed: int) -> bool:
    """``check`` (gradcheck or gradgradcheck) of the module as a function of its parameters
    and its input: three packed sequences (unsorted), or one (T, B, I) tensor."""
    names = list(params_of(m))
    torch.manual_seed(seed)
    seqs = [torch.randn(n, m.input_size, dtype=F64, requires_grad=True) for n in (2, 3, 1)]
    x = torch.randn(3, 2, m.input_size, dtype=F64, requires_grad=True)

    def f(*tensors):
        params = dict(zip(names, tensors[:len(names)], strict=True))
        inputs = tensors[len(names):]
        given = pack_sequence(list(inputs), enforce_sorted=False) if packed else inputs[0]
        out, state = torch.func.functional_call(m, params, (given,))
        return (out.data if packed else out), *flat(state)

    plain = [p.detach().clone().requires_grad_() for p in params_of(m).values()]
    return check(f, (*plain, *(seqs if packed else (x,))))


@pytest.mark.parametrize("cell", MODULES)
@pytest.mark.parametrize("packed", [False, True])
def test_gradcheck(cell, packed):
    assert derivatives_check(torch.autograd.gradcheck, module(cell, 2, 3, num_layers=2),
                             packed, seed=4)


@pytest.mark.parametrize("cell", MODULES)
def test_token_ids_are_one_hot_inputs(cell):
    m = module(cell, 5, 4)
    ids = torch.tensor([[0, 4], [2, 2], [1, 3]])
    out, _ = m(ids)
    ref, _ = m(torch.nn.functional.one_hot(ids, 5).to(F64))
    assert_close(out, ref)


@pytest.mark.parametrize("cell", MODULES)
def test_cells_match_one_step_of_the_reference(cell):
    torch.manual_seed(5)
    c = CELLS[cell](3, 4, dtype=F64)
    names = list(dict(c.named_parameters()))
    assert names[:4] == ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
    assert all(n.startswith("layernorm_") for n in names[4:])
    x = torch.randn(2, 3, dtype=F64)
    hx = tuple(torch.randn(2, 4, dtype=F64) for _ in range(2 if cell == "lnlstm" else 1))
    got = c(x, hx if cell == "lnlstm" else hx[0])
    p = {"weight_ih": c.weight_ih, "weight_hh": c.weight_hh, "bias_ih": c.bias_ih,
         "bias_hh": c.bias_hh, **{k: c.get_parameter(n) for k, n in (
             ("ln_weight_ih", "layernorm_ih.weight"), ("ln_weight_hh", "layernorm_hh.weight"))}}
    if cell == "lnlstm":
        p["ln_weight_c"] = c.get_parameter("layernorm_c.weight")
        p["ln_bias_c"] = c.get_parameter("layernorm_c.bias")
    want = cell_step(cell, x, hx, p)
    assert_close(flat(got), list(want))
    unbatched = c(x[0], tuple(h[0] for h in hx) if cell == "lnlstm" else hx[0][0])
    assert_close(flat(unbatched), [w[0] for w in want])


@pytest.mark.parametrize("cell", MODULES)
@pytest.mark.parametrize("bias", [True, False])
def test_parameters_names_init_and_state_dict(cell, bias):
    """The registry's names in the engines' order, gains 1 and biases 0 at the start (the other
    parameters drawn as torch.nn draws them, same seed, same values), and a state_dict that
    loads into a fresh module, moved by ``.to()``, with the same outputs."""
    torch.manual_seed(6)
    m = MODULES[cell](3, 4, 2, bias, bidirectional=True)
    kind = m.kind
    assert m._flat_weights_names == param_names(2, True, bias, kind)
    assert set(m.state_dict()) == set(param_names(2, True, bias, kind))
    flags = "" if bias else ", bias=False"
    assert repr(m) == f"{type(m).__name__}(3, 4, num_layers=2{flags}, bidirectional=True)"
    for name in param_names(2, True, bias, kind):
        p = m.get_parameter(name)
        if name.startswith("layernorm"):
            assert torch.equal(p, torch.full_like(p, 0.0 if name.endswith(".bias") else 1.0))
    torch.manual_seed(6)
    twin = getattr(torch.nn, kind.title.removeprefix("LN-"))(3, 4, 2, bias, bidirectional=True)
    for name, p in twin.named_parameters():
        assert torch.equal(m.get_parameter(name), p)
    m = module(cell, 3, 4, 2, bias, bidirectional=True)
    m2 = MODULES[cell](3, 4, 2, bias, bidirectional=True, dtype=F64)
    m2.load_state_dict(m.state_dict())
    x = torch.randn(4, 2, 3, dtype=F64)
    assert_close(m2(x), m(x))
    m2.to(torch.float32)                                 # every parameter moves, the norms' too
    assert {p.dtype for p in m2.parameters()} == {torch.float32}
    assert_close(m2(x.float())[0], m(x)[0].float(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cell", MODULES)
def test_errors_are_torch_s_exception_types(cell):
    m = module(cell, 3, 4)
    with pytest.raises(RuntimeError, match="input_size"):
        m(torch.randn(5, 2, 7, dtype=F64))
    with pytest.raises(RuntimeError, match="shape"):
        m(torch.randn(5, 2, 3, dtype=F64), state_like(cell, 2, 2, 4))
    with pytest.raises(ValueError, match="dtype"):
        m(torch.randn(5, 2, 3))
    with pytest.raises(TypeError, match="bias"):
        MODULES[cell](3, 4, bias=1)
    with pytest.raises(RuntimeError, match="torch.jit.trace"):
        torch.jit.trace(m, torch.randn(5, 2, 3, dtype=F64))


def test_the_ln_lstm_has_no_projection():
    with pytest.raises(ValueError, match="expected proj_size 0 for the LN-LSTM"):
        bnn.LayerNormLSTM(3, 4, proj_size=2)
    with pytest.raises(ValueError, match="proj_size"):
        bnn.LayerNormGRU(3, 4, proj_size=2)


DOUBLE = [({"num_layers": 2, "bidirectional": True}, False), ({"bptt_truncate": 1}, True),
          ({"bias": False}, True)]


@pytest.mark.parametrize("cell", MODULES)
@pytest.mark.parametrize("config,packed", DOUBLE)
def test_a_graph_of_the_gradient_gives_the_same_gradient(cell, config, packed):
    """create_graph=True runs the out-of-place form of the backward (engine/torch/graph.py):
    the same first-order gradient as the fast one."""
    m = module(cell, 3, 4, **config)
    torch.manual_seed(7)
    seqs = [torch.randn(n, 3, dtype=F64, requires_grad=True) for n in (2, 4, 1)]
    x = torch.randn(4, 2, 3, dtype=F64, requires_grad=True)
    wrt = {**params_of(m), **({f"x{i}": s for i, s in enumerate(seqs)} if packed else {"x": x})}

    def loss():
        out, state = m(pack_sequence(seqs, enforce_sorted=False) if packed else x)
        out = out.data if packed else out
        return (out * torch.linspace(-1, 1, out.numel(), dtype=F64).view_as(out)).sum() + sum(
            (p * p).sum() for p in flat(state))

    fast = grads_of(loss(), wrt)
    graph = dict(zip(wrt, torch.autograd.grad(loss(), list(wrt.values()), create_graph=True),
                     strict=True))
    assert all(g.requires_grad for g in graph.values())
    assert_close(graph, fast)


@pytest.mark.parametrize("cell", MODULES)
@pytest.mark.parametrize("config,packed", DOUBLE)
def test_gradgradcheck(cell, config, packed):
    check = functools.partial(torch.autograd.gradgradcheck, fast_mode=True)
    assert derivatives_check(check, module(cell, 2, 3, **config), packed, seed=8)
