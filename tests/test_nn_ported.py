"""PyTorch's ``test/test_nn.py`` RNN tests, ported to ``bptt.nn`` (written here from their
description; torch/test is not installed):

  cpu vs reference     _test_RNN_cpu_vs_cudnn: bptt.nn against torch.nn (the reference where
                       torch compares CPU with cuDNN), fixed and variable lengths, lengths as a
                       list or a tensor, contiguous or not, bias, directions, batch_first,
                       tanh/relu, and the LSTM with projections; dropout 0 and 1
  argument checks      test_rnn_args_check, test_rnn_proj_args_check,
                       test_projections_errors_on_gru_and_rnn
  zero sequence length test_error_RNN_seq_len_zero
  zero input size      test_RNN_input_size_zero (a batch of none)
  initial hidden state test_rnn_initial_hidden_state, test_projections_lstm_initial_hidden_state
  dropout              test_RNN_dropout, test_RNN_dropout_state, test_RNN_change_dropout
  retained variables   test_rnn_retain_variables
  cells                test_RNN_cell, test_RNN_cell_no_broadcasting
"""

from __future__ import annotations

import copy
import warnings
from itertools import product

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import bptt.nn as bnn

SEQUENCE = ("RNN", "LSTM", "GRU")
INPUT, HIDDEN, PROJ, LAYERS, STEPS, BATCH = 10, 6, 3, 2, 7, 6


# -- cpu vs reference ---------------------------------------------------------------------------

def forward_backward(rnn, input_val, grad_output, weights_val, hx_val, grad_hy, cx_val=None,
                     grad_cy=None) -> dict:
    """_test_RNN_cpu_vs_cudnn's forward_backward: copy the weights in, run, backpropagate the
    given upstream gradients; the outputs, states and every gradient."""
    is_lstm = rnn.mode == "LSTM"
    for x_layer, y_layer in zip(rnn.all_weights, weights_val, strict=True):
        for x, y in zip(x_layer, y_layer, strict=True):
            x.data.copy_(y.data)
    if isinstance(input_val, PackedSequence):
        inp = PackedSequence(input_val.data.detach().clone().requires_grad_(),
                             input_val.batch_sizes)
        input_var = inp.data
    else:
        inp = input_val.detach().clone().requires_grad_()
        input_var = inp
    if is_lstm:
        c = hx_val.add(1) if cx_val is None else cx_val.add(1)
        hx = (hx_val.detach().clone().requires_grad_(), c.detach().requires_grad_())
    else:
        hx = hx_val.detach().clone().requires_grad_()
    output, hy = rnn(inp, hx)
    if isinstance(output, PackedSequence):
        output = output.data
    if is_lstm:
        torch.autograd.backward([output, hy[0], hy[1]],
                                [grad_output, grad_hy, (grad_hy if grad_cy is None else grad_cy)
                                 + 1])
    else:
        torch.autograd.backward([output, hy], [grad_output, grad_hy])
    return {"output": output.detach(), "hy": (hy[0] if is_lstm else hy).detach(),
            "weights": rnn.all_weights, "grad_input": input_var.grad,
            "grad_hx": (hx[0] if is_lstm else hx).grad,
            "cy": hy[1].detach() if is_lstm else None,
            "grad_cx": hx[1].grad if is_lstm else None}


def compare(ours: dict, ref: dict) -> None:
    assert list(ours) == list(ref)
    for key in ours:
        if key != "weights":
            torch.testing.assert_close(ours[key], ref[key], msg=key)
    for mine, theirs in zip(ours["weights"], ref["weights"], strict=True):
        for a, b in zip(mine, theirs, strict=True):
            torch.testing.assert_close(a.grad, b.grad)


def make_noncontig(t: torch.Tensor) -> torch.Tensor:
    ndim = t.dim()
    return torch.stack([t.clone().zero_(), t], ndim).select(ndim, 1)


def cases():
    """Every (bias, bidirectional, batch_first, contig, variable_len, lens_as_tensor)."""
    return product((True, False), repeat=6)


def inputs(bf, contig, var_len, lens_tensor, out_size, state_sizes, D, dtype=torch.double):
    """The input, upstream gradients and states of one case (as torch draws them)."""
    if bf:
        input_val = torch.randn(BATCH, STEPS, INPUT, dtype=dtype)
        grad_output = torch.randn(BATCH, STEPS, out_size * D, dtype=dtype)
    else:
        input_val = torch.randn(STEPS, BATCH, INPUT, dtype=dtype)
        grad_output = torch.randn(STEPS, BATCH, out_size * D, dtype=dtype)
    states = [torch.randn(LAYERS * D, BATCH, s, dtype=dtype) for s in state_sizes]
    grads = [torch.randn(LAYERS * D, BATCH, s, dtype=dtype) for s in state_sizes]
    if not contig:
        grad_output = make_noncontig(grad_output)
        grads = [make_noncontig(g) for g in grads]
        input_val = make_noncontig(input_val)
        states = [make_noncontig(s) for s in states]
    if var_len:
        lengths = [7, 5, 5, 2, 1, 1]
        if lens_tensor:
            lengths = torch.tensor(lengths, dtype=torch.long)
        input_val = pack_padded_sequence(input_val, lengths, batch_first=bf)
        grad_output = pack_padded_sequence(grad_output, lengths, batch_first=bf).data
    return input_val, grad_output, states, grads


