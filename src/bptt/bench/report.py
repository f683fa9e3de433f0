"""The report of a ``bptt bench`` run: the speed and memory targets, and the text table.

The result of :func:`bptt.bench.measure.run` is a JSON-ready dict: ``machine`` (CPU, cores,
versions, load averages), ``settings``, ``configs``, ``results`` (configuration -> subject ->
part -> numbers), ``seconds`` and ``targets`` (:func:`evaluate_targets`).
"""

from __future__ import annotations

from ..cells import get_cell

BEST_FP32 = ("numpy", "torch")
BEST_BF16 = ("numpy-bf16", "torch-bf16")
TARGETS = (
    # (config, subject (or the best of several), part, key, comparison, threshold, description)
    ("book", "numpy", "train", "ratio_to_reference", ">=", 1.25,
     "book fp32: numpy tokens/s >= 1.25x torch.nn.RNN"),
    ("book", "torch", "train", "ratio_to_reference", ">=", 1.25,
     "book fp32: torch tokens/s >= 1.25x torch.nn.RNN"),
    ("book", "torch-bf16", "train", "ratio_to_reference", ">=", 2.5,
     "book bf16: torch-bf16 tokens/s >= 2.5x torch.nn.RNN (float32)"),
    ("large", "numpy", "train", "ratio_to_reference", ">=", 1.1,
     "large: numpy tokens/s >= 1.1x torch.nn.RNN"),
    ("large", "torch", "train", "ratio_to_reference", ">=", 1.1,
     "large: torch tokens/s >= 1.1x torch.nn.RNN"),
    ("book", "numpy", "generate", "ratio_to_reference", ">=", 2.0,
     "generation: numpy chars/s >= 2x torch.nn.RNN stepping (no_grad)"),
    ("book", "numpy", "generate", "ratio_to_book", ">=", 10.0,
     "generation: numpy chars/s >= 10x the book's predict_ch8"),
    ("book", "torch", "generate", "ratio_to_reference", ">=", 2.0,
     "generation: torch chars/s >= 2x torch.nn.RNN stepping (no_grad)"),
    ("book", "torch", "generate", "ratio_to_book", ">=", 10.0,
     "generation: torch chars/s >= 10x the book's predict_ch8"),
    ("long", "numpy", "memory", "ratio_to_book", "<=", 1 / 3,
     "long: numpy peak memory <= 1/3 of the book's autograd model"),
    ("book", "bptt.nn.RNN", "train", "ratio_to_reference", ">=", 1.0,
     "book: bptt.nn.RNN training tokens/s >= torch.nn.RNN"),
    ("lstm", "bptt.nn.LSTM", "train", "ratio_to_reference", ">=", 1.0,
     "lstm: bptt.nn.LSTM (2 layers) training tokens/s >= torch.nn.LSTM"),
    ("gru", "bptt.nn.GRU", "train", "ratio_to_reference", ">=", 1.0,
     "gru: bptt.nn.GRU (2 layers) training tokens/s >= torch.nn.GRU"),
)
# the best hand-written engine against torch.nn (in float32 always): per configuration the
# module compared with and the thresholds of float32 and bf16 training
BEST_TARGETS = (("book", ".RNN", 1.5, 2.5), ("gru", ".GRU", 1.5, 2.5),
                ("lstm", ".LSTM", 1.0, 2.5), ("word", ".Embedding + LSTM", 1.0, 2.5))
TARGETS += tuple(
    (cfg, best, "train", "ratio_to_reference", ">=", threshold,
     f"{cfg} {precision}: best of {'/'.join(best)} >= {threshold}x torch.nn{module}")
    for cfg, module, *thresholds in BEST_TARGETS
    for (precision, best), threshold in zip((("fp32", BEST_FP32), ("bf16", BEST_BF16)),
                                            thresholds, strict=True)
)


def _value(out: dict, cfg: str, subject, part: str, key: str) -> float | None:
    """A subject's measured value on the row of the configuration's cell, or the best
    (largest) of several subjects'."""
    if isinstance(subject, tuple):
        values = [v for v in (_value(out, cfg, s, part, key) for s in subject) if v is not None]
        return max(values) if values else None
    cell = out.get("configs", {}).get(cfg, {}).get("cell", "rnn")
    return _row(out["results"].get(cfg, {}), subject, cell).get(part, {}).get(key)


def _row(results: dict, subject: str, cell: str = "rnn") -> dict:
    """The results of ``subject`` running ``cell`` (a row may carry its subject and cell)."""
    for name, r in results.items():
        if r.get("subject", name) == subject and r.get("cell", "rnn") == cell:
            return r
    return {}


def evaluate_targets(out: dict) -> list[dict]:
    """Every target on its row of the configuration's cell (the book's: the RNN; n/a when the
    run measured other cells)."""
    rows = []
    for cfg, subject, part, key, cmp, threshold, text in TARGETS:
        value = _value(out, cfg, subject, part, key)
        met = None if value is None else (value >= threshold if cmp == ">=" else
                                          value <= threshold)
        rows.append({"target": text, "config": cfg,
                     "subject": "|".join(subject) if isinstance(subject, tuple) else subject,
                     "part": part,
                     "value": value, "threshold": threshold, "comparison": cmp, "met": met})
    return rows


