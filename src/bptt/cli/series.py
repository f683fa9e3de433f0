"""``bptt series``: next-value regression on a real-valued column of a CSV file."""

from __future__ import annotations

import argparse

from ..series.config import SERIES_RANGES, SeriesConfig
from .argtypes import HelpFormatter, add_number
from .sine import add_regression_args

_D = SeriesConfig()


def register(sub) -> None:
    p = sub.add_parser(
        "series", help="train an RNN/LSTM/GRU on a real-valued CSV column and forecast it",
        description="A contiguous train/validation split in time, normalisation by the "
        "training part's mean and std, windows sampled from the training part; reports the "
        "validation MSE (original and normalised units) and writes series_forecast.png, "
        "grad_norms.png, metrics.jsonl and last.safetensors into --out (a folder holding a "
        "run is refused without --overwrite).",
        formatter_class=HelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--csv", required=True, help="a CSV file with a header row")
    g.add_argument("--column", required=True, help="the column to model, by header name")
    add_number(g, "--window", SERIES_RANGES["window"], default=_D.window,
               help="points per training window")
    add_number(g, "--val-frac", SERIES_RANGES["val_frac"], default=_D.val_frac,
               help="the last fraction of the series, held out for validation")
    add_number(g, "--batch-size", SERIES_RANGES["batch_size"], default=_D.batch_size,
               help="windows per training step")
    add_regression_args(p, _D, SERIES_RANGES)
    p.add_argument("--carry-state", action="store_true",
                   help="carry the hidden state (detached) from one batch of windows to the next")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..series.csvseries import train_series

    cfg = SeriesConfig(
        csv=args.csv, column=args.column, window=args.window, val_frac=args.val_frac,
        cell=args.cell, hidden_size=args.hidden_size, num_layers=args.num_layers,
        nonlinearity=args.nonlinearity, iterations=args.iterations, batch_size=args.batch_size,
        optimizer=args.optimizer, lr=args.lr, clip=args.clip, clip_mode=args.clip_mode,
        carry_state=args.carry_state, engine=args.engine, device=args.device, dtype=args.dtype,
        seed=args.seed, out=args.out, log_every=args.log_every,
        forecast_steps=args.forecast_steps)
    r = train_series(cfg, overwrite=args.overwrite, tensorboard=args.tensorboard)
    print(f"training one-step mse {r.train_mse:.4g} (original units)")
    if r.n_val:
        print(f"validation one-step mse {r.val_mse:.4g} (original units), {r.val_mse_norm:.4g} "
              f"(normalised); persistence baseline {r.persistence_mse:.4g}; free-running "
              f"forecast mse {r.forecast_mse:.4g}")
    print(f"trained in {r.seconds:.1f} s; series_forecast.png, grad_norms.png, metrics.jsonl "
          f"and last.safetensors in {r.out}")
    return 130 if r.interrupted else 0
