"""Shared argument handling for the scripts in benchmarks/ (each is ``python benchmarks/X.py``).

Every script calls the library code ``bptt bench`` uses (the ``bptt.bench`` package); none has
timing code of its own, so its numbers and the command's are the same measurement.
"""

from __future__ import annotations

import argparse
import json

from bptt.bench.measure import run as run_bench
from bptt.bench.report import format_table
from bptt.bench.settings import CONFIGS, SUBJECTS, BenchSettings


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    p.add_argument("--configs", default=",".join(CONFIGS),
                   help=f"comma-separated, among {','.join(CONFIGS)}")
    p.add_argument("--subjects", default=",".join(SUBJECTS),
                   help=f"comma-separated, among {','.join(SUBJECTS)}")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds")
    p.add_argument("--json", metavar="PATH", default=None, help="write the results as JSON")
    return p


def settings(args, parts: tuple[str, ...]) -> BenchSettings:
    kw = {"configs": tuple(args.configs.split(",")), "subjects": tuple(args.subjects.split(",")),
          "parts": parts}
    if args.repeats:
        kw["repeats"] = kw["gen_repeats"] = args.repeats
    if args.quick:
        return BenchSettings.quick_settings(**kw)
    return BenchSettings(**kw)


def run(args, parts: tuple[str, ...]) -> dict:
    out = run_bench(settings(args, parts))
    print(format_table(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out
