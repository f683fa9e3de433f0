"""benchmarks/kernel_choice.py, its smallest configuration at tiny sizes (no timings checked):
the subjects run under each thread count, a missing one is skipped in one line, and each
subject's weight gradients equal the compiled kernel's. (The Inductor subjects are the autograd
subject's loop under torch.compile, left out here for its compile time; tests/test_nn_compile.py
compiles with Inductor.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bptt.engine import kernel

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "kernel_choice.py"


def test_kernel_choice_tiny(tmp_path):
    out = tmp_path / "choice.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--cells", "gru", "--hidden", "8", "--layers", "1",
         "--threads", "1,2", "--batch", "2", "--steps-t", "3", "--repeats", "2", "--steps", "1",
         "--subjects", "kernel,autograd,numba,torch.nn", "--json", str(out)],
        capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "skipping numba: no --numba-site given" in done.stderr
    assert "torch.nn" in done.stdout and "first-call" in done.stdout
    with_kernel = kernel.enabled()                      # BPTT_KERNEL=0: skipped in one line
    assert with_kernel or "skipping kernel: the compiled kernel is off" in done.stderr
    runs = json.loads(out.read_text())["runs"]
    assert [r["threads"] for r in runs] == [1, 2]
    subjects = {"autograd", "torch.nn"} | ({"kernel"} if with_kernel else set())
    for row in (row for r in runs for row in r["rows"]):
        assert set(row["ratio"]) == subjects
        assert row["ratio"]["torch.nn"] == 1.0
        assert all(v < 1e-5 for v in row["max_grad_err"].values()), row["max_grad_err"]
