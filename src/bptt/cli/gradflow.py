"""``bptt gradflow``: exact ||dh_T/dh_t|| by lag, from our hand-written backward."""

from __future__ import annotations

import argparse

from ..cells import CELL_NAMES, NONLINEARITIES, get_cell
from ..ranges import COUNT, FINITE, POSITIVE, SEED
from .argtypes import HelpFormatter, add_number


def register(sub) -> None:
    p = sub.add_parser(
        "gradflow", help="vanishing and exploding gradients: ||dh_T/dh_t|| against the lag",
        description="The exact Jacobian dh_T/dh_t of recurrent layer 0 for every lag T - t "
        "(spectral and Frobenius norms), computed with the hand-written backward of the NumPy "
        "cells, plus the spectral radius and singular values of W_hh; for a checkpoint, for "
        "fresh models of every cell on the same random inputs, or (--demo) vanishing vs "
        "exploding vs LSTM. Prints a table and writes gradflow.png (and gradflow.json).",
        formatter_class=HelpFormatter)
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="a run folder or .safetensors file (its layer 0); none: fresh models")
    p.add_argument("--demo", action="store_true",
                   help="vanishing (tanh, rho(W_hh) 0.5), exploding (relu, nonnegative W_hh at "
                   "rho 1.5), LSTM (forget bias 1) and GRU side by side")
    p.add_argument("--cell", choices=[*CELL_NAMES, "all"], default="all",
                   help="fresh models: which cells (rnn: both tanh and relu)")
    p.add_argument("--nonlinearity", choices=[*NONLINEARITIES, "both"], default="both",
                   help="fresh rnn models: which nonlinearity")
    add_number(p, "--steps", COUNT, default=50, help="sequence length T (largest lag)")
    add_number(p, "--batch", COUNT, default=4,
               help="random sequences (norms: geometric mean, plot band: min-max)")
    add_number(p, "--hidden-size", COUNT, default=32, help="fresh models")
    add_number(p, "--input-size", COUNT, default=4, help="fresh models")
    add_number(p, "--radius", POSITIVE, default=None,
               help="fresh models: rescale every gate block of W_hh to this spectral radius "
               "(default: as initialised)")
    add_number(p, "--forget-bias", FINITE, default=None,
               help="fresh LSTM: the forget gate's bias, e.g. 1 (default: as initialised)")
    add_number(p, "--seed", SEED, default=0, help="seed of the weights and inputs")
    p.add_argument("--out", default="runs/gradflow", help="folder for gradflow.png/.json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from .. import gradflow as gf
    from ..memory import require
    from ..plot import plot_gradflow
    from ..rundir import check_output_folder

    if args.checkpoint is not None and args.demo:
        raise ValueError("expected a checkpoint or --demo, got both")
    out = check_output_folder(args.out)               # before any work
    hint = "lower --hidden-size, --steps or --batch"
    if args.checkpoint is not None:
        from .. import checkpoint as ck

        ckpt = ck.load(args.checkpoint, prefer="last")
        require(gf.memory_estimate(ckpt.spec.cell, ckpt.spec.hidden_size, ckpt.spec.input_size,
                                   args.steps, args.batch), hint="lower --steps or --batch")
        flows = [gf.from_checkpoint(ckpt, args.steps, args.batch, args.seed)]
        title = f"gradient flow of {args.checkpoint} (layer 0)"
    elif args.demo:
        require(gf.memory_estimate("lstm", args.hidden_size, args.input_size, args.steps,
                                   args.batch), hint=hint)
        flows = gf.demo(args.steps, args.batch, args.hidden_size, args.input_size, args.seed)
        title = "vanishing vs exploding vs gated cells (dashed: RNN bound ||W_hh||^k)"
    else:
        cells = set(CELL_NAMES) if args.cell == "all" else {args.cell}
        largest = max(cells, key=lambda c: get_cell(c).cache_parts + get_cell(c).num_gates)
        require(gf.memory_estimate(largest, args.hidden_size, args.input_size, args.steps,
                                   args.batch), hint=hint)
        flows = gf.compare_cells(args.steps, args.batch, args.hidden_size, args.input_size,
                                 args.seed, cells=cells, radius=args.radius,
                                 forget_bias=args.forget_bias)
        if args.nonlinearity != "both":
            flows = [f for f in flows if not get_cell(f.cell).takes_nonlinearity
                     or f.nonlinearity == args.nonlinearity]
        title = ""
    print("||dh_T/dh_t||_2 by lag k = T - t (geometric mean over "
          f"{args.batch} random sequences; rho(W), ||W||: the largest over W_hh's gate blocks)")
    print(gf.format_table(flows))
    for f in flows:
        for gate, w in f.weights.items():
            sv = " ".join(f"{v:.3g}" for v in w["singular_values"][:8])
            more = " ..." if len(w["singular_values"]) > 8 else ""
            name = f"W_hh[{gate}]" if len(f.weights) > 1 else "W_hh"
            print(f"{f.label}: {name} spectral radius {w['radius']:.4g}, singular values "
                  f"{sv}{more}")
        if f.state_spectral is not None:
            typ = f.typical("state_spectral")
            lags = gf.table_lags(args.steps)
            print(f"{f.label}: ||dh_T/d(h_t, c_t)||_2 (c_t path included): "
                  + " ".join(f"k={k} {typ[k]:.2e}" for k in lags))
    out.mkdir(parents=True, exist_ok=True)
    png = plot_gradflow(flows, out / "gradflow.png", title=title)
    (out / "gradflow.json").write_text(json.dumps([f.to_dict() for f in flows]) + "\n")
    print(f"plot: {png}")
    return 0
