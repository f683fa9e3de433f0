"""Text normalisation, tokenisation, the vocabulary, and corpus loading."""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bptt.data.corpora import read_text
from bptt.data.errors import DataError

NORMALIZATIONS = ("d2l", "none")
AUTO = "auto"               # d2l for a registered corpus (the book's), none for a user's file
TOKENIZATIONS = ("char", "word")
UNK = "<unk>"
_VOCAB_FORMAT = "bptt.vocab"
_VOCAB_VERSION = 1
_NON_LETTERS = re.compile(r"[^A-Za-z]+")


def normalize(text: str, mode: str) -> str:
    """Normalise ``text``.

    ``"d2l"``: the book's rule per line: each run of characters outside A-Z/a-z becomes one
    space, the line is stripped and lower-cased. Non-empty lines are joined with one space
    (the book joins them with nothing, gluing words across line breaks, e.g. "himwas").
    ``"none"``: the text unchanged.
    """
    if mode == "none":
        return text
    if mode == "d2l":
        lines = (_NON_LETTERS.sub(" ", line).strip().lower() for line in text.split("\n"))
        return " ".join(line for line in lines if line)
    raise DataError(f"expected a normalisation in {NORMALIZATIONS}, got {mode!r}")


def resolve_normalization(mode: str, data: str) -> str:
    """``auto`` made concrete for ``--data``: ``d2l`` for a registered corpus (the book's
    rule for the book's text), ``none`` for a user's own file (its text kept as it is)."""
    from bptt.data.corpora import CORPORA

    if mode != AUTO:
        return mode
    return "d2l" if data in CORPORA else "none"


def dropped_letters(text: str, mode: str) -> Counter:
    """The letters ``normalize(text, mode)`` removes: under ``d2l`` every letter outside A-Z
    and a-z (Chinese, accented, Cyrillic, ...), counted; nothing under ``none``."""
    if mode != "d2l":
        return Counter()
    return Counter(ch for run in _NON_LETTERS.findall(text) for ch in run if ch.isalpha())


def _examples(items, shown: int = 5) -> str:
    items = list(items)
    return ", ".join(repr(t) for t in items[:shown]) + (", ..." if len(items) > shown else "")


def tokenize(text: str, mode: str) -> list[str]:
    """Split ``text`` into tokens: ``"char"`` (one per character, so one per Chinese
    character) or ``"word"`` (whitespace-separated words)."""
    if mode == "char":
        return list(text)
    if mode == "word":
        return text.split()
    raise DataError(f"expected a tokenisation in {TOKENIZATIONS}, got {mode!r}")


