"""``--tensorboard`` on train, sine and series: the event files read back with TensorBoard's
own reader hold the run's numbers (those of metrics.jsonl): losses, perplexities, validation,
speed, lr, every step's gradient norm before and after clipping, per-parameter gradient-norm
histograms and the generated samples. A resumed run continues the steps; a missing extra is a
one-line error before anything is written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import HELLO, Ran, StopAfter, quiet, subprocess_env, tiny_config

pytestmark = pytest.mark.usefixtures("no_network")

TINY = ("--hidden-size", "16", "--batch-size", "4", "--num-steps", "10", "--optimizer", "adam",
        "--lr", "0.02", "--progress", "log")


def events(folder: Path):
    """TensorBoard's own reader over every event file in ``folder``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0,
                                                       "tensors": 0})
    acc.Reload()
    return acc


def scalars(acc, tag: str) -> tuple[list[int], np.ndarray]:
    got = acc.Scalars(tag)
    return [e.step for e in got], np.array([e.value for e in got])


def metrics(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == kind]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "hello.txt"
    path.write_text(HELLO, encoding="utf-8")
    return path


def test_train_logs_every_number_of_the_run(tmp_path, corpus, cli):
    run = tmp_path / "run"
    ran = cli("train", "--data", corpus, "--out", run, *TINY, "--epochs", "4", "--val-frac",
              "0.2", "--sample-every", "2", "--sample-prefix", "hello", "--tensorboard")
    assert ran.rc == 0, ran.err
    acc = events(run / "tensorboard")
    epochs, steps = metrics(run, "epoch"), metrics(run, "step")
    per_epoch = epochs[0]["steps"]
    ends = [per_epoch * (k + 1) for k in range(len(epochs))]
    for key, tag in (("loss", "train/loss"), ("perplexity", "train/perplexity"),
                     ("val_loss", "val/loss"), ("val_perplexity", "val/perplexity"),
                     ("tokens_per_s", "speed/tokens_per_s"), ("lr", "lr"),
                     ("epoch", "epoch")):
        at, values = scalars(acc, tag)
        assert at == ends, tag
        np.testing.assert_allclose(values, [e[key] for e in epochs], rtol=1e-6, err_msg=tag)
    for key, tag in (("grad_norm", "grad_norm/before_clip"),
                     ("grad_norm_clipped", "grad_norm/after_clip")):
        at, values = scalars(acc, tag)
        assert at == list(range(1, len(steps) + 1)), tag
        np.testing.assert_allclose(values, [s[key] for s in steps], rtol=1e-6, err_msg=tag)

    # one histogram per parameter and epoch, over the epoch's steps; no parameter's gradient
    # norm exceeds the global norm of the same step
    names = {"weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "head.weight",
             "head.bias"}
    assert set(acc.Tags()["histograms"]) == {f"grad_norm/{n}" for n in names}
    top = max(s["grad_norm"] for s in steps)
    for name in names:
        hist = acc.Histograms(f"grad_norm/{name}")
        assert [h.step for h in hist] == ends
        assert all(h.histogram_value.num == per_epoch for h in hist)
        assert all(0 < h.histogram_value.max <= top * (1 + 1e-6) for h in hist)

    samples = acc.Tensors("sample/text_summary")
    assert [s.step for s in samples] == [ends[1], ends[3]]
    text = samples[-1].tensor_proto.string_val[0].decode()
    assert text.startswith("hello") and text in ran.out


def test_a_resumed_run_continues_the_steps(tmp_path, corpus, monkeypatch):
    """Stopped inside epoch 3 (Ctrl-C), then resumed to 4 epochs: one value per step, the
    steps numbered on from where the run stopped, the values those of metrics.jsonl."""
    from bptt.lm import train as lm_train

    run = tmp_path / "run"
    cfg = tiny_config(corpus, run, epochs=4)
    per_epoch = lm_train.train(tiny_config(corpus, tmp_path / "probe", epochs=1),
                               log=quiet).last["steps"]
    monkeypatch.setattr(lm_train, "StopFlag", lambda: StopAfter(2 * (per_epoch + 1) + 3))
    first = lm_train.train(cfg, log=quiet, tensorboard=True)
    assert first.interrupted and first.epochs == 2
    monkeypatch.undo()
    lm_train.train(cfg, resume=True, log=quiet, tensorboard=True)
    acc = events(run / "tensorboard")
    at, values = scalars(acc, "train/loss")
    assert at == [per_epoch * k for k in (1, 2, 3, 4)]
    np.testing.assert_allclose(values, [e["loss"] for e in metrics(run, "epoch")], rtol=1e-6)
    at, _ = scalars(acc, "grad_norm/before_clip")
    assert at == list(range(1, 4 * per_epoch + 1))
    assert len(list((run / "tensorboard").iterdir())) == 2          # one event file per process


def test_sine_and_series_log_their_fit(tmp_path, cli):
    out = tmp_path / "sine"
    ran = cli("sine", "--out", out, "--iterations", "120", "--log-every", "50", "--tensorboard")
    assert ran.rc == 0, ran.err
    acc = events(out / "tensorboard")
    steps = metrics(out, "step")
    (summary,) = metrics(out, "summary")
    at, values = scalars(acc, "train/mse")
    assert at == list(range(1, 121))
    np.testing.assert_allclose(values, [s["mse"] for s in steps], rtol=1e-6)
    _, values = scalars(acc, "grad_norm/after_clip")
    np.testing.assert_allclose(values, [s["grad_norm_clipped"] for s in steps], rtol=1e-6)
    hist = acc.Histograms("grad_norm/weight_hh_l0")
    assert [h.step for h in hist] == [50, 100, 120]
    assert [h.histogram_value.num for h in hist] == [50, 50, 20]
    (warm,) = acc.Scalars("summary/eval_mse_after_warmup")
    assert warm.step == 120 and warm.value == pytest.approx(summary["eval_mse_after_warmup"],
                                                            rel=1e-6)

    csv = tmp_path / "level.csv"
    t = np.arange(300)
    csv.write_text("level\n" + "".join(f"{10 + 3 * np.sin(x / 6):.5f}\n" for x in t))
    board = tmp_path / "boards" / "series"
    ran = cli("series", "--csv", csv, "--column", "level", "--iterations", "60", "--out",
              tmp_path / "series", "--tensorboard", board)
    assert ran.rc == 0, ran.err
    acc = events(board)
    (val,) = acc.Scalars("summary/val_mse")
    (summary,) = metrics(tmp_path / "series", "summary")
    assert val.value == pytest.approx(summary["val_mse"], rel=1e-6)
    assert len(acc.Scalars("train/mse")) == 60
    assert not (tmp_path / "series" / "tensorboard").exists()


def test_without_tensorboardx_the_flag_names_its_extra(tmp_path, corpus):
    code = ("import sys; sys.modules['tensorboardX'] = None; from bptt.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    for argv in (("train", "--data", corpus, "--out", tmp_path / "run", *TINY, "--tensorboard"),
                 ("sine", "--out", tmp_path / "sine", "--tensorboard")):
        done = subprocess.run([sys.executable, "-c", code, *map(str, argv)],
                              capture_output=True, text=True, timeout=120,
                              env=subprocess_env(MPLBACKEND="Agg"))
        ran = Ran(done.returncode, done.stdout, done.stderr)
        assert ran.rc == 2 and len(ran.err_lines) == 1, ran.err
        assert "pip install 'bptt[tensorboard]'" in ran.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hello.txt"]  # nothing written
