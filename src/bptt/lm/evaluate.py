"""Perplexity of a token stream under a language model (no gradients, dropout off).

The stream is cut into ``batch_size`` contiguous rows, read ``num_steps`` at a time with the
state carried across chunks, so every token is predicted from its whole row history. The
tokens that do not fill a last row (fewer than ``batch_size``) continue the last row, from its
final state, so every token but the very first is predicted and counted: ``tokens`` is
``len(ids) - 1``. perplexity = exp(mean cross-entropy); bits per token = mean CE / ln 2.

:func:`evaluate_text` is ``bptt evaluate``: a text file (or a corpus part such as
``timemachine:test``) read as the model was trained to read, the unknown tokens counted, timed.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..data import DataError, line_range, load_corpus, resolve
from ..engine import as_numpy, get_engine
from .generate import LanguageModel


def log_softmax_nll(logits: np.ndarray, targets: np.ndarray) -> float:
    """Sum over rows of -log softmax(logits)[target]; logits (N, V), targets (N,)."""
    logits = logits.astype(np.float64, copy=False)
    m = logits.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))
    return float((lse - logits[np.arange(len(targets)), targets]).sum())


def evaluate_tokens(engine, params, ids: np.ndarray, batch_size: int = 32,
                    num_steps: int = 35) -> dict:
    """``{"loss", "perplexity", "bits_per_token", "tokens"}`` of ``ids`` under the model."""
    for name, value in (("batch_size", batch_size), ("num_steps", num_steps)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"expected {name} a positive integer, got {value!r}")
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size < 2:
        raise DataError(f"expected at least 2 tokens to evaluate, got {ids.size}")
    batch_size = max(1, min(batch_size, ids.size - 1))   # short texts: fewer, longer rows
    rows = (ids.size - 1) // batch_size
    n = rows * batch_size
    X = ids[:n].reshape(batch_size, rows)
    Y = ids[1:n + 1].reshape(batch_size, rows)
    nll, state = _stream_nll(engine, params, X, Y, engine.begin_state(batch_size), num_steps)
    if n < ids.size - 1:              # the rest continues the last row, from its final state
        tail = engine.state_from_numpy(_last_row(engine.state_to_numpy(state)))
        more, _ = _stream_nll(engine, params, ids[None, n:-1], ids[None, n + 1:], tail,
                              num_steps)
        nll += more
    n = ids.size - 1
    loss = nll / n
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "bits_per_token": loss / math.log(2),
        "tokens": int(n),
    }


def _stream_nll(engine, params, X: np.ndarray, Y: np.ndarray, state, num_steps: int):
    """Summed NLL of the (B, N) targets ``Y`` after inputs ``X``, ``num_steps`` at a time with
    the state carried; and the last state."""
    nll = 0.0
    for i in range(0, X.shape[1], num_steps):
        logits, state = engine.forward(params, X[:, i:i + num_steps], state)  # (B, t, V)
        logits = as_numpy(logits)
        nll += log_softmax_nll(logits.reshape(-1, logits.shape[-1]),
                               Y[:, i:i + num_steps].reshape(-1))
    return nll, state


def _last_row(state):
    """The last batch row of a NumPy state, (L*D, 1, H) (each part of an LSTM's pair)."""
    if isinstance(state, tuple | list):
        return tuple(_last_row(s) for s in state)
    return np.ascontiguousarray(np.asarray(as_numpy(state))[:, -1:])


def evaluate_text(model: LanguageModel, data: str, *, engine: str = "numpy",
                  device: str | None = None, batch_size: int = 32, num_steps: int = 35,
                  max_tokens: int | None = None) -> dict:
    """:func:`evaluate_tokens` of the text ``data`` (a file, a corpus name, or a part of one:
    ``timemachine:test``), read with the model's normalisation, tokenisation and ``<eos>``,
    in order, all of it (or its first ``max_tokens`` tokens). Adds ``text_tokens`` (the
    tokens read), ``unknown`` and ``unknown_share`` (those read as ``<unk>``: outside the
    vocabulary, or ``<unk>`` in the text itself), ``seconds`` and ``tokens_per_s`` (the
    forward passes alone). Warns of tokens outside the vocabulary; refuses a run that cannot
    fit in memory before it starts."""
    from ..memory import estimate, require

    ids, _ = load_corpus(resolve(data), model.normalization, model.tokenization, max_tokens,
                         vocab=model.vocab, eos=model.eos, lines=line_range(data))
    eng = get_engine(engine, model.spec, device=device)
    rows = max(1, min(batch_size, ids.size - 1))                       # as evaluate_tokens
    require(estimate(model.spec, batch_size=rows, training=False,
                     num_steps=min(num_steps, ids.size // rows + 1)), eng.device,
            hint="lower --num-steps or --batch-size")
    params = eng.from_numpy(model.params)
    start = time.perf_counter()
    result = evaluate_tokens(eng, params, ids, batch_size, num_steps)
    seconds = time.perf_counter() - start
    unknown = int(np.count_nonzero(ids == 0))
    return {**result, "text_tokens": int(ids.size), "unknown": unknown,
            "unknown_share": unknown / ids.size, "seconds": seconds,
            "tokens_per_s": result["tokens"] / max(seconds, 1e-9)}
