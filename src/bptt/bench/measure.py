"""The run of ``bptt bench``: every requested measurement of every subject, side by side.

  train     tokens/s of whole training steps (forward, BPTT, clipping, SGD step; the state is
            carried and detached between batches as ``bptt train`` does) on fixed random token
            batches. Every subject runs in its own persistent worker process (its own imports,
            thread pools and allocator), warmed up first; then ``repeats`` rounds, each round
            giving every subject one timed block of about ``seconds`` in a rotating order, with
            a short pause between blocks so that one worker's spinning BLAS/OpenMP threads have
            gone to sleep before the next starts. Reported: the median over the rounds, and
            the ratio to the reference's median (torch.nn's module of the configuration's
            cell, behind torch.nn.Embedding in a word model: torch.nn.RNN for the book's
            model) and the median of the rounds' paired ratios (with several cells, also the
            paired ratio to the same engine with the first cell). A configuration runs the
            subjects that take it.
  generate  characters/s of single-stream greedy generation; same workers, same rounds.
  memory    peak memory growth of a few training steps, one fresh process per subject (and one
            more for the NumPy engine under tracemalloc), two processes at a time.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..engine.threads import default_threads
from .report import evaluate_targets
from .settings import BOOK, PARTS, SUBJECTS, BenchConfig, BenchSettings, cores
from .worker import Worker


@dataclass
class Measurement:
    samples: list[float] = field(default_factory=list)
    error: str | None = None
    library: dict | None = None      # our engines: the kernel and the products they chose

    @property
    def median(self) -> float | None:
        return float(np.median(self.samples)) if self.samples else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0.0) else None


def machine_info() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cores": cores(), "numpy": np.__version__}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        info["torch"] = version("torch")
    from ..engine import kernel

    info["kernel"] = kernel.status()
    with contextlib.suppress(Exception):
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        info["numpy_blas"] = f"{blas.get('name')} {blas.get('version')}"
    return info


def _loadavg() -> list[float] | None:
    """The 1, 5 and 15-minute load averages: how busy the (shared) machine was."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(settings: BenchSettings, log=_log) -> dict:
    """Every requested measurement; returns the JSON-ready result (see
    :func:`bptt.bench.report.format_table`)."""
    for s in settings.subjects:
        if s not in SUBJECTS:
            raise ValueError(f"expected subjects among {', '.join(SUBJECTS)}, got {s!r}")
    for p in settings.parts:
        if p not in PARTS:
            raise ValueError(f"expected parts among {', '.join(PARTS)}, got {p!r}")
    configs = [settings.config(n) for n in settings.configs]
    rows = {c.name: settings.rows(c) for c in configs}
    results: dict[str, dict[str, dict]] = {
        c.name: {row: {"subject": s, "cell": cell} for row, s, cell in rows[c.name]}
        for c in configs}
    t_start = time.perf_counter()
    load_before = _loadavg()
    threads_used = settings.threads or default_threads()     # what a worker without a number
    if "train" in settings.parts or "generate" in settings.parts:  # takes, decided now
        names = dict.fromkeys(row for c in configs for row, _, _ in rows[c.name])  # each once
        workers = {row: Worker(settings.threads) for row in names}
        try:
            for cfg in configs:
                _timed_parts(cfg, settings, {row: workers[row] for row in results[cfg.name]},
                             results[cfg.name], log)
        finally:
            for w in workers.values():
                w.close()
    if "memory" in settings.parts:
        names = settings.memory_configs or settings.configs
        for cfg in configs:
            if cfg.name in names:
                _memory_part(cfg, settings, results[cfg.name], log)
    out = {
        "machine": {**machine_info(), "loadavg_before": load_before, "loadavg_after": _loadavg()},
        "settings": {**asdict(settings), "worker_threads": settings.threads or threads_used},
        "configs": {c.name: {**asdict(c), "reference": c.reference,
                             "reference_model": c.reference_model} for c in configs},
        "results": results,
        "seconds": time.perf_counter() - t_start,
    }
    out["targets"] = evaluate_targets(out)
    return out


# -- timed parts: training and generation ---------------------------------------------------------

def _timed_parts(cfg: BenchConfig, st: BenchSettings, workers: dict, res: dict, log) -> None:
    """One configuration's timed blocks: set up every worker, interleaved rounds of training
    blocks, then of generation blocks; the medians and the ratios into ``res``."""
    log(f"[{cfg.name}] {cfg.cell} V={cfg.vocab} E={cfg.embedding or '-'} H={cfg.hidden} "
        f"L={cfg.layers} B={cfg.batch} T={cfg.steps}: setting up")
    parts = [p for p in st.parts if p != "generate" or cfg.generates]
    n_steps, train, gen = {}, {}, {}
    for s, w in workers.items():
        r = w.ask(op="setup", subject=res[s]["subject"], cell=res[s]["cell"],
                  config=asdict(cfg), seed=st.seed, warmup=1)
        train[s], gen[s] = Measurement(error=r.get("error")), Measurement(error=r.get("error"))
        if "error" not in r:
            n_steps[s] = max(1, round(st.seconds / max(r["step_s"], 1e-6)))
    if "train" in parts:
        _rounds(workers, train, st.repeats, st.pause,
                request=lambda s: {"op": "train", "n": n_steps[s]},
                amount=lambda s: n_steps[s] * cfg.tokens,
                after_round=lambda rep: log(f"[{cfg.name}] train round {rep + 1}/{st.repeats}"))
    if "generate" in parts:
        _rounds(workers, gen, st.gen_repeats, st.pause,
                request=lambda s: {"op": "generate", "n": st.gen_chars},
                amount=lambda s: st.gen_chars)
        log(f"[{cfg.name}] generation done")
    for s in workers:
        if "train" in parts:
            res[s]["train"] = {"tokens_per_s": train[s].median, "samples": train[s].samples,
                               "steps_per_block": n_steps.get(s), "error": train[s].error}
            if train[s].library is not None:
                res[s]["library"] = train[s].library
        if "generate" in parts:
            res[s]["generate"] = {"chars_per_s": gen[s].median, "samples": gen[s].samples,
                                  "chars_per_block": st.gen_chars, "error": gen[s].error}
    _timed_ratios(res, cfg.reference)
    _cell_ratios(res, st.engine_cells(cfg))


