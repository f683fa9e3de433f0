"""``bptt check``: prove the hand-written BPTT equal to torch autograd and finite differences."""

from __future__ import annotations

import argparse
import sys

from ..cells import CELL_NAMES
from .argtypes import RawHelpFormatter

EPILOG = """\
what is compared:
  Every row builds one recurrent stack in float64, draws random inputs x, initial states and
  upstream gradients dout (every output step) and dh_n (the final state; dc_n too for the
  LSTM), and differentiates the scalar loss
      L = sum(out * dout) + sum(h_n * dh_n) [+ sum(c_n * dc_n)]
  with our hand-written backward and with a reference. A model row (column E) builds a whole
  word language model instead, draws token ids, targets and dropout masks held fixed, and
  differentiates L = CE(logits, targets) + sum(h_n * dh_n) [+ sum(c_n * dc_n)].

columns:
  cell      rnn, lstm or gru
  engine    whose forward/backward is checked: numpy (hand-written BPTT on NumPy arrays),
            torch (the same BPTT on torch tensors, the torch engine's StackFunction)
  method    the reference: torch = torch.nn.RNN/LSTM/GRU in float64 differentiated by autograd
            (with truncation: recomputed from the state k+1 steps back, detached);
            fd = central finite differences D(eps) = (L(v+eps) - L(v-eps)) / 2eps, eps =
            1e-6, with one Richardson step (4 D(eps/2) - D(eps)) / 3, for every parameter,
            input and initial-state entry;
            gradcheck = torch.autograd.gradcheck on the torch engine's autograd.Function
  nonlin    tanh or relu for the rnn cell, - for lstm and gru
  B T I H   batch, time steps, input size (a model row: the vocabulary V), hidden size
  P         the LSTM's proj_size (h_t = m_t W_hr^T has P features); - = no projection
  L         stacked layers;  bidir: both directions;  bias: with bias_ih/bias_hh
  E         a model row (the word language model whole: embedding.weight (V, E), the stack,
            the head, the softmax cross-entropy; the reference torch.nn.Embedding +
            torch.nn.LSTM/GRU/RNN + torch.nn.Linear); - = a stack row
  tied      the head's weight is the embedding's (its gradient the sum of both uses)
  drop      fixed dropout masks on the embedding's output, between layers and before the head:
            std = a mask per step, var = one per sequence (variational); - = none
  h0        yes = a random initial state; no = none given (zeros; its gradient still checked)
  trunc     truncated BPTT: the loss at step t reaches back at most k steps; - = full BPTT
  out       forward outputs of every step (T, B, D*H), (T, B, D*P) with a projection; a model
            row: the logits (T*B, V)
  h_n       final state(s) h_n (and c_n for the LSTM)
  params    gradient of every parameter (weight_ih_l0, weight_hh_l0, bias_ih_l0, ...,
            weight_hr_l0 with a projection): the largest error over them
  dx        gradient w.r.t. the input x (- for a model row: token ids)
  dh0       gradient w.r.t. the initial state h0 (and c0 for the LSTM)
  worst     the largest of out, h_n, params, dx, dh0 (- = not measured by the method;
            fd has no forward to compare)
  tol, ok   the row is ok when worst <= tol, else FAIL

errors are relative: max|ours - reference| / max|reference| per array (a tiny floor instead
of zero), the max over the arrays of the column. Tolerance: 1e-9 in float64 against
autograd (both round at ~1e-16); 1e-6 against finite differences, whose own error is
~1e-10 to 1e-8 with eps = 1e-6, far below what a wrong gradient gives.
exit status: 0 when every row is within its tolerance, 1 otherwise, 2 on a usage error.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="verify the hand-written BPTT against torch autograd and finite differences",
        description=(
            "Verify the hand-written backpropagation through time: every configuration's "
            "outputs and gradients against torch.nn autograd (float64) and central finite "
            "differences; print the table of maximum relative errors."
        ),
        epilog=EPILOG,
        formatter_class=RawHelpFormatter,
    )
    p.add_argument("--quick", action="store_true",
                   help="a small set of rows (about ten) instead of the full table")
    p.add_argument("--cell", dest="cells", nargs="+", action="extend", choices=CELL_NAMES,
                   metavar="CELL", help=f"only these cells: {', '.join(CELL_NAMES)} (default: "
                   "every cell)")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON to PATH")
    p.set_defaults(func=run)


def _json_value(v):
    if isinstance(v, float) and v != v:
        return "nan"
    if isinstance(v, float) and v in (float("inf"), float("-inf")):
        return "inf" if v > 0 else "-inf"
    return v


def run(args: argparse.Namespace) -> int:
    import json

    from ..check import format_table, run_checks
    from ..errors import has_module

    torch = has_module("torch")
    if not torch:
        print("bptt check: note: torch is not installed, so only the finite-difference rows "
              "run (pip install 'bptt[torch]' adds the rows against torch autograd)",
              file=sys.stderr)
    rows = run_checks(quick=args.quick, cells=args.cells, torch=torch)
    print(format_table(rows))
    if args.json:
        data = [{k: _json_value(v) for k, v in r.to_dict().items()} for r in rows]
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
    return 0 if all(r.ok for r in rows) else 1
