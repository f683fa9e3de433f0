"""Data-parallel training under torchrun (two processes on 127.0.0.1, gloo on the CPU).

Two processes with a global batch of 2B train the same model as one process with 2B; a run
continues across a change in the number of processes; a dead or hung rank ends the others
with one clear line; the NumPy engine refuses a multi-process launch. Every subprocess has a
timeout, and every process a test starts (workers included) is ended when the test ends.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from bptt import checkpoint as ck
from bptt.lm import distributed
from bptt.lm import train as train_mod
from bptt.lm.train import train
from conftest import Ran, StopAfter, quiet, subprocess_env, tiny_config

pytestmark = [
    pytest.mark.usefixtures("no_network"),
    pytest.mark.skipif(sys.platform != "linux", reason="workers are found through /proc"),
]

TIMEOUT = 60.0        # seconds any one launch may take (each takes a few)
DIST_TIMEOUT = "20"   # --dist-timeout of the runs (the hang test uses less)
TOL = 1e-5            # float32 rounding: per-rank means averaged vs one mean over the batch
# The global batch: 8 rows, 4 on each of the two ranks.
FLAGS = dict(engine="torch", hidden_size=16, batch_size=8, num_steps=10, optimizer="adam",
             lr=0.02, clip=0.5)

# Runs ``bptt`` with train's Ctrl-C flag replaced by a script: on rank SCRIPT_RANK, after
# SCRIPT_AFTER looks at the flag (one per step, one per epoch end), "stop" raises the flag,
# "die" ends the process at once, "hang" stops answering; with SCRIPT_FIRST_ATTEMPT set, only
# in torchrun's first attempt (not after a restart).
SCRIPTED = '''
import os, sys, time
from bptt.cli import main
from bptt.lm import train as train_mod


class Scripted:
    def __init__(self):
        self.looks = 0
        self.mine = os.environ.get("RANK", "0") == os.environ["SCRIPT_RANK"]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    @property
    def stop(self):
        self.looks += 1
        if not self.mine or self.looks <= int(os.environ["SCRIPT_AFTER"]):
            return False
        if os.environ.get("SCRIPT_FIRST_ATTEMPT") and \
                os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
            return False
        action = os.environ["SCRIPT_ACTION"]
        if action == "die":
            os._exit(9)
        if action == "hang":
            time.sleep(600)
        return True


train_mod.StopFlag = Scripted
sys.exit(main(sys.argv[1:]))
'''


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The in-process runs on one thread, as each worker: tiny matrices gain nothing from
    more, and a second thread spinning beside a busy core slows a run a hundredfold."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 4,600 characters of word salad: 52 batches of 8 x 10 an epoch."""
    rng = random.Random(0)
    words = "the time traveller said machine four dimensions space we sat looking at him".split()
    path = tmp_path_factory.mktemp("corpus") / "salad.txt"
    path.write_text(" ".join(rng.choice(words) for _ in range(800)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scripted") / "scripted_bptt.py"
    path.write_text(SCRIPTED, encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            "--master_addr", "127.0.0.1", "--master_port", str(free_port())]


def train_args(corpus: Path, out: Path, **kw) -> list[str]:
    """``train ...`` flags of a tiny quiet run (FLAGS, then ``kw``)."""
    args = ["train", "--data", str(corpus), "--out", str(out), "--sample-every", "0",
            "--progress", "log", "--dist-timeout", DIST_TIMEOUT]
    for k, v in {**FLAGS, **kw}.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


def _descendants(pid: int) -> list[int]:
    """Every living process below ``pid`` (torchrun starts its workers in new sessions, so
    they outlive a killed launcher unless ended by pid)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


@contextmanager
def launched(cmd: list[str], **env: str):
    """A subprocess whose whole tree is killed on the way out if it is still running."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            encoding="utf-8", env=subprocess_env(**env),
                            start_new_session=True)
    try:
        yield proc
    finally:
        for pid in [*_descendants(proc.pid), proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.communicate()


def launch(cmd: list[str], timeout: float = TIMEOUT, **env: str) -> Ran:
    with launched(cmd, **env) as proc:
        out, err = proc.communicate(timeout=timeout)
    return Ran(proc.returncode, out, err)


def lines(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def max_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max((float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a), default=0.0)


def assert_same_run(got: Path, want: Path, tol: float = TOL) -> float:
    """The last checkpoints agree within float32 rounding; returns the largest difference."""
    x, y = ck.load(got / "last.safetensors"), ck.load(want / "last.safetensors")
    assert (x.train["epoch"], x.train["batch"]) == (y.train["epoch"], y.train["batch"])
    assert x.train["optim_scalars"] == y.train["optim_scalars"]
    diff = max_diff(x.params, y.params)
    assert diff < tol, f"parameters differ by {diff:.3g}"
    assert max_diff(x.optim, y.optim) < tol
    np.testing.assert_allclose([m["loss"] for m in x.metrics], [m["loss"] for m in y.metrics],
                               rtol=1e-5)
    return diff


def steps(run: Path) -> list[dict]:
    records = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "step"]


# -- equivalence: 2 processes x B rows == 1 process x 2B rows -----------------------------------


@pytest.mark.parametrize("engine, partition", [("torch", "sequential"),
                                               ("torch-autograd", "random"),
                                               ("torch-builtin", "sequential")])
def test_two_processes_train_the_same_model_as_one(tmp_path, corpus, engine, partition):
    kw = dict(engine=engine, partition=partition, epochs=2, val_frac=0.1)
    ran = launch([*torchrun(2), "-m", "bptt", *train_args(corpus, tmp_path / "two", **kw)])
    assert ran.rc == 0, ran.err
    # rank 0 alone reports: one start line, one result line
    assert len(lines(ran.err, "training")) == 1 and "2 processes" in ran.err, ran.err
    assert len(lines(ran.out, "perplexity")) == 1, ran.out
    train(tiny_config(corpus, tmp_path / "one", **{**FLAGS, **kw}), log=quiet)
    assert_same_run(tmp_path / "two", tmp_path / "one")
    # the same global gradient norms, and clipping did fire
    two, one = steps(tmp_path / "two"), steps(tmp_path / "one")
    np.testing.assert_allclose([s["grad_norm"] for s in two], [s["grad_norm"] for s in one],
                               rtol=1e-4)
    assert any(s["clipped"] for s in two)
    # tokens per second count the whole global batch
    assert ck.load(tmp_path / "two" / "last.safetensors").metrics[-1]["tokens_per_s"] > 0


# -- resume across a change in the number of processes ------------------------------------------


def test_a_two_process_run_stopped_mid_epoch_continues_on_one(tmp_path, corpus, scripted):
    kw = dict(cell="lstm", epochs=2, optimizer="sgd", lr=1.0)
    # Ctrl-C reaches rank 0 only, in epoch 2: both ranks must agree to stop after that step
    ran = launch([*torchrun(2), str(scripted), *train_args(corpus, tmp_path / "run", **kw)],
                 SCRIPT_RANK="0", SCRIPT_AFTER="60", SCRIPT_ACTION="stop")
    # (rank 1 exits at once with 130; torchrun then ends rank 0, which must have saved first)
    assert ran.rc != 0, ran.err
    stopped = ck.load(tmp_path / "run" / "last.safetensors")
    assert stopped.train["epoch"] == 1 and stopped.train["batch"] > 0
    # the carried state saved is the global one, gathered from both ranks: (L*D, 8, H), (h, c)
    assert [s.shape for s in stopped.state] == [(1, 8, 16), (1, 8, 16)]

    result = train(tiny_config(corpus, tmp_path / "run", engine="torch", epochs=2),
                   resume=True, log=quiet)
    assert result.epochs == 2 and not result.interrupted
    train(tiny_config(corpus, tmp_path / "straight", **{**FLAGS, **kw}), log=quiet)
    assert_same_run(tmp_path / "run", tmp_path / "straight")


def test_a_one_process_run_stopped_mid_epoch_continues_on_two(tmp_path, corpus, monkeypatch):
    kw = dict(cell="gru", epochs=2)
    monkeypatch.setattr(train_mod, "StopFlag", lambda: StopAfter(60))
    first = train(tiny_config(corpus, tmp_path / "run", **{**FLAGS, **kw}), log=quiet)
    monkeypatch.undo()
    assert first.interrupted
    stopped = ck.load(tmp_path / "run" / "last.safetensors")
    assert stopped.train["epoch"] == 1 and stopped.train["batch"] > 0

    ran = launch([*torchrun(2), "-m", "bptt", "train", "--resume", "--out",
                  str(tmp_path / "run"), "--engine", "torch", "--progress", "log"])
    assert ran.rc == 0, ran.err
    train(tiny_config(corpus, tmp_path / "straight", **{**FLAGS, **kw}), log=quiet)
    assert_same_run(tmp_path / "run", tmp_path / "straight")


def test_torchrun_max_restarts_resumes_the_run_from_its_last_checkpoint(tmp_path, corpus,
                                                                        scripted):
    """Rank 1 dies in epoch 2 of torchrun's first attempt; --max-restarts 1 runs the same
    command again, which resumes from epoch 1's checkpoint (instead of starting over) and
    ends where the uninterrupted run ends."""
    kw = dict(epochs=3)
    ran = launch([*torchrun(2), "--max-restarts", "1", str(scripted),
                  *train_args(corpus, tmp_path / "run", **kw)],
                 SCRIPT_RANK="1", SCRIPT_AFTER="60", SCRIPT_ACTION="die",
                 SCRIPT_FIRST_ATTEMPT="1")
    assert ran.rc == 0, ran.err
    assert len(lines(ran.err, "bptt train: torchrun restart 1: resuming from")) == 1, ran.err
    assert "epochs 2..3" in ran.err
    train(tiny_config(corpus, tmp_path / "straight", **{**FLAGS, **kw}), log=quiet)
    assert_same_run(tmp_path / "run", tmp_path / "straight")
    epochs = [json.loads(s)["epoch"] for s in (tmp_path / "run" / "metrics.jsonl").read_text()
              .splitlines() if json.loads(s)["kind"] == "epoch"]
    assert epochs == [1, 2, 3]


def test_a_restart_before_the_first_checkpoint_starts_afresh(tmp_path, corpus, cli,
                                                             monkeypatch):
    """An attempt that dies before its first checkpoint leaves no checkpoint behind, not even
    an earlier run's from the same folder (--overwrite moved it aside), so the restart trains
    this run from the start instead of resuming another."""
    out = tmp_path / "run"
    assert cli(*train_args(corpus, out, epochs=1, hidden_size=8)).rc == 0    # an earlier run

    class DiesAtOnce(StopAfter):
        @property
        def stop(self):
            raise RuntimeError("killed")

    monkeypatch.setattr(train_mod, "StopFlag", lambda: DiesAtOnce(0))
    with pytest.raises(RuntimeError, match="killed"):
        cli(*train_args(corpus, out, epochs=1), "--overwrite")              # attempt 0 dies
    assert not (out / "last.safetensors").exists()
    monkeypatch.undo()
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    ran = cli(*train_args(corpus, out, epochs=1), "--overwrite")
    assert ran.rc == 0 and "resuming" not in ran.err, ran.err
    assert ck.load(out / "last.safetensors").spec.hidden_size == 16
    earlier = [ck.load(p / "last.safetensors").spec.hidden_size
               for p in tmp_path.glob("run.previous-*") if (p / "last.safetensors").exists()]
    assert earlier == [8]                                                   # kept, aside


# -- failures: a dead or hung rank, a bad launch -------------------------------------------------


@pytest.mark.parametrize("action, within", [("die", 15.0), ("hang", 15.0)])
def test_a_dead_or_hung_rank_ends_the_other_with_one_clear_line(tmp_path, corpus, scripted,
                                                               action, within):
    """Launched by hand (no torchrun agent to kill the survivor): rank 0 must notice alone."""
    port = str(free_port())
    args = [sys.executable, str(scripted), *train_args(corpus, tmp_path / "run", epochs=50)]
    args[args.index("--dist-timeout") + 1] = "3"
    env = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE="2", SCRIPT_RANK="1",
               SCRIPT_AFTER="1", SCRIPT_ACTION=action)
    with launched(args, RANK="0", LOCAL_RANK="0", **env) as rank0, \
            launched(args, RANK="1", LOCAL_RANK="1", **env):
        t0 = time.monotonic()
        out, err = rank0.communicate(timeout=TIMEOUT)
        took = time.monotonic() - t0
    assert rank0.returncode == 4, err
    assert "Traceback" not in err, err
    errors = lines(err, "bptt train: error: ")
    assert len(errors) == 1 and errors == lines(err, "bptt"), err
    assert "rank 0" in errors[0] and "peer process died or did not answer" in errors[0]
    assert took < within, f"rank 0 took {took:.1f} s to give up"


def test_torchrun_returns_nonzero_when_a_rank_dies(tmp_path, corpus, scripted):
    t0 = time.monotonic()
    ran = launch([*torchrun(2), str(scripted), *train_args(corpus, tmp_path / "run", epochs=50)],
                 SCRIPT_RANK="1", SCRIPT_AFTER="1", SCRIPT_ACTION="die")
    assert ran.rc != 0 and time.monotonic() - t0 < TIMEOUT
    assert "exitcode  : 9" in ran.err, ran.err  # torchrun's report names the dead rank's exit


def test_the_numpy_engine_refuses_torchrun_in_one_line(tmp_path, corpus):
    ran = launch([*torchrun(2), "-m", "bptt",
                  *train_args(corpus, tmp_path / "run", engine="numpy")])
    assert ran.rc != 0
    ours = lines(ran.err, "bptt train")  # torchrun adds its own failure report after it
    assert len(ours) == 1 and ours[0].startswith("bptt train: error: the numpy engine"), ran.err
    assert "torch, torch-autograd or torch-builtin" in ours[0]
    assert "bptt/" not in ran.err  # no traceback through our code
    assert not (tmp_path / "run").exists()


# -- the hooks themselves, in this process ----------------------------------------------------


def test_rank_zero_alone_reports_a_refused_launch(tmp_path, corpus, cli, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, expected in (("0", 1), ("1", 0)):
        monkeypatch.setenv("RANK", rank)
        ran = cli(*train_args(corpus, tmp_path / "run", engine="numpy"))
        assert ran.rc == 2 and "Traceback" not in ran.err
        assert len(ran.err_lines) == expected, ran.err


def test_rows_are_split_into_contiguous_blocks_and_the_batch_must_divide():
    X = np.arange(8 * 3).reshape(8, 3)
    groups = [distributed.Group(r, 4, None, 1.0) for r in range(4)]
    np.testing.assert_array_equal(np.concatenate([g.rows(X) for g in groups]), X)
    np.testing.assert_array_equal(groups[1].rows(X), X[2:4])
    h = np.arange(2 * 8 * 5).reshape(2, 8, 5)
    (mine,) = groups[3].state_rows((h,))
    np.testing.assert_array_equal(mine, h[:, 6:8])
    with pytest.raises(distributed.ConfigError, match="divisible by the number of processes 4"):
        groups[0].check_batch(6)
    single = distributed.SINGLE
    assert single.rows(X) is X and single.state_rows(None) is None


def test_one_process_never_imports_torch_distributed(tmp_path, corpus):
    code = ("import sys; from bptt.lm.train import train; from bptt.lm.config import "
            "TrainConfig as C; train(C(data=sys.argv[1], out=sys.argv[2], hidden_size=8, "
            "batch_size=4, num_steps=10, epochs=1, sample_every=0, progress='log'), "
            "log=lambda m: None); print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(corpus), str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=TIMEOUT,
                          env=subprocess_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_a_silent_rank_under_torchrun_waits_for_rank_zero_to_report(monkeypatch):
    import time

    waits: list[float] = []
    monkeypatch.setattr(time, "sleep", waits.append)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    for rank, under_torchrun, expected in (("1", False, []), ("0", True, []),
                                           ("1", True, [distributed.REPORTER_GRACE_S])):
        monkeypatch.setenv("RANK", rank)
        if under_torchrun:
            monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
        waits.clear()
        distributed.let_the_reporter_speak()
        assert waits == expected, (rank, under_torchrun)