@pytest.mark.parametrize("dropout", [0.0, 1.0], ids=["no_dropout", "with_dropout"])
@pytest.mark.parametrize("name", SEQUENCE)
def test_rnn_cpu_vs_reference(name, dropout):
    """Every combination, then tanh and relu (RNN); with dropout 1 both drop everything
    between the layers (dropout 1 gives zeros, not NaN)."""
    torch.manual_seed(0)
    for bias, bidir, bf, contig, var_len, lens_tensor in cases():
        D = 2 if bidir else 1
        x, gout, (hx, *_), (ghy, *_) = inputs(bf, contig, var_len, lens_tensor, HIDDEN,
                                              [HIDDEN], D)
        kw = dict(bias=bias, dropout=dropout, bidirectional=bidir, batch_first=bf)
        ref = getattr(torch.nn, name)(INPUT, HIDDEN, LAYERS, **kw).double()
        ours = getattr(bnn, name)(INPUT, HIDDEN, LAYERS, **kw).double()
        compare(forward_backward(ours, x, gout, ref.all_weights, hx, ghy),
                forward_backward(ref, x, gout, ref.all_weights, hx, ghy))
    if name == "RNN":
        for nl in ("tanh", "relu"):
            hx = torch.randn(LAYERS, BATCH, HIDDEN, dtype=torch.double)
            x = torch.randn(STEPS, BATCH, INPUT, dtype=torch.double)
            gout = torch.randn(STEPS, BATCH, HIDDEN, dtype=torch.double)
            ghy = torch.randn(LAYERS, BATCH, HIDDEN, dtype=torch.double)
            ref = torch.nn.RNN(INPUT, HIDDEN, LAYERS, nonlinearity=nl).double()
            ours = bnn.RNN(INPUT, HIDDEN, LAYERS, nonlinearity=nl).double()
            compare(forward_backward(ours, x, gout, ref.all_weights, hx, ghy),
                    forward_backward(ref, x, gout, ref.all_weights, hx, ghy))


@pytest.mark.parametrize("dropout", [0.0, 1.0], ids=["no_dropout", "with_dropout"])
def test_lstm_projections_cpu_vs_reference(dropout):
    torch.manual_seed(1)
    for bias, bidir, bf, contig, var_len, lens_tensor in cases():
        D = 2 if bidir else 1
        x, gout, (hx, cx), (ghy, gcy) = inputs(bf, contig, var_len, lens_tensor, PROJ,
                                               [PROJ, HIDDEN], D)
        kw = dict(bias=bias, dropout=dropout, bidirectional=bidir, batch_first=bf,
                  proj_size=PROJ)
        ref = torch.nn.LSTM(INPUT, HIDDEN, LAYERS, **kw).double()
        ours = bnn.LSTM(INPUT, HIDDEN, LAYERS, **kw).double()
        compare(forward_backward(ours, x, gout, ref.all_weights, hx, ghy, cx, gcy),
                forward_backward(ref, x, gout, ref.all_weights, hx, ghy, cx, gcy))


# -- argument checks ----------------------------------------------------------------------------

def _update(shape, dim, size):
    shape = list(shape)
    shape[dim] = size
    return tuple(shape)


def _bad_inputs(mode, input_shape, hidden_shape, good_hidden_shape, cell_shape=None):
    """test_rnn_args_check's get_inputs: (input, hidden) pairs, the LSTM's with either part
    wrong."""
    x = torch.randn(input_shape)
    h = torch.randn(hidden_shape)
    if mode != "LSTM":
        return [(x, h)]
    good_c = torch.randn(cell_shape or good_hidden_shape)
    if hidden_shape == good_hidden_shape:
        return [(x, (h, good_c))]
    good_h = torch.randn(good_hidden_shape)
    bad_c = torch.randn(_resize_like(cell_shape or good_hidden_shape, good_hidden_shape,
                                     hidden_shape))
    return [(x, (h, good_c)), (x, (good_h, bad_c))]


def _resize_like(cell_shape, good, bad):
    """The cell-state shape with the same dimension changed as ``bad`` changes ``good``."""
    return tuple(c if g == b else b for c, g, b in zip(cell_shape, good, bad, strict=True))


