"""``bptt.nn`` beyond the ported PyTorch tests: state_dicts both ways, torch's initialisation,
truncated BPTT inside the module, token-id input, packed sequences out of order, the
non-contiguous upstream gradient, dtypes and devices, CPU autocast, torch.compile, torch.export,
torch.jit.trace, DistributedDataParallel, the double backward, and graph capture of a cell
torch.nn lacks.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pack_sequence, pad_packed_sequence

import bptt.nn as bnn
from bptt.check.references import truncated_loss
from bptt.engine.torch import rnn as torch_rnn
from conftest import subprocess_env

SEQUENCE = ("RNN", "LSTM", "GRU")
F64 = torch.float64
# torch 2.13 announces TorchScript's deprecation from its own tracing and export code
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:DeprecationWarning")


def pair(name: str, *args, **kwargs):
    """(torch.nn module, bptt.nn module) in float64 sharing one state_dict."""
    ref = getattr(torch.nn, name)(*args, **kwargs).double()
    ours = getattr(bnn, name)(*args, **kwargs).double()
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def grads_of(module, x, hx=None, upstream_seed: int = 0):
    """Outputs, input gradient and parameter gradients under fixed random upstream gradients."""
    x = x.detach().clone().requires_grad_(x.is_floating_point())
    out, state = module(x, hx)
    parts = state if isinstance(state, tuple) else (state,)
    gen = torch.Generator().manual_seed(upstream_seed)
    outs = [out, *parts]
    torch.autograd.backward(outs, [torch.randn(o.shape, generator=gen, dtype=o.dtype)
                                   for o in outs])
    return ([o.detach() for o in outs], x.grad,
            {n: p.grad.clone() for n, p in module.named_parameters()})


# -- parameters ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name,kw", [("RNN", {"nonlinearity": "relu"}), ("LSTM", {}),
                                     ("LSTM", {"proj_size": 2}), ("GRU", {"bias": False})])
def test_state_dict_moves_both_ways_and_init_is_torchs(name, kw):
    args = (3, 4, 2)
    torch.manual_seed(7)
    ref = getattr(torch.nn, name)(*args, bidirectional=True, **kw)
    torch.manual_seed(7)
    ours = getattr(bnn, name)(*args, bidirectional=True, **kw)
    assert list(ours.state_dict()) == list(ref.state_dict())
    for (n1, a), (n2, b) in zip(ours.state_dict().items(), ref.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(a, b)            # the same seed draws the same values
    back = getattr(torch.nn, name)(*args, bidirectional=True, **kw)
    back.load_state_dict(ours.state_dict())
    ours.reset_parameters()
    ours.load_state_dict(ref.state_dict())
    assert [[p.shape for p in w] for w in ours.all_weights] == \
        [[p.shape for p in w] for w in ref.all_weights]
    for attr in ("mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first",
                 "dropout", "bidirectional", "proj_size"):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    ours.flatten_parameters()
    assert repr(ours).removeprefix("bptt.nn.") == repr(ref)


def test_constructor_positional_order_is_torchs():
    for name, args in (("RNN", (3, 4, 2, "relu", False, True, 0.5, True)),
                       ("LSTM", (3, 4, 2, False, True, 0.5, True, 2)),
                       ("GRU", (3, 4, 2, False, True, 0.5, True))):
        ref, ours = getattr(torch.nn, name)(*args), getattr(bnn, name)(*args)
        assert list(ours.state_dict()) == list(ref.state_dict())
        assert repr(ours) == repr(ref)


def test_import_bptt_does_not_import_torch_but_bptt_nn_does():
    code = ("import sys, bptt; assert 'torch' not in sys.modules; import bptt.nn; "
            "assert 'torch' in sys.modules; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=subprocess_env())
    assert done.stdout.strip() == "ok", done.stderr


# -- truncated BPTT inside the module --------------------------------------------------------

@pytest.mark.parametrize("k", [0, 1, 3])
@pytest.mark.parametrize("name", SEQUENCE)
def test_bptt_truncate_matches_the_detached_reference(name, k):
    """bptt_truncate=k: the gradient is autograd's on the graph where every output at step t is
    computed from the state at step t-k-1 detached (bptt.check's truncated reference)."""
    torch.manual_seed(0)
    ref = getattr(torch.nn, name)(3, 4).double()
    ours = getattr(bnn, name)(3, 4, bptt_truncate=k).double()
    ours.load_state_dict(ref.state_dict())
    T, B = 6, 2
    x = torch.randn(T, B, 3, dtype=F64)
    state0 = tuple(torch.randn(1, B, 4, dtype=F64) for _ in range(1 + (name == "LSTM")))
    dout, dstate = torch.randn(T, B, 4, dtype=F64), [torch.randn(1, B, 4, dtype=F64)
                                                     for _ in state0]
    kind = ours.kind
    # ours
    xo, so = x.clone().requires_grad_(), tuple(s.clone().requires_grad_() for s in state0)
    out, st = ours(xo, kind.from_parts(so))
    loss = (out * dout).sum() + sum((a * g).sum() for a, g in zip(kind.to_parts(st), dstate,
                                                                   strict=True))
    loss.backward()
    # the reference
    xr, sr = x.clone().requires_grad_(), tuple(s.clone().requires_grad_() for s in state0)
    ref_loss = truncated_loss(ref, xr, sr, kind.from_parts, dout,
                              lambda s: sum((a * g).sum() for a, g in zip(
                                  kind.to_parts(s), dstate, strict=True)), k)
    ref_loss.backward()
    torch.testing.assert_close(xo.grad, xr.grad)
    for a, b in zip(so, sr, strict=True):                # k = 0: no gradient reaches h0
        torch.testing.assert_close(a.grad, torch.zeros_like(a) if b.grad is None else b.grad)
    for (n, p), q in zip(ours.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=n)


@pytest.mark.parametrize("name", SEQUENCE)
def test_bptt_truncate_on_packed_sequences_is_each_sequence_truncated(name):
    """Truncation over a packed batch gives the sum of each sequence's own truncated gradient
    (run alone, unpacked, at its own length)."""
    torch.manual_seed(1)
    m = getattr(bnn, name)(3, 4, bptt_truncate=2, bidirectional=True).double()
    seqs = [torch.randn(n, 3, dtype=F64) for n in (6, 4, 4, 1)]
    ups = [torch.randn(n, 8, dtype=F64) for n in (6, 4, 4, 1)]
    out, _ = m(pack_sequence(seqs))
    padded, _ = pad_packed_sequence(out)
    ((padded * pad_packed_sequence(pack_sequence(ups))[0]).sum()).backward()
    packed_grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    for s, u in zip(seqs, ups, strict=True):
        o, _ = m(s)                                      # unbatched: one sequence
        (o * u).sum().backward()
    for n, p in m.named_parameters():
        torch.testing.assert_close(packed_grads[n], p.grad, msg=n)


def test_bptt_truncate_is_checked():
    with pytest.raises(ValueError, match="expected bptt_truncate None or an integer >= 0, "
                                         "got -1"):
        bnn.LSTM(3, 4, bptt_truncate=-1)
    assert "bptt_truncate=5" in repr(bnn.GRU(3, 4, bptt_truncate=5))


# -- token ids ----------------------------------------------------------------------------------

@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("name", SEQUENCE)
def test_token_ids_are_one_hot_inputs(name, batch_first):
    torch.manual_seed(2)
    V = 7
    m = getattr(bnn, name)(V, 5, 2, batch_first=batch_first).double()
    ids = torch.randint(0, V, (4, 3))
    onehot = torch.nn.functional.one_hot(ids, V).double()
    a, _, ga = grads_of(m, ids)
    m.zero_grad()
    b, _, gb = grads_of(m, onehot)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y)
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], msg=n)
    unbatched, _ = m(ids[0] if batch_first else ids[:, 0])
    expected = m(onehot)[0][0] if batch_first else m(onehot)[0][:, 0]
    torch.testing.assert_close(unbatched, expected)
    time_major = ids if not batch_first else ids.t()
    lengths = [min(time_major.shape[0], n) for n in range(time_major.shape[1], 0, -1)]
    packed, _ = m(pack_padded_sequence(time_major, lengths))
    torch.testing.assert_close(packed.data, m(pack_padded_sequence(
        torch.nn.functional.one_hot(time_major, V).double(), lengths))[0].data)
    with pytest.raises(IndexError, match=r"expected token ids in \[0, 7\) \(input_size is the "
                                         r"vocabulary\), got values in \[7, 7\]"):
        m(torch.full((2, 2), V))


