"""``bptt generate``: continue a prefix from a checkpoint."""

from __future__ import annotations

import argparse
import sys
import warnings

from ..ranges import COUNT, COUNT0, NONNEGATIVE, PROBABILITY, SEED
from .argtypes import HelpFormatter, add_engine_flags, add_number


def register(sub) -> None:
    p = sub.add_parser(
        "generate", help="continue a prefix from a checkpoint",
        description="Warm the state up on the prefix, then generate: greedy by default (the "
        "book's behaviour); --temperature > 0 samples; --top-k/--top-p sample from the k most "
        "likely tokens / the smallest set holding probability p, at temperature 1 unless "
        "--temperature is given. Prefix characters the model cannot read are named on stderr.",
        formatter_class=HelpFormatter)
    p.add_argument("checkpoint", help="a run folder (best, else last) or a .safetensors file")
    p.add_argument("--prefix", default="time traveller ", help="the text to continue")
    add_number(p, "--length", COUNT0, default=100, help="tokens to generate")
    add_number(p, "--temperature", NONNEGATIVE, default=None,
               help="0: greedy; > 0: sample from softmax(logits / temperature) (default: 0, "
               "or 1 with --top-k/--top-p)")
    add_number(p, "--top-k", COUNT, default=None, help="sample among the k most likely tokens")
    add_number(p, "--top-p", PROBABILITY, default=None,
               help="sample among the smallest set of tokens holding probability p (nucleus)")
    add_number(p, "--seed", SEED, default=None,
               help="seed of the sampling (default: fresh randomness)")
    add_number(p, "--num-samples", COUNT, default=1,
               help="continuations to print (seeds seed, seed + 1, ...)")
    add_engine_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import checkpoint as ck
    from ..lm.generate import LanguageModel, generate

    model = LanguageModel.from_checkpoint(ck.load(args.checkpoint))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        texts = [
            generate(model, args.prefix, args.length, temperature=args.temperature,
                     top_k=args.top_k, top_p=args.top_p,
                     seed=None if args.seed is None else args.seed + i,
                     engine=args.engine, device=args.device)
            for i in range(args.num_samples)
        ]
    for w in {str(w.message) for w in caught}:
        print(f"bptt generate: warning: {w}", file=sys.stderr)
    print("\n".join(texts))
    return 0
