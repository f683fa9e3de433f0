"""``bptt bench``: training throughput, generation speed and peak memory of every engine."""

from __future__ import annotations

import argparse

from ..ranges import COUNT, POSITIVE
from .argtypes import RawHelpFormatter, add_number

EPILOG = """\
configurations:
  book, small, large, long   the book's character RNN (H = 512, 256, 1024; T = 1000)
  lstm, gru (-512)           a 2-layer LSTM / GRU over characters, H = 256 (512)
  word, word-medium          Zaremba's word models: V = 10,000, 2 LSTM layers, E = H = 200
                             (B = 20, T = 20) and 650 (B = 20, T = 35)

subjects (rows):
  numpy, torch, torch-autograd, torch-builtin   our engines (numpy-bf16, torch-bf16: with
                                                --precision bf16), running the --cell(s) in
                                                the book's configurations, the configuration's
                                                cell in the others ("numpy lstm": one row per
                                                engine and cell)
  torch.nn.RNN   reference: torch.nn.RNN + torch.nn.Linear, torch.optim.SGD, clip_grad_norm_;
                 generation steps one character at a time under torch.no_grad();
                 torch.nn.LSTM / torch.nn.GRU likewise in the lstm, gru and word
                 configurations (torch.nn.Embedding in front of a word model)
  bptt.nn.RNN    the same with bptt.nn's drop-in module (bptt.nn.LSTM, bptt.nn.GRU likewise)
  book           reference: the book's from-scratch model (unrolled loop, one-hot torch.mm,
                 autograd, grad_clipping, sgd); generation is its predict_ch8 loop (the
                 character RNN configurations only)

columns:
  train tok/s    tokens per second of whole training steps (forward, BPTT, clip, SGD step)
  gen char/s     characters per second of greedy generation at batch 1
  peak MiB       resident-memory growth of a few training steps over the post-setup baseline,
                 each in a fresh process; (..t) = NumPy's tracemalloc peak
  x torch.nn, x book   ratios of medians measured in the same run (x torch.nn: to the
                       configuration's torch.nn reference, torch.nn.RNN in the book's
                       configurations whatever --cell says)
  x CELL         with several --cell: training tokens/s over the same engine's with the first
                 cell, the median of the rounds' paired ratios

Every subject runs in its own worker process; the timed blocks go round-robin over the
subjects, repeated, and the median is reported: compare ratios, not absolute numbers, on a
shared machine.
"""


def _names(choices):
    def parse(s: str) -> tuple[str, ...]:
        names = tuple(n.strip() for n in s.split(",") if n.strip())
        bad = [n for n in names if n not in choices]
        if bad or not names:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list among {', '.join(choices)}, got {s!r}")
        return names

    return parse


def register(sub) -> None:
    from ..bench.settings import CONFIGS, PARTS, SUBJECTS
    from ..cells import CELL_NAMES

    p = sub.add_parser(
        "bench", help="measure training and generation speed and memory of every engine",
        description="Benchmark every engine against torch.nn and the book's model: "
        "training tokens/s, single-stream generation characters/s and peak memory, for the "
        "book's RNN, LSTMs, GRUs and word models; print a table naming the CPU and the "
        "products chosen, optionally write JSON.",
        epilog=EPILOG, formatter_class=RawHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="a tiny version of everything (seconds; what CI runs)")
    p.add_argument("--json", metavar="PATH", default=None, help="write the results as JSON")
    p.add_argument("--configs", type=_names(tuple(CONFIGS)), default=tuple(CONFIGS),
                   help=f"comma-separated, among {','.join(CONFIGS)} (default: all)")
    p.add_argument("--subjects", type=_names(SUBJECTS), default=SUBJECTS,
                   help=f"comma-separated, among {','.join(SUBJECTS)} (default: all)")
    p.add_argument("--parts", type=_names(PARTS), default=PARTS,
                   help="comma-separated, among train,generate,memory (default: all)")
    p.add_argument("--cell", dest="cells", type=_names(CELL_NAMES), default=("rnn",),
                   help=f"the cells our engines run, comma-separated, among "
                   f"{','.join(CELL_NAMES)} (default: rnn, the book's model); with several, "
                   "one row per engine and cell, and each row's speed over the first cell's")
    add_number(p, "--repeats", COUNT, default=None,
               help="interleaved rounds (default: 7; quick: 3)")
    add_number(p, "--seconds", POSITIVE, default=None,
               help="length of one timed training block (default: 0.4)")
    add_number(p, "--gen-chars", COUNT, default=None,
               help="characters per generation block (default: 300)")
    add_number(p, "--threads", COUNT, default=None,
               help="threads per worker, every pool (the kernel's, the BLAS's, torch's) "
               "(default: the cores this process may use that other work leaves idle; "
               "quick: 1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from ..bench.measure import run as run_bench
    from ..bench.report import format_table
    from ..bench.settings import BenchSettings
    from ..errors import MissingExtra, has_module

    kw = {"configs": args.configs, "subjects": args.subjects, "parts": args.parts,
          "cells": args.cells}
    for name in ("repeats", "seconds", "gen_chars", "threads"):
        value = getattr(args, name)
        if value is not None:               # checked where parsed (argtypes)
            kw[name] = value
    needs_torch = [s for s in args.subjects if not s.startswith("numpy")]
    if needs_torch and not has_module("torch"):
        raise MissingExtra(f"expected torch installed for the subjects {', '.join(needs_torch)}, "
                           "got none; install it with pip install 'bptt[torch]', or pass "
                           "--subjects numpy")
    settings = BenchSettings.quick_settings(**kw) if args.quick else BenchSettings(**kw)
    out = run_bench(settings)
    print(format_table(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"results in {args.json}")
    return 0