# -- packed sequences out of order, non-contiguous upstream gradients --------------------------

@pytest.mark.parametrize("name,kw", [("RNN", {}), ("LSTM", {"proj_size": 2}), ("GRU", {})])
def test_unsorted_packed_sequences_with_a_state_match_torch(name, kw):
    """enforce_sorted=False: hx is permuted into the packed order and h_n back, as torch."""
    torch.manual_seed(3)
    ref, ours = pair(name, 3, 4, 2, bidirectional=True, **kw)
    lengths = [2, 5, 1, 5, 3]
    x = torch.randn(5, 5, 3, dtype=F64)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    sizes = (kw.get("proj_size") or 4, 4)[:1 + (name == "LSTM")]
    hx = tuple(torch.randn(4, 5, s, dtype=F64) for s in sizes)
    hx = hx if name == "LSTM" else hx[0]
    r, o = ref(packed, hx), ours(packed, hx)
    torch.testing.assert_close(o[0].data, r[0].data)
    assert torch.equal(o[0].sorted_indices, r[0].sorted_indices)
    for a, b in zip(ours.kind.to_parts(o[1]), ours.kind.to_parts(r[1]), strict=True):
        torch.testing.assert_close(a, b)


def test_rnn_backward_accepts_any_strides_of_the_upstream_gradient():
    """The bug this module set fixed at its root: the RNN backward's dz had the upstream
    gradient's strides (batch_first transposes it), and a .view failed."""
    torch.manual_seed(4)
    T, B, I, H = 5, 3, 2, 4
    w_ih, w_hh = torch.randn(H, I, dtype=F64), torch.randn(H, H, dtype=F64)
    x = torch.randn(T, B, I, dtype=F64)
    _, _, cache = torch_rnn.forward(x, None, w_ih, w_hh)
    dhs = torch.randn(B, T, H, dtype=F64).transpose(0, 1)     # (T, B, H), not contiguous
    for truncate in (None, 2):
        a = torch_rnn.backward(dhs, None, cache, truncate)
        b = torch_rnn.backward(dhs.contiguous(), None, cache, truncate)
        torch.testing.assert_close(a[0], b[0])
        for k in a[2]:
            torch.testing.assert_close(a[2][k], b[2][k])
    ref, ours = pair("RNN", I, H, batch_first=True)
    got, want = grads_of(ours, x.transpose(0, 1)), grads_of(ref, x.transpose(0, 1))
    for n in want[2]:
        torch.testing.assert_close(got[2][n], want[2][n])


