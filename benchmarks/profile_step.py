"""Where the time of one training step goes, per subject: cProfile (Python functions), and
torch.profiler's operator table for the torch subjects.

    python benchmarks/profile_step.py [--config book] [--subjects numpy,torch] [--steps 5]
"""

from __future__ import annotations

import argparse

from bptt.bench.rates import profile_step, torch_profile_step
from bptt.bench.settings import CONFIGS, QUICK_CONFIGS, SUBJECTS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="book", choices=list(CONFIGS))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--subjects", default=",".join(SUBJECTS))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--no-torch-profiler", action="store_true")
    args = p.parse_args()
    cfg = (QUICK_CONFIGS if args.quick else CONFIGS)[args.config]
    for subject in [s for s in args.subjects.split(",") if cfg.takes(s)]:
        print(f"==== {subject} ({cfg.name}: H={cfg.hidden} B={cfg.batch} T={cfg.steps}), "
              f"{args.steps} steps ====")
        print(profile_step(subject, cfg, args.steps, args.top))
        if not subject.startswith("numpy") and not args.no_torch_profiler:
            print(torch_profile_step(subject, cfg, args.steps, args.top))


if __name__ == "__main__":
    main()
