"""``bptt evaluate``: perplexity and bits per token of a text under a checkpoint."""

from __future__ import annotations

import argparse
import json

from ..ranges import COUNT, TOKEN_LIMIT
from .argtypes import HelpFormatter, add_engine_flags, add_number


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="perplexity of a text under a checkpoint",
        description="Perplexity and bits per token of any text, read with the checkpoint's own "
        "normalisation, tokenisation and <eos>, in order, the state carried from batch to "
        "batch. Every token but the first is predicted and counted (the last partial batch "
        "too); tokens unknown to the vocabulary count as <unk>, and how many there are, and "
        "their share, is said, with the time it took.",
        formatter_class=HelpFormatter)
    p.add_argument("checkpoint", help="a run folder (best, else last) or a .safetensors file")
    p.add_argument("--data", required=True,
                   help="corpus name (timemachine, or its part timemachine:test) or text file")
    add_number(p, "--max-tokens", TOKEN_LIMIT, default=None,
               help="evaluate only the first N tokens")
    add_number(p, "--batch-size", COUNT, default=32,
               help="rows the text is cut into, read in parallel")
    add_number(p, "--num-steps", COUNT, default=35, help="time steps per forward call")
    add_engine_flags(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import checkpoint as ck
    from ..lm.evaluate import evaluate_text
    from ..lm.generate import LanguageModel

    model = LanguageModel.from_checkpoint(ck.load(args.checkpoint))
    r = evaluate_text(model, args.data, engine=args.engine, device=args.device,
                      batch_size=args.batch_size, num_steps=args.num_steps,
                      max_tokens=args.max_tokens)              # warns of unknown tokens
    if args.json:
        print(json.dumps(r))
    else:
        print(f"perplexity {r['perplexity']:.3f}, {r['bits_per_token']:.3f} bits per token "
              f"over {r['tokens']:,} tokens ({r['unknown']:,} of the text's "
              f"{r['text_tokens']:,} unknown to the vocabulary), {r['unknown_share']:.1%} "
              f"unknown; {r['seconds']:.2f} s, {r['tokens_per_s']:,.0f} tokens/s "
              f"({args.engine})")
    return 0
