"""Text normalisation, tokenisation, the vocabulary, and corpus loading."""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bptt.data.batches import split_point
from bptt.data.corpora import lines_of, read_text, select_lines
from bptt.data.errors import DataError

NORMALIZATIONS = ("d2l", "none")
AUTO = "auto"               # d2l for a registered corpus (the book's), none for a user's file
TOKENIZATIONS = ("char", "word")
UNK = "<unk>"
EOS = "<eos>"               # word tokenisation: the end of every line
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
    from bptt.data.corpora import corpus_name

    if mode != AUTO:
        return mode
    return "d2l" if corpus_name(data) is not None else "none"


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


def text_tokens(text: str, normalization: str, tokenization: str,
                eos: bool = False) -> list[str]:
    """Normalise and tokenise ``text``.

    Word tokenisation with ``eos``: line by line, each line normalised on its own, its words
    followed by ``<eos>`` -- every line end is one, blank lines included, as the usual word
    corpora (one sentence per line) are counted. Otherwise ``tokenize(normalize(text))``: the
    characters, or the words without line ends.
    """
    if not (eos and tokenization == "word"):
        return tokenize(normalize(text, normalization), tokenization)
    tokens: list[str] = []
    for line in lines_of(text):
        tokens += normalize(line, normalization).split()
        tokens.append(EOS)
    return tokens


class Vocab:
    """Token <-> index map. Index 0 is ``<unk>``, then the reserved tokens, then tokens by
    descending frequency, ties broken by first appearance (as in the book)."""

    idx_to_token: list[str]
    token_to_idx: dict[str, int]

    def __init__(
        self, tokens: Sequence[str], min_freq: int = 0, reserved: Sequence[str] = (),
        max_size: int | None = None,
    ) -> None:
        """``max_size``: at most this many entries, ``<unk>`` and ``reserved`` included (the
        most frequent tokens are kept; the rest read as ``<unk>``)."""
        if min_freq < 0:
            raise DataError(f"expected min_freq >= 0, got {min_freq}")
        counts = Counter(tokens)  # keeps first-appearance order; the sort below is stable
        by_freq = sorted(counts.items(), key=lambda item: -item[1])
        frequent = [token for token, count in by_freq if count >= min_freq]
        self._set_tokens([UNK, *reserved], what="reserved tokens")
        rest = [t for t in frequent if t not in self.token_to_idx]
        if max_size is not None:
            if max_size < len(self):
                raise DataError(f"expected a vocabulary size of at least {len(self)} ({UNK} "
                                f"and the reserved tokens), got {max_size}")
            rest = rest[:max_size - len(self)]
        self._set_tokens(self.idx_to_token + rest)

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
    *,
    eos: bool = False,
    max_vocab: int | None = None,
    lines: tuple[float, float] | None = None,
    held_out: float = 0.0,
) -> tuple[np.ndarray, Vocab]:
    """Read, normalise and tokenise a text file; return its token ids and the vocabulary.

    ``lines`` (fractions, :data:`bptt.data.corpora.SPLITS`) reads only those lines of the
    file; ``eos`` ends every line with ``<eos>`` under word tokenisation (:func:`text_tokens`).
    The vocabulary (unless ``vocab`` is given) is built from every token for character
    tokenisation, as the book does, and then only the first ``max_tokens`` ids are kept; for
    word tokenisation from the first ``max_tokens`` tokens without their last ``held_out``
    fraction (the validation tokens a caller splits off with the same cut,
    :func:`bptt.data.batches.split_tokens`), so a word seen only there reads as ``<unk>``.
    Tokens rarer than ``min_freq`` and those past the ``max_vocab`` most frequent (``<unk>``
    and ``<eos>`` included in the count) read as ``<unk>``.
    """
    for mode, modes in ((normalization, NORMALIZATIONS), (tokenization, TOKENIZATIONS)):
        if mode not in modes:
            raise DataError(f"expected one of {modes}, got {mode!r}")
    if max_tokens is not None and max_tokens < 2:
        raise DataError(f"expected max_tokens >= 2 (or no limit), got {max_tokens}")
    text = select_lines(read_text(path), lines)
    tokens = text_tokens(text, normalization, tokenization, eos)
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
        vocab = _build_vocab(tokens, tokenization, max_tokens, held_out, min_freq, max_vocab,
                             eos)
    ids = vocab.encode(tokens)
    kept = ids if max_tokens is None else ids[:max_tokens]
    unknown = int(np.count_nonzero(kept == 0))
    if built and all(t in (UNK, EOS) for t in vocab.idx_to_token):
        raise DataError(_no_vocabulary(tokens, path, min_freq, max_vocab))
    if unknown and (not built or 2 * unknown > kept.size):
        where = "not in the vocabulary" if not built else f"rarer than --min-freq {min_freq}"
        missing = vocab.unknown(tokens if max_tokens is None else tokens[:max_tokens])
        warnings.warn(f"{unknown:,} of {kept.size:,} tokens of {path} ({unknown / kept.size:.1%})"
                      f" are {where} and read as {UNK} (such as {_examples(missing)})",
                      stacklevel=2)
    return kept, vocab


def _no_vocabulary(tokens: list[str], path: Path, min_freq: int, max_vocab: int | None) -> str:
    """Why a vocabulary holds no token besides <unk> (and <eos>)."""
    head = f"expected a vocabulary of tokens besides {UNK}"
    words = Counter(t for t in tokens if t not in (UNK, EOS)).most_common(1)
    if not words:
        return f"{head}, got none: {path} has no tokens but line ends"
    if max_vocab is not None and max_vocab <= (2 if EOS in tokens else 1):
        return f"{head} and {EOS}, got none: --max-vocab {max_vocab} leaves no room; raise it"
    (top, count), = words
    return (f"{head}, got none: every token of {path} occurs fewer than --min-freq {min_freq} "
            f"times (the most frequent, {top!r}, {count:,}); lower --min-freq")


def _build_vocab(tokens: list[str], tokenization: str, max_tokens: int | None, held_out: float,
                 min_freq: int, max_vocab: int | None, eos: bool) -> Vocab:
    """The vocabulary of :func:`load_corpus`: every character (the book's), or the words of
    the training tokens alone, ``<eos>`` reserved."""
    if tokenization == "word":
        kept = tokens if max_tokens is None else tokens[:max_tokens]
        tokens = kept[:split_point(len(kept), held_out)]
    reserved = (EOS,) if eos and tokenization == "word" else ()
    return Vocab(tokens, min_freq=min_freq, reserved=reserved, max_size=max_vocab)
