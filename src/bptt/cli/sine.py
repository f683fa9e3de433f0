"""``bptt sine``: the seed's experiment, a small RNN predicting the next value of a sine wave."""

from __future__ import annotations

import argparse

from ..series.config import SINE_RANGES, SineConfig
from .argtypes import (
    HelpFormatter,
    add_cell_flags,
    add_engine_flags,
    add_number,
    add_optimizer_flags,
    add_overwrite_flag,
    add_tensorboard_flag,
)

_D = SineConfig()


def add_regression_args(p: argparse.ArgumentParser, d, ranges: dict) -> None:
    """Model, optimisation, engine and run flags shared by ``sine`` and ``series``."""
    add_cell_flags(p.add_argument_group("model"), d, ranges)
    g = p.add_argument_group("optimisation")
    add_number(g, "--iterations", ranges["iterations"], default=d.iterations,
               help="training steps")
    add_optimizer_flags(g, d, ranges)
    g = p.add_argument_group("engine and run")
    add_engine_flags(g, d.engine)
    g.add_argument("--dtype", choices=["float32", "float64"], default=d.dtype,
                   help="floating-point type of parameters and activations")
    add_number(g, "--seed", ranges["seed"], default=d.seed,
               help="seed of the initialisation and the windows")
    g.add_argument("--out", default=d.out, help="run folder")
    add_overwrite_flag(g, "once training has run")
    add_tensorboard_flag(g)
    add_number(g, "--log-every", ranges["log_every"], default=d.log_every,
               help="print the MSE every N iterations")
    add_number(g, "--forecast-steps", ranges["forecast_steps"], default=d.forecast_steps,
               help="points of the free-running forecast")


def register(sub) -> None:
    p = sub.add_parser(
        "sine", help="the seed's experiment: an RNN predicting the next value of a sine wave",
        description="Each iteration: a start s in {0, 1, 2}, 20 points of sin over "
        "linspace(s, s+10, 20); input the first 19, predict the next value at every step (MSE). "
        "Writes sine_fit.png, sine_forecast.png, grad_norms.png, metrics.jsonl and "
        "last.safetensors into --out (a folder holding a run is refused without --overwrite).",
        formatter_class=HelpFormatter)
    add_regression_args(p, _D, SINE_RANGES)
    add_number(p, "--warmup", SINE_RANGES["warmup"], default=_D.warmup,
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
    result = train_sine(cfg, overwrite=args.overwrite, tensorboard=args.tensorboard)
    print(main_summary(result))
    return 130 if result.interrupted else 0
