"""Profiles and matrix-product rates: where the time of a training step goes (benchmarks/,
docs/performance.md).

  profile_step        cProfile of a few training steps of one subject
  torch_profile_step  torch.profiler's operator table of a few steps of a torch subject
  gemm_rates          GFLOP/s of the products one training step is made of (gemm_shapes), in
                      NumPy, torch.mm and torch's oneDNN linear, float32 and bfloat16
"""

from __future__ import annotations

import time

import numpy as np

from .settings import BenchConfig
from .subjects import make_subject, set_torch_threads


def profile_step(subject: str, cfg: BenchConfig, steps: int = 5, top: int = 12) -> str:
    """cProfile of ``steps`` training steps of one subject (after one warm-up step)."""
    import cProfile
    import io
    import pstats

    sub = make_subject(subject, cfg)
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

    sub = make_subject(subject, cfg)
    sub.train(1)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        sub.train(steps)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


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


def gemm_shapes(cfg: BenchConfig) -> dict[str, tuple[int, int, int]]:
    """(m, k, n) of the products one training step of the book's model is made of."""
    H, B, T, V = cfg.hidden, cfg.batch, cfg.steps, cfg.vocab
    return {
        "step (B,H)x(H,H)": (B, H, H),
        "weight grad (H,TB)x(TB,H)": (H, T * B, H),
        "head (TB,H)x(H,V)": (T * B, H, V),
        "generation (1,H)x(H,H)": (1, H, H),
    }


def gemm_rates(cfg: BenchConfig, with_torch: bool = True, min_seconds: float = 0.2) -> dict:
    """GFLOP/s of each product of :func:`gemm_shapes`, ``a (m, k) @ b (k, n)``.

    ``numpy_fp32``: NumPy's matmul (its BLAS). ``torch_fp32``: torch.mm (torch's CPU BLAS,
    MKL), what torch.nn.RNN uses. ``onednn_fp32``: torch's oneDNN linear, what the torch
    engine uses for float32 on the CPU; ``onednn_fp32_packed``: the same with the weight
    reordered once (the per-step products). ``torch_bf16``: torch.mm on bfloat16 operands;
    ``onednn_bf16_packed``: oneDNN with a reordered bfloat16 weight (the bf16 engine's steps).
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
