"""The layer-normalised cells against their plain twins, one training step at a time: the CPU
time and the wall time of the bench's training step (``loss_and_grads``, the
gradient clipping, SGD) per engine, cell and configuration, interleaved call by call so that a
shared machine's load falls on every subject alike; the medians and the LN / plain ratios.

    python benchmarks/ln_step.py [--configs small,book] [--engines numpy,torch] [--calls 25]
                                 [--threads 1]

``--threads`` threads in every pool, as ``bptt bench --threads`` gives its workers (the bench's
subjects read ``BPTT_BENCH_THREADS``). The CPU time is the process's (every thread's), what
other processes' load disturbs least; the wall time is what ``bptt bench`` measures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from bptt.bench.settings import CONFIGS, THREADS_ENV
from bptt.bench.subjects import EngineSubject

PAIRS = (("lnlstm", "lstm"), ("lngru", "gru"))


def measure(subjects: dict, calls: int, warm: int = 2) -> dict:
    """{key: ([cpu seconds], [wall seconds])}, one step of every subject in turn, ``calls``
    rounds after ``warm`` unmeasured ones."""
    times: dict = {k: ([], []) for k in subjects}
    for r in range(warm + calls):
        for k, s in subjects.items():
            c0, w0 = time.process_time(), time.perf_counter()
            s.train(1)
            c1, w1 = time.process_time(), time.perf_counter()
            if r >= warm:
                times[k][0].append(c1 - c0)
                times[k][1].append(w1 - w0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="small,book")
    p.add_argument("--engines", default="numpy,torch")
    p.add_argument("--calls", type=int, default=25)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    os.environ[THREADS_ENV] = str(args.threads)         # every subject's pools (set_threads)
    subjects = {(c, e, cell): EngineSubject(e, CONFIGS[c], cell=cell)
                for c in args.configs.split(",") for e in args.engines.split(",")
                for pair in PAIRS for cell in pair}
    times = measure(subjects, args.calls)
    med = {k: (statistics.median(v[0]), statistics.median(v[1])) for k, v in times.items()}
    print(f"{'config':7} {'engine':6} {'pair':13} {'cpu ms':>15} {'cpu ratio':>9} "
          f"{'wall ms':>15} {'wall ratio':>10}")
    for c in args.configs.split(","):
        for e in args.engines.split(","):
            for ln, plain in PAIRS:
                a, b = med[c, e, ln], med[c, e, plain]
                print(f"{c:7} {e:6} {ln + '/' + plain:13} "
                      f"{a[0] * 1e3:6.1f} / {b[0] * 1e3:6.1f} {a[0] / b[0]:8.2f}x "
                      f"{a[1] * 1e3:6.1f} / {b[1] * 1e3:6.1f} {a[1] / b[1]:9.2f}x")


if __name__ == "__main__":
    main()
