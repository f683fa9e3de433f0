"""Registry of downloadable corpora, a SHA-1-verified cache, and strict text reading."""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bptt.data.errors import DataError

DOWNLOAD_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Corpus:
    """A registered corpus: where to download it and the SHA-1 it must have."""

    name: str
    url: str
    sha1: str
    filename: str


CORPORA: dict[str, Corpus] = {
    "timemachine": Corpus(
        "timemachine",
        "http://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt",
        "090b5e7e70c295757f55df93cb0a180b9691891a",
        "timemachine.txt",
    ),
}

SPLITS: dict[str, tuple[float, float]] = {
    "train": (0.0, 0.8), "valid": (0.8, 0.9), "test": (0.9, 1.0),
}
"""The parts of a registered corpus, ``NAME:PART`` (``timemachine:test``), as fractions of its
lines: the first 80% of the lines, the next 10%, the last 10% (line ``floor(f * n)`` starts a
part, n the file's lines). The book's corpus comes with no split of its own; cutting at line
boundaries keeps every line whole, so word corpora keep their line ends (``<eos>``)."""


def split_name(data: str) -> tuple[str, str | None]:
    """``"timemachine:test"`` -> ``("timemachine", "test")``; anything else (a corpus name, a
    file path, even one holding a colon) -> ``(data, None)``."""
    name, sep, part = data.rpartition(":")
    if sep and name in CORPORA and part in SPLITS:
        return name, part
    return data, None


def corpus_name(data: str | None) -> str | None:
    """The registered corpus ``data`` names (``timemachine``, ``timemachine:train``, ...), or
    None for a file path."""
    if data is None:
        return None
    name, _ = split_name(data)
    return name if name in CORPORA else None


def line_range(data: str) -> tuple[float, float] | None:
    """The fractions of the lines ``data`` reads: a part of :data:`SPLITS`, or None (all)."""
    _, part = split_name(data)
    return None if part is None else SPLITS[part]


def lines_of(text: str) -> list[str]:
    """The lines of ``text`` (split at newlines; the newline ending the last line ends it)."""
    rows = text.split("\n")
    if rows and rows[-1] == "":
        rows.pop()
    return rows


def select_lines(text: str, lines: tuple[float, float] | None) -> str:
    """The lines ``floor(lo * n)`` up to ``floor(hi * n)`` of ``text`` (n its lines), joined
    by newlines and ending with one; ``text`` itself for None."""
    if lines is None:
        return text
    rows = lines_of(text)
    lo, hi = lines
    n = len(rows)
    return "".join(row + "\n" for row in rows[int(lo * n):int(hi * n)])


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name, "")
    return Path(value).expanduser() if value else None


def data_dir() -> Path:
    """Folder holding downloaded corpora.

    ``$BPTT_DATA_DIR`` if set, else the user cache folder: ``%LOCALAPPDATA%\\bptt`` on
    Windows, ``~/Library/Caches/bptt`` on macOS, ``$XDG_CACHE_HOME/bptt`` or
    ``~/.cache/bptt`` elsewhere.
    """
    explicit = _env_path("BPTT_DATA_DIR")
    if explicit is not None:
        return explicit
    if sys.platform == "win32":
        base = _env_path("LOCALAPPDATA") or Path.home() / "AppData" / "Local"
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = _env_path("XDG_CACHE_HOME") or Path.home() / ".cache"
    return base / "bptt"


def sha1_of(path: Path) -> str:
    """Hex SHA-1 digest of a file's bytes."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, dest: Path) -> None:
    """Write the body of ``url`` to ``dest`` (replaced in tests; the only network access)."""
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
        with open(dest, "wb") as f:
            shutil.copyfileobj(response, f)


def _lookup(name: str) -> Corpus:
    try:
        return CORPORA[name]
    except KeyError:
        known = ", ".join(sorted(CORPORA))
        raise DataError(f"expected a registered corpus name ({known}), got {name!r}") from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _where_to_put_it(corpus: Corpus, path: Path) -> str:
    return (
        f"put the file at {path} (SHA-1 {corpus.sha1}, from {corpus.url}), "
        "or pass --data PATH with any UTF-8 text file"
    )


def _check_sha1(corpus: Corpus, path: Path) -> None:
    try:
        actual = sha1_of(path)
    except OSError as e:
        raise DataError(f"expected a readable file at {path} ({e.strerror or e})") from e
    if actual != corpus.sha1:
        raise DataError(
            f"expected {path} to have SHA-1 {corpus.sha1}, but it has SHA-1 {actual}; "
            "delete it to download it again, or pass --data PATH"
        )


def fetch(name: str, *, download: bool = True) -> Path:
    """Return the verified local path of the registered corpus ``name``.

    A cached file is used only when its SHA-1 matches. A missing file is downloaded (when
    ``download``) to a temporary file in the same folder, verified, then renamed into place.
    """
    corpus = _lookup(name)
    path = data_dir() / corpus.filename
    if path.is_file():
        _check_sha1(corpus, path)
        return path
    if not download:
        raise DataError(f"expected corpus {name!r} in the cache, but it is missing; "
                        + _where_to_put_it(corpus, path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{corpus.filename}.", suffix=".part",
                                        dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise DataError(f"expected a writable data folder, but cannot write to {path.parent} "
                        f"({e.strerror or e}); " + _where_to_put_it(corpus, path)) from e
    tmp = Path(tmp_name)
    try:
        try:
            _download(corpus.url, tmp)
        except (OSError, http.client.HTTPException) as e:
            raise DataError(f"expected to download {name!r} from {corpus.url}, but it failed "
                            f"({_one_line(e)}); " + _where_to_put_it(corpus, path)) from e
        actual = sha1_of(tmp)
        if actual != corpus.sha1:
            raise DataError(f"expected {corpus.url} to have SHA-1 {corpus.sha1}, but the "
                            f"download has SHA-1 {actual}; " + _where_to_put_it(corpus, path))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def resolve(data: str, *, download: bool = True) -> Path:
    """Turn ``--data`` into a file path: a registered corpus name (or a part of one,
    ``timemachine:test``: the corpus's file; :func:`line_range` says which lines), or a path
    to a text file."""
    name = corpus_name(data)
    if name is not None:
        return fetch(name, download=download)
    path = Path(data).expanduser()
    if path.is_file():
        return path
    known = ", ".join(sorted(CORPORA))
    why = "not a regular file" if path.exists() else "no such file"
    raise DataError(f"expected a corpus name ({known}) or a path to a text file, "
                    f"got {data!r} ({why})")


def read_text(path: Path) -> str:
    """Read a file as strict UTF-8: a leading BOM is dropped, CRLF/CR become LF.

    Raises DataError on unreadable, non-UTF-8, empty or whitespace-only files.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"expected a readable text file, got {path} ({e.strerror or e})") from e
    bom = b"\xef\xbb\xbf"
    start = len(bom) if raw.startswith(bom) else 0
    try:
        text = raw[start:].decode("utf-8")
    except UnicodeDecodeError as e:
        offset = start + e.start
        raise DataError(f"expected a UTF-8 text file, but {path} has byte "
                        f"0x{raw[offset]:02x} at offset {offset}") from None
    if not text.strip():
        what = "is empty" if not text else "contains only whitespace"
        raise DataError(f"expected a non-empty text file, but {path} {what}")
    return text.replace("\r\n", "\n").replace("\r", "\n")
