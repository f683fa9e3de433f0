"""PyTorch's own RNN module tests, ported: the ModuleInfo samples and error inputs of
``torch/testing/_internal/common_modules.py`` (``module_inputs_torch_nn_RNN_GRU``, ``_LSTM``,
``_RNN_GRU_Cell``, ``_LSTMCell`` and their ``module_error_inputs_*``), written here from their
description and run on ``bptt.nn``:

  reference      every sample's outputs and the gradients of every input and parameter, in
                 float64, against torch.nn with the same state_dict (assert_close defaults)
  gradcheck      torch.autograd.gradcheck over the inputs and every parameter
  gradgradcheck  torch.autograd.gradgradcheck (the differentiable form of the backward)
  errors         torch's exception type for the same misuse, with our expected/got text

The samples, as torch lists them: every combination of nonlinearity (RNN), bias, batch_first and
bidirectional for two layers, unbatched input with and without an initial state, and (RNN, GRU)
two packed sequences, or (LSTM) proj_size 0 and 2; the cells: unbatched input and state, with
and without bias, and relu for the RNNCell.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import bptt.nn as bnn

DTYPE = torch.float64


@dataclass
class Sample:
    """One ModuleInfo sample: the module's class name, constructor keywords, forward inputs
    (tensors, PackedSequences, pairs of tensors), and an id."""

    name: str
    kwargs: dict
    make_inputs: object        # seed -> tuple of forward arguments
    id: str


def _randn(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=DTYPE)


def _packed(lengths, batch):
    def make(gen):
        return (pack_padded_sequence(_randn(gen, 5, batch, 2), torch.tensor(lengths)),)
    return make


def rnn_gru_samples(name: str) -> list[Sample]:
    """module_inputs_torch_nn_RNN_GRU (with_packed_sequence)."""
    is_rnn = name == "RNN"
    out = []
    combos = product(("relu", "tanh") if is_rnn else (None,), (False, True), (False, True),
                     (False, True))
    for nl, bias, bf, bidir in combos:
        base = {"input_size": 2, "num_layers": 2, "batch_first": bf, "bias": bias,
                "bidirectional": bidir, **({"nonlinearity": nl} if is_rnn else {})}
        tag = f"{nl or ''}-bias{int(bias)}-bf{int(bf)}-bi{int(bidir)}"
        D = 2 if bidir else 1
        out += [
            Sample(name, {**base, "hidden_size": 2}, lambda g: (_randn(g, 3, 2),),
                   f"{name}-{tag}-unbatched"),
            Sample(name, {**base, "hidden_size": 3},
                   lambda g, D=D: (_randn(g, 3, 2), _randn(g, 2 * D, 3)),
                   f"{name}-{tag}-unbatched-hx"),
            Sample(name, {**base, "hidden_size": 2}, _packed([5, 3], 2), f"{name}-{tag}-packed2"),
            Sample(name, {**base, "hidden_size": 2}, _packed([5, 3, 3, 2, 2], 5),
                   f"{name}-{tag}-packed5"),
        ]
    return out


def lstm_samples() -> list[Sample]:
    """module_inputs_torch_nn_LSTM."""
    out = []
    for bias, bf, bidir, proj in product((False, True), (False, True), (False, True), (0, 2)):
        kw = {"input_size": 2, "hidden_size": 3, "num_layers": 2, "proj_size": proj,
              "batch_first": bf, "bias": bias, "bidirectional": bidir}
        tag = f"bias{int(bias)}-bf{int(bf)}-bi{int(bidir)}-proj{proj}"
        D, h_out = 2 if bidir else 1, proj or 3
        out += [
            Sample("LSTM", kw, lambda g: (_randn(g, 2, 2),), f"LSTM-{tag}-unbatched"),
            Sample("LSTM", kw, lambda g, D=D, h_out=h_out: (
                _randn(g, 3, 2), (_randn(g, 2 * D, h_out), _randn(g, 2 * D, 3))),
                   f"LSTM-{tag}-unbatched-hx"),
        ]
    return out


def cell_samples() -> list[Sample]:
    """module_inputs_torch_nn_RNN_GRU_Cell (RNNCell with relu too) and _LSTMCell."""
    out = []
    for name in ("RNNCell", "GRUCell"):
        variants = [({}, "default"), ({"bias": True}, "bias")]
        if name == "RNNCell":
            variants.append(({"bias": True, "nonlinearity": "relu"}, "relu"))
        out += [Sample(name, {"input_size": 5, "hidden_size": 10, **kw},
                       lambda g: (_randn(g, 5), _randn(g, 10)), f"{name}-{tag}")
                for kw, tag in variants]
    out += [Sample("LSTMCell", {"input_size": 5, "hidden_size": 10, **kw},
                   lambda g: (_randn(g, 5), (_randn(g, 10), _randn(g, 10))), f"LSTMCell-{tag}")
            for kw, tag in (({}, "default"), ({"bias": True}, "bias"))]
    return out


SAMPLES = [*rnn_gru_samples("RNN"), *rnn_gru_samples("GRU"), *lstm_samples(), *cell_samples()]


# -- running a sample -------------------------------------------------------------------------

def _leaves(args) -> list[torch.Tensor]:
    """The tensors of forward arguments that gradients are taken for (a PackedSequence's
    data, both parts of a state pair)."""
    found = []
    for a in args:
        if isinstance(a, PackedSequence):
            found.append(a.data)
        elif isinstance(a, tuple | list):
            found += list(a)
        else:
            found.append(a)
    return found


def _rebuild(args, leaves):
    """``args`` with their tensors replaced by ``leaves`` (in :func:`_leaves` order)."""
    it = iter(leaves)
    out = []
    for a in args:
        if isinstance(a, PackedSequence):
            out.append(PackedSequence(next(it), a.batch_sizes, a.sorted_indices,
                                      a.unsorted_indices))
        elif isinstance(a, tuple | list):
            out.append(tuple(next(it) for _ in a))
        else:
            out.append(next(it))
    return tuple(out)


def _flat(result) -> list[torch.Tensor]:
    """Every output tensor of a forward (a PackedSequence's data, a state pair's parts)."""
    if isinstance(result, PackedSequence):
        return [result.data]
    if isinstance(result, tuple | list):
        return [t for r in result for t in _flat(r)]
    return [result]


def modules(sample: Sample):
    """(torch.nn module, bptt.nn module) in float64 with the same parameters."""
    ref = getattr(torch.nn, sample.name)(**sample.kwargs).to(DTYPE)
    ours = getattr(bnn, sample.name)(**sample.kwargs).to(DTYPE)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def functional(module, args):
    """A function of (input tensors..., parameters...) returning every output tensor."""
    names = [n for n, _ in module.named_parameters()]
    n_in = len(_leaves(args))

    def f(*tensors):
        params = dict(zip(names, tensors[n_in:], strict=True))
        result = torch.func.functional_call(module, params, _rebuild(args, tensors[:n_in]))
        return tuple(_flat(result))

    return f, [p.detach().clone().requires_grad_() for p in module.parameters()]


@pytest.mark.parametrize("sample", SAMPLES, ids=[s.id for s in SAMPLES])
def test_sample_matches_torch_nn_outputs_and_gradients(sample):
    ref, ours = modules(sample)
    gen = torch.Generator().manual_seed(0)
    args = sample.make_inputs(gen)
    results = {}
    for tag, module in (("ref", ref), ("ours", ours)):
        leaves = [t.detach().clone().requires_grad_() for t in _leaves(args)]
        outs = _flat(module(*_rebuild(args, leaves)))
        ups = [torch.randn(o.shape, generator=torch.Generator().manual_seed(i), dtype=DTYPE)
               for i, o in enumerate(outs)]
        torch.autograd.backward(outs, ups)
        results[tag] = (outs, [t.grad for t in leaves], [p.grad for p in module.parameters()])
    for got, want in zip(results["ours"], results["ref"], strict=True):
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w)


def derivatives_check(check, sample: Sample, seed: int) -> bool:
    """``check`` (gradcheck or gradgradcheck, fast mode) over the sample's inputs and every
    parameter of the bptt.nn module."""
    _, ours = modules(sample)
    args = sample.make_inputs(torch.Generator().manual_seed(seed))
    f, params = functional(ours, args)
    inputs = [t.detach().clone().requires_grad_() for t in _leaves(args)] + params
    return check(f, inputs, fast_mode=True)


@pytest.mark.parametrize("sample", SAMPLES, ids=[s.id for s in SAMPLES])
def test_sample_gradcheck(sample):
    assert derivatives_check(torch.autograd.gradcheck, sample, seed=1)


@pytest.mark.parametrize("sample", SAMPLES, ids=[s.id for s in SAMPLES])
def test_sample_gradgradcheck(sample):
    assert derivatives_check(torch.autograd.gradgradcheck, sample, seed=2)


# -- error inputs -------------------------------------------------------------------------------

@dataclass
class ErrorSample:
    name: str
    args: tuple
    kwargs: dict
    forward: object | None     # None: the constructor fails; else gen -> forward arguments
    error: type
    match: str
    id: str


def sequence_error_samples(name: str) -> list[ErrorSample]:
    """module_error_inputs_torch_nn_RNN_GRU: construction errors and the dtype mismatch."""
    bad = [
        ((10, 0, 1), {}, ValueError, r"expected hidden_size greater than zero, got 0"),
        ((10, 10, 0), {}, ValueError, r"expected num_layers greater than zero, got 0"),
        ((3, 5), {"bias": 0}, TypeError, r"expected bias a bool, got int 0"),
        ((3, 5), {"bias": 1}, TypeError, r"expected bias a bool, got int 1"),
        ((3, 5), {"bias": "True"}, TypeError, r"expected bias a bool, got str 'True'"),
        ((3, 5), {"batch_first": 0}, TypeError, r"expected batch_first a bool, got int 0"),
        ((3, 5), {"batch_first": 1}, TypeError, r"expected batch_first a bool, got int 1"),
        ((3, 5), {"batch_first": "False"}, TypeError, r"expected batch_first a bool, got str"),
        ((3.0, 5), {}, TypeError, r"expected input_size an int, got float 3.0"),
        (("10", 5), {}, TypeError, r"expected input_size an int, got str '10'"),
        ((0, 5), {}, ValueError, r"expected input_size greater than zero, got 0"),
        ((-1, 5), {}, ValueError, r"expected input_size greater than zero, got -1"),
        ((3, 5.0), {}, TypeError, r"expected hidden_size an int, got float 5.0"),
    ]
    out = [ErrorSample(name, a, kw, None, err, match, f"{name}-construct-{i}")
           for i, (a, kw, err, match) in enumerate(bad)]
    out.append(ErrorSample(
        name, (3, 5), {"dtype": torch.float32},
        lambda g: (torch.randn(2, 4, 3, generator=g, dtype=torch.float64),), ValueError,
        r"expected \w+ input of dtype torch.float32 \(the parameters'\), got torch.float64: "
        r"convert the input, input.to\(torch.float32\), or the model, model.to\(torch.float64\)",
        f"{name}-dtype"))
    return out


def cell_error_samples(name: str) -> list[ErrorSample]:
    """module_error_inputs_torch_nn_RNN_GRU_Cell and _LSTMCell."""
    lstm = name == "LSTMCell"

    def state(g, *shape):
        h = torch.randn(*shape, generator=g)
        return (h, torch.randn(*shape, generator=g)) if lstm else h

    out = [
        ErrorSample(name, (10, 20), {}, lambda g: (torch.randn(3, 11, generator=g),
                                                   state(g, 3, 20)),
                    RuntimeError, r"expected \w+ input of size 10 \(input_size\), got shape "
                    r"\(3, 11\)", f"{name}-input-size"),
        ErrorSample(name, (10, 20), {}, lambda g: (torch.randn(3, 10, generator=g),
                                                   state(g, 3, 21)),
                    RuntimeError, r"expected the \w+ state h of shape \(3, 20\) \(batch, "
                    r"hidden_size\), got \(3, 21\)", f"{name}-hidden-size"),
        ErrorSample(name, (10, 20), {}, lambda g: (torch.randn(3, 10, generator=g),
                                                   state(g, 5, 20)),
                    RuntimeError, r"expected the \w+ state h of shape \(3, 20\) \(batch, "
                    r"hidden_size\), got \(5, 20\)", f"{name}-batch"),
        ErrorSample(name, (10, 20), {}, lambda g: (torch.randn(3, 10, generator=g),
                                                   state(g, 3, 1, 1, 20)),
                    ValueError, r"expected the \w+ state h 1-D or 2-D, got a 4-D tensor",
                    f"{name}-hidden-dims"),
    ]
    if not lstm:
        for nl in ("relu", "tanh"):
            out.append(ErrorSample(name if name == "RNNCell" else name, (10, 20),
                                   {"nonlinearity": nl} if name == "RNNCell" else {},
                                   lambda g: (torch.randn(3, 10, generator=g),
                                              torch.randn(3, 21, generator=g)),
                                   RuntimeError, r"state h of shape \(3, 20\)",
                                   f"{name}-hidden-size-{nl}"))
    return out


ERRORS = [*sequence_error_samples("RNN"), *sequence_error_samples("GRU"),
          *sequence_error_samples("LSTM"), *cell_error_samples("RNNCell"),
          *cell_error_samples("GRUCell"), *cell_error_samples("LSTMCell")]


@pytest.mark.parametrize("sample", ERRORS, ids=[s.id for s in ERRORS])
def test_error_input_raises_torchs_exception_type_with_our_text(sample):
    cls = getattr(bnn, sample.name)
    if sample.forward is None:
        with pytest.raises(sample.error, match=sample.match):
            cls(*sample.args, **sample.kwargs)
        with pytest.raises(sample.error):                # the same type as torch.nn
            getattr(torch.nn, sample.name)(*sample.args, **sample.kwargs)
        return
    module = cls(*sample.args, **sample.kwargs)
    args = sample.forward(torch.Generator().manual_seed(0))
    with pytest.raises(sample.error, match=sample.match):
        module(*args)
    reference = getattr(torch.nn, sample.name)(*sample.args, **sample.kwargs)
    with pytest.raises(sample.error):
        reference(*args)
