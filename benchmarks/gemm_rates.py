"""The matrix-product rate (GFLOP/s) of the shapes one training step is made of, per config:
NumPy float32 (its BLAS), torch float32 (MKL; oneDNN, plain and with the weight reordered
once), bfloat16 (torch.mm; oneDNN with a reordered weight) and the compiled kernel's float32
and bfloat16 products; then each configuration's roofline: the tokens/s of a training step that
took no time but its products, each at the best rate measured for its shape, float32 and bf16
(and, given ``--bench`` a ``bptt bench --json`` file, the fraction of it each subject reached).

    python benchmarks/gemm_rates.py [--configs book,large] [--no-torch] [--bench bench.json]
"""

from __future__ import annotations

import argparse
import json

from bptt.bench.rates import flops_per_token, gemm_rates, roofline
from bptt.bench.settings import CONFIGS, QUICK_CONFIGS

FP32 = ("numpy_fp32", "torch_fp32", "onednn_fp32", "onednn_fp32_packed", "kernel_fp32")
BF16 = ("torch_bf16", "onednn_bf16_packed", "kernel_bf16")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--seconds", type=float, default=0.3, help="timing per product and library")
    p.add_argument("--bench", metavar="JSON", help="a bptt bench --json file: fractions reached")
    args = p.parse_args()
    bench = json.load(open(args.bench)) if args.bench else None
    table = QUICK_CONFIGS if args.quick else CONFIGS
    cols = ("numpy_fp32", "torch_fp32", "onednn_fp32", "onednn_fp32_packed", "kernel_fp32",
            "torch_bf16", "onednn_bf16_packed", "kernel_bf16")
    heads = ("numpy", "mkl", "dnn", "dnn-pk", "kernel", "bf16", "bf16-pk", "k-bf16")
    print(f"{'config':<11} {'product':<29} {'m x k x n':>20} "
          + " ".join(f"{h:>7}" for h in heads) + "   GFLOP/s")
    lines = []
    for name in args.configs.split(","):
        cfg = table[name]
        rates = gemm_rates(cfg, with_torch=not args.no_torch, min_seconds=args.seconds)
        for product, r in rates.items():
            m, k, n = r["shape"]
            print(f"{name:<11} {product:<29} {f'{m} x {k} x {n}':>20} "
                  + " ".join(f"{r.get(c, float('nan')):7.1f}" for c in cols))
            r["best_fp32"] = max(r.get(c, 0.0) for c in FP32)
            r["best_bf16"] = max(r.get(c, 0.0) for c in BF16) or r["best_fp32"]
        roof = {p: roofline(cfg, rates, f"best_{p}") for p in ("fp32", "bf16")}
        line = (f"{name:<11} {flops_per_token(cfg) / 1e6:7.2f} MFLOP/token   roofline "
                f"{roof['fp32']:9,.0f} tokens/s fp32, {roof['bf16']:9,.0f} bf16")
        if bench and name in bench["results"]:
            reached = []
            for s, r in bench["results"][name].items():
                rate = r.get("train", {}).get("tokens_per_s")
                if rate:
                    reached.append(f"{s} {rate / roof['bf16' if 'bf16' in s else 'fp32']:.0%}")
            line += "   reached: " + ", ".join(reached)
        lines.append(line)
    print()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
