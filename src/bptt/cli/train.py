"""``bptt train``: train a language model on a corpus name or any UTF-8 text file."""

from __future__ import annotations

import argparse
import sys

from ..cells import CELL_NAMES, NONLINEARITIES
from ..lm.config import RECIPES, TrainConfig
from ..lm.distributed import DEFAULT_TIMEOUT as DIST_TIMEOUT

_D = TrainConfig()

# Settings a resumed run takes from the command line; every other one comes from the checkpoint.
RESUME_FLAGS = ("epochs", "out", "progress", "device", "engine", "data", "val_data")


def _mark_given(namespace: argparse.Namespace, dest: str) -> None:
    """Remember that ``dest`` was given on the command line (even if equal to its default)."""
    vars(namespace).setdefault("given", set()).add(dest)


class _Store(argparse.Action):
    """argparse's ``store``, also recording the flag as given."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        _mark_given(namespace, self.dest)


class _StoreTrue(argparse.Action):
    """argparse's ``store_true``, also recording the flag as given."""

    def __init__(self, option_strings, dest, default=False, required=False, help=None):
        super().__init__(option_strings, dest, nargs=0, const=True, default=default,
                         required=required, help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, True)
        _mark_given(namespace, self.dest)


def _none_or(kind):
    def parse(s: str):
        return None if s.lower() in ("none", "off", "0") and kind is not str else kind(s)

    return parse


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--cell", choices=CELL_NAMES, default=_D.cell)
    g.add_argument("--hidden-size", type=int, default=_D.hidden_size)
    g.add_argument("--num-layers", type=int, default=_D.num_layers)
    g.add_argument("--nonlinearity", choices=NONLINEARITIES, default=_D.nonlinearity)
    g.add_argument("--dropout", type=float, default=_D.dropout,
                   help="between stacked layers, training only")
    g.add_argument("--init", choices=["torch", "d2l"], default=_D.init,
                   help="torch: U(-1/sqrt(H), 1/sqrt(H)); d2l: the book's N(0, 0.01^2)")


def add_engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--engine", default=_D.engine,
                   choices=["numpy", "torch", "torch-autograd", "torch-builtin"])
    g.add_argument("--device", default=None, help="cpu or cuda (torch engines; default: cuda "
                   "when available)")
    g.add_argument("--dtype", choices=["float32", "float64"], default=_D.dtype)
    g.add_argument("--precision", choices=["fp32", "bf16"], default=_D.precision)


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="train a language model",
        description="Train an RNN/LSTM/GRU language model; writes checkpoints (best and last), "
        "metrics.jsonl and perplexity.png into --out. --recipe d2l is the book's whole recipe.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # flags given explicitly must win over a recipe even when they equal the parser's default
    for name in (None, "store"):
        p.register("action", name, _Store)
    p.register("action", "store_true", _StoreTrue)
    p.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="a named recipe; flags given explicitly override it")
    g = p.add_argument_group("data")
    g.add_argument("--data", default=_D.data, help="corpus name (timemachine) or a text file")
    g.add_argument("--val-data", default=None, help="a separate validation text file")
    g.add_argument("--normalization", choices=["d2l", "none"], default=_D.normalization)
    g.add_argument("--tokenization", choices=["char", "word"], default=_D.tokenization)
    g.add_argument("--max-tokens", type=_none_or(int), default=_D.max_tokens)
    g.add_argument("--min-freq", type=int, default=_D.min_freq)
    g.add_argument("--val-frac", type=float, default=_D.val_frac)
    add_model_args(p)
    add_engine_args(p)
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=_D.batch_size)
    g.add_argument("--num-steps", type=int, default=_D.num_steps)
    g.add_argument("--partition", choices=["sequential", "random"], default=_D.partition)
    g.add_argument("--epochs", type=int, default=_D.epochs)
    g.add_argument("--optimizer", choices=["sgd", "adam", "adagrad"], default=_D.optimizer)
    g.add_argument("--lr", type=float, default=_D.lr)
    g.add_argument("--clip", type=_none_or(float), default=_D.clip, help="'none' disables")
    g.add_argument("--clip-mode", choices=["norm", "value"], default=_D.clip_mode)
    g.add_argument("--truncate", type=_none_or(int), default=_D.truncate,
                   help="BPTT truncation k inside a batch")
    g.add_argument("--lr-halving", action="store_true",
                   help="halve the learning rate whenever the monitored loss rises")
    g = p.add_argument_group("run")
    g.add_argument("--out", default=_D.out, help="run folder")
    g.add_argument("--seed", type=int, default=_D.seed)
    g.add_argument("--resume", action="store_true", help="continue from OUT/last.safetensors")
    g.add_argument("--sample-every", type=int, default=_D.sample_every)
    g.add_argument("--sample-prefix", default=_D.sample_prefix)
    g.add_argument("--sample-length", type=int, default=_D.sample_length)
    g.add_argument("--progress", choices=["auto", "bar", "log"], default=_D.progress)
    g.add_argument("--dist-timeout", type=float, default=DIST_TIMEOUT, metavar="SECONDS",
                   help="under torchrun: how long a rank waits for its peers before the run "
                   "ends with an error (a dead or hung process)")
    p.set_defaults(func=run, parser=p)


