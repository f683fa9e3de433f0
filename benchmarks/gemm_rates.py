"""The matrix-product rate (GFLOP/s) of the shapes one training step is made of, per config:
NumPy float32 (its BLAS), torch float32 and torch bfloat16.

    python benchmarks/gemm_rates.py [--configs book,large] [--no-torch]
"""

from __future__ import annotations

import argparse

from bptt import bench


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default=",".join(bench.CONFIGS))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--seconds", type=float, default=0.3, help="timing per product and library")
    args = p.parse_args()
    table = bench.QUICK_CONFIGS if args.quick else bench.CONFIGS
    print(f"{'config':<7} {'product':<27} {'m x k x n':>18} {'numpy':>8} {'torch':>8} "
          f"{'torch bf16':>10}   GFLOP/s")
    for name in args.configs.split(","):
        rates = bench.gemm_rates(table[name], with_torch=not args.no_torch,
                                 min_seconds=args.seconds)
        for product, r in rates.items():
            m, k, n = r["shape"]
            print(f"{name:<7} {product:<27} {f'{m} x {k} x {n}':>18} {r['numpy_fp32']:8.1f} "
                  f"{r.get('torch_fp32', float('nan')):8.1f} "
                  f"{r.get('torch_bf16', float('nan')):10.1f}")


if __name__ == "__main__":
    main()
