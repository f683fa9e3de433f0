"""Data pipeline: corpora, text normalisation and tokenisation, vocabulary, minibatches."""

from bptt.data.batches import (
    PARTITIONS,
    batches,
    check_batchable,
    num_batches,
    random_batches,
    sequential_batches,
    split_tokens,
)
from bptt.data.corpora import CORPORA, Corpus, data_dir, fetch, read_text, resolve, sha1_of
from bptt.data.errors import DataError
from bptt.data.text import (
    AUTO,
    NORMALIZATIONS,
    TOKENIZATIONS,
    Vocab,
    dropped_letters,
    load_corpus,
    normalize,
    resolve_normalization,
    tokenize,
)

__all__ = [
    "AUTO",
    "CORPORA",
    "NORMALIZATIONS",
    "PARTITIONS",
    "TOKENIZATIONS",
    "Corpus",
    "DataError",
    "Vocab",
    "batches",
    "check_batchable",
    "data_dir",
    "dropped_letters",
    "fetch",
    "load_corpus",
    "normalize",
    "num_batches",
    "random_batches",
    "read_text",
    "resolve",
    "resolve_normalization",
    "sequential_batches",
    "sha1_of",
    "split_tokens",
    "tokenize",
]
