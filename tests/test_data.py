"""Tests for bptt.data: corpora cache, text handling, vocabulary and minibatches.

No test touches the network: downloads go through a monkeypatched ``_download``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bptt.data import (
    CORPORA,
    NORMALIZATIONS,
    PARTITIONS,
    TOKENIZATIONS,
    Corpus,
    DataError,
    Vocab,
    batches,
    check_batchable,
    corpora,
    data_dir,
    fetch,
    load_corpus,
    normalize,
    num_batches,
    random_batches,
    read_text,
    resolve,
    sequential_batches,
    sha1_of,
    split_tokens,
    tokenize,
)

BOOK_VOCAB = ['<unk>', ' ', 'e', 't', 'a', 'i', 'n', 'o', 's', 'h', 'r', 'd', 'l', 'm',
              'u', 'c', 'f', 'w', 'g', 'y', 'p', 'b', 'v', 'k', 'x', 'z', 'j', 'q']
TINY_BYTES = b"a tiny corpus\n"
TINY_SHA1 = hashlib.sha1(TINY_BYTES).hexdigest()
FAST = settings(max_examples=50, deadline=None)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any test that tries to open a non-file URL."""
    real_urlopen = urllib.request.urlopen

    def guarded(url: str, *args: object, **kwargs: object) -> object:
        if not str(url).startswith("file:"):
            raise AssertionError(f"test tried to reach the network: {url}")
        return real_urlopen(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", guarded)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty BPTT_DATA_DIR with a registered 'tiny' corpus."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("BPTT_DATA_DIR", str(folder))
    monkeypatch.setitem(CORPORA, "tiny", Corpus("tiny", "http://example.invalid/tiny.txt",
                                                 TINY_SHA1, "tiny.txt"))
    return folder


@pytest.fixture
def timemachine() -> Path:
    folder = os.environ.get("BPTT_DATA_DIR", "")
    path = Path(folder) / "timemachine.txt"
    if not folder or not path.is_file():
        pytest.skip("BPTT_DATA_DIR is unset or holds no timemachine.txt")
    return path


def write(tmp_path: Path, data: bytes | str, name: str = "text.txt") -> Path:
    path = tmp_path / name
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    return path


# --- corpora: data_dir, sha1_of, fetch, resolve, read_text -----------------------------------


def test_data_dir_prefers_env_then_platform_cache(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BPTT_DATA_DIR", str(tmp_path / "explicit"))
    assert data_dir() == tmp_path / "explicit"
    monkeypatch.delenv("BPTT_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(sys, "platform", "linux")
    assert data_dir() == tmp_path / "xdg" / "bptt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data_dir() == tmp_path / ".cache" / "bptt"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert data_dir() == tmp_path / "Library" / "Caches" / "bptt"
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    assert data_dir() == tmp_path / "local" / "bptt"


def test_sha1_of(tmp_path: Path) -> None:
    assert sha1_of(write(tmp_path, TINY_BYTES)) == TINY_SHA1


def test_timemachine_is_registered() -> None:
    tm = CORPORA["timemachine"]
    assert tm.sha1 == "090b5e7e70c295757f55df93cb0a180b9691891a"
    assert tm.filename == "timemachine.txt"
    assert tm.url == "http://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt"


def fail_download(url: str, dest: Path) -> None:
    raise AssertionError("download should not be attempted")


def test_fetch_uses_verified_cached_file(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache.mkdir()
    write(cache, TINY_BYTES, "tiny.txt")
    monkeypatch.setattr(corpora, "_download", fail_download)
    assert fetch("tiny") == cache / "tiny.txt"


def test_fetch_rejects_cached_file_with_wrong_sha1(cache: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    cache.mkdir()
    bad = write(cache, b"tampered\n", "tiny.txt")
    monkeypatch.setattr(corpora, "_download", fail_download)
    with pytest.raises(DataError) as info:
        fetch("tiny")
    message = str(info.value)
    assert str(bad) in message and TINY_SHA1 in message
    assert hashlib.sha1(b"tampered\n").hexdigest() in message
    assert bad.read_bytes() == b"tampered\n"


def test_fetch_offline_says_where_to_put_the_file(cache: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, dest: Path) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(corpora, "_download", offline)
    with pytest.raises(DataError) as info:
        fetch("tiny")
    message = str(info.value)
    assert str(cache / "tiny.txt") in message and "--data" in message
    assert "\n" not in message
    assert list(cache.iterdir()) == []


def test_fetch_without_download_when_missing(cache: Path) -> None:
    with pytest.raises(DataError, match="--data") as info:
        fetch("tiny", download=False)
    assert str(cache / "tiny.txt") in str(info.value)


def test_fetch_downloads_to_temp_then_renames(cache: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Path] = []

    def fake(url: str, dest: Path) -> None:
        assert url == CORPORA["tiny"].url
        seen.append(Path(dest))
        Path(dest).write_bytes(TINY_BYTES)

    monkeypatch.setattr(corpora, "_download", fake)
    path = fetch("tiny")
    assert path == cache / "tiny.txt" and path.read_bytes() == TINY_BYTES
    assert seen[0].parent == cache and seen[0] != path
    assert sorted(cache.iterdir()) == [path]


def test_fetch_discards_download_with_wrong_sha1(cache: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpora, "_download", lambda url, dest: Path(dest).write_bytes(b"junk"))
    with pytest.raises(DataError) as info:
        fetch("tiny")
    assert TINY_SHA1 in str(info.value)
    assert hashlib.sha1(b"junk").hexdigest() in str(info.value)
    assert list(cache.iterdir()) == []


def test_download_copies_url_body(tmp_path: Path) -> None:
    source = write(tmp_path, TINY_BYTES, "source.txt")
    dest = tmp_path / "dest.txt"
    corpora._download(source.as_uri(), dest)
    assert dest.read_bytes() == TINY_BYTES


def test_fetch_unknown_name_lists_known(cache: Path) -> None:
    with pytest.raises(DataError, match="timemachine.*'nope'"):
        fetch("nope")


def test_resolve_name_path_and_missing(cache: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cache.mkdir()
    write(cache, TINY_BYTES, "tiny.txt")
    assert resolve("tiny") == cache / "tiny.txt"
    own = write(tmp_path, "hello")
    assert resolve(str(own)) == own
    monkeypatch.delitem(CORPORA, "tiny")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as info:
        resolve("xyz")
    assert str(info.value) == ("expected a corpus name (timemachine) or a path to a text file, "
                               "got 'xyz' (no such file)")
    with pytest.raises(DataError, match="not a regular file"):
        resolve(str(tmp_path))


def test_read_text_strict_utf8(tmp_path: Path) -> None:
    assert read_text(write(tmp_path, "时间机器\r\nline two\r")) == "时间机器\nline two\n"
    assert read_text(write(tmp_path, b"\xef\xbb\xbfhello")) == "hello"
    bad = write(tmp_path, b"abc\xffdef")
    with pytest.raises(DataError) as info:
        read_text(bad)
    assert str(info.value) == f"expected a UTF-8 text file, but {bad} has byte 0xff at offset 3"
    with pytest.raises(DataError, match="0xfe at offset 5"):
        read_text(write(tmp_path, b"\xef\xbb\xbfab\xfe"))


@pytest.mark.parametrize(("data", "why"), [(b"", "is empty"), (b" \n\t\r\n", "only whitespace")])
def test_read_text_rejects_empty(tmp_path: Path, data: bytes, why: str) -> None:
    with pytest.raises(DataError, match=why):
        read_text(write(tmp_path, data))


def test_read_text_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="readable text file"):
        read_text(tmp_path / "absent.txt")


# --- text: normalize, tokenize, Vocab, load_corpus --------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [
    ("The Time Machine, by H. G. Wells [1898]\n\n\n\n\nI\n", "the time machine by h g wells i"),
    ("to him\nwas", "to him was"),
    ("Don't  STOP!!", "don t stop"),
    ("  café naïve ", "caf na ve"),
    ("\n 123 \n\n", ""),
])
def test_normalize_d2l(raw: str, expected: str) -> None:
    assert normalize(raw, "d2l") == expected


def test_normalize_none_and_unknown() -> None:
    assert NORMALIZATIONS == ("d2l", "none") and TOKENIZATIONS == ("char", "word")
    assert normalize(" Keep\nAs Is! ", "none") == " Keep\nAs Is! "
    with pytest.raises(DataError, match="'upper'"):
        normalize("x", "upper")


def test_tokenize() -> None:
    assert tokenize("我爱时间机器。", "char") == ["我", "爱", "时", "间", "机", "器", "。"]
    assert tokenize("ab c", "char") == ["a", "b", " ", "c"]
    assert tokenize(" the  time\nmachine ", "word") == ["the", "time", "machine"]
    with pytest.raises(DataError):
        tokenize("x", "bpe")


def test_vocab_order_frequency_then_first_appearance() -> None:
    vocab = Vocab(list("cabab cd"), reserved=["<pad>"])
    assert vocab.idx_to_token == ["<unk>", "<pad>", "c", "a", "b", " ", "d"]
    assert len(vocab) == 7 and vocab["a"] == 3 and vocab.token_to_idx["d"] == 6


def test_vocab_unknown_tokens_and_min_freq() -> None:
    vocab = Vocab(list("aaabbc"), min_freq=2)
    assert vocab.idx_to_token == ["<unk>", "a", "b"]
    assert vocab["c"] == 0 and vocab["z"] == 0
    ids = vocab.encode(list("abcz"))
    assert ids.dtype == np.int64 and ids.tolist() == [1, 2, 0, 0]
    assert vocab.decode(ids) == ["a", "b", "<unk>", "<unk>"]
    assert vocab.unknown(list("zcazc")) == ["z", "c"]
    with pytest.raises(DataError, match=r"\[0, 3\), got 3"):
        vocab.decode([1, 3])
    with pytest.raises(DataError):
        Vocab(["a"], reserved=["<unk>"])


def test_vocab_round_trip_through_json() -> None:
    vocab = Vocab(tokenize("时间 machine 机器", "char"), reserved=["<bos>"])
    again = Vocab.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert again == vocab and again.token_to_idx == vocab.token_to_idx
    assert again != Vocab(list("xy")) and vocab != "not a vocab"


@pytest.mark.parametrize("bad", [
    ["<unk>"],
    {"format": "bptt.vocab", "version": 99, "idx_to_token": ["<unk>"]},
    {"format": "bptt.vocab", "version": 1},
    {"format": "bptt.vocab", "version": 1, "idx_to_token": []},
    {"format": "bptt.vocab", "version": 1, "idx_to_token": ["a", "<unk>"]},
    {"format": "bptt.vocab", "version": 1, "idx_to_token": ["<unk>", "a", "a"]},
    {"format": "bptt.vocab", "version": 1, "idx_to_token": ["<unk>", 3]},
])
def test_vocab_from_dict_rejects_malformed(bad: object) -> None:
    with pytest.raises(DataError):
        Vocab.from_dict(bad)


def test_load_corpus_chinese_one_token_per_character(tmp_path: Path) -> None:
    text = "时间旅行者正在向我们讲解一个深奥的问题。"
    ids, vocab = load_corpus(write(tmp_path, text), normalization="none")
    assert len(ids) == len(text) and vocab.decode(ids) == list(text)
    with pytest.raises(DataError, match="got 0 after d2l normalisation of"):
        load_corpus(write(tmp_path, text))


def test_load_corpus_vocab_from_all_tokens_then_truncate(tmp_path: Path) -> None:
    path = write(tmp_path, "Aa a a zz!")
    ids, vocab = load_corpus(path, max_tokens=3)
    assert vocab.idx_to_token == ["<unk>", "a", " ", "z"]
    assert ids.tolist() == [1, 1, 2]
    words, word_vocab = load_corpus(path, tokenization="word")
    assert word_vocab.decode(words) == ["aa", "a", "a", "zz"]
    given_ids, _ = load_corpus(path, vocab=Vocab(["a"]))
    assert given_ids.tolist() == [1, 1, 0, 1, 0, 1, 0, 0, 0]
    with pytest.raises(DataError):
        load_corpus(path, max_tokens=1)
    with pytest.raises(DataError):
        load_corpus(path, tokenization="bpe")


def test_timemachine_book_vocab_and_first_10000_tokens(timemachine: Path) -> None:
    full, vocab = load_corpus(timemachine)
    assert vocab.idx_to_token == BOOK_VOCAB and len(vocab) == 28
    ids, same = load_corpus(timemachine, max_tokens=10_000)
    assert same == vocab and len(ids) == 10_000
    assert np.array_equal(ids, full[:10_000])
    assert "".join(vocab.decode(ids[:30])) == "the time machine by h g wells "
    assert sha1_of(timemachine) == CORPORA["timemachine"].sha1


def test_timemachine_fetch_from_data_dir(timemachine: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpora, "_download", fail_download)
    assert fetch("timemachine", download=False) == timemachine


# --- batches ---------------------------------------------------------------------------------


class FixedOffset:
    """A Generator stand-in whose offset draw returns a chosen value."""

    def __init__(self, offset: int, seed: int = 0) -> None:
        self.offset = offset
        self.rng = np.random.default_rng(seed)

    def integers(self, low: int, high: int) -> int:
        assert low <= self.offset < high
        return self.offset

    def permutation(self, n: int) -> np.ndarray:
        return self.rng.permutation(n)


@st.composite
def batch_setup(draw: st.DrawFn) -> tuple[int, int, int, int]:
    batch_size = draw(st.integers(1, 6))
    num_steps = draw(st.integers(1, 8))
    n = batch_size * num_steps + num_steps + 1 + draw(st.integers(0, 150))
    return n, batch_size, num_steps, draw(st.integers(0, 2**32 - 1))


@FAST
@given(batch_setup(), st.sampled_from(PARTITIONS))
def test_targets_are_next_tokens(setup: tuple[int, int, int, int], partition: str) -> None:
    n, batch_size, num_steps, seed = setup
    corpus = np.random.default_rng(seed + 1).integers(0, 50, size=n).astype(np.int32)
    positions = np.arange(n)
    got = list(batches(corpus, batch_size, num_steps, partition, np.random.default_rng(seed)))
    pos = list(batches(positions, batch_size, num_steps, partition, np.random.default_rng(seed)))
    assert len(got) == len(pos) >= max(1, num_batches(n, batch_size, num_steps, partition))
    for (x, y), (px, py) in zip(got, pos, strict=True):
        assert x.shape == y.shape == (batch_size, num_steps)
        assert x.dtype == y.dtype == np.int64
        assert np.array_equal(py, px + 1)
        assert np.array_equal(x, corpus[px]) and np.array_equal(y, corpus[py])


@FAST
@given(batch_setup())
def test_sequential_rows_continue_across_batches(setup: tuple[int, int, int, int]) -> None:
    n, batch_size, num_steps, seed = setup
    rng = np.random.default_rng(seed)
    xs = [x for x, _ in sequential_batches(np.arange(n), batch_size, num_steps, rng)]
    offset = int(xs[0][0, 0])
    assert 0 <= offset <= num_steps
    assert len(xs) == (n - offset - 1) // batch_size // num_steps
    for x in xs:
        assert np.array_equal(np.diff(x, axis=1), np.ones((batch_size, num_steps - 1)))
    for before, after in zip(xs, xs[1:], strict=False):
        assert np.array_equal(after[:, 0], before[:, -1] + 1)
    row_len = (n - offset - 1) // batch_size
    assert np.array_equal(xs[0][:, 0], offset + row_len * np.arange(batch_size))


@FAST
@given(batch_setup())
def test_random_batches_never_overlap(setup: tuple[int, int, int, int]) -> None:
    n, batch_size, num_steps, seed = setup
    rng = np.random.default_rng(seed)
    xs = [x for x, _ in random_batches(np.arange(n), batch_size, num_steps, rng)]
    starts = np.concatenate([x[:, 0] for x in xs])
    offset = int(starts.min() % num_steps)
    num_subseqs = (n - offset - 1) // num_steps
    assert len(xs) == num_subseqs // batch_size
    assert len(np.unique(starts)) == len(starts) == len(xs) * batch_size
    assert np.all(starts % num_steps == offset)
    assert starts.max() + num_steps < n
    covered = np.concatenate([x.ravel() for x in xs])
    assert len(np.unique(covered)) == covered.size


@FAST
@given(st.integers(1, 6), st.integers(1, 8), st.integers(2, 5), st.integers(0, 2**32 - 1))
def test_random_batches_cover_usable_corpus(batch_size: int, num_steps: int, rounds: int,
                                            seed: int) -> None:
    # exactly rounds*B subsequences for every offset; rounds >= 2 meets check_batchable
    n = rounds * batch_size * num_steps + num_steps
    rng = np.random.default_rng(seed)
    xs = [x for x, _ in random_batches(np.arange(n), batch_size, num_steps, rng)]
    starts = np.sort(np.concatenate([x[:, 0] for x in xs]))
    offset = int(starts[0])
    assert 0 <= offset < num_steps
    assert np.array_equal(starts, offset + num_steps * np.arange(rounds * batch_size))
    covered = np.sort(np.concatenate([x.ravel() for x in xs]))
    assert np.array_equal(covered, np.arange(offset, offset + rounds * batch_size * num_steps))


@FAST
@given(batch_setup(), st.sampled_from(PARTITIONS))
def test_num_batches_is_minimum_over_offsets(setup: tuple[int, int, int, int],
                                             partition: str) -> None:
    n, batch_size, num_steps, seed = setup
    top = num_steps + 1 if partition == "sequential" else num_steps
    counts = [len(list(batches(np.arange(n), batch_size, num_steps, partition,
                               FixedOffset(offset, seed)))) for offset in range(top)]
    assert min(counts) == num_batches(n, batch_size, num_steps, partition) >= 1


@pytest.mark.parametrize("partition", PARTITIONS)
def test_same_seed_same_batches(partition: str) -> None:
    corpus = np.random.default_rng(7).integers(0, 28, size=2_000)

    def epoch(seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
        return list(batches(corpus, 4, 10, partition, np.random.default_rng(seed)))

    first, again, other = epoch(3), epoch(3), epoch(4)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
               for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other, strict=False))


def test_random_batches_are_shuffled() -> None:
    rng = np.random.default_rng(0)
    starts = np.concatenate([x[:, 0] for x, _ in random_batches(np.arange(2_000), 4, 10, rng)])
    assert not np.all(np.diff(starts) > 0)
    assert np.ptp(starts[:4]) > 40  # one batch draws from far-apart places


def test_check_batchable_messages() -> None:
    with pytest.raises(DataError) as info:
        check_batchable(300, 32, 35)
    assert str(info.value) == ("expected at least B*T+T+1 = 1156 tokens for batch size 32 and "
                               "35 steps, got 300 tokens; lower --batch-size or --num-steps")
    check_batchable(1156, 32, 35)
    with pytest.raises(DataError, match="1155 tokens"):
        check_batchable(1155, 32, 35)
    with pytest.raises(DataError, match="positive integer batch size"):
        check_batchable(10_000, 0, 35)
    assert num_batches(1155, 32, 35, "sequential") == 0
    assert num_batches(1156, 32, 35, "sequential") == num_batches(1156, 32, 35, "random") == 1


@pytest.mark.parametrize("make", [sequential_batches, random_batches])
def test_batch_functions_check_eagerly(make: Callable[..., object]) -> None:
    with pytest.raises(DataError, match="got 300 tokens"):
        make(np.arange(300), 32, 35, np.random.default_rng(0))
    with pytest.raises(DataError, match="1-D integer"):
        make(np.zeros(5_000), 2, 3, np.random.default_rng(0))


def test_unknown_partition() -> None:
    with pytest.raises(DataError, match="'shuffled'"):
        batches(np.arange(100), 2, 3, "shuffled", np.random.default_rng(0))
    with pytest.raises(DataError):
        num_batches(100, 2, 3, "shuffled")


def test_split_tokens() -> None:
    corpus = np.arange(1_000)
    train, val = split_tokens(corpus, 0.1)
    assert len(train) == 900 and len(val) == 100
    assert np.array_equal(np.concatenate([train, val]), corpus)
    train, val = split_tokens(corpus, 0.0)
    assert np.array_equal(train, corpus) and val.size == 0
    assert [len(part) for part in split_tokens(corpus, 0.5)] == [500, 500]
    for bad in (-0.1, 0.51, float("nan")):
        with pytest.raises(DataError, match=r"\[0, 0.5\]"):
            split_tokens(corpus, bad)
