"""The matrix-product rate (GFLOP/s) of the shapes one training step is made of, per config:
NumPy float32 (its BLAS), torch float32 (MKL; oneDNN, plain and with the weight reordered
once) and bfloat16 (torch.mm; oneDNN with a reordered weight).

    python benchmarks/gemm_rates.py [--configs book,large] [--no-torch]
"""

from __future__ import annotations

import argparse

from bptt.bench.rates import gemm_rates
from bptt.bench.settings import CONFIGS, QUICK_CONFIGS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--seconds", type=float, default=0.3, help="timing per product and library")
    args = p.parse_args()
    table = QUICK_CONFIGS if args.quick else CONFIGS
    cols = ("numpy_fp32", "torch_fp32", "onednn_fp32", "onednn_fp32_packed", "torch_bf16",
            "onednn_bf16_packed")
    heads = ("numpy", "mkl", "dnn", "dnn-pk", "bf16", "bf16-pk")
    print(f"{'config':<7} {'product':<27} {'m x k x n':>18} "
          + " ".join(f"{h:>7}" for h in heads) + "   GFLOP/s")
    for name in args.configs.split(","):
        rates = gemm_rates(table[name], with_torch=not args.no_torch,
                           min_seconds=args.seconds)
        for product, r in rates.items():
            m, k, n = r["shape"]
            print(f"{name:<7} {product:<27} {f'{m} x {k} x {n}':>18} "
                  + " ".join(f"{r.get(c, float('nan')):7.1f}" for c in cols))


if __name__ == "__main__":
    main()
