"""Minibatches for truncated BPTT: the book's sequential and random partitioning (NumPy only)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from bptt.data.errors import DataError

PARTITIONS = ("sequential", "random")

Batch = tuple[np.ndarray, np.ndarray]


def _check_sizes(batch_size: int, num_steps: int) -> None:
    for name, value in (("batch size", batch_size), ("number of steps", num_steps)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise DataError(f"expected a positive integer {name}, got {value!r}")


def _check_partition(partition: str) -> None:
    if partition not in PARTITIONS:
        raise DataError(f"expected a partition in {PARTITIONS}, got {partition!r}")


def check_batchable(n_tokens: int, batch_size: int, num_steps: int) -> None:
    """Raise DataError unless every epoch of either scheme yields at least one batch."""
    _check_sizes(batch_size, num_steps)
    needed = batch_size * num_steps + num_steps + 1
    if n_tokens < needed:
        raise DataError(
            f"expected at least B*T+T+1 = {needed} tokens for batch size {batch_size} and "
            f"{num_steps} steps, got {n_tokens} tokens; lower --batch-size or --num-steps"
        )


def num_batches(n_tokens: int, batch_size: int, num_steps: int, partition: str) -> int:
    """Fewest batches an epoch can yield (the minimum over the random offsets)."""
    _check_sizes(batch_size, num_steps)
    _check_partition(partition)
    if partition == "sequential":  # worst offset: num_steps
        count = (n_tokens - num_steps - 1) // batch_size // num_steps
    else:  # worst offset: num_steps - 1
        count = (n_tokens - num_steps) // num_steps // batch_size
    return max(count, 0)


def _as_ids(corpus: np.ndarray) -> np.ndarray:
    ids = np.asarray(corpus)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise DataError(f"expected a 1-D integer token array, got {ids.ndim}-D {ids.dtype}")
    return ids.astype(np.int64, copy=False)


def sequential_batches(
    corpus: np.ndarray, batch_size: int, num_steps: int, rng: np.random.Generator
) -> Iterator[Batch]:
    """Sequential partitioning: row b of consecutive batches continues the same stretch of text.

    Yields ``(X, Y)`` int64 arrays of shape ``(batch_size, num_steps)``, ``Y`` = ``X`` shifted
    one token ahead. The start offset is drawn from 0..num_steps inclusive, as in the book.
    """
    ids = _as_ids(corpus)
    check_batchable(len(ids), batch_size, num_steps)
    offset = int(rng.integers(0, num_steps + 1))
    num_tokens = (len(ids) - offset - 1) // batch_size * batch_size
    xs = ids[offset : offset + num_tokens].reshape(batch_size, -1)
    ys = ids[offset + 1 : offset + 1 + num_tokens].reshape(batch_size, -1)
    count = xs.shape[1] // num_steps
    return _sequential(xs, ys, num_steps, count)


def _sequential(xs: np.ndarray, ys: np.ndarray, num_steps: int, count: int) -> Iterator[Batch]:
    for i in range(0, count * num_steps, num_steps):
        yield xs[:, i : i + num_steps].copy(), ys[:, i : i + num_steps].copy()


def random_batches(
    corpus: np.ndarray, batch_size: int, num_steps: int, rng: np.random.Generator
) -> Iterator[Batch]:
    """Random sampling: non-overlapping subsequences in shuffled order, independent per batch.

    A random prefix of 0..num_steps-1 tokens is dropped, the rest is cut into subsequences of
    ``num_steps`` tokens, and each batch gathers ``batch_size`` of them in one indexing step.
    """
    ids = _as_ids(corpus)
    check_batchable(len(ids), batch_size, num_steps)
    offset = int(rng.integers(0, num_steps))
    num_subseqs = (len(ids) - offset - 1) // num_steps
    starts = offset + rng.permutation(num_subseqs) * num_steps
    count = num_subseqs // batch_size
    return _random(ids, starts[: count * batch_size].reshape(count, batch_size), num_steps)


def _random(ids: np.ndarray, starts: np.ndarray, num_steps: int) -> Iterator[Batch]:
    steps = np.arange(num_steps)
    for batch_starts in starts:
        index = batch_starts[:, None] + steps
        yield ids[index], ids[index + 1]


def batches(
    corpus: np.ndarray,
    batch_size: int,
    num_steps: int,
    partition: str,
    rng: np.random.Generator,
) -> Iterator[Batch]:
    """One epoch of ``(X, Y)`` batches with the named partition scheme."""
    _check_partition(partition)
    make = sequential_batches if partition == "sequential" else random_batches
    return make(corpus, batch_size, num_steps, rng)


def split_point(n_tokens: int, val_frac: float) -> int:
    """Where :func:`split_tokens` cuts ``n_tokens`` tokens: before the last ``val_frac``."""
    if not 0.0 <= val_frac <= 0.5:
        raise DataError(f"expected a validation fraction in [0, 0.5], got {val_frac}")
    return n_tokens - int(n_tokens * val_frac)


def split_tokens(corpus: np.ndarray, val_frac: float) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous split: the first tokens for training, the last ``val_frac`` for validation."""
    cut = split_point(len(corpus), val_frac)
    return corpus[:cut], corpus[cut:]
