"""Continue a prefix with a trained language model: greedy, temperature, top-k, top-p.

As the book's ``predict_ch8``: the prefix first warms the state up (its tokens are fed in, no
predictions kept), then each new token is chosen from the logits of the last one and fed back.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass

import numpy as np

from ..data import EOS, Vocab, dropped_letters, tokenize
from ..engine import as_numpy, get_engine
from ..model import ModelSpec


@dataclass
class LanguageModel:
    """What generation and evaluation need: spec, parameters, vocabulary and text settings."""

    spec: ModelSpec
    params: dict[str, np.ndarray]
    vocab: Vocab
    normalization: str = "d2l"
    tokenization: str = "char"
    eos: bool = False              # word tokens with <eos> ending every line

    @classmethod
    def from_checkpoint(cls, ckpt) -> LanguageModel:
        if ckpt.spec.task != "lm" or ckpt.vocab is None:
            raise ValueError(
                f"expected a language-model checkpoint (task 'lm' with a vocabulary), got task "
                f"{ckpt.spec.task!r}" + (" without a vocabulary" if ckpt.vocab is None else "")
            )
        return cls(ckpt.spec, ckpt.params, ckpt.vocab,
                   ckpt.text.get("normalization", "d2l"), ckpt.text.get("tokenization", "char"),
                   bool(ckpt.text.get("eos", False)))

    def prefix_tokens(self, prefix: str) -> list[str]:
        """The prefix as tokens, normalised like the training text but keeping edge spaces;
        with ``eos``, every line of it but the last (which the model continues) ends with
        ``<eos>``."""
        if not self.eos:
            return tokenize(self._normalize(prefix), self.tokenization)
        lines = prefix.split("\n")
        tokens = []
        for line in lines[:-1]:
            tokens += [*tokenize(self._normalize(line), self.tokenization), EOS]
        return tokens + tokenize(self._normalize(lines[-1]), self.tokenization)

    def _normalize(self, text: str) -> str:
        return re.sub("[^A-Za-z]+", " ", text).lower() if self.normalization == "d2l" else text

    def join(self, tokens: list[str]) -> str:
        """Tokens as text: characters joined, words spaced, each ``<eos>`` a line break."""
        if self.tokenization == "char":
            return "".join(tokens)
        if not self.eos:
            return " ".join(tokens)
        lines, line = [], []
        for token in tokens:
            if token == EOS:
                lines.append(" ".join(line))
                line = []
            else:
                line.append(token)
        return "\n".join([*lines, " ".join(line)])


def _choose(logits: np.ndarray, temperature: float, top_k: int | None, top_p: float | None,
            rng: np.random.Generator) -> int:
    """One token id from a (V,) row of logits; greedy when temperature is 0."""
    if temperature == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    if top_k is not None and top_k < z.size:
        kth = np.partition(z, -top_k)[-top_k]
        z = np.where(z >= kth, z, -np.inf)
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cum, top_p) + 1)]  # smallest set with mass >= top_p
        mask = np.zeros_like(p)
        mask[keep] = p[keep]
        p = mask / mask.sum()
    return int(rng.choice(p.size, p=p))


def generate(
    model: LanguageModel,
    prefix: str,
    length: int = 100,
    *,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    engine: str = "numpy",
    device: str | None = None,
) -> str:
    """The prefix followed by ``length`` generated tokens.

    ``temperature`` 0 is greedy, > 0 samples from softmax(logits / temperature); ``top_k`` and
    ``top_p`` restrict that sampling, so with either of them the temperature defaults to 1
    (None: 0 without them). Prefix characters the model cannot read are warned about.
    """
    if length < 0:
        raise ValueError(f"expected length >= 0, got {length}")
    filtered = top_k is not None or top_p is not None
    if temperature is None:
        temperature = 1.0 if filtered else 0.0
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise ValueError(f"expected temperature >= 0 and finite (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"expected top_k >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"expected top_p in (0, 1], got {top_p}")
    if filtered and temperature == 0:
        raise ValueError("expected temperature > 0 with top_k or top_p (they choose among "
                         "the tokens to sample), got 0 (greedy)")
    tokens = model.prefix_tokens(prefix)
    dropped = dropped_letters(prefix, model.normalization)
    if dropped:
        warnings.warn(
            f"prefix letters the model's d2l normalisation drops (it reads only A-Z): "
            f"{sum(dropped.values())} ({', '.join(map(repr, dropped))})", stacklevel=2)
    if not tokens:
        raise ValueError(f"expected a prefix with at least one token, got {prefix!r}")
    unknown = model.vocab.unknown(tokens)
    if unknown:
        count = sum(t not in model.vocab.token_to_idx for t in tokens)
        warnings.warn(
            f"prefix tokens not in the vocabulary, read as <unk>: {count} of {len(tokens)} "
            f"({', '.join(map(repr, unknown))})", stacklevel=2)
    eng = get_engine(engine, model.spec, device=device)
    params = eng.from_numpy(model.params)
    rng = np.random.default_rng(seed)

    # warm-up: the whole prefix in one call; the logits of its last token predict the next
    ids = model.vocab.encode(tokens)
    logits, state = eng.forward(params, ids[None, :], eng.begin_state(1))  # (1, T, V)
    row = as_numpy(logits)[0, -1]
    out = list(tokens)
    nxt = np.empty((1, 1), dtype=np.int64)
    for _ in range(length):
        nxt[0, 0] = _choose(row, temperature, top_k, top_p, rng)
        out.append(model.vocab.idx_to_token[nxt[0, 0]])
        logits, state = eng.forward(params, nxt, state)
        row = as_numpy(logits)[0, -1]
    return model.join(out)
