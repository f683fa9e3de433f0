"""``bptt evaluate``: perplexity and bits per token of a text under a checkpoint."""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="perplexity of a text under a checkpoint",
        description="Perplexity and bits per token of any text, read with the checkpoint's own "
        "normalisation and tokenisation (unknown tokens count as <unk>).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="a run folder (best, else last) or a .safetensors file")
    p.add_argument("--data", required=True, help="corpus name or text file")
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-steps", type=int, default=35)
    p.add_argument("--engine", default="numpy",
                   choices=["numpy", "torch", "torch-autograd", "torch-builtin"])
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import checkpoint as ck
    from ..data import load_corpus, resolve
    from ..engine import get_engine
    from ..lm.evaluate import evaluate_tokens
    from ..lm.generate import LanguageModel

    model = LanguageModel.from_checkpoint(ck.load(args.checkpoint))
    ids, _ = load_corpus(resolve(args.data), model.normalization, model.tokenization,
                         args.max_tokens, vocab=model.vocab)
    engine = get_engine(args.engine, model.spec, device=args.device)
    result = evaluate_tokens(engine, engine.from_numpy(model.params), ids, args.batch_size,
                             args.num_steps)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"perplexity {result['perplexity']:.3f}, {result['bits_per_token']:.3f} bits per "
              f"token over {result['tokens']:,} tokens")
    return 0