def _rounds(workers: dict, measured: dict[str, Measurement], repeats: int, pause: float, *,
            request, amount, after_round=None) -> None:
    """``repeats`` rounds; in each, every subject without an error gets one block, in an order
    rotated by one subject per round. A block's rate is ``amount(subject) / seconds``."""
    subjects = list(workers)
    for rep in range(repeats):
        order = subjects[rep % len(subjects):] + subjects[:rep % len(subjects)]
        for s in order:
            if measured[s].error:
                continue
            r = workers[s].ask(**request(s))
            if "error" in r:
                measured[s].error = r["error"]
            else:
                measured[s].samples.append(amount(s) / r["seconds"])
                if "products" in r:
                    measured[s].library = {"kernel": r["kernel"], "products": r["products"]}
            time.sleep(pause)
        if after_round is not None:
            after_round(rep)


def _timed_ratios(res: dict, reference: str) -> None:
    """Each subject's rates as ratios to the reference's (and generation's to the book's)."""
    ref_t = res.get(reference, {}).get("train", {}).get("tokens_per_s")
    ref_g = res.get(reference, {}).get("generate", {}).get("chars_per_s")
    book_g = res.get(BOOK, {}).get("generate", {}).get("chars_per_s")
    ref_samples = res.get(reference, {}).get("train", {}).get("samples", [])
    for r in res.values():
        if "train" in r:
            t = r["train"]
            t["ratio_to_reference"] = _ratio(t["tokens_per_s"], ref_t)
            # the same ratio from each round's pair (both measured within seconds of each
            # other), then the median: less sensitive to a busy round than medians' ratio
            t["paired_ratio_median"] = _paired_median(t["samples"], ref_samples)
        if "generate" in r:
            g = r["generate"]
            g["ratio_to_reference"] = _ratio(g["chars_per_s"], ref_g)
            g["ratio_to_book"] = _ratio(g["chars_per_s"], book_g)


def _paired_median(samples: list[float], reference: list[float]) -> float | None:
    pairs = [a / b for a, b in zip(samples, reference, strict=False) if b]
    return float(np.median(pairs)) if pairs else None


def _cell_ratios(res: dict, cells: tuple[str, ...]) -> None:
    """With several cells: each row's training rate over the same subject's with the first
    cell, the median of the rounds' paired ratios (both measured within seconds of each
    other)."""
    if len(cells) < 2:
        return
    first = {r["subject"]: r for r in res.values() if r["cell"] == cells[0]}
    for r in res.values():
        base = first.get(r["subject"])
        if "train" in r and base is not None and base is not r and "train" in base:
            r["train"]["paired_ratio_to_first_cell"] = _paired_median(
                r["train"]["samples"], base["train"]["samples"])


# -- memory ---------------------------------------------------------------------------------------

def _memory_part(cfg: BenchConfig, st: BenchSettings, res: dict, log) -> None:
    """One fresh process per (subject, method); two at a time (memory is not timing)."""
    from concurrent.futures import ThreadPoolExecutor

    log(f"[{cfg.name}] memory: one fresh process per subject")
    jobs = [(row, "memory", False) for row in res]
    jobs += [(row, "memory_tracemalloc", True) for row, r in res.items()
             if r["subject"] == "numpy"]

    def measure(job) -> dict:
        row, _, traced = job
        w = Worker(st.threads)
        try:
            r = w.ask(op="setup", subject=res[row]["subject"], cell=res[row]["cell"],
                      config=asdict(cfg), seed=st.seed, warmup_tiny=True)
            if "error" not in r:
                r = w.ask(op="memory", steps=st.memory_steps, tracemalloc=traced)
        finally:
            w.close()
        return r

    with ThreadPoolExecutor(max_workers=2) as pool:
        replies = list(pool.map(measure, jobs))
    for (subject, key, _), r in zip(jobs, replies, strict=True):
        res[subject][key] = {"peak_mb": r.get("peak_mb"), "method": r.get("method"),
                             "steps": st.memory_steps, "error": r.get("error"),
                             "torch_imported": r.get("torch_imported")}
    ref = res.get(cfg.reference, {}).get("memory", {}).get("peak_mb")
    book = res.get(BOOK, {}).get("memory", {}).get("peak_mb")
    for s in res:
        m = res[s].get("memory")
        if m is not None:
            m["ratio_to_reference"] = _ratio(m["peak_mb"], ref)
            m["ratio_to_book"] = _ratio(m["peak_mb"], book)
