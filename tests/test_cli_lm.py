"""The language-model job through the ``bptt`` command: train, resume (also after Ctrl-C),
generate, evaluate, recipes, and bad input answered with one line and no traceback."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from bptt import checkpoint as ck
from bptt.data import sha1_of
from bptt.lm.train import train
from conftest import HELLO, bptt_command, quiet, subprocess_env, tiny_config

pytestmark = pytest.mark.usefixtures("no_network")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
POEM = "床前明月光，疑是地上霜。举头望明月，低头思故乡。\n"
# Small and fast; the flags every test run shares.
TINY = ("--hidden-size", "16", "--batch-size", "4", "--num-steps", "10", "--optimizer", "adam",
        "--lr", "0.02", "--sample-every", "0", "--progress", "log")


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def assert_one_line_error(ran, verb: str) -> None:
    assert ran.rc != 0, ran
    assert "Traceback" not in ran.err, ran.err
    assert len(ran.err_lines) == 1, ran.err
    assert ran.err_lines[0].startswith(f"bptt {verb}: error: "), ran.err


@pytest.fixture
def hello_model(hello_run: Path) -> Path:
    """The run folder of conftest's ``hello_run`` (shared, read-only)."""
    return hello_run / "run"


# -- bad input: one line on stderr, no traceback, nothing half-written -------------------------


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return _write(path, b"\x00\x01 definitely not a safetensors file" * 20)


