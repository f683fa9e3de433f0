"""Threads: one number for every pool (the compiled kernel's, OpenBLAS's, torch's), its default
(the cores other work leaves idle), and ``--threads`` of ``bptt train`` (``bptt bench
--threads`` is in test_bench's run)."""

from __future__ import annotations

import os

import pytest
import torch

from bptt import checkpoint as ck
from bptt.engine import threads
from conftest import subprocess_env

pytestmark = pytest.mark.usefixtures("no_network")

TINY = ("--hidden-size", "16", "--batch-size", "4", "--num-steps", "10", "--epochs", "2",
        "--optimizer", "adam", "--lr", "0.02", "--sample-every", "0", "--progress", "log")


@pytest.fixture
def restore_threads(monkeypatch):
    """The process's threads and pools as they were, after the test."""
    for var in threads.child_environment(1):
        monkeypatch.setenv(var, os.environ.get(var, ""))
    before = (threads.threads(), torch.get_num_threads())
    yield
    threads.set_threads(before[0])
    torch.set_num_threads(before[1])


def test_set_threads_sets_every_pool_and_the_children(restore_threads):
    for n in (2, 1):
        assert threads.set_threads(n) == n
        assert threads.threads() == n and torch.get_num_threads() == n
        env = threads.child_environment(n)
        assert {k: os.environ[k] for k in env} == env
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"                # children wait passively
    for bad in (0, -1, True, 1.5, "2"):
        with pytest.raises(ValueError, match="expected threads a positive integer"):
            threads.set_threads(bad)


def test_the_default_is_the_idle_cores_shared_among_local_ranks(monkeypatch):
    monkeypatch.setattr(threads, "cores", lambda: 8)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 16)
    for var in ("BPTT_THREADS", "OMP_NUM_THREADS", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (6.2, 0.0, 0.0))
    assert threads.default_threads() == 5                     # our 8 of 16 cores: 3 busy
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (40.0, 0.0, 0.0))
    assert threads.default_threads() == 1                     # all busy: one, never zero
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    assert threads.default_threads() == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")               # torchrun, 3 ranks here
    assert threads.default_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert threads.default_threads() == 5
    monkeypatch.setenv("BPTT_THREADS", "4")                   # ours first
    assert threads.default_threads() == 4


def test_train_threads_flag_is_kept_and_checked(tmp_path, hello_corpus, cli, restore_threads):
    run = tmp_path / "run"
    ran = cli("train", "--data", hello_corpus, "--out", run, *TINY, "--threads", "1")
    assert ran.rc == 0, ran.err
    assert ck.load(run).config["threads"] == 1 and threads.threads() == 1
    ran = cli("train", "--resume", "--out", run, "--epochs", "3", "--threads", "2")
    assert ran.rc == 0 and "ignored" not in ran.err, ran.err   # a resume may change it
    assert ck.load(run, "last").config["threads"] == 2 and torch.get_num_threads() == 2
    bad = cli("train", "--data", hello_corpus, "--out", tmp_path / "r2", *TINY, "--threads", "0")
    assert bad.rc == 2 and bad.err_lines == [
        "bptt train: error: expected threads >= 1 (or none: the cores this process may run on)"
        ", got 0"], bad.err
    assert not (tmp_path / "r2").exists()
    assert subprocess_env()["OMP_NUM_THREADS"]                # children get a number
