"""The ``bptt`` command: argument parsing only; every flag maps onto a library argument.

Each verb lives in its own module ``bptt.cli.<verb>`` exposing ``register(subparsers)``, which
adds the verb's parser and sets ``func`` to a handler. Handlers import the heavy parts (NumPy
models, torch) when they run, so ``bptt --help`` stays instant and the NumPy path never loads
torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import Diverged, MissingExtra

# The verbs, in the order ``bptt --help`` lists them.
VERBS = ("train", "generate", "evaluate", "check", "bench", "demo", "sine", "series", "gradflow",
         "export")


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bptt",
        description="Recurrent networks with hand-derived backpropagation through time.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"bptt {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for verb in VERBS:
        importlib.import_module(f"{__name__}.{verb}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("bptt: interrupted", file=sys.stderr)
        return 130
    except Diverged as e:  # the last sound state is saved; the message says where
        print(f"bptt {args.verb}: error: {e}", file=sys.stderr)
        return 3
    except (CLIError, ValueError, OSError, MissingExtra) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"bptt {args.verb}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
