"""The book's recipe trained by the torch engine in float32 and in bf16: final perplexities.

    BPTT_DATA_DIR=... python benchmarks/bf16_perplexity.py [--epochs 500] [--out runs/bf16cmp]

Same data, initialisation, batches and seed; only ``precision`` differs. The full recipe is
500 epochs (a few minutes per run on 2 cores); fewer epochs give a shorter matched comparison.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bptt.lm.config import TrainConfig, apply_recipe
from bptt.lm.train import train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=500)
    p.add_argument("--out", default="runs/bf16cmp")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    final = {}
    for precision in ("fp32", "bf16"):
        cfg = apply_recipe(TrainConfig(), "d2l", {
            "engine": "torch", "device": args.device, "precision": precision,
            "epochs": args.epochs, "out": str(Path(args.out) / precision), "sample_every": 0,
            "progress": "log"})
        result = train(cfg)
        final[precision] = result.last
        print(f"{precision}: perplexity {result.last['perplexity']:.3f}, "
              f"{result.last['tokens_per_s']:,.0f} tokens/s")
    a, b = final["fp32"]["perplexity"], final["bf16"]["perplexity"]
    print(f"bf16 / fp32 final training perplexity: {b / a:.4f} ({100 * (b / a - 1):+.2f}%)")


if __name__ == "__main__":
    main()
