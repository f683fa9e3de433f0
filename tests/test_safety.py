"""Never lose a run: every row of the "what was tried" table of bad inputs and faults, through
the ``bptt`` command (one line on stderr, a non-zero exit, every file of an earlier run the
same byte for byte), and no failing ``train``, ``sine`` or ``series`` losing an earlier run.

Tiny models and few steps throughout: earlier runs are trained once per module and copied.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bptt import checkpoint as ck
from bptt.lm import train as train_mod
from bptt.lm.config import TrainConfig
from bptt.lm.train import train
from bptt.series import SineConfig, train_sine
from bptt.series.config import SeriesConfig
from bptt.series.csvseries import _val_count, min_length, train_series
from conftest import HELLO, quiet, subprocess_env, tiny_config

pytestmark = pytest.mark.usefixtures("no_network")

TINY = ("--hidden-size", "8", "--batch-size", "4", "--num-steps", "10", "--optimizer", "adam",
        "--lr", "0.02", "--sample-every", "0", "--progress", "log", "--epochs", "1")
SINE = ("--iterations", "20", "--hidden-size", "4", "--log-every", "10",
        "--forecast-steps", "5")
POEM = "床前明月光，疑是地上霜。举头望明月，低头思故乡。\n"


# -- earlier runs, trained once and copied --------------------------------------------------------


def series_csv(path: Path, n: int = 60, scale: float = 1.0) -> Path:
    t = np.arange(n)
    path.write_text("t,v\n" + "".join(f"{i},{scale * np.sin(i / 4):.6g}\n" for i in t))
    return path


@pytest.fixture(scope="module")
def earlier(tmp_path_factory) -> dict[str, Path]:
    """A finished run of each kind: {"train": folder, "sine": folder, "series": folder} plus
    the files they were trained on ("corpus", "csv")."""
    root = tmp_path_factory.mktemp("earlier")
    corpus = root / "hello.txt"
    corpus.write_text(HELLO, encoding="utf-8")
    csv = series_csv(root / "series.csv")
    train(tiny_config(corpus, root / "train", hidden_size=8, epochs=2), log=quiet)
    train_sine(SineConfig(out=str(root / "sine"), iterations=20, hidden_size=4, log_every=10,
                          forecast_steps=5), log=None)
    train_series(SeriesConfig(csv=str(csv), column="v", out=str(root / "series"), window=5,
                              iterations=20, batch_size=2, hidden_size=4, log_every=10,
                              forecast_steps=5), log=None)
    return {"train": root / "train", "sine": root / "sine", "series": root / "series",
            "corpus": corpus, "csv": csv}


def copy_run(earlier: dict, kind: str, dest: Path) -> Path:
    shutil.copytree(earlier[kind], dest)
    return dest


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def assert_one_line_error(ran, verb: str, *fragments: str, rc: int = 2,
                          after_progress: bool = False) -> None:
    """Exit ``rc``, no traceback, one error line (the only line on stderr, or the last one
    after the run's progress lines) holding every fragment."""
    assert ran.rc == rc, (ran.rc, ran.err)
    assert "Traceback" not in ran.err, ran.err
    lines = ran.err_lines if not after_progress else [
        line for line in ran.err_lines if line.startswith("bptt ")]
    assert len(lines) == 1 and lines[0] == ran.err_lines[-1], ran.err
    assert lines[0].startswith(f"bptt {verb}: error: "), ran.err
    for fragment in fragments:
        assert fragment in lines[0], ran.err


def assert_no_litter(folder: Path) -> None:
    """No temporary file, no lock file left behind anywhere below ``folder``."""
    left = [p for p in folder.rglob("*") if p.name.endswith((".tmp", ".lock"))]
    assert not left, left


# -- rows 1 and 2: an existing run is never replaced unasked; checks come first -------------------


def test_1_an_existing_run_is_refused_without_resume_or_overwrite(tmp_path, earlier, cli):
    run = copy_run(earlier, "train", tmp_path / "run")
    before = snapshot(run)
    ran = cli("train", "--data", earlier["corpus"], "--out", run, *TINY)
    assert_one_line_error(ran, "train", "already holds a run", "--resume", "--overwrite")
    assert snapshot(run) == before
    assert_no_litter(tmp_path)


@pytest.mark.parametrize("extra", [(), ("--overwrite",)])
def test_2_a_bad_flag_is_refused_before_anything_changes(tmp_path, earlier, cli, extra):
    run = copy_run(earlier, "train", tmp_path / "run")
    before = snapshot(run)
    ran = cli("train", "--data", earlier["corpus"], "--out", run, *TINY, "--truncate", "-3",
              *extra)
    assert_one_line_error(ran, "train", "expected truncate >= 1", "got -3")
    assert snapshot(run) == before and sorted(tmp_path.iterdir()) == [run]


def test_overwrite_moves_the_earlier_run_aside_after_the_first_step(tmp_path, earlier, cli):
    run = copy_run(earlier, "train", tmp_path / "run")
    before = snapshot(run)
    ran = cli("train", "--data", earlier["corpus"], "--out", run, *TINY, "--overwrite")
    assert ran.rc == 0, ran.err
    (aside,) = tmp_path.glob("run.previous-*")
    assert snapshot(aside) == before                           # the earlier run, whole
    assert "now in" in ran.err and str(aside) in ran.err
    assert ck.load(run / "last.safetensors").train["epoch"] == 1
    assert_no_litter(tmp_path)


# -- row 3: one writer per run folder -------------------------------------------------------------

HOLDER = """
import sys, time
from bptt.rundir import RunFolder
with RunFolder(sys.argv[1], verb="train").locked():
    print("locked", flush=True)
    time.sleep(60)
"""


def test_3_a_second_writer_is_refused_naming_the_holder_and_a_dead_ones_lock_is_taken(
        tmp_path, earlier, cli):
    run = copy_run(earlier, "train", tmp_path / "run")
    before = snapshot(run)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE,
                              text=True, env=subprocess_env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        for argv in (("train", "--resume", "--out", run, "--epochs", "3"),
                     ("train", "--data", earlier["corpus"], "--out", run, *TINY,
                      "--overwrite")):
            ran = cli(*argv)
            assert_one_line_error(ran, "train", "is in use", f"process {holder.pid} ",
                                  "bptt train")
            assert snapshot(run) == before
    finally:
        holder.kill()                                   # dies holding it: a stale lock file
        holder.wait()
        holder.stdout.close()      # else its pipe's ResourceWarning may surface in a later run
    assert (tmp_path / ".run.lock").read_text().startswith(f"{holder.pid} ")
    ran = cli("train", "--resume", "--out", run, "--epochs", "3")
    assert ran.rc == 0, ran.err                               # taken over
    assert ck.load(run / "last.safetensors").train["epoch"] == 3
    assert_no_litter(tmp_path)


def test_3_sine_and_series_hold_the_lock_too(tmp_path, earlier, cli):
    from bptt.rundir import RunFolder

    for kind, argv in (("sine", ("sine", *SINE)),
                       ("series", ("series", "--csv", earlier["csv"], "--column", "v",
                                   "--window", "5", *SINE))):
        out = tmp_path / kind
        with RunFolder(out, verb=kind).locked():
            ran = cli(*argv, "--out", out)
            assert_one_line_error(ran, kind, "is in use", f"process {os.getpid()} ")
        assert not out.exists()
    assert_no_litter(tmp_path)


def test_3_a_refused_run_leaves_no_folder_made_for_its_lock(tmp_path, cli):
    ran = cli("train", "--resume", "--out", tmp_path / "a" / "b" / "run")
    assert_one_line_error(ran, "train", "to resume from, found none")
    assert list(tmp_path.iterdir()) == []


def test_3_ranks_other_than_zero_neither_lock_nor_write(tmp_path):
    from bptt.rundir import RunFolder

    folder = RunFolder(tmp_path / "run", verb="train", writer=False)
    with folder.locked():
        assert not folder.create()
        assert list(tmp_path.iterdir()) == []


# -- row 4: a checkpoint that is damaged or holds NaN is refused, by tensor -----------------------


def _flip_a_tensor_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40                                          # inside the last tensor's bytes
    path.write_bytes(bytes(data))


def _nan_in_a_parameter(path: Path) -> None:
    c = ck.load(path)
    c.params["weight_hh_l0"][0, 0] = np.nan
    ck.save(c, path)                                          # digests agree: NaN refused


def _nan_in_a_version_1_file(path: Path) -> None:
    """As bptt wrote before the digests: version 1, no sha256."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(path), framework="np") as f:
        meta = json.loads(f.metadata()["bptt"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta["version"] = 1
    del meta["sha256"]
    tensors["head.bias"][1] = np.inf
    save_file(tensors, str(path), metadata={"bptt": json.dumps(meta)})


@pytest.mark.parametrize("damage, fragment", [
    (_flip_a_tensor_byte, "is damaged: expected the bytes of tensor"),
    (_nan_in_a_parameter, "in tensor 'weight_hh_l0'"),
    (_nan_in_a_version_1_file, "in tensor 'head.bias'"),
])
def test_4_a_damaged_or_non_finite_checkpoint_is_refused(tmp_path, earlier, cli, damage,
                                                         fragment):
    run = copy_run(earlier, "train", tmp_path / "run")
    damage(run / "best.safetensors")
    damage(run / "last.safetensors")
    before = snapshot(run)
    for verb, argv in (("generate", ("generate", run)),
                       ("evaluate", ("evaluate", run, "--data", earlier["corpus"])),
                       ("train", ("train", "--resume", "--out", run, "--epochs", "3")),
                       ("gradflow", ("gradflow", run, "--out", tmp_path / "flow"))):
        assert_one_line_error(cli(*argv), verb, fragment)
    assert snapshot(run) == before


def test_4_a_version_1_checkpoint_still_loads(tmp_path, earlier):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    path = shutil.copy(earlier["train"] / "last.safetensors", tmp_path / "v1.safetensors")
    with safe_open(str(path), framework="np") as f:
        meta = json.loads(f.metadata()["bptt"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta["version"] = 1
    del meta["sha256"]
    save_file(tensors, str(path), metadata={"bptt": json.dumps(meta)})
    old, new = ck.load(path), ck.load(earlier["train"] / "last.safetensors")
    for k in new.params:
        np.testing.assert_array_equal(old.params[k], new.params[k])


# -- row 5: the series hang -----------------------------------------------------------------------


def test_5_a_validation_fraction_near_one_is_refused_at_once(tmp_path, earlier, cli):
    t0 = time.monotonic()
    assert min_length(20, 0.9999999999) > 1e11
    ran = cli("series", "--csv", earlier["csv"], "--column", "v", "--val-frac", "0.9999999999",
              "--out", tmp_path / "run", *SINE)
    assert_one_line_error(ran, "series", "series too short", "need at least")
    assert time.monotonic() - t0 < 5 and not (tmp_path / "run").exists()
    for window, frac in ((20, 0.2), (5, 0.5), (2, 0.0), (7, 0.01), (3, 0.999)):
        need = min_length(window, frac)                       # the smallest n that works
        assert need - _val_count(need, frac) >= window > need - 1 - _val_count(need - 1, frac)


# -- row 6: memory --------------------------------------------------------------------------------


@pytest.mark.parametrize("hidden", ["1000000", "100000000"])
def test_6_a_model_that_cannot_fit_is_refused_before_allocating(tmp_path, earlier, cli,
                                                                hidden):
    run = copy_run(earlier, "train", tmp_path / "run")
    before = snapshot(run)
    t0 = time.monotonic()
    for out, extra in ((tmp_path / "new", ()), (run, ("--overwrite",))):
        ran = cli("train", "--data", earlier["corpus"], "--out", out, *TINY, "--hidden-size",
                  hidden, *extra)
        assert_one_line_error(ran, "train", "expected a run that fits in the",
                              "of memory available", "needs about", "--hidden-size")
    assert time.monotonic() - t0 < 10
    assert not (tmp_path / "new").exists() and snapshot(run) == before
    ran = cli("sine", *SINE, "--hidden-size", hidden, "--out", tmp_path / "sine")
    assert_one_line_error(ran, "sine", "needs about")
    ran = cli("gradflow", "--hidden-size", hidden, "--out", tmp_path / "flow")
    assert_one_line_error(ran, "gradflow", "needs about")
    assert not (tmp_path / "sine").exists() and not (tmp_path / "flow").exists()


def test_6_evaluate_is_refused_too_when_its_outputs_cannot_fit(earlier, cli, monkeypatch):
    from bptt import memory

    monkeypatch.setattr(memory, "host_available", lambda: (1000, "a test's 1000 bytes"))
    ran = cli("evaluate", earlier["train"], "--data", earlier["corpus"])
    assert_one_line_error(ran, "evaluate", "1000 B of memory available (a test's 1000 bytes)",
                          "lower --num-steps or --batch-size")


def test_6_the_estimate_is_compared_with_what_the_machine_has(monkeypatch):
    from bptt import memory
    from bptt.model import ModelSpec

    spec = ModelSpec(hidden_size=512, input_size=28, output_size=28)
    est = memory.estimate(spec, batch_size=32, num_steps=35, optimizer="adam")
    n = 512 * 28 + 512 * 512 + 2 * 512 + 28 * 512 + 28           # the book's 1-layer RNN
    assert est.device["parameters and gradients"] == 3 * 4 * n    # float32, with the copy
    assert est.device["optimiser state"] == 2 * 2 * 4 * n         # Adam's two, with the copy
    assert est.device["activations"] == (2 + 1) * 35 * 32 * 512 * 4
    have, where = memory.host_available()
    assert have is not None and have > 0 and where
    memory.require(est)                                       # the book's model fits
    monkeypatch.setattr(memory, "host_available", lambda: (1 << 20, "a test's 1 MiB"))
    with pytest.raises(memory.NotEnoughMemory, match=r"in the 1\.0 MiB of memory available "
                                                     r"\(a test's 1 MiB\), got one that needs"):
        memory.require(est)


# -- row 7: devices -------------------------------------------------------------------------------


def test_7_an_unknown_device_is_one_line_for_every_verb(tmp_path, earlier, cli):
    run = copy_run(earlier, "train", tmp_path / "run")
    before = snapshot(run)
    for verb, argv in (
            ("train", ("train", "--data", earlier["corpus"], "--out", run, "--overwrite",
                       "--engine", "torch", "--device", "tpu", *TINY)),
            ("generate", ("generate", run, "--engine", "torch", "--device", "tpu")),
            ("evaluate", ("evaluate", run, "--data", earlier["corpus"], "--device", "tpu")),
            ("sine", ("sine", "--engine", "torch", "--device", "tpu", "--out", run))):
        assert_one_line_error(cli(*argv), verb, "expected device cpu, cuda, cuda:N or mps",
                              "'tpu'")
    assert snapshot(run) == before


def test_7_the_torch_engine_names_a_device_it_cannot_use():
    pytest.importorskip("torch")
    from bptt.engine import get_engine
    from bptt.model import ModelSpec

    for device, message in (("tpu", "expected device cpu, cuda, cuda:N or mps"),
                            ("meta", "expected device cpu, cuda, cuda:N or mps")):
        with pytest.raises(ValueError, match=message):
            get_engine("torch", ModelSpec(hidden_size=4), device=device)


# -- row 8 (and permission denied): a checkpoint write that fails mid-training --------------------


def _fail_fsync(monkeypatch):
    real = os.fsync

    def fsync(fd):
        if stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def _deny_temporary_files(monkeypatch):
    real = os.open

    def open_(path, flags, mode=0o777, *args, **kwargs):
        if str(path).endswith(".tmp"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)


@pytest.mark.parametrize("fault, fragment", [(_fail_fsync, "No space left on device"),
                                             (_deny_temporary_files, "Permission denied")])
def test_8_a_failed_checkpoint_write_is_one_line_and_keeps_the_previous(
        tmp_path, earlier, cli, monkeypatch, fault, fragment):
    run = copy_run(earlier, "train", tmp_path / "run")
    before = snapshot(run)
    fault(monkeypatch)
    ran = cli("train", "--resume", "--out", run, "--epochs", "3")
    assert_one_line_error(ran, "train", "could not write checkpoint", fragment,
                          "the previous checkpoint there is intact", after_progress=True)
    monkeypatch.undo()
    after = snapshot(run)
    for name in ("last.safetensors", "best.safetensors"):
        assert after[name] == before[name]
    assert after["metrics.jsonl"].startswith(before["metrics.jsonl"])    # lines only added
    assert ck.load(run / "last.safetensors").train["epoch"] == 2
    assert_no_litter(tmp_path)
    resumed = cli("train", "--resume", "--out", run, "--epochs", "3")   # space freed: goes on
    assert resumed.rc == 0, resumed.err


# -- rows 9, 10, 14, 19: number flags, checked where they are parsed ------------------------------


@pytest.mark.parametrize("verb, argv, fragment", [
    ("train", ("--lr", "nan"), "expected lr > 0 and finite, got nan"),
    ("train", ("--clip", "nan"), "expected clip > 0 and finite (or none: no clipping), got nan"),
    ("train", ("--lr", "inf"), "expected lr > 0 and finite, got inf"),
    ("train", ("--clip", "0"), "(or none: no clipping), got 0"),
    ("train", ("--max-tokens", "0"), "expected max_tokens >= 2 (or none: no limit), got 0"),
    ("train", ("--dropout", "1"), "expected dropout in [0, 1), got 1"),
    ("train", ("--hidden-size", "ten"), "expected hidden_size an integer >= 1, got 'ten'"),
    ("train", ("--seed", "-1"), "expected seed >= 0, got -1"),
    ("train", ("--dist-timeout", "nan"), "expected dist_timeout > 0 and finite"),
    ("sine", ("--lr", "nan"), "expected lr > 0 and finite, got nan"),
    ("sine", ("--clip=-inf",), "expected clip > 0 and finite"),
    ("sine", ("--clip", "-inf"), "argument --clip: expected one argument"),
    ("series", ("--csv", "x.csv", "--column", "v", "--val-frac", "nan"), "expected val_frac in"),
    ("series", ("--csv", "x.csv", "--column", "v", "--window", "1"), "expected window >= 2"),
    ("generate", ("RUN", "--temperature", "nan"), "expected temperature >= 0 and finite, got nan"),
    ("generate", ("RUN", "--top-p", "0"), "expected top_p in (0, 1], got 0"),
    ("evaluate", ("RUN", "--data", "x", "--batch-size", "0"), "expected batch_size >= 1"),
    ("gradflow", ("--radius", "nan"), "expected radius > 0 and finite, got nan"),
    ("gradflow", ("--forget-bias", "inf"), "expected forget_bias a finite number, got inf"),
    ("bench", ("--seconds", "nan"), "expected seconds > 0 and finite, got nan"),
    ("demo", ("--epochs", "0"), "expected epochs >= 1, got 0"),
])
def test_9_10_14_19_a_bad_number_names_its_flag(tmp_path, earlier, cli, verb, argv, fragment):
    run = copy_run(earlier, "train", tmp_path / "run")
    before = snapshot(run)
    argv = [run if a == "RUN" else a for a in argv]
    out = () if verb in ("generate", "evaluate", "bench") else ("--out", run)
    ran = cli(verb, *argv, *out)
    assert_one_line_error(ran, verb, fragment)
    assert snapshot(run) == before


def test_19_none_disables_and_dropout_with_one_layer_warns(tmp_path, earlier, cli):
    from bptt.cli import build_parser

    args = build_parser().parse_args(["train", "--clip", "none", "--truncate", "off",
                                      "--max-tokens", "none"])
    assert args.clip is None and args.truncate is None and args.max_tokens is None
    ran = cli("train", "--data", earlier["corpus"], "--out", tmp_path / "run", *TINY,
              "--dropout", "0.5")
    assert ran.rc == 0, ran.err
    warnings = [line for line in ran.err_lines if "warning" in line]
    assert warnings == ["bptt train: warning: dropout 0.5 has no effect with num_layers 1 "
                        "(dropout acts between stacked layers)"]


# -- rows 11 and 18: generate ---------------------------------------------------------------------


def test_11_top_k_samples_at_temperature_one(earlier, cli):
    model = earlier["train"]
    greedy = cli("generate", model, "--prefix", "wo", "--length", "40").out
    topk = {cli("generate", model, "--prefix", "wo", "--length", "40", "--top-k", "3",
                "--seed", str(s)).out for s in range(4)}
    assert len(topk) > 1 and topk != {greedy}                # it samples
    again = cli("generate", model, "--prefix", "wo", "--length", "40", "--top-k", "3",
                "--seed", "0")
    assert again.rc == 0 and again.out in topk               # and repeats with its seed
    assert cli("generate", model, "--prefix", "wo", "--length", "40", "--top-p", "0.9",
               "--seed", "1").rc == 0
    ran = cli("generate", model, "--top-k", "3", "--temperature", "0")
    assert_one_line_error(ran, "generate", "expected temperature > 0 with top_k or top_p")


def test_18_prefix_letters_a_d2l_model_cannot_read_are_named(earlier, cli):
    ran = cli("generate", earlier["train"], "--prefix", "中文 hello", "--length", "5")
    assert ran.rc == 0, ran.err
    assert len(ran.err_lines) == 1 and ran.err_lines[0].startswith(
        "bptt generate: warning: prefix letters the model's d2l normalisation drops")
    assert "2 ('中', '文')" in ran.err


# -- row 12: the series overflow ------------------------------------------------------------------


def test_12_a_series_whose_scale_overflows_is_refused(tmp_path, earlier, cli):
    run = copy_run(earlier, "series", tmp_path / "run")
    before = snapshot(run)
    csv = series_csv(tmp_path / "huge.csv", scale=1e300)
    ran = cli("series", "--csv", csv, "--column", "v", "--window", "5", *SINE, "--out", run,
              "--overwrite")
    assert_one_line_error(ran, "series", "within +-1e+140", "rescale the column")
    assert snapshot(run) == before


# -- row 13: a vocabulary of <unk> alone ----------------------------------------------------------


def test_13_min_freq_that_leaves_no_vocabulary_is_refused(tmp_path, earlier, cli):
    ran = cli("train", "--data", earlier["corpus"], "--out", tmp_path / "run", *TINY,
              "--tokenization", "word", "--min-freq", "1000")
    assert_one_line_error(ran, "train", "expected a vocabulary of tokens besides <unk>",
                          "lower --min-freq")
    assert not (tmp_path / "run").exists()


# -- row 15: evaluate says what it cannot read, and counts every token ----------------------------


def test_15_evaluate_counts_unknown_tokens_and_every_token(tmp_path, earlier, cli):
    text = tmp_path / "mostly_unknown.txt"
    text.write_text("hello world " * 5 + "xyz qvj " * 10, encoding="utf-8")
    ran = cli("evaluate", earlier["train"], "--data", text, "--json", "--batch-size", "7")
    assert ran.rc == 0, ran.err
    tokens = len("hello world " * 5 + "xyz qvj " * 10) - 1          # d2l: the last space goes
    result = json.loads(ran.out)
    assert result["tokens"] == tokens - 1                      # every token but the first
    (warning,) = ran.err_lines
    unknown = 60
    assert warning.startswith(f"bptt evaluate: warning: {unknown} of {tokens} tokens of ")
    assert f"({unknown / tokens:.1%}) are not in the vocabulary" in warning
    plain = cli("evaluate", earlier["train"], "--data", text)
    assert f"({unknown} of the text's {tokens} unknown to the vocabulary)" in plain.out


# -- row 16: --out naming a file ------------------------------------------------------------------


def test_16_out_naming_a_file_is_refused_before_any_work(tmp_path, earlier, cli):
    f = tmp_path / "notes.txt"
    f.write_text("mine\n")
    for verb, argv in (("train", ("train", "--data", earlier["corpus"], *TINY)),
                       ("sine", ("sine", *SINE)),
                       ("series", ("series", "--csv", earlier["csv"], "--column", "v",
                                   "--window", "5", *SINE)),
                       ("gradflow", ("gradflow",))):
        for extra in ((), ("--overwrite",)) if verb != "gradflow" else ((),):
            ran = cli(*argv, "--out", f, *extra)
            assert_one_line_error(ran, verb, f"expected --out to name a folder, got {f}",
                                  "which is a file")
            assert ran.out == ""                              # gradflow: nothing computed
    assert f.read_text() == "mine\n" and sorted(tmp_path.iterdir()) == [f]


# -- row 17: a user's text is kept as it is -------------------------------------------------------


def test_17_chinese_and_mixed_text_train_with_their_characters(tmp_path, make_corpus, cli):
    poem = make_corpus(POEM * 20, "poem.txt")
    mixed = make_corpus("Hello 世界, hello 中文! " * 30, "mixed.txt")
    for corpus, chars in ((poem, "床月"), (mixed, "世界H,!")):
        run = tmp_path / corpus.stem
        ran = cli("train", "--data", corpus, "--out", run, *TINY)
        assert ran.rc == 0 and "warning" not in ran.err, ran.err
        last = ck.load(run / "last.safetensors")
        assert last.text["normalization"] == "none" and last.config["normalization"] == "none"
        assert set(chars) <= set(last.vocab.idx_to_token)
    ran = cli("train", "--data", poem, "--out", tmp_path / "d2l", *TINY, "--normalization",
              "d2l")
    assert_one_line_error(ran, "train", "after d2l normalisation", "床",
                          "--normalization none keeps the text as it is")
    ran = cli("train", "--data", mixed, "--out", tmp_path / "mixed-d2l", *TINY,
              "--normalization", "d2l")
    assert ran.rc == 0
    assert [line for line in ran.err_lines if "warning" in line] == [
        f"bptt train: warning: d2l normalisation dropped 120 letters outside A-Z of {mixed} "
        f"(such as '世', '界', '中', '文'); --normalization none keeps the text as it is"]


def test_17_the_time_machine_keeps_the_books_normalisation():
    from bptt.cli import build_parser
    from bptt.cli.train import config_from_args
    from bptt.data import resolve_normalization

    for argv, want in ((["train"], "d2l"), (["train", "--data", "mine.txt"], "none"),
                       (["train", "--recipe", "d2l"], "d2l"),
                       (["train", "--recipe", "d2l", "--data", "mine.txt"], "d2l"),
                       (["train", "--data", "mine.txt", "--normalization", "d2l"], "d2l")):
        cfg = config_from_args(build_parser().parse_args(argv))
        assert resolve_normalization(cfg.normalization, cfg.data) == want, argv
    assert TrainConfig().normalization == "auto"


# -- row 20: --help shows every flag's default and meaning ----------------------------------------


def test_20_every_flag_of_every_verb_has_a_meaning_and_a_default(cli):
    from bptt.cli import VERBS, build_parser
    from bptt.cli.argtypes import HelpFormatter

    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "verb"]
    for verb in VERBS:
        p = sub.choices[verb]
        fmt = HelpFormatter(verb)
        for action in p._actions:
            if action.dest == "help":
                continue
            assert action.help, (verb, action.option_strings)
            if action.option_strings:
                text = fmt._get_help_string(action)
                assert "default" in text or "(required)" in text, (verb, action.dest, text)
    text = cli("train", "--help").out
    for shown in ("(default: 500)", "(default: 1.0)", "(default: sgd)", "(default: auto)",
                  "(default: 1.0)", "(default: off)", "--overwrite"):
        assert shown in " ".join(text.split()), shown


# -- row 21: checkpoints have the outputs' permissions and reach the disk -------------------------


def test_21_checkpoints_honour_the_umask_and_are_fsynced(tmp_path, earlier, monkeypatch,
                                                          cli):
    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    old = os.umask(0o027)
    try:
        ran = cli("train", "--data", earlier["corpus"], "--out", tmp_path / "run", *TINY)
    finally:
        os.umask(old)
    assert ran.rc == 0, ran.err
    mode = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "run").iterdir()}
    assert mode["last.safetensors"] == mode["metrics.jsonl"] == mode["perplexity.png"] == 0o640
    assert synced.count("file") == synced.count("folder") == 2     # last and best


# -- no failing command loses an earlier run ------------------------------------------------------


def _diverge(kind):
    return ("--optimizer", "sgd", "--lr", "1e6", "--clip", "none") if kind == "train" else (
        "--optimizer", "sgd", "--lr", "1e9")


FAILURES = {
    "no --overwrite": lambda kind, e, t: (),
    "a bad number": lambda kind, e, t: ("--overwrite", "--lr", "nan"),
    "an unknown device": lambda kind, e, t: ("--overwrite", "--device", "tpu"),
    "too big for memory": lambda kind, e, t: ("--overwrite", "--hidden-size", "10000000"),
    "bad data": lambda kind, e, t: ("--overwrite", *(
        ("--data", t / "missing.txt") if kind == "train" else
        ("--column", "missing") if kind == "series" else ("--warmup", "99"))),
    "diverged after the first step": lambda kind, e, t: ("--overwrite", *_diverge(kind)),
}


def _argv(kind: str, earlier: dict, out: Path) -> list:
    if kind == "train":
        return ["train", "--data", earlier["corpus"], *TINY, "--out", out]
    if kind == "sine":
        return ["sine", *SINE, "--out", out]
    return ["series", "--csv", earlier["csv"], "--column", "v", "--window", "5", *SINE,
            "--out", out]


@pytest.mark.parametrize("failure", list(FAILURES))
@pytest.mark.parametrize("kind", ["train", "sine", "series"])
def test_no_failing_command_loses_an_earlier_run(tmp_path, earlier, cli, kind, failure):
    run = copy_run(earlier, kind, tmp_path / "run")
    before = snapshot(run)
    argv = _argv(kind, earlier, run)
    if kind == "series" and failure == "bad data":
        argv[argv.index("--column") + 1] = "missing"
        extra = ("--overwrite",)
    else:
        extra = FAILURES[failure](kind, earlier, tmp_path)
    ran = cli(*argv, *extra)
    assert ran.rc in (2, 3) and "Traceback" not in ran.err, ran.err
    errors = [line for line in ran.err_lines if ": error: " in line]
    assert len(errors) == 1 and errors[0].startswith(f"bptt {kind}: error: "), ran.err
    kept = [run] + sorted(tmp_path.glob("run.previous-*"))
    assert before in [snapshot(folder) for folder in kept], "the earlier run was lost"
    assert (ran.rc == 3) == (failure == "diverged after the first step")
    assert_no_litter(tmp_path)


def test_no_crash_in_the_first_step_loses_an_earlier_run(tmp_path, earlier, cli, monkeypatch):
    run = copy_run(earlier, "train", tmp_path / "run")
    before = snapshot(run)

    def crash(*args, **kwargs):
        raise MemoryError("the first step ran out of memory")

    real = train_mod.get_engine

    def engine_that_crashes(*args, **kwargs):
        engine = real(*args, **kwargs)
        engine.loss_and_grads = crash
        return engine

    monkeypatch.setattr(train_mod, "get_engine", engine_that_crashes)
    with pytest.raises(MemoryError):
        cli("train", "--data", earlier["corpus"], *TINY, "--out", run, "--overwrite")
    assert snapshot(run) == before and sorted(tmp_path.iterdir()) == [run]


def test_ctrl_c_in_the_first_epoch_of_an_overwrite_keeps_both_runs(tmp_path, earlier,
                                                                   monkeypatch, cli):
    from conftest import StopAfter

    run = copy_run(earlier, "train", tmp_path / "run")
    before = snapshot(run)
    monkeypatch.setattr(train_mod, "StopFlag", lambda: StopAfter(1))
    ran = cli("train", "--data", earlier["corpus"], *TINY, "--out", run, "--overwrite")
    assert ran.rc == 130, ran.err
    (aside,) = tmp_path.glob("run.previous-*")
    assert snapshot(aside) == before
    assert ck.load(run / "last.safetensors").train["batch"] > 0     # the new run, resumable