@pytest.mark.parametrize(("mode", "proj"), [(m, 0) for m in SEQUENCE] + [("LSTM", 2)],
                         ids=[*SEQUENCE, "LSTM-proj"])
def test_rnn_args_check(mode, proj):
    """test_rnn_args_check and test_rnn_proj_args_check: each size of the input or the state
    wrong in turn is a RuntimeError."""
    input_size, hidden, layers, batch, steps, bad = 3, 5, 2, 4, 6, 7
    out = proj or hidden
    good_input, good_hidden = (steps, batch, input_size), (layers, batch, out)
    cell = (layers, batch, hidden) if proj else None
    kw = {"proj_size": proj} if proj else {}
    for input_shape, hidden_shape in [
        (_update(good_input, 1, bad), good_hidden),      # input batch
        (good_input, _update(good_hidden, 1, bad)),      # hidden batch
        (_update(good_input, 2, bad), good_hidden),      # input size
        (good_input, _update(good_hidden, 2, bad)),      # hidden size
        (good_input, _update(good_hidden, 0, bad)),      # hidden layers
    ]:
        for x, h in _bad_inputs(mode, input_shape, hidden_shape, good_hidden, cell):
            model = getattr(bnn, mode)(input_size, hidden, layers, **kw)
            with pytest.raises(RuntimeError, match="expected"):
                model(x, h)


@pytest.mark.parametrize("mode", ["RNN", "GRU"])
def test_projections_errors_on_gru_and_rnn(mode):
    with pytest.raises(ValueError, match=f"expected no proj_size for the {mode} "
                                         r"\(proj_size is the LSTM's\), got proj_size=5"):
        getattr(bnn, mode)(10, 20, proj_size=5)


# -- zero sequence length, zero batch ---------------------------------------------------------

@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("mode", SEQUENCE)
def test_error_rnn_seq_len_zero(mode, bidirectional):
    rnn = getattr(bnn, mode)(5, 6, bidirectional=bidirectional)
    with pytest.raises(RuntimeError, match="expected a .* input sequence of at least one step, "
                                           r"got length 0 \(shape \(0, 10, 5\)\)"):
        rnn(torch.ones(0, 10, 5))


@pytest.mark.parametrize("mode", SEQUENCE)
def test_rnn_input_size_zero(mode):
    """A batch of no sequences: outputs (T, 0, H), and backward runs."""
    rnn = getattr(bnn, mode)(input_size=3, hidden_size=4)
    outs = rnn(torch.zeros((5, 0, 3)))
    assert outs[0].shape == torch.Size([5, 0, 4])
    outs[0].sum().backward()
    assert all(p.grad is not None and not p.grad.any() for p in rnn.parameters())


# -- initial hidden state ---------------------------------------------------------------------

@pytest.mark.parametrize("mode", SEQUENCE)
def test_rnn_initial_hidden_state(mode):
    rnn = getattr(bnn, mode)(30, 20, 2)
    x = torch.randn(10, 32, 30)
    hidden = torch.zeros(2, 32, 20)
    if mode == "LSTM":
        hidden = (hidden, hidden)
    output1, hidden1 = rnn(x, hidden)
    output2, hidden2 = rnn(x)
    torch.testing.assert_close(output1, output2)
    torch.testing.assert_close(hidden1, hidden2)


@pytest.mark.parametrize("bidir", [False, True])
def test_projections_lstm_initial_hidden_state(bidir):
    rnn = bnn.LSTM(30, 20, 2, bidirectional=bidir, proj_size=10)
    D = 2 if bidir else 1
    x = torch.randn(10, 32, 30)
    hidden = (torch.zeros(2 * D, 32, 10), torch.zeros(2 * D, 32, 20))
    output1, hidden1 = rnn(x, hidden)
    output2, hidden2 = rnn(x)
    torch.testing.assert_close(output1, output2)
    torch.testing.assert_close(hidden1, hidden2)


# -- dropout ------------------------------------------------------------------------------------