# -- dtypes, devices, autocast ----------------------------------------------------------------

@pytest.mark.parametrize("name", SEQUENCE)
def test_to_dtype_and_device(name):
    m = getattr(bnn, name)(3, 4, 2).to("cpu", torch.float64)
    assert all(p.dtype == F64 for p in m.parameters())
    out, _ = m(torch.randn(5, 2, 3, dtype=F64))
    assert out.dtype == F64
    m = m.to(torch.float32)
    out, _ = m(torch.randn(5, 2, 3))
    assert out.dtype == torch.float32
    with pytest.raises(ValueError, match="expected .* input of dtype torch.float32"):
        m(torch.randn(5, 2, 3, dtype=F64))
    with pytest.raises(RuntimeError, match="expected the .* input on cpu"):
        m(torch.randn(5, 2, 3, device="meta"))


@pytest.mark.parametrize("name", SEQUENCE)
def test_cpu_autocast_bfloat16_matches_torch_nn_within_bf16_tolerance(name):
    torch.manual_seed(5)
    ref = getattr(torch.nn, name)(8, 16, 2)
    ours = getattr(bnn, name)(8, 16, 2)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(6, 4, 8)
    results = []
    for m in (ref, ours):
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = m(xi)
        out.float().square().sum().backward()
        results.append((out.float(), xi.grad, [p.grad for p in m.parameters()]))
    (o, dx, gp), (ro, rdx, rgp) = results[1], results[0]
    torch.testing.assert_close(o, ro, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(dx, rdx, atol=5e-2, rtol=5e-2)
    for a, b in zip(gp, rgp, strict=True):
        torch.testing.assert_close(a, b, atol=1e-1, rtol=5e-2)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", SEQUENCE)
def test_cuda_matches_cpu_without_host_syncs(name):
    torch.manual_seed(6)
    cpu = getattr(bnn, name)(3, 8, 2, bidirectional=True).double()
    gpu = getattr(bnn, name)(3, 8, 2, bidirectional=True).double().cuda()
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(9, 4, 3, dtype=F64)
    want = grads_of(cpu, x)
    xg = x.cuda().requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")              # any host read in the loops fails
    try:
        out, _ = gpu(xg)
        out.sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    gpu.zero_grad()
    got = grads_of(gpu, x.cuda())
    for n in want[2]:
        torch.testing.assert_close(got[2][n].cpu(), want[2][n])


# -- torch.compile, torch.export, torch.jit.trace ---------------------------------------------

@pytest.mark.parametrize("name", ["RNN", "LSTM"])
def test_torch_compile_gives_the_same_results(name):
    torch.manual_seed(8)
    m = getattr(bnn, name)(3, 4, 2).double()
    x = torch.randn(5, 2, 3, dtype=F64)
    want = grads_of(m, x)
    m.zero_grad()
    got = grads_of(torch.compile(m), x)
    for a, b in zip(got[0], want[0], strict=True):
        torch.testing.assert_close(a, b)
    for n in want[2]:
        torch.testing.assert_close(got[2][f"_orig_mod.{n}"], want[2][n])


@pytest.mark.parametrize("name,kw", [("RNN", {"nonlinearity": "relu"}),
                                     ("LSTM", {"proj_size": 2, "batch_first": True}),
                                     ("GRU", {"bidirectional": True})])
def test_torch_export_runs_end_to_end(name, kw):
    m = getattr(bnn, name)(3, 4, 2, **kw).eval()
    x = torch.randn(2, 5, 3) if kw.get("batch_first") else torch.randn(5, 2, 3)
    program = torch.export.export(m, (x,))
    got, want = program.module()(x), m(x)
    torch.testing.assert_close(got[0], want[0])
    for a, b in zip(m.kind.to_parts(got[1]), m.kind.to_parts(want[1]), strict=True):
        torch.testing.assert_close(a, b)


def test_torch_jit_trace_saves_and_runs_any_length(tmp_path: Path):
    m = bnn.LSTM(3, 4, 2, proj_size=2).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                  # torch announces TorchScript's end
        traced = torch.jit.trace(m, (torch.randn(5, 2, 3),))
        torch.jit.save(traced, str(tmp_path / "lstm.pt"))
        loaded = torch.jit.load(str(tmp_path / "lstm.pt"))
    x = torch.randn(9, 3, 3)                             # another length and batch
    torch.testing.assert_close(loaded(x)[0], m(x)[0])


def test_graph_capture_refuses_a_cell_torch_nn_lacks(monkeypatch):
    from bptt.cells import CellKind
    from bptt.nn import run

    lone = CellKind("lone", "a cell torch.nn lacks", gates=("h",))
    module = bnn.RNN(3, 4)
    monkeypatch.setattr(bnn.RNN, "kind", lone)
    with pytest.raises(RuntimeError, match="expected a cell torch.nn has for torch.export / "
                                           "torch.jit.trace of RNN .* got the lone cell"):
        run.torch_nn_forward(module, ("weight_ih_l0",), [module.weight_ih_l0],
                             torch.randn(2, 1, 3), None, num_layers=1, bidirectional=False,
                             dropout=0.0, batch_sizes=None)


# -- double backward ----------------------------------------------------------------------------

@pytest.mark.parametrize("name,kw", [("RNN", {}), ("LSTM", {"proj_size": 2}),
                                     ("GRU", {"bidirectional": True})])
def test_a_graph_of_the_gradient_gives_the_same_gradient(name, kw):
    """create_graph=True runs the differentiable form of the backward: the same numbers as the
    fast one, and a gradient penalty can be differentiated."""
    torch.manual_seed(9)
    m = getattr(bnn, name)(3, 4, 2, **kw).double()
    x = torch.randn(5, 2, 3, dtype=F64, requires_grad=True)
    params = list(m.parameters())
    fast = torch.autograd.grad(m(x)[0].square().sum(), [x, *params])
    graph = torch.autograd.grad(m(x)[0].square().sum(), [x, *params], create_graph=True)
    for a, b in zip(graph, fast, strict=True):
        torch.testing.assert_close(a, b)
    penalty = sum(g.square().sum() for g in graph)
    penalty.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)


