"""What every verb's parser shares: number flags checked where they are parsed, the device
flag, and the help layout that shows each flag's default.

A number flag is declared with its range (``bptt.ranges``)::

    add_number(group, "--lr", POSITIVE, default=1.0, help="learning rate")

and argparse refuses a value outside it before anything runs, in the words the library uses
for the same setting: ``bptt train: error: expected lr > 0 and finite, got nan``.
"""

from __future__ import annotations

import argparse
import re

from ..cells import CELL_NAMES, NONLINEARITIES
from ..optim import OPTIMIZER_NAMES
from ..ranges import Range

# cpu, cuda, cuda:N, mps: the devices the torch engines know (checked for presence when used).
_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")
NONE_WORDS = ("none", "off")


def number(name: str, rng: Range):
    """An argparse ``type=`` for a number in ``rng``; ``name`` is the setting the message
    names (the flag's dest)."""

    def parse(text: str):
        s = text.strip()
        if rng.none and s.lower() in NONE_WORDS:
            return None
        try:
            value = rng.kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {name} {rng.noun()}, got {text!r}"
                                             ) from None
        if not rng.contains(value):
            raise argparse.ArgumentTypeError(f"expected {name} {rng.describe()}, got {s}")
        return value

    parse.__name__ = rng.kind.__name__
    return parse


def add_number(group, flag: str, rng: Range, **kwargs) -> argparse.Action:
    """``group.add_argument(flag, type=<checked number>, ...)``; the metavar says the kind."""
    dest = kwargs.get("dest") or flag.lstrip("-").replace("-", "_")
    kwargs.setdefault("metavar", ("N" if rng.kind is int else "X") + ("|none" if rng.none
                                                                       else ""))
    return group.add_argument(flag, type=number(dest, rng), **kwargs)


def device(text: str) -> str:
    """``--device``: cpu, cuda, cuda:N or mps (whether it is present is checked when used)."""
    s = text.strip().lower()
    if not _DEVICE.match(s):
        raise argparse.ArgumentTypeError(
            f"expected device cpu, cuda, cuda:N or mps, got {text!r}")
    return s


ENGINES = ("numpy", "torch", "torch-autograd", "torch-builtin")


def add_engine_flags(group, default: str = "numpy") -> None:
    """``--engine`` and ``--device``."""
    group.add_argument("--engine", default=default, choices=ENGINES,
                       help="numpy: hand-written BPTT on NumPy; torch: the same on torch "
                       "tensors; torch-autograd: the book's loop under autograd; "
                       "torch-builtin: torch.nn.RNN/LSTM/GRU")
    group.add_argument("--device", type=device, default=None,
                       help="cpu, cuda, cuda:N or mps (torch engines; default: cuda when "
                       "available, else cpu)")


def add_cell_flags(group, d, ranges: dict) -> None:
    """``--cell``, ``--hidden-size``, ``--num-layers``, ``--nonlinearity``: defaults from the
    settings dataclass ``d``, ranges from the job's table."""
    group.add_argument("--cell", choices=CELL_NAMES, default=d.cell,
                       help="recurrent cell")
    add_number(group, "--hidden-size", ranges["hidden_size"], default=d.hidden_size,
               help="hidden units per layer")
    add_number(group, "--num-layers", ranges["num_layers"], default=d.num_layers,
               help="stacked recurrent layers")
    group.add_argument("--nonlinearity", choices=NONLINEARITIES, default=d.nonlinearity,
                       help="rnn cell only")


def add_optimizer_flags(group, d, ranges: dict) -> None:
    """``--optimizer``, ``--lr``, ``--clip``, ``--clip-mode``."""
    group.add_argument("--optimizer", choices=OPTIMIZER_NAMES, default=d.optimizer,
                       help="optimiser")
    add_number(group, "--lr", ranges["lr"], default=d.lr, help="learning rate")
    add_number(group, "--clip", ranges["clip"], default=d.clip,
               help="gradient clipping threshold; none disables clipping")
    group.add_argument("--clip-mode", choices=["norm", "value"], default=d.clip_mode,
                       help="norm: rescale the global norm to --clip; value: clamp each element")


def add_overwrite_flag(group, when: str = "once the new run's first step has run") -> None:
    group.add_argument("--overwrite", action="store_true",
                       help=f"replace the run already in --out: {when}, the earlier folder is "
                       "moved aside to OUT.previous-DATE-TIME (never deleted); until then it "
                       "is untouched")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every flag's help ends with its default, unless the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default is argparse.SUPPRESS:
            return text
        if not action.option_strings and action.nargs not in ("?", "*"):
            return text                                   # a required positional argument
        if action.required:
            return text + " (required)"
        default = action.default
        if isinstance(default, tuple | list):
            shown = ",".join(map(str, default))
        elif default is None:
            shown = "none"
        elif isinstance(default, bool):
            shown = "on" if default else "off"
        else:
            shown = "%(default)s"
        return f"{text} (default: {shown})"


class RawHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """The same, with the description and epilog printed as written (tables)."""


def add_tensorboard_flag(group) -> None:
    """``--tensorboard [DIR]``: event files in OUT/tensorboard, or in DIR."""
    group.add_argument("--tensorboard", nargs="?", const=True, default=None, metavar="DIR",
                       help="also write TensorBoard event files (scalars, gradient-norm "
                       "histograms, samples) to DIR, or OUT/tensorboard when DIR is left out; "
                       "needs pip install 'bptt[tensorboard]' (default: off)")
