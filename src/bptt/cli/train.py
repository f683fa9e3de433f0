"""``bptt train``: train a language model on a corpus name or any UTF-8 text file."""

from __future__ import annotations

import argparse
import sys

from ..lm.config import PAPER, RANGES, RECIPES, TrainConfig
from ..lm.distributed import DEFAULT_TIMEOUT as DIST_TIMEOUT
from ..ranges import POSITIVE
from .argtypes import (
    HelpFormatter,
    add_cell_flags,
    add_engine_flags,
    add_number,
    add_optimizer_flags,
    add_overwrite_flag,
    add_tensorboard_flag,
)

_D = TrainConfig()

# Settings a resumed run takes from the command line; every other one comes from the checkpoint.
RESUME_FLAGS = ("epochs", "out", "progress", "device", "engine", "threads", "data", "val_data",
                "lr")


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

    value = True

    def __init__(self, option_strings, dest, default=None, required=False, help=None):
        super().__init__(option_strings, dest, nargs=0, const=self.value,
                         default=(not self.value) if default is None else default,
                         required=required, help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, self.value)
        _mark_given(namespace, self.dest)


class _StoreFalse(_StoreTrue):
    """argparse's ``store_false``, also recording the flag as given."""

    value = False


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    add_cell_flags(g, _D, RANGES)
    add_number(g, "--embedding-size", RANGES["embedding_size"], default=_D.embedding_size,
               help="an embedding of E units per token (embedding.weight (V, E), as "
               "torch.nn.Embedding) instead of the book's one-hot input")
    g.add_argument("--tie-weights", action="store_true",
                   help="the head's weight is the embedding's matrix (Press & Wolf 2017; needs "
                   "--embedding-size equal to --hidden-size, or to --proj-size with a projection, "
                   "which it is when left out)")
    add_number(g, "--dropout", RANGES["dropout"], default=_D.dropout,
               help="dropout rate, training only: between stacked layers, and with "
               "--embedding-size also on the embedding's output and before the head "
               "(Zaremba et al.); one layer of one-hot input has no place for it (a warning)")
    g.add_argument("--dropout-mode", choices=["standard", "variational"],
                   default=_D.dropout_mode,
                   help="standard: a fresh mask at every time step; variational: one mask per "
                   "sequence, the same at every step (Gal & Ghahramani 2016)")
    add_number(g, "--proj-size", RANGES["proj_size"], default=_D.proj_size,
               help="lstm only: project each h_t to P < --hidden-size features (torch's "
               "proj_size); the next layer and the head read P features; 0: no projection")
    g.add_argument("--init", choices=["torch", "d2l", "uniform"], default=_D.init,
                   help="torch: U(-1/sqrt(H), 1/sqrt(H)) (the embedding N(0, 1)); d2l: the "
                   "book's N(0, 0.01^2); uniform: every parameter U(-s, s), s = --init-scale")
    add_number(g, "--init-scale", RANGES["init_scale"], default=_D.init_scale,
               help="s of --init uniform (Zaremba et al.: 0.1, 0.05, 0.04)")


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default=_D.data,
                   help="corpus name (timemachine; timemachine:train, :valid, :test its lines "
                   "split 80/10/10%%) or a text file")
    g.add_argument("--val-data", default=None,
                   help="a separate validation text file (or timemachine:valid)")
    g.add_argument("--normalization", choices=["auto", "d2l", "none"], default=_D.normalization,
                   help="d2l: the book's lowercase letters and spaces; none: the text as it is; "
                   "auto: d2l for the built-in corpora, none for your own file")
    g.add_argument("--tokenization", choices=["char", "word"], default=_D.tokenization,
                   help="char: one token per character (one per Chinese character); word: "
                   "whitespace-separated words, <eos> ending every line")
    g.add_argument("--no-eos", dest="eos", action=_StoreFalse,
                   help="word tokenisation without the <eos> token at every line end")
    add_number(g, "--max-tokens", RANGES["max_tokens"], default=_D.max_tokens,
               help="keep only the first N tokens (the book keeps 10,000)")
    add_number(g, "--min-freq", RANGES["min_freq"], default=_D.min_freq,
               help="tokens rarer than this read as <unk>")
    add_number(g, "--max-vocab", RANGES["max_vocab"], default=_D.max_vocab,
               help="a vocabulary of the N most frequent tokens, <unk> and <eos> included; "
               "the rest read as <unk>")
    add_number(g, "--val-frac", RANGES["val_frac"], default=_D.val_frac,
               help="hold out the last fraction of the tokens for validation")


