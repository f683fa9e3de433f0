"""Word-level training speed: ``bptt train --recipe zaremba-small`` on the numpy and torch
engines next to a plain PyTorch word language model, interleaved, medians and ratios.

    python benchmarks/word_lm.py [--rounds 5] [--vocab 0|10000] [--json out.json]

The plain model is PyTorch's word_language_model as one writes it: torch.nn.Embedding +
torch.nn.LSTM (2 layers) + torch.nn.Linear, U(-0.1, 0.1), cross-entropy, loss.backward(),
torch.nn.utils.clip_grad_norm_ and an SGD step, the hidden state carried and detached between
batches: the recipe's sizes (E = H = 200, batch 20 x 20 steps), lr 20, clip 0.25, on the same
token ids in the same sequential batches. ``bptt`` runs through ``bptt.lm.train.train`` with
the recipe's settings (its tokens/s: the training loop of an epoch, the same span the plain
model's timer covers), and per CPU second of that same span (the trainer's epoch, timed by
wrapping it), which the machine's other load disturbs far less than the wall clock. Every
subject runs in its own process with one thread (torch, MKL, OpenBLAS, OpenMP), and the rounds
interleave the subjects, so that load falls on all of them alike; the ratios are taken per
round, then their median.

``--vocab 0`` (the default) reads The Time Machine's word-level split as the recipe does
(V = 1,870); ``--vocab 10000`` a synthetic text of 10,000 Zipf-distributed word types in lines
of 20 words, the vocabulary size of the 10k-word benchmark corpus, where the head dominates.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

SUBJECTS = ("numpy", "torch", "pytorch")
ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def recipe_config(data: str | None, out: str, engine: str):
    """The recipe's settings for one epoch on ``data`` (None: the recipe's own corpus)."""
    from bptt.lm.config import TrainConfig, apply_recipe

    overrides = {"out": out, "engine": engine, "epochs": 1, "sample_every": 0,
                 "progress": "log", "device": "cpu"}
    if data is not None:                       # a synthetic corpus: no validation stream
        overrides.update(data=data, val_data=None)
    return apply_recipe(TrainConfig(), "zaremba-small", overrides)


def bptt_worker(engine: str, data: str | None) -> dict:
    """One epoch of the recipe through bptt's trainer: the epoch record's tokens/s (wall
    clock, the training loop) and its tokens per CPU second (the same loop, timed by wrapping
    the trainer's epoch: no setup, validation, checkpoint or plot counted)."""
    from bptt.lm import train as trainer

    if engine != "numpy":
        import bptt.engine.torch.model  # noqa: F401  (torch's import is not the engine's time)
    epoch, cpu = trainer._epoch, []

    def timed_epoch(*args, **kwargs):
        start = time.process_time()
        out = epoch(*args, **kwargs)
        cpu.append(time.process_time() - start)
        return out

    trainer._epoch = timed_epoch
    with tempfile.TemporaryDirectory() as tmp:
        cfg = recipe_config(data, str(Path(tmp) / "run"), engine)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")      # the validation text's unknown words
            last = trainer.train(cfg, log=lambda _msg: None).last
    tokens = last["steps"] * cfg.batch_size * cfg.num_steps
    return {"tokens_per_s": last["tokens_per_s"], "tokens_per_cpu_s": tokens / sum(cpu),
            "loss": last["loss"]}


def pytorch_worker(data: str | None) -> dict:
    """The plain PyTorch word language model over the same epoch, the same batches."""
    import torch

    from bptt.data import batches, resolve_normalization
    from bptt.lm.train import load_data

    torch.set_num_threads(1)
    cfg = recipe_config(data, "unused", "numpy")
    cfg = replace(cfg, normalization=resolve_normalization(cfg.normalization, cfg.data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids, _, vocab = load_data(cfg)
    V, E, H, L = len(vocab), cfg.embedding_size, cfg.hidden_size, cfg.num_layers
    torch.manual_seed(0)
    emb, lstm, head = torch.nn.Embedding(V, E), torch.nn.LSTM(E, H, L), torch.nn.Linear(H, V)
    params = [*emb.parameters(), *lstm.parameters(), *head.parameters()]
    with torch.no_grad():
        for p in params:
            p.uniform_(-cfg.init_scale, cfg.init_scale)
    # bptt's first epoch: the same sequential batches (the offset drawn from [seed, 1, 0])
    stream = list(batches(ids, cfg.batch_size, cfg.num_steps, cfg.partition,
                          np.random.default_rng([cfg.seed, 1, 0])))
    hidden, n_tokens = None, 0
    start, cpu = time.perf_counter(), time.process_time()
    for X, Y in stream:
        x, y = torch.from_numpy(X.T.copy()), torch.from_numpy(Y.T.copy())    # (T, B)
        out, hidden = lstm(emb(x), hidden)
        loss = torch.nn.functional.cross_entropy(head(out).view(-1, V), y.reshape(-1))
        for p in params:
            p.grad = None
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.clip)
        with torch.no_grad():
            for p in params:
                p.add_(p.grad, alpha=-cfg.lr)
        hidden = tuple(h.detach() for h in hidden)
        n_tokens += X.size
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"tokens_per_s": n_tokens / seconds, "tokens_per_cpu_s": n_tokens / cpu,
            "loss": float(loss), "vocab": V, "batches": len(stream)}


def synthetic_corpus(folder: Path, vocab: int, tokens: int, seed: int = 0) -> Path:
    """``tokens`` words drawn from ``vocab`` types with Zipf frequencies, 20 to a line."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab + 1)
    ids = rng.choice(vocab, size=tokens, p=p / p.sum())
    ids[:vocab] = np.arange(vocab)                       # every type at least once
    rng.shuffle(ids)
    lines = [" ".join(f"w{i}" for i in ids[s:s + 20]) for s in range(0, tokens, 20)]
    path = folder / f"zipf{vocab}.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_worker(subject: str, data: str | None) -> dict:
    env = {**os.environ, **ONE_THREAD}
    cmd = [sys.executable, __file__, "--worker", subject]
    if data is not None:
        cmd += ["--data", data]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--vocab", type=int, default=0,
                   help="0: The Time Machine (the recipe's data); N: a synthetic N-word text")
    p.add_argument("--batches", type=int, default=60,
                   help="with --vocab N: the batches of the synthetic text (at least 2N words)")
    p.add_argument("--json", metavar="PATH", help="write the measurements as JSON")
    p.add_argument("--worker", choices=SUBJECTS, help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        out = (pytorch_worker(args.data) if args.worker == "pytorch"
               else bptt_worker(args.worker, args.data))
        print(json.dumps(out))
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = (str(synthetic_corpus(Path(tmp), args.vocab,
                                     max(400 * args.batches + 21, 2 * args.vocab)))
                if args.vocab else None)
        rounds = [{s: run_worker(s, data) for s in SUBJECTS} for _ in range(args.rounds)]
    report(rounds, args)


def report(rounds: list[dict], args) -> None:
    plain = rounds[0]["pytorch"]
    print(f"bptt train --recipe zaremba-small (E = H = 200, 2 LSTM layers, batch 20 x 20), "
          f"V = {plain['vocab']:,}, one epoch of {plain['batches']} batches per measurement, "
          f"{args.rounds} interleaved rounds, one thread each")
    for key, what in (("tokens_per_s", "tokens/s (wall clock)"),
                      ("tokens_per_cpu_s", "tokens per CPU second")):
        rates = {s: [r[s][key] for r in rounds] for s in SUBJECTS}
        print(f" {what}:")
        for s in SUBJECTS:
            print(f"  {s:8s} median {statistics.median(rates[s]):8,.0f}   "
                  f"(rounds: {', '.join(f'{x:,.0f}' for x in rates[s])})")
        for s in ("numpy", "torch"):
            ratios = [a / b for a, b in zip(rates[s], rates["pytorch"], strict=True)]
            print(f"  {s} / pytorch: median {statistics.median(ratios):.2f} "
                  f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)})")
    if args.json:
        Path(args.json).write_text(json.dumps(rounds, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
