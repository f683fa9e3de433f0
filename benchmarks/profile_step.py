"""Where the time of one training step goes, per subject: cProfile (Python functions), and
torch.profiler's operator table for the torch subjects; --kernel-parts: milliseconds per step
in each call of the compiled kernel (its loops, its products by shape and layout) instead.

    python benchmarks/profile_step.py [--config book] [--subjects numpy,torch] [--steps 5]
    python benchmarks/profile_step.py --config word --subjects numpy-bf16 --kernel-parts
"""

from __future__ import annotations

import argparse

from bptt.bench.rates import kernel_parts, profile_step, torch_profile_step
from bptt.bench.settings import CONFIGS, QUICK_CONFIGS, SUBJECTS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="book", choices=list(CONFIGS))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--subjects", default=",".join(SUBJECTS))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--no-torch-profiler", action="store_true")
    p.add_argument("--kernel-parts", action="store_true")
    args = p.parse_args()
    cfg = (QUICK_CONFIGS if args.quick else CONFIGS)[args.config]
    for subject in [s for s in args.subjects.split(",") if cfg.takes(s)]:
        print(f"==== {subject} ({cfg.name}: H={cfg.hidden} B={cfg.batch} T={cfg.steps}), "
              f"{args.steps} steps ====")
        if args.kernel_parts:
            for part, ms in kernel_parts(subject, cfg, args.steps).items():
                print(f"{ms:9.3f} ms  {part}")
            continue
        print(profile_step(subject, cfg, args.steps, args.top))
        if not subject.startswith("numpy") and not args.no_torch_profiler:
            print(torch_profile_step(subject, cfg, args.steps, args.top))


if __name__ == "__main__":
    main()