class Vocab:
    """Token <-> index map. Index 0 is ``<unk>``, then the reserved tokens, then tokens by
    descending frequency, ties broken by first appearance (as in the book)."""

    idx_to_token: list[str]
    token_to_idx: dict[str, int]

    def __init__(
        self, tokens: Sequence[str], min_freq: int = 0, reserved: Sequence[str] = ()
    ) -> None:
        if min_freq < 0:
            raise DataError(f"expected min_freq >= 0, got {min_freq}")
        counts = Counter(tokens)  # keeps first-appearance order; the sort below is stable
        by_freq = sorted(counts.items(), key=lambda item: -item[1])
        frequent = [token for token, count in by_freq if count >= min_freq]
        self._set_tokens([UNK, *reserved], what="reserved tokens")
        self._set_tokens(self.idx_to_token + [t for t in frequent if t not in self.token_to_idx])

    def _set_tokens(self, idx_to_token: list[str], what: str = "tokens") -> None:
        token_to_idx = {token: i for i, token in enumerate(idx_to_token)}
        if len(token_to_idx) != len(idx_to_token):
            raise DataError(f"expected distinct {what} after {UNK!r}, got {idx_to_token[1:]!r}")
        self.idx_to_token = idx_to_token
        self.token_to_idx = token_to_idx

    def __len__(self) -> int:
        return len(self.idx_to_token)

    def __getitem__(self, token: str) -> int:
        return self.token_to_idx.get(token, 0)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocab):
            return NotImplemented
        return self.idx_to_token == other.idx_to_token

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        head = ", ".join(repr(t) for t in self.idx_to_token[:8])
        more = ", ..." if len(self) > 8 else ""
        return f"Vocab({len(self)} tokens: {head}{more})"

    def encode(self, tokens: Iterable[str]) -> np.ndarray:
        """Indices of ``tokens`` as int64; unknown tokens map to 0."""
        lookup = self.token_to_idx
        return np.fromiter((lookup.get(t, 0) for t in tokens), dtype=np.int64)

    def decode(self, ids: Iterable[int] | np.ndarray) -> list[str]:
        """Tokens of the indices ``ids``."""
        flat = np.asarray(ids, dtype=np.int64).reshape(-1)
        bad = flat[(flat < 0) | (flat >= len(self))]
        if bad.size:
            raise DataError(f"expected token ids in [0, {len(self)}), got {int(bad[0])}")
        return [self.idx_to_token[i] for i in flat.tolist()]

    def unknown(self, tokens: Iterable[str]) -> list[str]:
        """Distinct tokens missing from the vocabulary, in order of first appearance."""
        return [t for t in dict.fromkeys(tokens) if t not in self.token_to_idx]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form; inverse of :meth:`from_dict`."""
        return {
            "format": _VOCAB_FORMAT,
            "version": _VOCAB_VERSION,
            "idx_to_token": list(self.idx_to_token),
        }

    @classmethod
    def from_dict(cls, d: Any) -> Vocab:
        """Rebuild a vocabulary from :meth:`to_dict` output, validating it."""
        if not isinstance(d, dict):
            raise DataError(f"expected a vocabulary dict, got {type(d).__name__}")
        if d.get("format") != _VOCAB_FORMAT or d.get("version") != _VOCAB_VERSION:
            raise DataError(
                f"expected format {_VOCAB_FORMAT!r} version {_VOCAB_VERSION}, "
                f"got format {d.get('format')!r} version {d.get('version')!r}"
            )
        tokens = d.get("idx_to_token")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise DataError(f"expected 'idx_to_token' to be a list of strings, got {tokens!r:.80}")
        if not tokens or tokens[0] != UNK:
            raise DataError(f"expected 'idx_to_token' to start with {UNK!r}, got {tokens[:1]!r}")
        vocab = cls.__new__(cls)
        vocab._set_tokens(list(tokens))
        return vocab


def load_corpus(
    path: Path,
    normalization: str = "d2l",
    tokenization: str = "char",
    max_tokens: int | None = None,
    vocab: Vocab | None = None,
    min_freq: int = 0,
) -> tuple[np.ndarray, Vocab]:
    """Read, normalise and tokenise a text file; return its token ids and the vocabulary.

    The vocabulary is built from all tokens (unless ``vocab`` is given); then only the first
    ``max_tokens`` ids are kept, as the book does.
    """
    for mode, modes in ((normalization, NORMALIZATIONS), (tokenization, TOKENIZATIONS)):
        if mode not in modes:
            raise DataError(f"expected one of {modes}, got {mode!r}")
    if max_tokens is not None and max_tokens < 2:
        raise DataError(f"expected max_tokens >= 2 (or no limit), got {max_tokens}")
    text = read_text(path)
    tokens = tokenize(normalize(text, normalization), tokenization)
    dropped = dropped_letters(text, normalization)
    if len(tokens) < 2:
        why = ""
        if normalization == "d2l":
            why = (" (d2l keeps only the letters A-Z and a-z"
                   + (f", and dropped {sum(dropped.values()):,} others such as "
                      f"{_examples(dropped)}" if dropped else "")
                   + "; --normalization none keeps the text as it is)")
        raise DataError(
            f"expected at least 2 tokens (an input and its target), got {len(tokens)} "
            f"after {normalization} normalisation of {path}{why}"
        )
    if dropped:
        warnings.warn(f"d2l normalisation dropped {sum(dropped.values()):,} letters outside "
                      f"A-Z of {path} (such as {_examples(dropped)}); --normalization none "
                      f"keeps the text as it is", stacklevel=2)
    built = vocab is None
    if built:
        vocab = Vocab(tokens, min_freq=min_freq)
    ids = vocab.encode(tokens)
    kept = ids if max_tokens is None else ids[:max_tokens]
    unknown = int(np.count_nonzero(kept == 0))
    if built and len(vocab) == 1:
        top = Counter(tokens).most_common(1)[0]
        raise DataError(f"expected a vocabulary of tokens besides {UNK}, got none: every token "
                        f"of {path} occurs fewer than --min-freq {min_freq} times (the most "
                        f"frequent, {top[0]!r}, {top[1]:,}); lower --min-freq")
    if unknown and (not built or 2 * unknown > kept.size):
        where = "not in the vocabulary" if not built else f"rarer than --min-freq {min_freq}"
        missing = vocab.unknown(tokens if max_tokens is None else tokens[:max_tokens])
        warnings.warn(f"{unknown:,} of {kept.size:,} tokens of {path} ({unknown / kept.size:.1%})"
                      f" are {where} and read as {UNK} (such as {_examples(missing)})",
                      stacklevel=2)
    return kept, vocab