@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("p", [0, 0.276, 0.731, 1])
def test_rnn_dropout(p, train):
    """Dropout sits between the layers: with every weight 1 and a relu, layer 0 gives 10 per
    unit and layer 1 the sum of 1000 kept (and rescaled) units."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rnn = bnn.RNN(10, 1000, 2, bias=False, dropout=p, nonlinearity="relu")
    rnn.train(train)
    for w in rnn.parameters():
        w.data.fill_(1)
    output, hy = rnn(torch.ones(1, 1, 10), torch.zeros(2, 1, 1000))
    assert output.min() == output.max()
    value = output[0, 0, 0]
    if p == 0 or not train:
        assert value == 10000
    elif p == 1:
        assert value == 0
    else:
        assert 8000 < value < 12000
        denorm = (value * (1 - p)) % 10
        assert min(denorm, 10 - denorm) < 1e-2
    assert hy[0].min() == hy[0].max() and hy[1].min() == hy[1].max()
    assert hy[0, 0, 0] == 10
    assert hy[1, 0, 0] == value


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("p", [0, 0.1234])
def test_rnn_dropout_state(p, train):
    """Two calls draw two masks while training with p > 0; a copy (its state_dict loaded into
    a new module: no pickling) draws its own too."""
    rnn = bnn.RNN(100, 100, 2, bias=False, dropout=p, nonlinearity="relu")
    rnn.train(train)
    x, hx = torch.rand(1, 1, 100), torch.rand(2, 1, 100)
    output1, hy1 = rnn(x, hx)
    output2, hy2 = rnn(x, hx)
    rnn2 = copy.deepcopy(rnn)
    rnn2.load_state_dict(rnn.state_dict())
    rnn2.flatten_parameters()
    output3, hy3 = rnn2(x, hx)
    if p == 0 or not train:
        torch.testing.assert_close(output1, output2)
        torch.testing.assert_close(output1, output3)
        torch.testing.assert_close(hy1, hy2)
        torch.testing.assert_close(hy1, hy3)
    else:
        assert not torch.equal(output1, output2) and not torch.equal(output1, output3)
        assert not torch.equal(hy1, hy2) and not torch.equal(hy1, hy3)


@pytest.mark.parametrize("train", [True, False])
def test_rnn_change_dropout(train):
    """``dropout`` is read at every call, so it can change between calls."""
    torch.manual_seed(0)
    rnn = bnn.RNN(100, 100, 2, dropout=0, nonlinearity="relu")
    x = torch.rand(3, 2, 100)
    rnn.train(train)
    prev = None
    for p in (0, 0.5, 0, 0.7, 0.2, 1, 0.2, 0):
        rnn.dropout = p
        output1, hy1 = rnn(x)
        output2, hy2 = rnn(x)
        if p in (0, 1) or not train:
            torch.testing.assert_close(output1, output2)
            torch.testing.assert_close(hy1, hy2)
        else:
            assert not torch.equal(output1, output2) and not torch.equal(hy1, hy2)
        if prev is not None:
            assert torch.equal(output1, prev) == (not train)
            assert torch.equal(output2, prev) == (not train)
        prev = output1.detach()


# -- retained variables -------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", SEQUENCE)
def test_rnn_retain_variables(mode, dtype):
    """Backward through a retained graph four more times gives the same gradients: the
    backward reads its saved tensors and never writes them."""
    rnn = getattr(bnn, mode)(10, 20, num_layers=2).to(dtype)
    x = torch.randn(5, 6, 10, dtype=dtype, requires_grad=True)
    output = rnn(x)
    output[0].sum().backward(retain_graph=True)
    grads = [x.grad.clone()] + [p.grad.clone() for p in rnn.parameters()]
    for _ in range(4):
        rnn.zero_grad()
        x.grad.zero_()
        output[0].sum().backward(retain_graph=True)
        for a, b in zip(grads, [x.grad] + [p.grad for p in rnn.parameters()], strict=True):
            torch.testing.assert_close(a, b)


# -- cells --------------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("mode", ["RNNCell", "GRUCell", "LSTMCell"])
def test_rnn_cell(mode, bias):
    """Six steps of a cell, then backward; the same as torch.nn's cell with its parameters."""
    torch.manual_seed(0)
    x = torch.randn(3, 10, dtype=torch.double)
    cells = [getattr(m, mode)(10, 20, bias=bias).double() for m in (bnn, torch.nn)]
    cells[0].load_state_dict(cells[1].state_dict())
    results = []
    for cell in cells:
        hx = torch.randn(3, 20, dtype=torch.double, generator=torch.Generator().manual_seed(1))
        state = (hx, hx.clone()) if mode == "LSTMCell" else hx
        for _ in range(6):
            state = cell(x, state)
        (state[0] if mode == "LSTMCell" else state).sum().backward()
        results.append([p.grad for p in cell.parameters()])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b)


def test_rnn_cell_no_broadcasting():
    """A state or input whose batch or size does not match is a RuntimeError, never
    broadcast."""
    def fails(cell_cls, x, hx):
        with pytest.raises(RuntimeError, match="expected"):
            cell_cls(10, 20)(x, hx)

    def all_cells(bad_hx, good_hx, x):
        fails(bnn.RNNCell, x, bad_hx)
        fails(bnn.GRUCell, x, bad_hx)
        fails(bnn.LSTMCell, x, (bad_hx, good_hx))
        fails(bnn.LSTMCell, x, (good_hx, bad_hx))

    x, good_hx = torch.randn(3, 10), torch.randn(3, 20)
    all_cells(torch.randn(1, 20), good_hx, x)            # batch
    all_cells(torch.randn(3, 1), good_hx, x)             # hidden size
    all_cells(good_hx, good_hx, torch.randn(3, 1))       # input size
