"""``bptt generate``: continue a prefix from a checkpoint."""

from __future__ import annotations

import argparse
import sys
import warnings


def register(sub) -> None:
    p = sub.add_parser(
        "generate", help="continue a prefix from a checkpoint",
        description="Warm the state up on the prefix, then generate: greedy by default (the "
        "book's behaviour); --temperature > 0 samples, optionally restricted by --top-k/--top-p.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="a run folder (best, else last) or a .safetensors file")
    p.add_argument("--prefix", default="time traveller ")
    p.add_argument("--length", type=int, default=100, help="tokens to generate")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--engine", default="numpy",
                   choices=["numpy", "torch", "torch-autograd", "torch-builtin"])
    p.add_argument("--device", default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import checkpoint as ck
    from ..lm.generate import LanguageModel, generate

    if args.num_samples < 1:
        raise ValueError(f"expected --num-samples >= 1, got {args.num_samples}")
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
