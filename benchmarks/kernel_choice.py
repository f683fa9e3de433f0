"""Why a C++ extension: the recurrent layers' training work under each way of compiling it, side
by side in one process, timed interleaved.

One step is a layer stack's forward over T steps and its backward over T steps with the weight
gradients (the loss sum(out * dout) for a fixed dout; a dense (T, B, V) input, no input
gradient), float32, for each subject:

  kernel             bptt's compiled C++ kernel: the torch engine's stack (its kernel path)
  inductor           the same per-step equations in torch, each layer's loop over time compiled
                     whole by ``torch.compile`` (default mode); autograd's backward, compiled too
  inductor-autotune  the same with ``mode="max-autotune-no-cudagraphs"``
  autograd           that loop in eager torch (what Inductor starts from)
  numba              ``@njit`` loops, ``np.dot`` per step (``_numba_layers.py``), given
                     ``--numba-site DIR``: a folder holding numba (and SciPy, whose BLAS numba's
                     np.dot calls), never a dependency of bptt
  torch.nn           torch.nn.LSTM / GRU (oneDNN's fused primitive): the reference

A subject whose package is missing is skipped with one line. First calls (numba's and
Inductor's compilation, into a fresh Inductor cache; torch compiles again when the thread count
changes) are timed apart, and every subject's weight gradients are compared with the kernel's
on its first call of each configuration. A layer's compiled graph serves every configuration
with its shapes: the L=2 rows' first calls compile the second layer only. The default subjects
leave out ``inductor-autotune`` (as fast as the default mode here, and as long to compile).

    python benchmarks/kernel_choice.py [--cells lstm,gru] [--hidden 256,512] [--layers 1,2]
        [--threads 1,2] [--subjects ...] [--repeats 7] [--numba-site DIR] [--json out.json]

numba, in a folder of its own (never a dependency of bptt; numba 0.68.1 with llvmlite 0.50.0
took numpy 2.4.6 here), then the run (17 minutes on the shared 2-core machine with
inductor-autotune; the default subjects compile half as much, most of the time it takes):

    python -m venv /tmp/numba-venv && /tmp/numba-venv/bin/pip install numba scipy
    python benchmarks/kernel_choice.py --numba-site /tmp/numba-venv/lib/python3.11/site-packages
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

SUBJECTS = ("kernel", "inductor", "inductor-autotune", "autograd", "numba", "torch.nn")
DEFAULT = ("kernel", "inductor", "autograd", "numba", "torch.nn")   # autotune: --subjects
REFERENCE = "torch.nn"
MODES = {"inductor": None, "inductor-autotune": "max-autotune-no-cudagraphs"}
V, B, T = 28, 32, 35


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", default="lstm,gru")
    p.add_argument("--hidden", default="256,512")
    p.add_argument("--layers", default="1,2")
    p.add_argument("--threads", default="1,2", help="thread counts, in turn")
    p.add_argument("--subjects", default=",".join(DEFAULT),
                   help=f"among {','.join(SUBJECTS)} (inductor-autotune doubles the compiling)")
    p.add_argument("--repeats", type=int, default=7, help="interleaved rounds")
    p.add_argument("--steps", type=int, default=3, help="steps per subject and round")
    p.add_argument("--batch", type=int, default=B)
    p.add_argument("--steps-t", type=int, default=T, help="the sequence length T")
    p.add_argument("--numba-site", metavar="DIR", help="a folder with numba and scipy")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args()
    counts = [int(n) for n in args.threads.split(",")]
    if args.numba_site:                                  # after the project's own packages
        sys.path.append(args.numba_site)
    with tempfile.TemporaryDirectory(prefix="inductor-") as cache:
        # before torch loads: every pool as large as the most threads asked for, waiting
        # passively; Inductor compiles into an empty cache (its first calls are cold)
        from bptt.engine.threads import child_environment

        os.environ.update(child_environment(max(counts)))
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", cache)
        out = {"runs": [measure(args, n) for n in counts]}
    out["machine"] = out["runs"][0]["machine"]
    print(report(out))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


# -- the subjects ---------------------------------------------------------------------------

def params_of(cell: str, hidden: int, layers: int):
    """torch.nn's parameters of the stack, by torch's names, seeded."""
    import torch

    torch.manual_seed(0)
    net = getattr(torch.nn, cell.upper())(V, hidden, layers)
    return {n: p.detach().clone() for n, p in net.named_parameters()}, net


def kernel_subject(cell, params, layers, x, dout):
    from bptt.engine import kernel
    from bptt.engine.torch import stack

    if not kernel.enabled():
        raise ImportError(f"the compiled kernel is {kernel.status()}")

    def step():
        _, _, cache = stack.forward(cell, params, x, num_layers=layers)
        return stack.backward(dout, None, cache, need_dx=False)[2]

    return step


def torch_nn_subject(net, x, dout):
    import torch

    weights = list(net.parameters())

    def step():
        out, _ = net(x)
        grads = torch.autograd.grad((out * dout).sum(), weights)
        return {n: g for (n, _), g in zip(net.named_parameters(), grads, strict=True)}

    return step


def lstm_layer(x, w_ih, w_hh, b_ih, b_hh):
    """One LSTM layer's loop over time, torch operations per step (autograd differentiates)."""
    import torch

    xw = torch.nn.functional.linear(x, w_ih, b_ih + b_hh)            # x_t W_ih^T + b, all t
    h = x.new_zeros((x.shape[1], w_hh.shape[1]))
    c = torch.zeros_like(h)
    outs = []
    for t in range(x.shape[0]):
        i, f, g, o = (xw[t] + h @ w_hh.t()).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs)


