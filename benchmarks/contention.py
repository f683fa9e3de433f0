"""Training speed with another process competing for the cores: every engine's tokens/s with
its default threads while one busy process (``python -c "while True: pass"``) runs, as a
fraction of its own single-thread speed without it (the target: no engine below 0.9x).

    python benchmarks/contention.py [--configs word] [--subjects numpy,torch] [--repeats 7]
                                    [--json out.json]

Both measurements are ``bptt bench``'s (``bptt.bench``: one worker process per subject, timed
blocks interleaved over the subjects, medians): first one thread per worker on the machine as
it is, then the default threads (``bptt.engine.threads.default_threads``: the cores the
machine's other work leaves idle, by the load average, in every pool, waiting passively) with
the busy process started a minute before (as a user's training starts beside work already
running; the 1-minute load average has seen it by then), then the single-thread run once
more, so that a change in the machine's other load over the run shows as the two idle runs
disagreeing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import parser, settings  # noqa: E402

from bptt.bench.measure import run as run_bench  # noqa: E402

BUSY = [sys.executable, "-c", "while True: pass"]


def rates(out: dict) -> dict:
    """config -> subject -> median training tokens/s."""
    return {c: {s: r.get("train", {}).get("tokens_per_s") for s, r in rows.items()}
            for c, rows in out["results"].items()}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.set_defaults(configs="word", subjects="numpy,numpy-bf16,torch,torch-bf16,torch.nn.LSTM")
    p.add_argument("--settle", type=float, default=60.0,
                   help="seconds the busy process runs before the measurement")
    args = p.parse_args()
    base = settings(args, ("train",))
    idle = rates(run_bench(replace(base, threads=1)))
    busy_proc = subprocess.Popen(BUSY)
    try:
        time.sleep(args.settle)
        busy = rates(run_bench(replace(base, threads=None)))
    finally:
        busy_proc.kill()
        busy_proc.wait()
    again = rates(run_bench(replace(base, threads=1)))
    print("tokens/s: 1 thread idle (before, after) | default threads beside one busy process "
          "| ratio to the idle median")
    result = {}
    for cfg, rows in busy.items():
        for s, r in rows.items():
            before, after = idle[cfg][s], again[cfg][s]
            ref = None if before is None or after is None else (before + after) / 2
            ratio = None if r is None or not ref else r / ref
            result.setdefault(cfg, {})[s] = {"idle_1_thread": [before, after],
                                             "busy_default_threads": r, "ratio": ratio}
            text = "-" if ratio is None else f"{ratio:.2f}x"
            print(f"  {cfg:12s} {s:12s} {before or 0:10,.0f} {after or 0:10,.0f} | "
                  f"{r or 0:10,.0f} | {text}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
