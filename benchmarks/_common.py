"""Shared argument handling for the scripts in benchmarks/ (each is ``python benchmarks/X.py``).

Every script calls the library code ``bptt bench`` uses (``bptt.bench``); none has timing code
of its own, so its numbers and the command's are the same measurement.
"""

from __future__ import annotations

import argparse
import json

from bptt import bench


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    p.add_argument("--configs", default=",".join(bench.CONFIGS),
                   help=f"comma-separated, among {','.join(bench.CONFIGS)}")
    p.add_argument("--subjects", default=",".join(bench.SUBJECTS),
                   help=f"comma-separated, among {','.join(bench.SUBJECTS)}")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds")
    p.add_argument("--json", metavar="PATH", default=None, help="write the results as JSON")
    return p


def settings(args, parts: tuple[str, ...]) -> bench.BenchSettings:
    kw = {"configs": tuple(args.configs.split(",")), "subjects": tuple(args.subjects.split(",")),
          "parts": parts}
    if args.repeats:
        kw["repeats"] = kw["gen_repeats"] = args.repeats
    if args.quick:
        return bench.BenchSettings.quick_settings(**kw)
    return bench.BenchSettings(**kw)


def run(args, parts: tuple[str, ...]) -> dict:
    out = bench.run(settings(args, parts))
    print(bench.format_table(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out