def gru_layer(x, w_ih, w_hh, b_ih, b_hh):
    """One GRU layer's loop over time (torch's equations), torch operations per step."""
    import torch

    a = torch.nn.functional.linear(x, w_ih, b_ih)                   # x_t W_ih^T + b_ih
    h = x.new_zeros((x.shape[1], w_hh.shape[1]))
    outs = []
    for t in range(x.shape[0]):
        a_r, a_z, a_n = a[t].chunk(3, 1)
        s_r, s_z, s_n = torch.nn.functional.linear(h, w_hh, b_hh).chunk(3, 1)
        r, u = torch.sigmoid(a_r + s_r), torch.sigmoid(a_z + s_z)
        n = torch.tanh(a_n + r * s_n)
        h = (1 - u) * n + u * h
        outs.append(h)
    return torch.stack(outs)


def autograd_subject(cell, params, layers, x, dout, mode: str | None = "eager"):
    """The per-step loop, each layer's function eager (``mode="eager"``) or compiled by
    torch.compile in ``mode`` (None: the default)."""
    import torch

    fn = lstm_layer if cell == "lstm" else gru_layer
    if mode != "eager":
        fn = torch.compile(fn, mode=mode, dynamic=False, fullgraph=True)
    weights = [p.requires_grad_() for p in params.values()]

    def step():
        h = x
        for layer in range(layers):
            h = fn(h, *weights[4 * layer:4 * layer + 4])
        grads = torch.autograd.grad((h * dout).sum(), weights)
        return dict(zip(params, grads, strict=True))

    return step


def numba_subject(cell, params, layers, x, dout, site: str | None):
    if site is None:
        raise ImportError("no --numba-site given")
    import numba
    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _numba_layers

    fns = _COMPILED.setdefault("numba", _numba_layers.compiled(numba.njit))
    w = {n: np.ascontiguousarray(p.detach().numpy()) for n, p in params.items()}
    wt = {n: np.ascontiguousarray(a.T) for n, a in w.items() if a.ndim == 2}
    xn, dn = x.numpy(), dout.numpy()
    H = w["weight_hh_l0"].shape[1]
    h0 = np.zeros((xn.shape[1], H), np.float32)

    def step():
        saved, h = [], xn
        for k in range(layers):
            wi, wh, bi, bh = (f"{s}_l{k}" for s in ("weight_ih", "weight_hh", "bias_ih",
                                                    "bias_hh"))
            if cell == "lstm":
                saved.append((h, fns["lstm_forward"](h, wt[wi], wt[wh], w[bi] + w[bh], h0, h0)))
                h = saved[-1][1][1]
            else:
                saved.append((h, fns["gru_forward"](h, wt[wi], wt[wh], w[bi], w[bh], h0)))
                h = saved[-1][1][2]
        grads, d = {}, dn
        for k in range(layers - 1, -1, -1):
            xin, cache = saved[k]
            wi, wh = w[f"weight_ih_l{k}"], w[f"weight_hh_l{k}"]
            if cell == "lstm":
                gates, hs, cs, tcs = cache
                d, dwi, dwh, db = fns["lstm_backward"](d, xin, wi, wh, gates, hs, cs, tcs, h0, h0)
                dbi = dbh = db
            else:
                gates, sn, hs = cache
                d, dwi, dwh, dbi, dbh = fns["gru_backward"](d, xin, wi, wh, gates, sn, hs, h0)
            grads.update({f"weight_ih_l{k}": dwi, f"weight_hh_l{k}": dwh,
                          f"bias_ih_l{k}": dbi, f"bias_hh_l{k}": dbh})
        return grads

    return step


_COMPILED: dict = {}


def make(subject: str, cell: str, hidden: int, layers: int, x, dout, site) -> Callable:
    params, net = params_of(cell, hidden, layers)
    if subject == "kernel":
        return kernel_subject(cell, params, layers, x, dout)
    if subject == REFERENCE:
        return torch_nn_subject(net, x, dout)
    if subject == "numba":
        return numba_subject(cell, params, layers, x, dout, site)
    return autograd_subject(cell, params, layers, x, dout, MODES.get(subject, "eager"))


# -- the measurement ------------------------------------------------------------------------

