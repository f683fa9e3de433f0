"""benchmarks/kernel_choice.py, its smallest configuration at tiny sizes (no timings checked):
every subject runs, a missing one is skipped in one line, and each subject's weight gradients
equal the compiled kernel's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "kernel_choice.py"


def test_kernel_choice_tiny(tmp_path):
    out = tmp_path / "choice.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--cells", "gru", "--hidden", "8", "--layers", "1",
         "--threads", "1", "--batch", "2", "--steps-t", "3", "--repeats", "2", "--steps", "1",
         "--subjects", "kernel,inductor,autograd,numba,torch.nn", "--json", str(out)],
        capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "skipping numba: no --numba-site given" in done.stderr
    assert "torch.nn" in done.stdout and "first-call" in done.stdout
    (run,) = json.loads(out.read_text())["runs"]
    assert run["threads"] == 1
    for row in run["rows"]:
        assert set(row["ratio"]) == {"kernel", "inductor", "autograd", "torch.nn"}
        assert row["ratio"]["torch.nn"] == 1.0
        assert all(v < 1e-5 for v in row["max_grad_err"].values()), row["max_grad_err"]
        assert row["first_call_s"]["inductor"] > 0
