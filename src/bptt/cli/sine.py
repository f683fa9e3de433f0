"""``bptt sine``: the seed's experiment, a small RNN predicting the next value of a sine wave."""

from __future__ import annotations

import argparse

from ..cells import CELL_NAMES, NONLINEARITIES
from ..series.config import SineConfig

_D = SineConfig()


def _none_or_float(s: str):
    return None if s.lower() in ("none", "off") else float(s)


def add_regression_args(p: argparse.ArgumentParser, d) -> None:
    """Model, optimisation and engine flags shared by ``sine`` and ``series``."""
    g = p.add_argument_group("model")
    g.add_argument("--cell", choices=CELL_NAMES, default=d.cell)
    g.add_argument("--hidden-size", type=int, default=d.hidden_size)
    g.add_argument("--num-layers", type=int, default=d.num_layers)
    g.add_argument("--nonlinearity", choices=NONLINEARITIES, default=d.nonlinearity,
                   help="rnn cell only")
    g = p.add_argument_group("optimisation")
    g.add_argument("--iterations", type=int, default=d.iterations)
    g.add_argument("--optimizer", choices=["sgd", "adam", "adagrad"], default=d.optimizer)
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--clip", type=_none_or_float, default=d.clip,
                   help="gradient clipping threshold ('none' disables)")
    g.add_argument("--clip-mode", choices=["norm", "value"], default=d.clip_mode)
    g = p.add_argument_group("engine and run")
    g.add_argument("--engine", default=d.engine,
                   choices=["numpy", "torch", "torch-autograd", "torch-builtin"])
    g.add_argument("--device", default=None, help="cpu or cuda (torch engines)")
    g.add_argument("--dtype", choices=["float32", "float64"], default=d.dtype)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--out", default=d.out, help="run folder")
    g.add_argument("--log-every", type=int, default=d.log_every)
    g.add_argument("--forecast-steps", type=int, default=d.forecast_steps)


def register(sub) -> None:
    p = sub.add_parser(
        "sine", help="the seed's experiment: an RNN predicting the next value of a sine wave",
        description="Each iteration: a start s in {0, 1, 2}, 20 points of sin over "
        "linspace(s, s+10, 20); input the first 19, predict the next value at every step (MSE). "
        "Writes sine_fit.png, sine_forecast.png, grad_norms.png, metrics.jsonl and "
        "last.safetensors into --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_regression_args(p, _D)
    p.add_argument("--warmup", type=int, default=_D.warmup,
                   help="predictions per window left out of the headline MSE (the first ones "
                   "are made before the state has seen the window); the whole-window MSE is "
                   "printed beside it")
    p.add_argument("--reset-state", action="store_true",
                   help="start every window from zeros instead of carrying the hidden state "
                   "(what the seed's code does through its hidden_prv typo)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..series.sine import main_summary, train_sine

    cfg = SineConfig(
        cell=args.cell, hidden_size=args.hidden_size, num_layers=args.num_layers,
        nonlinearity=args.nonlinearity, iterations=args.iterations, optimizer=args.optimizer,
        lr=args.lr, clip=args.clip, clip_mode=args.clip_mode, carry_state=not args.reset_state,
        engine=args.engine, device=args.device, dtype=args.dtype, seed=args.seed, out=args.out,
        log_every=args.log_every, forecast_steps=args.forecast_steps, warmup=args.warmup)
    result = train_sine(cfg)
    print(main_summary(result))
    return 130 if result.interrupted else 0
