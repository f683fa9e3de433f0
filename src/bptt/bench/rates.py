"""Profiles and matrix-product rates: where the time of a training step goes (benchmarks/,
docs/performance.md).

  profile_step        cProfile of a few training steps of one subject
  torch_profile_step  torch.profiler's operator table of a few steps of a torch subject
  kernel_parts        milliseconds per step in each of the compiled kernel's calls
  gemm_rates          GFLOP/s of the products one training step is made of (gemm_shapes), in
                      NumPy, torch.mm and torch's oneDNN linear, float32 and bfloat16
"""

from __future__ import annotations

import time

import numpy as np

from ..engine import kernel
from .settings import BenchConfig
from .subjects import make_subject, set_torch_threads


def profile_step(subject: str, cfg: BenchConfig, steps: int = 5, top: int = 12) -> str:
    """cProfile of ``steps`` training steps of one subject (after one warm-up step)."""
    import cProfile
    import io
    import pstats

    sub = make_subject(subject, cfg, cell=cfg.cell)
    sub.train(1)
    prof = cProfile.Profile()
    prof.enable()
    sub.train(steps)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    return buf.getvalue()


def torch_profile_step(subject: str, cfg: BenchConfig, steps: int = 3, top: int = 12) -> str:
    """torch.profiler's operator summary of ``steps`` training steps of a torch subject."""
    from torch.profiler import ProfilerActivity, profile

    sub = make_subject(subject, cfg, cell=cfg.cell)
    sub.train(1)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        sub.train(steps)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


class _Timed:
    """The compiled kernel's module with each call's seconds added to ``parts`` under a name:
    the loops by function and cell, the products by shape and operand layout."""

    CALLS = ("pack", "forward", "backward", "gemm", "softmax_xent")

    def __init__(self, module, parts: dict) -> None:
        self._module, self._parts = module, parts

    def __getattr__(self, name: str):
        fn = getattr(self._module, name)
        if name not in self.CALLS:
            return fn

        def timed(*args):
            t0 = time.perf_counter()
            out = fn(*args)
            key = name
            if name == "gemm":                        # gemm(a, b, c, accumulate, bf16, threads)
                a, b = args[0], args[1]
                layout = "".join("T" if x.strides[0] < x.strides[1] else "N" for x in (a, b))
                key = (f"gemm {a.shape[0]}x{a.shape[1]}x{b.shape[1]} {layout} "
                       f"{'bf16' if args[4] else str(a.dtype)}")
            elif name in ("forward", "backward"):     # the cell's code first
                key = f"{name} {('rnn', 'lstm', 'gru')[args[0]]}"
            self._parts[key] = self._parts.get(key, 0.0) + time.perf_counter() - t0
            return out

        return timed


def kernel_parts(subject: str, cfg: BenchConfig, steps: int = 10) -> dict[str, float]:
    """Milliseconds per training step of one subject in each call of the compiled kernel (its
    loops, its products by shape and layout (N: a matrix, T: a transposed view), the softmax),
    and ``step``, the whole step (the rest is Python and the libraries); empty without the
    kernel."""
    if not kernel.enabled():
        return {}
    sub = make_subject(subject, cfg, cell=cfg.cell)
    sub.train(1)
    parts: dict[str, float] = {}
    module = kernel._load()
    kernel._STATE["module"] = _Timed(module, parts)
    try:
        t0 = time.perf_counter()
        sub.train(steps)
        parts["step"] = time.perf_counter() - t0
    finally:
        kernel._STATE["module"] = module
    return {k: v * 1e3 / steps for k, v in sorted(parts.items(), key=lambda kv: -kv[1])}


def _rate(fn, flop: float, min_seconds: float = 0.2) -> float:
    fn()
    n, elapsed = 1, 0.0
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return flop * n / elapsed / 1e9
        n *= 2


GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def step_products(cfg: BenchConfig) -> dict[str, tuple[tuple[int, int, int], int]]:
    """The matrix products of one training step (forward, BPTT, head) of a configuration:
    name -> ((m, k, n), how many per step), G the gates, L the layers, I a layer's input
    (layer 0 over one-hot characters: a row gather, no product; behind an embedding: E)."""
    H, B, T, V, G, L = cfg.hidden, cfg.batch, cfg.steps, cfg.vocab, GATES[cfg.cell], cfg.layers
    gh = "H" if G == 1 else f"{G}H"
    dense_inputs = L - 1 + (1 if cfg.embedding else 0)      # layers whose input is a product
    I = cfg.embedding or H
    out = {
        f"step (B,H)x(H,{gh})": ((B, H, G * H), 2 * T * L),            # z_t and dh_{t-1}
        f"weight grad ({gh},TB)x(TB,H)": ((G * H, T * B, H), L),       # dW_hh
        "head (TB,H)x(H,V)": ((T * B, H, V), 3),                       # y, dh, dW_head
    }
    if dense_inputs:
        out[f"input (TB,I)x(I,{gh})"] = ((T * B, I, G * H), 2 * dense_inputs)   # x W_ih^T, dx
        out[f"input grad ({gh},TB)x(TB,I)"] = ((G * H, T * B, I), dense_inputs)  # dW_ih
    return out


