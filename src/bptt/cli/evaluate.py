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
        "normalisation and tokenisation. Every token but the first is predicted and counted; "
        "tokens unknown to the vocabulary count as <unk>, and how many there are is said.",
        formatter_class=HelpFormatter)
    p.add_argument("checkpoint", help="a run folder (best, else last) or a .safetensors file")
    p.add_argument("--data", required=True, help="corpus name or text file")
    add_number(p, "--max-tokens", TOKEN_LIMIT, default=None,
               help="evaluate only the first N tokens")
    add_number(p, "--batch-size", COUNT, default=32,
               help="rows the text is cut into, read in parallel")
    add_number(p, "--num-steps", COUNT, default=35, help="time steps per forward call")
    add_engine_flags(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from .. import checkpoint as ck
    from ..data import load_corpus, resolve
    from ..engine import get_engine
    from ..lm.evaluate import evaluate_tokens
    from ..lm.generate import LanguageModel
    from ..memory import estimate, require

    model = LanguageModel.from_checkpoint(ck.load(args.checkpoint))
    ids, _ = load_corpus(resolve(args.data), model.normalization, model.tokenization,
                         args.max_tokens, vocab=model.vocab)   # warns of unknown tokens
    unknown = int(np.count_nonzero(ids == 0))
    engine = get_engine(args.engine, model.spec, device=args.device)
    rows = max(1, min(args.batch_size, ids.size - 1))                  # as evaluate_tokens
    require(estimate(model.spec, batch_size=rows, training=False,
                     num_steps=min(args.num_steps, ids.size // rows + 1)), engine.device,
            hint="lower --num-steps or --batch-size")
    result = evaluate_tokens(engine, engine.from_numpy(model.params), ids, args.batch_size,
                             args.num_steps)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"perplexity {result['perplexity']:.3f}, {result['bits_per_token']:.3f} bits per "
              f"token over {result['tokens']:,} tokens ({unknown:,} of the text's {ids.size:,} "
              f"unknown to the vocabulary)")
    return 0
