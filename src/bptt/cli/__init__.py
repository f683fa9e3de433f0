"""The ``bptt`` command: argument parsing only; every flag maps onto a library argument.

Each verb lives in its own module ``bptt.cli.<verb>`` exposing ``register(subparsers)``, which
adds the verb's parser and sets ``func`` to a handler. Handlers import the heavy parts (NumPy
models, torch) when they run, so ``bptt --help`` stays instant and the NumPy path never loads
torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from contextlib import contextmanager

from ..errors import Diverged, MissingExtra

# The verbs, in the order ``bptt --help`` lists them.
VERBS = ("train", "generate", "evaluate", "check", "bench", "demo", "sine", "series", "gradflow",
         "export")


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (no usage block): ``bptt VERB: error: ...``.
    A flag's own check (``bptt.cli.argtypes``) already names the setting, so argparse's
    ``argument --flag:`` prefix is dropped from it."""

    def error(self, message: str):
        head, sep, rest = message.partition(": ")
        dest = head.removeprefix("argument ").split("/")[-1].lstrip("-").replace("-", "_")
        if sep and head.startswith("argument --") and rest.startswith(f"expected {dest} "):
            message = rest
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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


@contextmanager
def one_line_warnings(verb: str):
    """Warnings (ours, NumPy's, torch's) printed as ``bptt VERB: warning: ...``, each once, by
    the process that reports (rank 0 under torchrun)."""
    from ..lm.distributed import ConfigError, is_main

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split())
        try:
            main = is_main()
        except ConfigError:
            main = True
        if main:
            print(f"bptt {verb}: warning: {text}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield


def _one_line(e: BaseException) -> str:
    """An error as one line; an OSError from the system as ``PATH: what happened``."""
    if isinstance(e, OSError) and type(e).__str__ is OSError.__str__ and e.strerror:
        where = f"{e.filename}: " if e.filename is not None else ""
        return f"{where}{e.strerror}"
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def main(argv: list[str] | None = None) -> int:
    # OpenMP's threads (torch's) wait passively unless told otherwise: read when OpenMP loads,
    # so before anything imports torch; spinning threads starve a competing process's (and the
    # compiled kernel's) threads on a busy machine (bptt.engine.threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with one_line_warnings(args.verb):
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("bptt: interrupted", file=sys.stderr)
        return 130
    except Diverged as e:  # the last sound state is saved; the message says where
        print(f"bptt {args.verb}: error: {e}", file=sys.stderr)
        return 3
    except (CLIError, ValueError, OSError, MissingExtra) as e:
        print(f"bptt {args.verb}: error: {_one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
