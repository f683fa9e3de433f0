"""Shared fixtures: the Time Machine data folder, tiny corpora, tiny training configs, and
running the ``bptt`` command in-process or as a real subprocess.

No fixture touches the network: ``no_network`` makes any download fail at once, and
subprocesses get an unreachable HTTP proxy so that a stray download fails fast too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from bptt.lm.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
# Where the Time Machine lives when BPTT_DATA_DIR is unset (a shared checkout, this machine).
DEFAULT_DATA_DIRS = (REPO / "shared" / "data", Path("/work/shared/data"))
UNREACHABLE_PROXY = "http://127.0.0.1:9"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any attempt to open a non-file URL in this process."""
    real_urlopen = urllib.request.urlopen

    def guarded(url, *args, **kwargs):
        if not str(getattr(url, "full_url", url)).startswith("file:"):
            raise AssertionError(f"test tried to reach the network: {url}")
        return real_urlopen(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", guarded)


@pytest.fixture
def data_dir(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The folder holding timemachine.txt, exported as BPTT_DATA_DIR.

    BPTT_DATA_DIR (CI sets it) wins; when it is unset the usual shared folders are tried, and
    the test is skipped only when none holds the file.
    """
    explicit = os.environ.get("BPTT_DATA_DIR", "")
    if explicit:
        folder = Path(explicit)
    else:
        found = [d for d in DEFAULT_DATA_DIRS if (d / "timemachine.txt").is_file()]
        if not found:
            pytest.skip("BPTT_DATA_DIR is unset and no timemachine.txt was found")
        folder = found[0]
    monkeypatch.setenv("BPTT_DATA_DIR", str(folder))
    return folder


@pytest.fixture
def empty_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty BPTT_DATA_DIR: a registered corpus is missing (downloads are not allowed)."""
    folder = tmp_path / "data-cache"
    folder.mkdir()
    monkeypatch.setenv("BPTT_DATA_DIR", str(folder))
    return folder


@pytest.fixture
def make_corpus(tmp_path: Path) -> Callable[..., Path]:
    """Write a text (str: UTF-8) or raw bytes to a file in tmp_path and return its path."""
    folder = tmp_path / "corpora"
    folder.mkdir(exist_ok=True)

    def make(data: str | bytes, name: str = "corpus.txt") -> Path:
        path = folder / name
        path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        return path

    return make


HELLO = "hello world " * 50


@pytest.fixture
def hello_corpus(make_corpus) -> Path:
    """600 characters of "hello world ": learnable to perplexity ~1 in a second."""
    return make_corpus(HELLO, "hello.txt")


def tiny_config(data: str | Path, out: str | Path, **overrides) -> TrainConfig:
    """A small, fast, quiet configuration: H=16, batches of 4 x 10, Adam, 4 epochs, the book's
    d2l normalisation (which a user's file no longer gets by default)."""
    base = dict(data=str(data), out=str(out), hidden_size=16, batch_size=4, num_steps=10,
                epochs=4, optimizer="adam", lr=0.02, clip=1.0, sample_every=0,
                progress="log", seed=0, normalization="d2l")
    base.update(overrides)
    return TrainConfig(**base)


def quiet(_msg: str) -> None:
    """A ``log`` for train() that drops its progress lines."""


@pytest.fixture(scope="session")
def hello_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with hello.txt and run/: a tiny RNN trained on "hello world " to perplexity ~1
    (shared by the test modules, read-only)."""
    from bptt.lm.train import train

    folder = tmp_path_factory.mktemp("hello-run")
    corpus = folder / "hello.txt"
    corpus.write_text(HELLO, encoding="utf-8")
    train(tiny_config(corpus, folder / "run", hidden_size=32, epochs=20), log=quiet)
    return folder


@dataclass
class Ran:
    """What a ``bptt`` command left behind."""

    rc: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def run_cli(capsys: pytest.CaptureFixture, *argv: str | Path) -> tuple[int, str, str]:
    """Run ``bptt ARGS...`` in this process (``bptt.cli.main``): (exit code, stdout, stderr)."""
    from bptt.cli import main

    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse usage errors
        rc = e.code if isinstance(e.code, int) else 1
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.fixture
def cli(capsys: pytest.CaptureFixture) -> Callable[..., Ran]:
    """``run_cli`` as a fixture returning a :class:`Ran`."""
    return lambda *argv: Ran(*run_cli(capsys, *argv))


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for ``python -m bptt``: this interpreter's, downloads made to fail."""
    env = dict(os.environ)
    env.update(http_proxy=UNREACHABLE_PROXY, https_proxy=UNREACHABLE_PROXY,
               HTTP_PROXY=UNREACHABLE_PROXY, HTTPS_PROXY=UNREACHABLE_PROXY, no_proxy="",
               NO_PROXY="", PYTHONUNBUFFERED="1")
    # tiny matrices: BLAS threads only contend with each other (and with parallel test runs)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


def bptt_command(*argv: str | Path) -> list[str]:
    return [sys.executable, "-m", "bptt", *(str(a) for a in argv)]


@pytest.fixture
def cli_process() -> Callable[..., Ran]:
    """Run ``python -m bptt ARGS...`` as a real subprocess (environment from os.environ, so a
    monkeypatched BPTT_DATA_DIR carries over)."""

    def run(*argv: str | Path, timeout: float = 60.0, **env: str) -> Ran:
        done = subprocess.run(bptt_command(*argv), capture_output=True, text=True,
                              encoding="utf-8", timeout=timeout, env=subprocess_env(**env))
        return Ran(done.returncode, done.stdout, done.stderr)

    return run


class StopAfter:
    """A stand-in for train's Ctrl-C flag (``StopFlag``), raised after ``n`` looks.

    train looks once after every step and once at each epoch's end, so ``n`` counts those.
    """

    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    @property
    def stop(self) -> bool:
        self.n -= 1
        return self.n < 0
