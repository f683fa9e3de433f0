"""Installing and running without torch: the NumPy engine and every verb that does not need
torch work with torch unimportable, a torch-only feature says in one line which extra to
install, and ``pip install .`` into a fresh virtual environment at the stated lower bounds
(numpy 1.26, no torch) builds without a warning and trains, checks and generates.

What is not tested here: torch's lower bound (torch 2.4). PyPI's plain ``torch`` wheels are the
multi-GB CUDA builds, so CI keeps to the CPU build pinned in constraints.txt."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import HELLO, REPO, Ran, subprocess_env

pytestmark = pytest.mark.usefixtures("no_network")

# `python -m bptt` with torch unimportable: `import torch` raises ImportError, as when it is
# not installed
NO_TORCH = ("import sys; sys.modules['torch'] = None; from bptt.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
TINY = ("--hidden-size", "16", "--batch-size", "4", "--num-steps", "10", "--epochs", "2",
        "--sample-every", "0", "--progress", "log", "--optimizer", "adam", "--lr", "0.02")


def run_without_torch(*argv, timeout: float = 120.0) -> Ran:
    done = subprocess.run([sys.executable, "-c", NO_TORCH, *map(str, argv)],
                          capture_output=True, text=True, timeout=timeout,
                          env=subprocess_env(MPLBACKEND="Agg"))
    return Ran(done.returncode, done.stdout, done.stderr)


def assert_needs_extra(ran: Ran, verb: str, extra: str) -> None:
    assert ran.rc == 2, ran
    assert "Traceback" not in ran.err and len(ran.err_lines) == 1, ran.err
    assert ran.err_lines[0].startswith(f"bptt {verb}: error: ")
    assert f"pip install 'bptt[{extra}]'" in ran.err


def test_every_numpy_verb_runs_without_torch(tmp_path, data_dir):
    corpus = tmp_path / "hello.txt"
    corpus.write_text(HELLO, encoding="utf-8")
    run = tmp_path / "run"
    ok = [
        ("train", "--data", corpus, "--out", run, "--engine", "numpy", *TINY, "--tensorboard"),
        ("generate", run, "--length", "10"),
        ("evaluate", run, "--data", corpus),
        ("sine", "--out", tmp_path / "sine", "--iterations", "30"),
        ("gradflow", "--cell", "gru", "--steps", "10", "--out", tmp_path / "gf"),
    ]
    csv = tmp_path / "level.csv"
    csv.write_text("level\n" + "".join(f"{(i % 7) / 7:.3f}\n" for i in range(120)))
    ok.append(("series", "--csv", csv, "--column", "level", "--iterations", "20", "--out",
               tmp_path / "series"))
    for argv in ok:
        ran = run_without_torch(*argv)
        assert ran.rc == 0, (argv, ran.err)
    assert (run / "best.safetensors").is_file() and (tmp_path / "series").is_dir()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))   # tensorboardX, no torch

    ran = run_without_torch("check", "--quick")
    assert ran.rc == 0, ran.err
    assert "only the finite-difference rows" in ran.err
    methods = {line.split()[2] for line in ran.out.splitlines()[1:] if line.split()[:1] in
               (["rnn"], ["lstm"], ["gru"])}
    assert methods == {"fd"}


KERNEL_STATUS = "from bptt.engine import kernel; print(kernel.status())"


def source_copy(tmp_path) -> Path:
    """What an sdist holds: the metadata, setup.py (the compiled kernel) and src/."""
    src = tmp_path / "src-copy"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "src", src / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.so"))
    return src


def test_without_a_compiler_the_install_runs_the_python_path(tmp_path):
    """The kernel is an optional extension: with no compiler the package builds and installs
    without it, trains, and says in one line that the engines run their Python code."""
    src = source_copy(tmp_path)
    missing = str(tmp_path / "no-compiler")
    pip = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-input",
                          "--no-build-isolation", "-w", tmp_path / "dist", src],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env=subprocess_env(CC=missing, CXX=missing))
    assert pip.returncode == 0, pip.stdout[-2000:] + pip.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("bptt-*.whl")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-input",
                    "--target", site, wheel], capture_output=True, timeout=300, check=True)
    assert not list(site.glob("bptt/engine/_kernel*"))
    corpus = tmp_path / "hello.txt"
    corpus.write_text(HELLO, encoding="utf-8")
    first = f"import sys; sys.path.insert(0, {str(site)!r}); "
    env = subprocess_env(MPLBACKEND="Agg")
    env.pop("BPTT_KERNEL", None)                 # (a suite run with the kernel turned off)
    done = subprocess.run(
        [sys.executable, "-c", first + "from bptt.cli import main; sys.exit(main(sys.argv[1:]))",
         "train", "--data", corpus, "--out", tmp_path / "run", "--engine", "numpy", *TINY],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stderr.splitlines() if "kernel" in line]
    assert notes == [notes[0]] and notes[0].startswith("bptt train: warning: the compiled "
                                                       "kernel is not available"), done.stderr
    assert "Python code" in notes[0] and (tmp_path / "run" / "best.safetensors").is_file()
    status = subprocess.run([sys.executable, "-c", first + KERNEL_STATUS], capture_output=True,
                            text=True, timeout=60, check=True, env=env).stdout
    assert status.startswith("not available"), status


def test_torch_only_features_name_their_extra(tmp_path, hello_run):
    run = hello_run / "run"
    assert_needs_extra(run_without_torch("train", "--data", hello_run / "hello.txt", "--out",
                                         tmp_path / "t", "--engine", "torch", *TINY),
                       "train", "torch")
    assert not (tmp_path / "t").exists()
    assert_needs_extra(run_without_torch("generate", run, "--engine", "torch-builtin"),
                       "generate", "torch")
    assert_needs_extra(run_without_torch("bench", "--quick"), "bench", "torch")
    assert_needs_extra(run_without_torch("export", run, "--format", "torchscript", "--out",
                                         tmp_path / "m.pt"), "export", "torch")
    assert not (tmp_path / "m.pt").exists()


def test_the_metadata_states_lower_bounds_and_the_constraints_pin():
    """What pip sees of the installed package (built from pyproject.toml)."""
    from importlib.metadata import distribution

    dist = distribution("bptt")
    assert dist.metadata["License-Expression"] == "MIT"
    files = {str(f) for f in dist.files or ()}
    assert any(f.endswith("LICENSE") for f in files) and (REPO / "LICENSE").is_file()
    assert (REPO / "src" / "bptt" / "py.typed").is_file()
    requirements = dist.requires or []
    specs = [r.split(";")[0] for r in requirements]
    assert not [r for r in specs if "==" in r]                  # exact pins only in constraints
    assert not [r for r in requirements if r.startswith("torch") and "extra ==" not in r]
    assert 'torch>=2.4; extra == "torch"' in requirements
    assert any(c.startswith("Typing :: Typed") for c in dist.metadata.get_all("Classifier"))
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert pins["torch"] == "2.13.0"


@pytest.mark.slow
def test_pip_install_into_a_fresh_venv_at_the_lower_bounds(tmp_path, data_dir):
    """`pip install .` of the source alone (no Makefile) with numpy at its lower bound and no
    torch: no warning from the build, the compiled kernel built, then the NumPy engine trains
    and generates, `bptt check` runs its finite-difference rows, and the torch engine names its
    extra."""
    src = source_copy(tmp_path)
    lower = re.search(r'"numpy>=([\d.]+)"', (REPO / "pyproject.toml").read_text())[1]
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("".join(line + "\n" for line in
                                   (REPO / "constraints.txt").read_text().splitlines()
                                   if not line.startswith("numpy==")))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120)
    bin_ = venv / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip = subprocess.run([bin_ / "python", "-m", "pip", "install", "--no-input",
                          "-c", constraints, f"numpy=={lower}.*", str(src)],
                         capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    # the machine's pip configuration may warn about its own index folders; nothing else may
    ours = [line for line in (pip.stdout + pip.stderr).splitlines()
            if re.search(r"(?i)warn|deprecat", line) and "is ignored" not in line]
    assert not ours, "\n".join(ours)

    def bptt(*argv) -> Ran:
        done = subprocess.run([bin_ / "bptt", *map(str, argv)], capture_output=True, text=True,
                              timeout=300, cwd=tmp_path,
                              env=subprocess_env(MPLBACKEND="Agg", PATH=f"{bin_}:{env['PATH']}"))
        return Ran(done.returncode, done.stdout, done.stderr)

    versions = subprocess.run(
        [bin_ / "python", "-c", "import numpy, importlib.util as u; "
         "print(numpy.__version__, u.find_spec('torch') is None)"],
        capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert versions[0].startswith(lower + ".") and versions[1] == "True", versions
    kernel = subprocess.run([bin_ / "python", "-c", KERNEL_STATUS], capture_output=True,
                            text=True, timeout=60, check=True).stdout.strip()
    assert not kernel.startswith("not available"), kernel     # pip install compiled it
    corpus = tmp_path / "hello.txt"
    corpus.write_text(HELLO, encoding="utf-8")
    ran = bptt("train", "--data", corpus, "--out", tmp_path / "run", *TINY)
    assert ran.rc == 0, ran.err
    ran = bptt("generate", tmp_path / "run", "--prefix", "hello", "--length", "5")
    assert ran.rc == 0 and ran.out.startswith("hello"), ran.err
    ran = bptt("check", "--quick")
    assert ran.rc == 0 and "only the finite-difference rows" in ran.err, ran.out + ran.err
    assert_needs_extra(bptt("train", "--data", corpus, "--out", tmp_path / "t", "--engine",
                            "torch", *TINY), "train", "torch")
