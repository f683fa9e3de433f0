"""``bptt demo``: a short end-to-end run (train, plot, checkpoint, continue a prefix)."""

from __future__ import annotations

import argparse
import sys

from ..ranges import COUNT
from .argtypes import HelpFormatter, add_number, add_overwrite_flag


def register(sub) -> None:
    p = sub.add_parser("demo", help="train briefly on The Time Machine and continue a prefix",
                       description="The book's data and model with Adam: train, plot, "
                       "checkpoint, continue 'time traveller'.",
                       formatter_class=HelpFormatter)
    p.add_argument("--out", default="runs/demo", help="run folder")
    add_number(p, "--epochs", COUNT, default=100, help="passes over the 10,000 characters")
    add_overwrite_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import checkpoint as ck
    from ..lm.config import TrainConfig
    from ..lm.generate import LanguageModel, generate
    from ..lm.train import Diverged, train

    # The book's data and model (first 10,000 characters, 512 tanh units, batch 32 x 35 steps,
    # clipping at 1) with Adam at 3e-3 instead of SGD at 1: perplexity ~1.1 in 100 epochs
    # (~20 s on 2 cores) where the book's recipe needs 500.
    cfg = TrainConfig(data="timemachine", max_tokens=10_000, hidden_size=512, epochs=args.epochs,
                      optimizer="adam", lr=0.003, out=args.out, sample_every=25)
    try:
        result = train(cfg, overwrite=args.overwrite)
    except Diverged as e:
        print(f"bptt demo: error: {e}", file=sys.stderr)
        return 3
    if result.interrupted:  # Ctrl-C: the checkpoint is saved, nothing more to show
        print(f"interrupted; continue with: bptt train --resume --out {result.out}")
        return 130
    last = result.last
    if last:
        print(f"perplexity {last['perplexity']:.2f}, {last['tokens_per_s']:,.0f} tokens/s")
    model = LanguageModel.from_checkpoint(ck.load(result.out))
    print(generate(model, "time traveller ", 80))
    print(f"plots: {result.out}/perplexity.png, {result.out}/grad_norms.png; "
          f"checkpoints: {result.out}/best.safetensors")
    return 0
