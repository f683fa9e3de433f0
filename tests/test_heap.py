"""bptt.engine.heap: the C allocator keeps a step's freed large arrays for the next step."""

from __future__ import annotations

import platform
import resource
import sys

import numpy as np
import pytest

from bptt.engine import heap

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="the thresholds are glibc's")
def test_freed_blocks_are_reused_not_faulted_in_again():
    """After keep_freed_memory, four 12 MiB blocks freed together and made again are the same
    memory: the second round of writes takes (almost) no page faults. Without it glibc trims the
    48 MiB freed at its heap's top and the next round faults every page in again (~2,500)."""
    assert heap.keep_freed_memory() and heap.keep_freed_memory()   # once, then remembered

    def faults_of_one_round() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(3):
            arrays = [np.empty(3 << 20, dtype=np.float32) for _ in range(4)]
            for a in arrays:
                a.fill(1.0)
            del arrays
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    faults_of_one_round()
    assert faults_of_one_round() < 300


def test_the_environment_turns_it_off(monkeypatch):
    monkeypatch.setenv("BPTT_KEEP_FREED_MEMORY", "0")
    assert heap._set_thresholds() is False