def add_engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    add_engine_flags(g, _D.engine)
    g.add_argument("--dtype", choices=["float32", "float64"], default=_D.dtype,
                   help="floating-point type of parameters and activations")
    g.add_argument("--precision", choices=["fp32", "bf16"], default=_D.precision,
                   help="bf16: matrix products on bfloat16 operands, float32 everything else")
    add_number(g, "--threads", RANGES["threads"], default=_D.threads,
               help="threads of the compiled kernel, the BLAS and torch, set together "
               "(default: the cores this process may run on that other work leaves idle)")


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="train a language model",
        description="Train an RNN/LSTM/GRU language model; writes checkpoints (best and last), "
        "metrics.jsonl and perplexity.png into --out. --recipe d2l is the book's whole recipe. "
        "A folder that already holds a run is refused unless --resume continues it or "
        "--overwrite replaces it (moved aside, never deleted). The loss is the mean over the "
        "batch's T*B tokens: a paper's lr and clip on a loss summed over T steps are lr * T "
        "and clip / T here (docs/results.md).",
        formatter_class=HelpFormatter)
    # flags given explicitly must win over a recipe even when they equal the parser's default
    for name in (None, "store"):
        p.register("action", name, _Store)
    p.register("action", "store_true", _StoreTrue)
    p.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="a named recipe; flags given explicitly override it. d2l: the book's "
                   "character RNN; zaremba-small|medium|large: Zaremba et al. (2014)'s word "
                   "LSTMs in this loss scale (lr and clip converted), on The Time Machine's "
                   "word-level split unless --data names another corpus")
    add_data_args(p)
    add_model_args(p)
    add_engine_args(p)
    g = p.add_argument_group("optimisation")
    add_number(g, "--batch-size", RANGES["batch_size"], default=_D.batch_size,
               help="sequences per batch")
    add_number(g, "--num-steps", RANGES["num_steps"], default=_D.num_steps,
               help="time steps per sequence in a batch")
    g.add_argument("--partition", choices=["sequential", "random"], default=_D.partition,
                   help="sequential: the state carries across batches; random: fresh state")
    add_number(g, "--epochs", RANGES["epochs"], default=_D.epochs,
               help="passes over the training tokens")
    add_optimizer_flags(g, _D, RANGES)
    add_number(g, "--truncate", RANGES["truncate"], default=_D.truncate,
               help="BPTT truncation k inside a batch; none: back through the whole batch")
    g.add_argument("--lr-halving", action="store_true",
                   help="halve the learning rate whenever the monitored loss rises")
    add_number(g, "--lr-decay", RANGES["lr_decay"], default=_D.lr_decay,
               help="multiply the learning rate by F after every epoch from --lr-decay-start "
               "on (Zaremba et al.: 0.5 for the small model)")
    add_number(g, "--lr-decay-start", RANGES["lr_decay_start"], default=_D.lr_decay_start,
               help="the epochs N the learning rate is held before --lr-decay: epoch N + k "
               "runs at lr * F^k")
    g = p.add_argument_group("run")
    g.add_argument("--out", default=_D.out, help="run folder")
    add_number(g, "--seed", RANGES["seed"], default=_D.seed,
               help="seed of the initialisation, batches and dropout")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from "
                   "its last.safetensors")
    add_overwrite_flag(g)
    add_number(g, "--sample-every", RANGES["sample_every"], default=_D.sample_every,
               help="print a greedy continuation every N epochs (0: never)")
    g.add_argument("--sample-prefix", default=_D.sample_prefix,
                   help="the prefix those samples continue")
    add_number(g, "--sample-length", RANGES["sample_length"], default=_D.sample_length,
               help="tokens per sample")
    g.add_argument("--progress", choices=["auto", "bar", "log"], default=_D.progress,
                   help="auto: a progress bar on a terminal, else log lines")
    add_tensorboard_flag(g)
    add_number(g, "--dist-timeout", POSITIVE, default=DIST_TIMEOUT, metavar="SECONDS",
               help="under torchrun: seconds a rank waits for its peers before the run ends "
               "with an error (a dead or hung process)")
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

    from .. import checkpoint as ck
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

    from ..lm.distributed import (
        ConfigError,
        PeerError,
        is_main,
        let_the_reporter_speak,
        restart_count,
    )
    from ..lm.train import Diverged, train
    from ..rundir import RunFolderError

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
            args.resume, args.overwrite, explicit = True, False, explicit & {"epochs"}
        elif restarted:   # an earlier attempt died before its first checkpoint: its files aside
            args.overwrite = True
        if args.resume:
            cfg = resume_config(cfg, explicit)
        moved = {k: getattr(cfg, k) for k in ("data", "val_data")
                 if args.resume and k in explicit}
        if args.recipe in PAPER and is_main():
            print(f"bptt train: recipe {args.recipe}: {PAPER[args.recipe]}", file=sys.stderr)
        result = train(cfg, resume=args.resume, overwrite=args.overwrite,
                       dist_timeout=args.dist_timeout, moved=moved,
                       tensorboard=args.tensorboard,
                       lr=cfg.lr if args.resume and "lr" in explicit else None)
    except (Diverged, ConfigError, RunFolderError) as e:   # the same on every rank
        if is_main():
            print(f"bptt train: error: {e}", file=sys.stderr)
        else:
            let_the_reporter_speak()
        return 3 if isinstance(e, Diverged) else 2
    except PeerError as e:  # this rank's own view: every surviving rank says it
        print(f"bptt train: error: {e}", file=sys.stderr)
        return 4
    if not is_main():
        return 130 if result.interrupted else 0
    if result.last:
        print(summary(result.metrics, cfg.engine))
    if result.sample:
        print(result.sample)
    print(f"checkpoints, metrics.jsonl and perplexity.png in {result.out}")
    if args.recipe in PAPER:
        print(f"{PAPER[args.recipe]}; this run's test perplexity: bptt evaluate {result.out} "
              f"--data {_test_data(cfg.data)}")
    return 130 if result.interrupted else 0


def summary(metrics: list[dict], engine: str) -> str:
    """The closing line: the last epoch's perplexities, the best validation perplexity and
    its epoch (what best.safetensors holds), the speed."""
    last = metrics[-1]
    text = f"perplexity {last['perplexity']:.2f}"
    if "val_perplexity" in last:
        best = min((m for m in metrics if "val_perplexity" in m),
                   key=lambda m: m["val_perplexity"])
        text += (f", validation perplexity {last['val_perplexity']:.2f} (epoch "
                 f"{last['epoch']}; best {best['val_perplexity']:.2f} at epoch {best['epoch']})")
    return text + f", {last['tokens_per_s']:,.0f} tokens/s ({engine})"


def _test_data(data: str) -> str:
    """What --data evaluates a run on: the test part of a registered corpus, else TEST."""
    from ..data import corpus_name

    name = corpus_name(data)
    return f"{name}:test" if name is not None else "TEST"