def _truncate_copy(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    return _write(dst, data[: len(data) // 3])


def _regression_checkpoint(path: Path) -> Path:
    from bptt.model import ModelSpec, init_params

    spec = ModelSpec(input_size=3, hidden_size=4, output_size=1, task="regression")
    return ck.save(ck.Checkpoint(spec=spec, params=init_params(spec, rng=0)), path)


def _wrong_timemachine(tmp: Path) -> dict:
    folder = tmp / "bad-cache"
    folder.mkdir()
    (folder / "timemachine.txt").write_text("not the time machine\n")
    return {"BPTT_DATA_DIR": str(folder)}


# Each case: (verb, a function of (tmp, hello corpus, hello model) -> (argv, extra env),
# a fragment of the expected message).
BAD_INPUT = {
    "empty file": ("train", lambda t, c, m: (
        ["train", "--data", _write(t / "empty.txt", b""), "--out", t / "out", *TINY], {}),
        "is empty"),
    "one character": ("train", lambda t, c, m: (
        ["train", "--data", _write(t / "one.txt", b"a"), "--out", t / "out", *TINY], {}),
        "at least 2 tokens"),
    "not UTF-8": ("train", lambda t, c, m: (
        ["train", "--data", _write(t / "latin1.txt", "café olé ".encode("latin-1") * 50),
         "--out", t / "out", *TINY], {}),
        "expected a UTF-8 text file"),
    "no such data file": ("train", lambda t, c, m: (
        ["train", "--data", t / "missing.txt", "--out", t / "out", *TINY], {}),
        "no such file"),
    "num-steps longer than the corpus": ("train", lambda t, c, m: (
        ["train", "--data", c, "--out", t / "out", *TINY, "--num-steps", "1000"], {}),
        "lower --batch-size or --num-steps"),
    "validation fraction too large": ("train", lambda t, c, m: (
        ["train", "--data", c, "--out", t / "out", *TINY, "--val-frac", "0.9"], {}),
        "validation fraction"),
    "zero epochs": ("train", lambda t, c, m: (
        ["train", "--data", c, "--out", t / "out", *TINY, "--epochs", "0"], {}),
        "expected epochs >= 1"),
    "resume without a checkpoint": ("train", lambda t, c, m: (
        ["train", "--resume", "--out", t / "out", *TINY], {}),
        "to resume from, found none"),
    "resume from a corrupted checkpoint": ("train", lambda t, c, m: (
        ["train", "--resume", "--out", _corrupt(t / "out" / "last.safetensors").parent, *TINY],
        {}), "unreadable"),
    "resume from a checkpoint that is no training run": ("train", lambda t, c, m: (
        ["train", "--resume", "--out",
         _regression_checkpoint(t / "out" / "last.safetensors").parent], {}),
        "expected a language-model training checkpoint"),
    "registered corpus with the wrong SHA-1": ("train", lambda t, c, m: (
        ["train", "--data", "timemachine", "--out", t / "out", *TINY], _wrong_timemachine(t)),
        "SHA-1"),
    "generate: missing checkpoint": ("generate", lambda t, c, m: (
        ["generate", t / "out" / "nothing.safetensors"], {}), "no such file"),
    "generate: empty run folder": ("generate", lambda t, c, m: (
        ["generate", (t / "out").mkdir() or t / "out"], {}), "found neither"),
    "generate: corrupted checkpoint": ("generate", lambda t, c, m: (
        ["generate", _corrupt(t / "out" / "x.safetensors")], {}), "unreadable"),
    "generate: truncated checkpoint": ("generate", lambda t, c, m: (
        ["generate", _truncate_copy(m / "last.safetensors", t / "cut.safetensors")], {}),
        "unreadable"),
    "generate: not a language model": ("generate", lambda t, c, m: (
        ["generate", _regression_checkpoint(t / "reg.safetensors")], {}),
        "expected a language-model checkpoint"),
    "generate: empty prefix": ("generate", lambda t, c, m: (
        ["generate", m, "--prefix", ""], {}), "at least one token"),
    "generate: negative length": ("generate", lambda t, c, m: (
        ["generate", m, "--length", "-3"], {}), "length >= 0"),
    "evaluate: missing checkpoint": ("evaluate", lambda t, c, m: (
        ["evaluate", t / "nothing", "--data", c], {}), "no such file"),
    "evaluate: corrupted checkpoint": ("evaluate", lambda t, c, m: (
        ["evaluate", _corrupt(t / "out" / "best.safetensors").parent, "--data", c], {}),
        "unreadable"),
    "evaluate: empty text": ("evaluate", lambda t, c, m: (
        ["evaluate", m, "--data", _write(t / "empty.txt", b"")], {}), "is empty"),
    "evaluate: wrong SHA-1": ("evaluate", lambda t, c, m: (
        ["evaluate", m, "--data", "timemachine"], _wrong_timemachine(t)), "SHA-1"),
    "evaluate: zero steps": ("evaluate", lambda t, c, m: (
        ["evaluate", m, "--data", c, "--num-steps", "0"], {}), "num_steps"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_without_traceback(tmp_path, hello_corpus, hello_model,
                                                 cli_process, case):
    verb, build, fragment = BAD_INPUT[case]
    argv, env = build(tmp_path, hello_corpus, hello_model)
    out = tmp_path / "out"
    before = files_under(out)
    model_before = files_under(hello_model)
    ran = cli_process(*argv, **env)
    assert_one_line_error(ran, verb)
    assert ran.rc == 2
    assert fragment in ran.err_lines[0], ran.err
    assert files_under(out) == before  # nothing written, nothing half-written
    assert files_under(hello_model) == model_before
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith((".tmp", ".part"))]


def test_diverging_run_exits_3_and_keeps_finite_parameters(tmp_path, hello_corpus, cli_process):
    ran = cli_process("train", "--data", hello_corpus, "--out", tmp_path / "run", *TINY,
                      "--optimizer", "sgd", "--lr", "1e6", "--clip", "none", "--epochs", "3")
    assert ran.rc == 3
    assert "Traceback" not in ran.err
    errors = [line for line in ran.err_lines if "error" in line]
    assert len(errors) == 1 and errors[0] == ran.err_lines[-1]
    assert errors[0].startswith("bptt train: error: loss became")
    last = ck.load(tmp_path / "run" / "last.safetensors")
    assert all(np.isfinite(v).all() for v in last.params.values())
    assert files_under(tmp_path / "run") == ["last.safetensors", "metrics.jsonl"]


# -- Ctrl-C: a real SIGINT to a real process, then --resume -------------------------------------


@pytest.fixture
def big_corpus(make_corpus) -> Path:
    """About 117,000 characters of word salad: an epoch of a tiny model takes about a second."""
    rng = random.Random(0)
    words = "the time traveller said machine four dimensions space we sat looking at him".split()
    return make_corpus(" ".join(rng.choice(words) for _ in range(20_000)), "big.txt")


@pytest.mark.skipif(os.name == "nt", reason="SIGINT to a child process is POSIX")
def test_ctrl_c_saves_a_checkpoint_and_resume_finishes_the_same_run(tmp_path, big_corpus,
                                                                    cli_process):
    flags = ("--hidden-size", "32", "--batch-size", "4", "--num-steps", "10", "--optimizer",
             "adam", "--lr", "0.01", "--epochs", "2", "--sample-every", "0", "--progress", "log")
    run = tmp_path / "interrupted"
    proc = subprocess.Popen(bptt_command("train", "--data", big_corpus, "--out", run, *flags),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            encoding="utf-8", env=subprocess_env())
    try:
        first = proc.stderr.readline()         # logged once Ctrl-C is handled by the loop
        assert first.startswith("training"), first
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted in epoch" in err, err
    stopped = ck.load(run / "last.safetensors")     # a valid checkpoint, written atomically
    assert stopped.train["batch"] > 0 and stopped.state is not None
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]

    resumed = cli_process("train", "--resume", "--out", run, "--progress", "log")
    assert resumed.rc == 0, resumed.err
    assert "epochs 2..2" in resumed.err or "epochs 1..2" in resumed.err

    train(tiny_config(big_corpus, tmp_path / "straight", hidden_size=32, lr=0.01, epochs=2),
          log=quiet)
    a, b = ck.load(run / "last.safetensors"), ck.load(tmp_path / "straight" / "last.safetensors")
    assert a.train["epoch"] == b.train["epoch"] == 2
    assert a.train["optim_scalars"] == b.train["optim_scalars"]
    for name in b.params:
        np.testing.assert_allclose(a.params[name], b.params[name], rtol=1e-5, atol=1e-6)
    for name in b.optim:
        np.testing.assert_allclose(a.optim[name], b.optim[name], rtol=1e-5, atol=1e-7)


# -- resume and recipes through the command line -------------------------------------------------


def test_resume_continues_to_the_checkpoints_epochs_unless_told(tmp_path, hello_corpus, cli):
    run = tmp_path / "run"
    assert cli("train", "--data", hello_corpus, "--out", run, *TINY, "--epochs", "3").rc == 0
    again = cli("train", "--resume", "--out", run)
    assert again.rc == 0 and "already trained 3 epochs" in again.err
    more = cli("train", "--resume", "--out", run, "--epochs", "5", "--clip", "3", "--progress",
               "log")
    assert more.rc == 0
    assert more.err_lines[0].startswith("bptt train: warning: --clip ignored with --resume")
    last = ck.load(run / "last.safetensors")
    assert last.train["epoch"] == 5 and last.config["epochs"] == 5
    assert last.train["lr"] == 0.02 and last.config["lr"] == 0.02 and last.config["clip"] == 1
    given = cli("train", "--resume", "--out", run, "--epochs", "6", "--lr", "7", "--progress",
                "log")                               # --lr given explicitly takes effect
    assert given.rc == 0 and "warning" not in given.err
    assert "lr 7 from now on (the checkpoint's was 0.02)" in given.err
    last = ck.load(run / "last.safetensors")
    assert last.train["lr"] == 7 and last.config["lr"] == 7
    assert [m["lr"] for m in last.metrics] == [0.02] * 5 + [7]


def test_resume_from_another_folder_after_a_relative_data_path(tmp_path, hello_corpus, cli,
                                                               monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "text.txt").write_bytes(hello_corpus.read_bytes())
    monkeypatch.chdir(work)
    assert cli("train", "--data", "text.txt", "--out", "run", *TINY, "--epochs", "2").rc == 0
    saved = ck.load(work / "run" / "last.safetensors")
    assert saved.config["data"] == str((work / "text.txt").resolve())
    assert saved.train["data_sha1"] == {"data": sha1_of(work / "text.txt")}
    monkeypatch.chdir(tmp_path)
    ran = cli("train", "--resume", "--out", work / "run", "--epochs", "3")
    assert ran.rc == 0, ran.err
    assert ck.load(work / "run" / "last.safetensors").train["epoch"] == 3


def test_resume_reads_the_same_text_or_says_where_it_went(tmp_path, hello_corpus, cli):
    text, moved, run = tmp_path / "text.txt", tmp_path / "moved.txt", tmp_path / "run"
    text.write_bytes(hello_corpus.read_bytes())
    assert cli("train", "--data", text, "--out", run, *TINY, "--epochs", "2").rc == 0
    text.rename(moved)
    ran = cli("train", "--resume", "--out", run, "--epochs", "3")
    assert_one_line_error(ran, "train")
    assert "no such file" in ran.err and "give its new place with --resume --data PATH" in ran.err
    assert ck.load(run / "last.safetensors").train["epoch"] == 2          # nothing written

    ran = cli("train", "--resume", "--out", run, "--epochs", "3", "--data", moved)
    assert ran.rc == 0 and "warning" not in ran.err, ran.err
    last = ck.load(run / "last.safetensors")
    assert last.train["epoch"] == 3 and last.config["data"] == str(moved.resolve())

    moved.write_text(HELLO + "and more\n", encoding="utf-8")              # edited since
    ran = cli("train", "--resume", "--out", run, "--epochs", "4")
    assert_one_line_error(ran, "train")
    assert "expected --data to be the text this run was trained on (SHA-1 " in ran.err
    assert ck.load(run / "last.safetensors").train["epoch"] == 3


def test_resume_drops_metric_lines_written_after_its_checkpoint(tmp_path, hello_corpus, cli):
    """A process killed after writing an epoch's metric lines but before its checkpoint: the
    resume repeats that epoch, and metrics.jsonl holds each epoch once."""
    run = tmp_path / "run"
    assert cli("train", "--data", hello_corpus, "--out", run, *TINY, "--epochs", "2").rc == 0
    at_two = (run / "last.safetensors").read_bytes()
    assert cli("train", "--resume", "--out", run, "--epochs", "3").rc == 0
    (run / "last.safetensors").write_bytes(at_two)                      # the kill
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"kind": "step", "epoch": 3, "st')                     # a line cut short

    assert cli("train", "--resume", "--out", run, "--epochs", "3").rc == 0
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in recs if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    for e in epochs:
        steps = [r["step"] for r in recs if r["kind"] == "step" and r["epoch"] == e["epoch"]]
        assert steps == list(range(1, e["steps"] + 1))

    (run / "metrics.jsonl").unlink()                                     # gone: rebuilt
    assert cli("train", "--resume", "--out", run, "--epochs", "4").rc == 0
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs if r["kind"] == "epoch"] == [1, 2, 3, 4]


def test_recipe_keeps_its_settings_under_explicit_overrides(tmp_path, data_dir, cli):
    run = tmp_path / "d2l"
    ran = cli("train", "--recipe", "d2l", "--epochs", "1", "--hidden-size", "32", "--out", run,
              "--sample-every", "0", "--progress", "log")
    assert ran.rc == 0, ran.err
    config = ck.load(run / "last.safetensors").config
    assert config["epochs"] == 1 and config["hidden_size"] == 32          # the overrides
    assert config["init"] == "d2l" and config["max_tokens"] == 10_000     # the recipe
    assert config["lr"] == 1.0 and config["clip"] == 1.0 and config["optimizer"] == "sgd"
    assert config["batch_size"] == 32 and config["num_steps"] == 35
    assert config["data"] == "timemachine" and config["normalization"] == "d2l"


def test_recipe_override_equal_to_the_default_still_wins(tmp_path, cli):
    from bptt.cli import build_parser
    from bptt.cli.train import config_from_args

    args = build_parser().parse_args(["train", "--recipe", "d2l", "--init", "torch",
                                      "--hidden-size", "512", "--lr", "0.5"])
    cfg = config_from_args(args)
    assert cfg.init == "torch"            # the parser's default, given explicitly
    assert cfg.lr == 0.5 and cfg.hidden_size == 512 and cfg.max_tokens == 10_000
    plain = config_from_args(build_parser().parse_args(["train", "--recipe", "d2l"]))
    assert plain.init == "d2l" and plain.epochs == 500


# -- metrics and validation through the command line ----------------------------------------------


def test_validation_split_metrics_and_plot(tmp_path, hello_corpus, cli):
    run = tmp_path / "run"
    ran = cli("train", "--data", hello_corpus, "--out", run, *TINY, "--val-frac", "0.1",
              "--epochs", "3", "--clip", "0.5")
    assert ran.rc == 0, ran.err
    assert "validation perplexity" in ran.out
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert all(r["val_perplexity"] >= 1 for r in epochs)
    steps = [r for r in records if r["kind"] == "step"]
    assert steps and all(s["grad_norm_clipped"] <= 0.5 for s in steps)
    assert {r["kind"] for r in records} == {"epoch", "step"}
    assert (run / "perplexity.png").read_bytes()[:8] == PNG_SIGNATURE
    assert sorted(files_under(run)) == ["best.safetensors", "grad_norms.png", "last.safetensors",
                                        "metrics.jsonl", "perplexity.png"]


# -- generate and evaluate -----------------------------------------------------------------------


def test_generate_is_greedy_by_default_and_seeded_sampling_repeats(hello_model, cli):
    ran = cli("generate", hello_model, "--prefix", "hello ", "--length", "12")
    assert ran.rc == 0 and ran.err == ""
    assert ran.out == "hello world hello \n"
    args = ("generate", hello_model, "--prefix", "wo", "--length", "30", "--temperature", "1.2",
            "--seed", "3", "--num-samples", "3")
    a, b = cli(*args), cli(*args)
    assert a.rc == 0 and a.out == b.out and len(a.out.splitlines()) == 3
    assert cli("generate", hello_model, "--prefix", "wo", "--length", "30", "--temperature", "9",
               "--top-k", "1", "--seed", "4").out == cli(
        "generate", hello_model, "--prefix", "wo", "--length", "30").out


def test_evaluate_json_is_valid_and_bits_are_log2_perplexity(hello_model, hello_corpus, cli):
    ran = cli("evaluate", hello_model, "--data", hello_corpus, "--json", "--batch-size", "4",
              "--num-steps", "10")
    assert ran.rc == 0, ran.err
    result = json.loads(ran.out)
    assert set(result) == {"loss", "perplexity", "bits_per_token", "tokens", "text_tokens",
                           "unknown", "unknown_share", "seconds", "tokens_per_s"}
    assert result["perplexity"] < 1.2
    assert result["bits_per_token"] == pytest.approx(math.log2(result["perplexity"]))
    text = cli("evaluate", hello_model, "--data", hello_corpus)
    assert text.rc == 0 and text.out.startswith("perplexity ") and "bits per token" in text.out


def test_chinese_corpus_end_to_end(tmp_path, make_corpus, cli):
    corpus = make_corpus(POEM * 30, "poem.txt")
    run = tmp_path / "poem"
    ran = cli("train", "--data", corpus, "--normalization", "none", "--out", run, *TINY,
              "--hidden-size", "32", "--epochs", "15", "--sample-prefix", "床前")
    assert ran.rc == 0, ran.err
    gen = cli("generate", run, "--prefix", "举头", "--length", "10")
    assert gen.rc == 0 and gen.err == ""
    assert gen.out == "举头望明月，低头思故乡。\n"      # one character = one token
    ev = cli("evaluate", run, "--data", corpus, "--json")
    assert ev.rc == 0 and json.loads(ev.out)["perplexity"] < 1.5


def test_unknown_prefix_characters_are_a_one_line_warning(tmp_path, make_corpus, cli):
    corpus = make_corpus("Hello, World! " * 60)
    run = tmp_path / "en"
    assert cli("train", "--data", corpus, "--normalization", "none", "--out", run, *TINY,
               "--epochs", "1").rc == 0
    ran = cli("generate", run, "--prefix", "时间 Hello", "--length", "4")
    assert ran.rc == 0
    assert len(ran.err_lines) == 1
    assert ran.err_lines[0].startswith("bptt generate: warning: prefix tokens not in the "
                                       "vocabulary")
    assert "'时'" in ran.err and "'间'" in ran.err
    assert ran.out.startswith("时间 Hello")


# -- the whole job on The Time Machine ------------------------------------------------------------


def test_the_whole_job_on_the_time_machine(tmp_path, data_dir, cli_process):
    run = tmp_path / "tm"
    flags = ("--data", "timemachine", "--out", run, "--hidden-size", "32", "--optimizer",
             "adam", "--lr", "0.01", "--sample-every", "0", "--progress", "log")
    first = cli_process("train", *flags, "--epochs", "2")
    assert first.rc == 0, first.err
    assert "perplexity" in first.out
    resumed = cli_process("train", "--resume", "--out", run, "--epochs", "3", "--progress",
                          "log")
    assert resumed.rc == 0, resumed.err
    assert "epochs 3..3" in resumed.err
    metrics = ck.load(run / "last.safetensors").metrics
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert metrics[-1]["perplexity"] < metrics[0]["perplexity"] < 28  # better than uniform

    gen = cli_process("generate", run, "--length", "40")
    assert gen.rc == 0 and gen.err == ""
    line = gen.out.rstrip("\n")
    assert line.startswith("time traveller ") and len(line) == len("time traveller ") + 40
    assert set(line) <= set("abcdefghijklmnopqrstuvwxyz ")

    ev = cli_process("evaluate", run, "--data", "timemachine", "--json")
    assert ev.rc == 0, ev.err
    result = json.loads(ev.out)
    assert 1 < result["perplexity"] < 20 and result["tokens"] > 150_000
    assert result["bits_per_token"] == pytest.approx(math.log2(result["perplexity"]))


def test_demo_runs_end_to_end(tmp_path, data_dir, cli):
    ran = cli("demo", "--epochs", "1", "--out", tmp_path / "demo")
    assert ran.rc == 0, ran.err
    lines = ran.out.splitlines()
    assert lines[0].startswith("perplexity ") and lines[-1].startswith("plots: ")
    assert (tmp_path / "demo" / "best.safetensors").is_file()


@pytest.mark.parametrize("engine", ["numpy", "torch"])
def test_a_projected_lstm_trains_resumes_generates_and_exports(tmp_path, hello_corpus, cli,
                                                               engine):
    """--proj-size through the whole job: h_t has P features, the head and a tied embedding
    read them; TorchScript exports it, ONNX says in one line that it has no projection and
    leaves the run as it was."""
    run = tmp_path / "run"
    ran = cli("train", "--data", hello_corpus, "--out", run, *TINY, "--cell", "lstm",
              "--num-layers", "2", "--proj-size", "5", "--tie-weights", "--engine", engine,
              "--epochs", "3")
    assert ran.rc == 0, ran.err
    saved = ck.load(run / "last.safetensors")
    assert saved.spec.proj_size == 5 and saved.spec.embedding_size == 5
    assert saved.params["weight_hr_l1"].shape == (5, 16)
    assert saved.params["weight_hh_l0"].shape == (64, 5) and "head.weight" not in saved.params
    assert saved.metrics[-1]["perplexity"] < saved.metrics[0]["perplexity"]
    assert cli("train", "--resume", "--out", run, "--epochs", "4").rc == 0
    assert cli("generate", run, "--prefix", "hello", "--length", "10").rc == 0
    before = sorted(p.name for p in run.iterdir())
    assert cli("export", run, "--format", "torchscript", "--out", tmp_path / "m.pt").rc == 0
    out = tmp_path / "model.onnx"
    refused = cli("export", run, "--format", "onnx", "--out", out)
    assert refused.rc == 2 and len(refused.err_lines) == 1
    assert "ONNX's LSTM operator has no projection" in refused.err
    assert not out.exists() and sorted(p.name for p in run.iterdir()) == before