def explicit_flags(args: argparse.Namespace) -> set[str]:
    """The config fields given on the command line."""
    return set(getattr(args, "given", ())) & set(TrainConfig().to_dict())


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    fields = TrainConfig().to_dict()
    given = {k: v for k, v in vars(args).items() if k in fields}
    if args.recipe is None:
        return TrainConfig(**given)
    # explicit flags win over the recipe, whatever their value
    explicit = {k: given[k] for k in explicit_flags(args)}
    from ..lm.config import apply_recipe

    return apply_recipe(TrainConfig(**given), args.recipe, explicit)


def resume_config(cfg: TrainConfig, explicit: set[str]) -> TrainConfig:
    """On --resume: without --epochs, train up to the epochs the run was started with (not the
    parser's default); warn about flags the checkpoint's settings override."""
    from dataclasses import replace
    from pathlib import Path

    from ..lm import checkpoint as ck
    from ..lm.distributed import is_main

    last = Path(cfg.out) / "last.safetensors"
    if not last.is_file():  # train() says what is missing
        return cfg
    saved = ck.load(last).config  # a damaged checkpoint fails here, before any warning
    ignored = sorted(explicit - set(RESUME_FLAGS))
    if ignored and is_main():
        names = ", ".join("--" + k.replace("_", "-") for k in ignored)
        kept = ", ".join("--" + k.replace("_", "-") for k in RESUME_FLAGS)
        print(f"bptt train: warning: {names} ignored with --resume (the checkpoint's settings "
              f"are kept; only {kept} apply)", file=sys.stderr)
    if "epochs" in explicit:
        return cfg
    return replace(cfg, epochs=int(saved.get("epochs", cfg.epochs)))


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..lm.distributed import ConfigError, PeerError, is_main, restart_count
    from ..lm.train import Diverged, train

    # under torchrun every rank runs this; rank 0 alone reports what all ranks share
    cfg = config_from_args(args)
    explicit = explicit_flags(args)
    try:
        # torchrun --max-restarts runs the same command again: continue, do not start over
        restarted = restart_count() > 0 and not args.resume
        if restarted and (Path(cfg.out) / "last.safetensors").is_file():
            if is_main():
                print(f"bptt train: torchrun restart {restart_count()}: resuming from "
                      f"{Path(cfg.out) / 'last.safetensors'}", file=sys.stderr)
            args.resume, explicit = True, explicit & {"epochs"}
        if args.resume:
            cfg = resume_config(cfg, explicit)
        moved = {k: getattr(cfg, k) for k in ("data", "val_data")
                 if args.resume and k in explicit}
        result = train(cfg, resume=args.resume, dist_timeout=args.dist_timeout, moved=moved)
    except (Diverged, ConfigError) as e:
        if is_main():
            print(f"bptt train: error: {e}", file=sys.stderr)
        return 3 if isinstance(e, Diverged) else 2
    except PeerError as e:  # this rank's own view: every surviving rank says it
        print(f"bptt train: error: {e}", file=sys.stderr)
        return 4
    if not is_main():
        return 130 if result.interrupted else 0
    last = result.last
    if last:
        print(f"perplexity {last['perplexity']:.2f}"
              + (f", validation perplexity {last['val_perplexity']:.2f}"
                 if "val_perplexity" in last else "")
              + f", {last['tokens_per_s']:,.0f} tokens/s ({cfg.engine})")
    if result.sample:
        print(result.sample)
    print(f"checkpoints, metrics.jsonl and perplexity.png in {result.out}")
    return 130 if result.interrupted else 0