def _fmt(x: float | None, spec: str = ",.0f", none: str = "-") -> str:
    return none if x is None else format(x, spec)


def _library_line(rows: dict) -> str | None:
    """Which products our engines' workers chose by measurement (bptt.engine.products), as
    counts per implementation: ``numpy: kernel 5, numpy 1; torch: onednn 4``."""
    parts = []
    for s, r in rows.items():
        chosen = (r.get("library") or {}).get("products")
        if chosen:
            counts: dict[str, int] = {}
            for name in chosen.values():
                counts[name] = counts.get(name, 0) + 1
            parts.append(f"{s}: " + ", ".join(f"{n} {c}" for n, c in sorted(counts.items())))
    return "products chosen by measurement: " + "; ".join(parts) if parts else None


def format_table(out: dict) -> str:
    """The results as a text table per configuration, then the targets."""
    lines = []
    m = out["machine"]
    lines.append(f"bptt bench on {m.get('cpu', '?')} ({m['cores']} cores), numpy {m['numpy']} "
                 f"({m.get('numpy_blas', '?')}), torch {m.get('torch', '-')}, compiled kernel "
                 f"{m.get('kernel', '?')}; {'quick; ' if out['settings']['quick'] else ''}"
                 f"{out['settings']['worker_threads']} thread(s) per worker; "
                 f"medians of {out['settings']['repeats']} interleaved rounds; load average "
                 f"{m.get('loadavg_before')} before, {m.get('loadavg_after')} after")
    cells = tuple(out["settings"].get("cells", ("rnn",)))
    width = max([15, *(len(s) for rows in out["results"].values() for s in rows)])
    first = f"x {cells[0]}" if len(cells) > 1 else ""
    head = (f"{'subject':<{width}} {'train tok/s':>12} {'x torch.nn':>10} {first:>{len(first)}}"
            f"{' ' if first else ''}{'gen char/s':>11} {'x torch.nn':>10} {'x book':>7} "
            f"{'peak MiB':>9} {'x book':>7}")
    for name, cfg in out["configs"].items():
        lines.append("")
        engines = cells if cfg["cell"] == "rnn" else (cfg["cell"],)
        emb = f" E={cfg['embedding']}" if cfg.get("embedding") else ""
        reference = cfg.get("reference_model",
                            f"torch.nn.{get_cell(cfg['cell']).torch_name}")
        lines.append(f"{name}: {cfg['cell']} V={cfg['vocab']}{emb} H={cfg['hidden']} "
                     f"L={cfg['layers']} B={cfg['batch']} T={cfg['steps']}  {cfg['note']}; "
                     f"our engines run {', '.join(engines)}; x torch.nn: the ratio to "
                     f"{reference}")
        lines.append(head)
        for s, r in out["results"][name].items():
            t, g, mem = r.get("train", {}), r.get("generate", {}), r.get("memory", {})
            peak = _fmt(mem.get("peak_mb"), ".1f")
            if "memory_tracemalloc" in r and r["memory_tracemalloc"].get("peak_mb") is not None:
                peak += f" ({r['memory_tracemalloc']['peak_mb']:.1f}t)"
            by_cell = (f"{_fmt(t.get('paired_ratio_to_first_cell'), '.2f'):>{len(first)}} "
                       if first else "")
            lines.append(
                f"{s:<{width}} {_fmt(t.get('tokens_per_s')):>12} "
                f"{_fmt(t.get('ratio_to_reference'), '.2f'):>10} {by_cell}"
                f"{_fmt(g.get('chars_per_s')):>11} {_fmt(g.get('ratio_to_reference'), '.2f'):>10} "
                f"{_fmt(g.get('ratio_to_book'), '.1f'):>7} {peak:>9} "
                f"{_fmt(mem.get('ratio_to_book'), '.2f'):>7}")
            errors = {p: r[p]["error"] for p in ("train", "generate", "memory")
                      if r.get(p, {}).get("error")}
            for p, e in errors.items():
                lines.append(f"{'':<{width}} {p}: {e}")
        library = _library_line(out["results"][name])
        if library:
            lines.append(library)
    lines.append("")
    lines.append("peak MiB: resident growth over the post-setup baseline (fresh process); "
                 "(..t): NumPy's tracemalloc peak")
    if first:
        lines.append(f"{first}: training tokens/s over the same engine's with {cells[0]}, the "
                     "median of the rounds' paired ratios")
    lines.append("targets:")
    for t in out.get("targets", []):
        state = "n/a" if t["met"] is None else ("met" if t["met"] else "NOT met")
        lines.append(f"  {t['target']:<66} {_fmt(t['value'], '.2f'):>6}  {state}")
    return "\n".join(lines)