# -- DistributedDataParallel ------------------------------------------------------------------

DDP_SCRIPT = r'''
import os, sys, torch, torch.distributed as dist
import bptt.nn as bnn
rank = int(os.environ["RANK"])
dist.init_process_group("gloo", rank=rank, world_size=2)
torch.manual_seed(0)
model = bnn.LSTM(3, 5, 2, proj_size=2)
ddp = torch.nn.parallel.DistributedDataParallel(model)
x = torch.load(sys.argv[1])[rank * 2:(rank + 1) * 2].transpose(0, 1)   # this rank's half
out, _ = ddp(x)
out.square().mean().backward()
if rank == 0:
    torch.save({n: p.grad for n, p in model.named_parameters()}, sys.argv[2])
dist.destroy_process_group()
# done: leave without the interpreter's teardown, where torch's gloo threads now and then abort
# the process ("terminate called without an active exception"; a plain torch.nn.LSTM in this
# script did so in 3 of 16 runs on a loaded 2-core machine)
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_distributed_data_parallel_averages_the_hand_written_gradients(tmp_path: Path):
    """Two gloo processes on the CPU, each with half the batch: DDP's all-reduced gradients
    equal one process's on the whole batch."""
    x = torch.randn(4, 6, 3)                             # (B, T, I): 2 rows per rank
    torch.save(x, tmp_path / "x.pt")
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = subprocess_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
                         WORLD_SIZE="2")
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "x.pt"),
                               str(tmp_path / "grads.pt")], env={**env, "RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    try:
        errors = [p.communicate(timeout=120)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], errors
    got = torch.load(tmp_path / "grads.pt")
    torch.manual_seed(0)
    model = bnn.LSTM(3, 5, 2, proj_size=2)
    out, _ = model(x.transpose(0, 1))
    out.square().mean().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(got[n], p.grad, rtol=1e-5, atol=1e-6, msg=n)


def test_engine_stack_function_takes_an_empty_batch():
    """B = 0 through StackFunction (a projected LSTM): empty outputs, zero gradients."""
    from bptt.engine.torch.stack import StackConfig, apply

    w = {"weight_ih_l0": torch.randn(8, 3, requires_grad=True),
         "weight_hh_l0": torch.randn(8, 1, requires_grad=True),
         "weight_hr_l0": torch.randn(1, 2, requires_grad=True)}
    out, (h, c), _ = apply(StackConfig("lstm", names=tuple(w)),
                           torch.randn(4, 0, 3, requires_grad=True), w)
    assert out.shape == (4, 0, 1) and h.shape == (1, 0, 1) and c.shape == (1, 0, 2)
    (out.sum() + h.sum()).backward()
    assert all(v.grad is not None and not v.grad.any() for v in w.values())


def test_both_engines_ops_flip_each_packed_sequence_within_its_length():
    """ArrayOps.flip with batch_sizes (lengths 3, 2, 1): every sequence reversed in place of its
    own steps, the padding kept, the same in NumPy and torch."""
    import numpy as np

    from bptt.engine.numpy.common import OPS as NUMPY_OPS
    from bptt.engine.torch.common import OPS as TORCH_OPS

    x = np.arange(3 * 3, dtype=np.float64).reshape(3, 3, 1)   # (T, B, 1): x[t, b] = 3t + b
    want = np.array([[6, 4, 2], [3, 1, 5], [0, 7, 8]], dtype=np.float64)[..., None]
    np.testing.assert_array_equal(NUMPY_OPS.flip(x, (3, 2, 1)), want)
    np.testing.assert_array_equal(TORCH_OPS.flip(torch.from_numpy(x), (3, 2, 1)).numpy(), want)
    np.testing.assert_array_equal(NUMPY_OPS.flip(x), x[::-1])