def flops_per_token(cfg: BenchConfig) -> float:
    """The matrix-product FLOPs of one training step per token (2 m k n per product)."""
    total = sum(2.0 * m * k * n * count for (m, k, n), count in step_products(cfg).values())
    return total / cfg.tokens


def roofline(cfg: BenchConfig, rates: dict, column: str) -> float:
    """Tokens/s if a training step took no time but its products, each at the rate of its
    shape measured in ``column`` of :func:`gemm_rates` (GFLOP/s)."""
    seconds = sum(2.0 * m * k * n * count / (rates[name][column] * 1e9)
                  for name, ((m, k, n), count) in step_products(cfg).items())
    return cfg.tokens / seconds


def gemm_shapes(cfg: BenchConfig) -> dict[str, tuple[int, int, int]]:
    """(m, k, n) of the products one training step is made of (:func:`step_products`), and
    of a generation step."""
    shapes = {name: shape for name, (shape, _) in step_products(cfg).items()}
    gh = "H" if cfg.cell == "rnn" else f"{GATES[cfg.cell]}H"
    shapes[f"generation (1,H)x(H,{gh})"] = (1, cfg.hidden, GATES[cfg.cell] * cfg.hidden)
    return shapes


def gemm_rates(cfg: BenchConfig, with_torch: bool = True, min_seconds: float = 0.2) -> dict:
    """GFLOP/s of each product of :func:`gemm_shapes`, ``a (m, k) @ b (k, n)``.

    ``numpy_fp32``: NumPy's matmul (its BLAS). ``torch_fp32``: torch.mm (torch's CPU BLAS,
    MKL), what torch.nn.RNN uses. ``onednn_fp32``: torch's oneDNN linear, what the torch
    engine uses for float32 on the CPU; ``onednn_fp32_packed``: the same with the weight
    reordered once (the per-step products). ``torch_bf16``: torch.mm on bfloat16 operands;
    ``onednn_bf16_packed``: oneDNN with a reordered bfloat16 weight (the bf16 engine's steps).
    ``kernel_fp32``, ``kernel_bf16``: the compiled kernel's product (``bptt.engine.kernel``;
    bf16: bfloat16 operands, float32 accumulation), when it is built.
    """
    rng = np.random.default_rng(0)
    rates = {}
    if with_torch:
        import torch

        from ..engine.torch.common import linear, pack

        set_torch_threads()
    for name, (m, k, n) in gemm_shapes(cfg).items():
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        c = np.empty((m, n), np.float32)
        flop = 2.0 * m * k * n
        row = {"shape": [m, k, n],
               "numpy_fp32": _rate(lambda a=a, b=b, c=c: np.matmul(a, b, out=c), flop,
                                   min_seconds)}
        if kernel.enabled():
            for precision in ("fp32", "bf16"):
                row[f"kernel_{precision}"] = _rate(
                    lambda a=a, b=b, c=c, p=precision: kernel.matmul(a, b, c, precision=p),
                    flop, min_seconds)
        if with_torch:
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            tc = torch.empty(m, n)
            w = tb.t().contiguous()                      # (n, k): a linear's weight
            row["torch_fp32"] = _rate(lambda ta=ta, tb=tb, tc=tc: torch.mm(ta, tb, out=tc),
                                      flop, min_seconds)
            row["onednn_fp32"] = _rate(lambda ta=ta, w=w: linear(ta, w), flop, min_seconds)
            wp = pack(w, m)
            row["onednn_fp32_packed"] = _rate(lambda ta=ta, wp=wp: linear(ta, wp), flop,
                                              min_seconds)
            ha, hb = ta.bfloat16(), tb.bfloat16()
            row["torch_bf16"] = _rate(lambda ha=ha, hb=hb: torch.mm(ha, hb), flop, min_seconds)
            hp = pack(w.bfloat16(), m)
            row["onednn_bf16_packed"] = _rate(lambda ha=ha, hp=hp: linear(ha, hp), flop,
                                              min_seconds)
        rates[name] = row
    return rates
