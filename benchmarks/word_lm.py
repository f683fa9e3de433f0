"""Word-level training speed: ``bptt train --recipe zaremba-small`` on the numpy and torch
engines, float32 and ``--precision bf16``, next to a plain PyTorch word language model (float32),
interleaved, medians and ratios, and the validation perplexity each reaches.

    python benchmarks/word_lm.py [--rounds 5] [--vocab 0|10000] [--epochs 1] [--threads 1]
                                 [--json out.json]

The plain model is PyTorch's word_language_model as one writes it: torch.nn.Embedding +
torch.nn.LSTM (2 layers) + torch.nn.Linear, U(-0.1, 0.1), cross-entropy, loss.backward(),
torch.nn.utils.clip_grad_norm_ and an SGD step, the hidden state carried and detached between
batches: the recipe's sizes (E = H = 200, batch 20 x 20 steps), lr 20, clip 0.25, on the same
token ids in the same sequential batches. ``bptt`` runs through ``bptt.lm.train.train`` with
the recipe's settings (its tokens/s: the training loop of an epoch, the same span the plain
model's timer covers; the median of its epochs), and per CPU second of that same span (the
trainer's epochs, timed by wrapping them), which the machine's other load disturbs far less than
the wall clock. Every subject runs in its own process with the same threads (``--threads``:
torch, MKL, OpenBLAS, OpenMP and bptt's kernel, waiting passively), and the rounds interleave
the subjects, so that load falls on all of them alike; the ratios are taken per round, then
their median. After its epochs every subject's parameters are evaluated on the validation text
by the same code (``bptt``'s ``evaluate_tokens`` on the NumPy engine in float32, the plain
model's weights carried over by their torch names): the validation perplexities of the same
run, side by side.

``--vocab 0`` (the default) reads The Time Machine's word-level split as the recipe does
(V = 1,870); ``--vocab 10000`` a synthetic text of 10,000 Zipf-distributed word types in lines
of 20 words, the vocabulary size of the 10k-word benchmark corpus, where the head dominates (its
validation text: another draw of the same distribution, a tenth of the size).
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

SUBJECTS = ("numpy", "numpy-bf16", "torch", "torch-bf16", "pytorch")
OURS = {"numpy": ("numpy", "fp32"), "numpy-bf16": ("numpy", "bf16"),
        "torch": ("torch", "fp32"), "torch-bf16": ("torch", "bf16")}


def recipe_config(data: str | None, val: str | None, out: str, engine: str,
                  precision: str = "fp32", epochs: int = 1, threads: int = 1):
    """The recipe's settings for ``epochs`` on ``data`` and ``val`` (None: the recipe's own
    corpus and its validation split)."""
    from bptt.lm.config import TrainConfig, apply_recipe

    overrides = {"out": out, "engine": engine, "precision": precision, "epochs": epochs,
                 "threads": threads, "sample_every": 0, "progress": "log", "device": "cpu"}
    if data is not None:                       # a synthetic corpus and its validation draw
        overrides.update(data=data, val_data=val)
    return apply_recipe(TrainConfig(), "zaremba-small", overrides)


def bptt_worker(subject: str, data: str | None, val: str | None, epochs: int,
                threads: int) -> dict:
    """The recipe through bptt's trainer: the epochs' tokens/s (wall clock, the training loop;
    their median) and tokens per CPU second (the same loops, timed by wrapping the trainer's
    epoch: no setup, validation, checkpoint or plot counted); then the validation perplexity
    of its parameters."""
    from bptt import checkpoint as ck
    from bptt.lm import train as trainer

    engine, precision = OURS[subject]
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
        cfg = recipe_config(data, val, str(Path(tmp) / "run"), engine, precision, epochs,
                            threads)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")      # the validation text's unknown words
            result = trainer.train(cfg, log=lambda _msg: None)
            ppl = validation_perplexity(cfg, ck.load(result.out, "last").params)
    epochs_done = [m for m in result.metrics if m.get("kind") == "epoch"]
    tokens = sum(m["steps"] for m in epochs_done) * cfg.batch_size * cfg.num_steps
    return {"tokens_per_s": statistics.median(m["tokens_per_s"] for m in epochs_done),
            "tokens_per_cpu_s": tokens / sum(cpu), "loss": epochs_done[-1]["loss"],
            "val_perplexity": ppl}


def validation_perplexity(cfg, params: dict) -> float:
    """The perplexity of ``params`` (NumPy arrays by torch name) on the validation text, by
    bptt's evaluator on the NumPy engine in float32: the same code for every subject."""
    from bptt.data import resolve_normalization
    from bptt.engine import get_engine
    from bptt.lm.evaluate import evaluate_tokens
    from bptt.lm.train import build_spec, load_data

    cfg = replace(cfg, normalization=resolve_normalization(cfg.normalization, cfg.data))
    _, val_ids, vocab = load_data(cfg)
    engine = get_engine("numpy", build_spec(cfg, len(vocab)))
    return evaluate_tokens(engine, engine.from_numpy(params), val_ids, cfg.batch_size,
                           cfg.num_steps)["perplexity"]