def measure(args, threads: int) -> dict:
    """Every configuration with ``threads`` threads in every pool (the kernel's, torch's and
    its OpenMP's, which Inductor's code uses, and the BLAS numba's np.dot calls)."""
    import torch

    from bptt.bench.measure import machine_info
    from bptt.engine.threads import set_threads

    set_threads(threads)
    _scipy_blas_threads(threads)
    with contextlib.suppress(AttributeError):
        torch._dynamo.config.cache_size_limit = 64       # a compiled layer per shape and mode
    subjects = args.subjects.split(",")
    rows = []
    for cell in args.cells.split(","):
        for hidden in map(int, args.hidden.split(",")):
            for layers in map(int, args.layers.split(",")):
                rows.append(config_row(args, subjects, cell, hidden, layers))
                print(f"kernel_choice: threads {threads} {cell} H={hidden} L={layers}: "
                      + ", ".join(f"{s} {r:.2f}x" for s, r in rows[-1]["ratio"].items()),
                      file=sys.stderr, flush=True)
    return {"threads": threads, "machine": machine_info(), "loadavg": list(os.getloadavg()),
            "rows": rows}


def _scipy_blas_threads(n: int) -> None:
    """The threads of SciPy's bundled OpenBLAS (numba's np.dot), where SciPy is importable."""
    try:
        import scipy
    except ImportError:
        return
    libs = Path(scipy.__file__).resolve().parent.parent / "scipy.libs"
    for path in libs.glob("libscipy_openblas*"):
        lib = ctypes.CDLL(str(path))
        for name in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads"):
            if hasattr(lib, name):
                getattr(lib, name)(ctypes.c_int(n))
                return


def config_row(args, subjects, cell: str, hidden: int, layers: int) -> dict:
    """One configuration: every subject's first call (timed, its gradients checked against the
    kernel's), then ``repeats`` rounds in an order rotated each round."""
    import numpy as np
    import torch

    gen = torch.Generator().manual_seed(1)
    x = torch.randn((args.steps_t, args.batch, V), generator=gen)
    dout = torch.randn((args.steps_t, args.batch, hidden), generator=gen)
    row = {"cell": cell, "hidden": hidden, "layers": layers, "first_call_s": {},
           "max_grad_err": {}, "skipped": {}, "seconds": {}}
    steps, expect = {}, None
    for s in subjects:
        try:
            step = make(s, cell, hidden, layers, x, dout, args.numba_site)
            t0 = time.perf_counter()
            grads = step()
            row["first_call_s"][s] = time.perf_counter() - t0
        except ImportError as e:
            row["skipped"][s] = str(e).splitlines()[0]
            print(f"kernel_choice: skipping {s}: {row['skipped'][s]}", file=sys.stderr)
            continue
        grads = {n: np.asarray(g.detach() if hasattr(g, "detach") else g)
                 for n, g in grads.items()}
        expect = expect or grads
        row["max_grad_err"][s] = max(float(np.abs(grads[n] - expect[n]).max()
                                           / (np.abs(expect[n]).max() + 1e-30)) for n in grads)
        steps[s] = step
        row["seconds"][s] = []
    names = list(steps)
    for rep in range(args.repeats):
        for s in names[rep % len(names):] + names[:rep % len(names)]:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                steps[s]()
            row["seconds"][s].append((time.perf_counter() - t0) / args.steps)
    ref = row["seconds"].get(REFERENCE)
    row["median_ms"] = {s: 1e3 * float(np.median(v)) for s, v in row["seconds"].items()}
    row["ratio"] = {s: float(np.median([r / t for t, r in zip(v, ref, strict=True)]))
                    for s, v in row["seconds"].items()} if ref else {}
    return row


def report(out: dict) -> str:
    m = out["machine"]
    lines = [f"{m.get('cpu', '?')}, {m['cores']} cores; torch {m.get('torch')}, numpy "
             f"{m['numpy']}; kernel {m['kernel']}",
             "speed as a ratio to torch.nn (paired medians of interleaved rounds; higher is "
             "faster), then first-call seconds (compiling; again for a new thread count)"]
    for run in out["runs"]:
        subjects = [s for s in SUBJECTS if any(s in r["median_ms"] for r in run["rows"])]
        lines.append(f"\nthreads {run['threads']}  (load average before {run['loadavg'][0]:.2f})")
        lines.append(f"{'config':<14}" + "".join(f"{s:>19}" for s in subjects))
        for r in run["rows"]:
            name = f"{r['cell']} H={r['hidden']} L={r['layers']}"
            cells = [f"{r['ratio'].get(s, float('nan')):6.2f}x {r['first_call_s'].get(s, 0):7.2f}s"
                     if s in r["median_ms"] else "-" for s in subjects]
            lines.append(f"{name:<14}" + "".join(f"{c:>19}" for c in cells))
        worst = max((e for r in run["rows"] for e in r["max_grad_err"].values()), default=0.0)
        lines.append(f"largest weight-gradient difference to the kernel's: {worst:.1e} "
                     f"(relative to the largest entry)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