def pytorch_worker(data: str | None, val: str | None, epochs: int, threads: int) -> dict:
    """The plain PyTorch word language model over the same epochs, the same batches."""
    import torch

    from bptt.data import batches, resolve_normalization
    from bptt.lm.train import load_data

    torch.set_num_threads(threads)
    cfg = recipe_config(data, val, "unused", "numpy", epochs=epochs, threads=threads)
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
    hidden, lr, rates, n_all, cpu = None, cfg.lr, [], 0, 0.0
    for epoch in range(epochs):
        # bptt's epochs: the same sequential batches (the offset drawn from [seed, 1, epoch])
        stream = list(batches(ids, cfg.batch_size, cfg.num_steps, cfg.partition,
                              np.random.default_rng([cfg.seed, 1, epoch])))
        n_tokens = 0
        start, cpu_start = time.perf_counter(), time.process_time()
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
                    p.add_(p.grad, alpha=-lr)
            hidden = tuple(h.detach() for h in hidden)
            n_tokens += X.size
        rates.append(n_tokens / (time.perf_counter() - start))
        cpu += time.process_time() - cpu_start
        n_all += n_tokens
        if cfg.lr_decay is not None and epoch + 1 >= cfg.lr_decay_start:
            lr *= cfg.lr_decay                   # bptt's schedule (Zaremba's decay)
    weights = {"embedding.weight": emb.weight, **dict(lstm.named_parameters()),
               "head.weight": head.weight, "head.bias": head.bias}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ppl = validation_perplexity(cfg, {k: v.detach().numpy() for k, v in weights.items()})
    return {"tokens_per_s": statistics.median(rates), "tokens_per_cpu_s": n_all / cpu,
            "loss": float(loss), "vocab": V, "batches": len(stream), "val_perplexity": ppl}


def synthetic_corpus(folder: Path, vocab: int, tokens: int, seed: int = 0,
                     name: str = "zipf") -> Path:
    """``tokens`` words drawn from ``vocab`` types with Zipf frequencies, 20 to a line."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab + 1)
    ids = rng.choice(vocab, size=tokens, p=p / p.sum())
    if seed == 0:
        ids[:vocab] = np.arange(vocab)                   # every type at least once
    rng.shuffle(ids)
    lines = [" ".join(f"w{i}" for i in ids[s:s + 20]) for s in range(0, tokens, 20)]
    path = folder / f"{name}{vocab}.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_worker(subject: str, args, data: str | None, val: str | None) -> dict:
    from bptt.engine.threads import child_environment

    env = {**os.environ, **child_environment(args.threads)}
    cmd = [sys.executable, __file__, "--worker", subject, "--epochs", str(args.epochs),
           "--threads", str(args.threads)]
    if data is not None:
        cmd += ["--data", data, "--val", val]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--vocab", type=int, default=0,
                   help="0: The Time Machine (the recipe's data); N: a synthetic N-word text")
    p.add_argument("--batches", type=int, default=60,
                   help="with --vocab N: the batches of the synthetic text (at least 2N words)")
    p.add_argument("--epochs", type=int, default=1, help="epochs per measurement")
    p.add_argument("--threads", type=int, default=1, help="threads of every subject")
    p.add_argument("--subjects", default=",".join(SUBJECTS),
                   help=f"comma-separated, among {','.join(SUBJECTS)}")
    p.add_argument("--json", metavar="PATH", help="write the measurements as JSON")
    p.add_argument("--worker", choices=SUBJECTS, help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--val", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        out = (pytorch_worker(args.data, args.val, args.epochs, args.threads)
               if args.worker == "pytorch"
               else bptt_worker(args.worker, args.data, args.val, args.epochs, args.threads))
        print(json.dumps(out))
        return
    subjects = [s for s in args.subjects.split(",") if s]
    if "pytorch" not in subjects or not set(subjects) <= set(SUBJECTS):
        p.error(f"expected --subjects among {','.join(SUBJECTS)} with pytorch, got "
                f"{args.subjects!r}")
    with tempfile.TemporaryDirectory() as tmp:
        data = val = None
        if args.vocab:
            tokens = max(400 * args.batches + 21, 2 * args.vocab)
            data = str(synthetic_corpus(Path(tmp), args.vocab, tokens))
            val = str(synthetic_corpus(Path(tmp), args.vocab, tokens // 10, seed=1,
                                       name="valid"))
        rounds = []
        for i in range(args.rounds):                 # a rotating order within each round
            order = subjects[i % len(subjects):] + subjects[:i % len(subjects)]
            rounds.append({s: run_worker(s, args, data, val) for s in order})
    report(rounds, subjects, args)


def report(rounds: list[dict], subjects: list[str], args) -> None:
    plain = rounds[0]["pytorch"]
    print(f"bptt train --recipe zaremba-small (E = H = 200, 2 LSTM layers, batch 20 x 20), "
          f"V = {plain['vocab']:,}, {args.epochs} epoch(s) of {plain['batches']} batches per "
          f"measurement, {args.rounds} interleaved rounds, {args.threads} thread(s) each")
    for key, what in (("tokens_per_s", "tokens/s (wall clock)"),
                      ("tokens_per_cpu_s", "tokens per CPU second")):
        rates = {s: [r[s][key] for r in rounds] for s in subjects}
        print(f" {what}:")
        for s in subjects:
            print(f"  {s:10s} median {statistics.median(rates[s]):8,.0f}   "
                  f"(rounds: {', '.join(f'{x:,.0f}' for x in rates[s])})")
        for s in subjects:
            if s == "pytorch":
                continue
            ratios = [a / b for a, b in zip(rates[s], rates["pytorch"], strict=True)]
            print(f"  {s} / pytorch: median {statistics.median(ratios):.2f} "
                  f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)})")
    ppl = {s: [r[s]["val_perplexity"] for r in rounds] for s in subjects}
    print(" validation perplexity (median; and its median gap to pytorch's per round):")
    for s in subjects:
        gap = [a / b - 1 for a, b in zip(ppl[s], ppl["pytorch"], strict=True)]
        print(f"  {s:10s} {statistics.median(ppl[s]):8.2f}   {statistics.median(gap):+.2%}")
    if args.json:
        Path(args.json).write_text(json.dumps(rounds, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
