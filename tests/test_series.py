"""Sequence regression: ``bptt sine`` (the seed's experiment) and ``bptt series`` (a CSV column):
training results, outputs, checkpoints, determinism, and one-line errors for bad CSV files."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bptt import checkpoint as ck
from bptt.series import SineConfig, core, read_column, sine_window, split_series, train_sine
from bptt.series.csvseries import SeriesError, min_length
from conftest import StopAfter, bptt_command, run_cli, subprocess_env


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- bptt sine ---------------------------------------------------------------------------------
def test_sine_default_run_reaches_the_seed_quality(tmp_path, capsys):
    """The full default (5000 iterations, H=10 tanh RNN, Adam 1e-3, state carried, seed 0),
    about 1-2 s: the MSE after the default 3 warm-up predictions is below 1e-3 (3.3e-4).

    The whole-window MSE cannot get there with these settings: the first prediction of a
    window sees one value of a sine (which does not fix its phase) and a state from another
    window, and its error stays near 3e-2 even after 20,000 iterations (docs/results.md). The
    test pins that profile too: the first prediction is far worse than the scored ones.
    """
    out = tmp_path / "sine"
    rc, stdout, err = run_cli(capsys, "sine", "--out", out)
    assert rc == 0, err
    iters = [line for line in stdout.splitlines() if line.startswith("iter")]
    assert len(iters) == 51                               # 0, 100, ..., 4900 and the last
    summary = records(out / "metrics.jsonl")[-1]
    assert summary["kind"] == "summary" and summary["iterations"] == 5000
    assert summary["final_mse"] < 1e-2
    assert summary["warmup"] == 3 and summary["eval_windows"] == 9
    assert summary["eval_mse_after_warmup"] < 1e-3
    per_step = np.array(summary["per_step_mse"])
    assert per_step.shape == (19,)
    assert per_step[0] > 30 * summary["eval_mse_after_warmup"]
    assert summary["eval_mse"] == pytest.approx(per_step.mean(), rel=1e-9)
    assert summary["eval_mse_after_warmup"] == pytest.approx(per_step[3:].mean(), rel=1e-9)
    headline = float(re.search(r"^mse (\S+) after 3 warm-up steps", stdout, re.M).group(1))
    assert headline == pytest.approx(summary["eval_mse_after_warmup"], rel=1e-3)
    assert summary["forecast_mse"] < 0.1                  # 60 points fed back, still in phase
    printed = float(re.search(r"final training mse (\S+)", stdout).group(1))
    assert printed == pytest.approx(summary["final_mse"], rel=1e-3)
    steps = [r for r in records(out / "metrics.jsonl") if r["kind"] == "step"]
    assert len(steps) == 5000
    first = np.mean([r["mse"] for r in steps[:100]])
    assert first > 50 * summary["final_mse"]
    for name in ("sine_fit.png", "sine_forecast.png", "grad_norms.png"):
        assert (out / name).stat().st_size > 10_000

    c = ck.load(out / "last.safetensors")
    assert c.spec.task == "regression" and c.vocab is None
    assert (c.spec.cell, c.spec.hidden_size, c.spec.input_size, c.spec.output_size) == \
        ("rnn", 10, 1, 1)
    assert c.config["kind"] == "sine" and c.config["iterations"] == 5000
    assert c.state is not None and c.state[0].shape == (1, 1, 10)
    assert any(k.startswith("exp_avg.") for k in c.optim)
    # the saved model is the trained one: it predicts the sine from the saved state
    from bptt.engine import get_engine
    from bptt.series.core import one_step

    engine = get_engine("numpy", c.spec)
    _, v = sine_window(1)
    pred, _ = one_step(engine, engine.from_numpy(c.params), v[:-1], c.state[0])
    assert np.mean((pred[3:] - v[4:]) ** 2) < 1e-3


def test_sine_is_deterministic_and_the_seed_matters(tmp_path):
    kw = dict(iterations=150, log_every=50)
    a = train_sine(SineConfig(out=str(tmp_path / "a"), **kw), log=None)
    b = train_sine(SineConfig(out=str(tmp_path / "b"), **kw), log=None)
    c = train_sine(SineConfig(out=str(tmp_path / "c"), seed=1, **kw), log=None)
    np.testing.assert_array_equal(a.losses, b.losses)
    assert not np.array_equal(a.losses, c.losses)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_sine_other_cells_learn(tmp_path, cell):
    r = train_sine(SineConfig(cell=cell, iterations=600, lr=1e-2, out=str(tmp_path)), log=None)
    assert r.final_mse < 0.2 * r.losses[:50].mean()
    assert ck.load(tmp_path / "last.safetensors").spec.cell == cell


def test_sine_clipping_is_recorded_and_bounds_the_step(tmp_path):
    r = train_sine(SineConfig(iterations=100, clip=0.05, log_every=50, out=str(tmp_path)),
                   log=None)
    steps = [x for x in records(r.files["metrics"]) if x["kind"] == "step"]
    fired = [x for x in steps if x["clipped"]]
    assert fired and all(x["grad_norm"] > 0.05 for x in fired)
    assert all(x["grad_norm_clipped"] <= 0.05 * (1 + 1e-6) for x in steps)
    assert all(x["grad_norm_clipped"] == x["grad_norm"] for x in steps if not x["clipped"])


def test_sine_reset_state_and_bad_arguments(tmp_path, capsys):
    rc, _, err = run_cli(capsys, "sine", "--iterations", "50", "--reset-state", "--out",
                         tmp_path)
    assert rc == 0, err
    assert ck.load(tmp_path / "last.safetensors").config["carry_state"] is False
    rc, _, err = run_cli(capsys, "sine", "--iterations", "0", "--out", tmp_path)
    assert rc == 2 and err.strip() == "bptt sine: error: expected iterations >= 1, got 0"
    rc, _, err = run_cli(capsys, "sine", "--warmup", "19", "--out", tmp_path)
    assert rc == 2 and err.strip() == ("bptt sine: error: expected 0 <= warmup < 19 (the "
                                       "predictions per window), got 19")


@pytest.mark.parametrize("carry", [True, False])
def test_sine_scoring_covers_every_window_and_carried_state(tmp_path, carry):
    """The evaluation predicts each start's window after each start's window (carried state),
    or from zeros; warm-up 0 scores the whole window."""
    from bptt.engine import get_engine
    from bptt.series.core import one_step
    from bptt.series.sine import window_errors

    cfg = SineConfig(iterations=200, warmup=0, carry_state=carry, out=str(tmp_path))
    r = train_sine(cfg, log=None)
    assert r.eval_mse_after_warmup == r.eval_mse
    c = ck.load(tmp_path / "last.safetensors")
    engine = get_engine("numpy", c.spec)
    params = engine.from_numpy(c.params)
    state = c.state[0] if carry else None
    errs = window_errors(engine, params, cfg, state)
    assert errs.shape == ((9 if carry else 3), 19)
    assert errs.mean() == pytest.approx(r.eval_mse, rel=1e-6)
    # row (previous start 2, start 1) by hand
    _, prev = sine_window(2)
    _, h = one_step(engine, params, prev[:-1], state)
    _, v = sine_window(1)
    pred, _ = one_step(engine, params, v[:-1], h if carry else None)
    row = 2 * 3 + 1 if carry else 1
    np.testing.assert_allclose(errs[row], (pred - v[1:]) ** 2, rtol=1e-6)


def strict_records(path: Path) -> list[dict]:
    """metrics.jsonl parsed as strict JSON (NaN or Infinity tokens fail)."""
    def refuse(token):
        raise AssertionError(f"non-strict JSON token {token} in {path}")
    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def test_a_diverging_sine_run_exits_3_and_keeps_the_last_sound_parameters(tmp_path, capsys):
    """Adam at lr 1 with relu: the MSE jumps to ~1e14 at iteration 5 (finite, but over 100 x
    the targets' mean square). The checkpoint holds the parameters that gave iteration 4's
    sound loss: exactly those of the same run stopped after 3 iterations."""
    flags = ("--optimizer", "adam", "--lr", "1", "--nonlinearity", "relu")
    rc, _, err = run_cli(capsys, "sine", *flags, "--out", tmp_path / "bad")
    assert rc == 3
    assert err.count("\n") == 1 and "Traceback" not in err and "Warning" not in err
    assert err.startswith("bptt sine: error: the loss became ")
    assert "at iteration 5 (diverged: expected a finite MSE below 50.16 = 100 x the targets' " \
           "mean square); the last sound parameters (after 3 iterations) are in " in err
    assert err.rstrip().endswith("lower --lr or set --clip")
    bad = ck.load(tmp_path / "bad" / "last.safetensors")
    recs = strict_records(tmp_path / "bad" / "metrics.jsonl")
    assert recs[-1]["kind"] == "summary" and recs[-1]["iterations"] == 3
    assert [r["step"] for r in recs if r["kind"] == "step"] == [1, 2, 3, 4]   # all steps taken
    assert (tmp_path / "bad" / "grad_norms.png").is_file()

    rc, _, err = run_cli(capsys, "sine", *flags, "--iterations", "3", "--out", tmp_path / "ok")
    assert rc == 0, err
    ok = ck.load(tmp_path / "ok" / "last.safetensors")
    for name in ok.params:
        np.testing.assert_array_equal(bad.params[name], ok.params[name])
        assert np.isfinite(bad.params[name]).all()
    for name in ok.optim:
        np.testing.assert_array_equal(bad.optim[name], ok.optim[name])
    np.testing.assert_array_equal(bad.state[0], ok.state[0])


def test_a_diverging_series_run_exits_3_with_a_checkpoint(tmp_path, capsys):
    csv = noisy_sine_csv(tmp_path / "level.csv")
    out = tmp_path / "run"
    rc, _, err = run_cli(capsys, "series", "--csv", csv, "--column", "level", "--lr", "1e6",
                         "--out", out)
    assert rc == 3 and err.count("\n") == 1, err
    assert err.startswith("bptt series: error: the loss became ")
    c = ck.load(out / "last.safetensors")
    assert c.config["kind"] == "series" and "mean" in c.config
    assert all(np.isfinite(v).all() for v in c.params.values())
    assert strict_records(out / "metrics.jsonl")[-1]["diverged"].startswith("the loss became")


def test_ctrl_c_stops_sine_after_the_step_and_keeps_the_work(tmp_path, capsys, monkeypatch):
    """Ctrl-C (the flag raised after 120 looks, one per iteration): the outputs are written
    for the model trained so far, which is exactly the model of a 120-iteration run; exit 130."""
    monkeypatch.setattr(core, "StopFlag", lambda: StopAfter(119))
    rc, stdout, err = run_cli(capsys, "sine", "--out", tmp_path / "cut")
    assert rc == 130, err
    assert "interrupted after 120 of 5000 iterations" in stdout
    assert "final training mse" in stdout
    summary = records(tmp_path / "cut" / "metrics.jsonl")[-1]
    assert summary["iterations"] == 120 and summary["interrupted"] is True
    monkeypatch.undo()
    rc, _, err = run_cli(capsys, "sine", "--iterations", "120", "--out", tmp_path / "full")
    assert rc == 0, err
    cut, full = (ck.load(tmp_path / d / "last.safetensors") for d in ("cut", "full"))
    assert cut.train["iterations"] == 120
    for name in full.params:
        np.testing.assert_array_equal(cut.params[name], full.params[name])
    for name in ("sine_fit.png", "sine_forecast.png", "grad_norms.png"):
        assert (tmp_path / "cut" / name).is_file()


# -- bptt series ---------------------------------------------------------------------------------
def noisy_sine_csv(path: Path, n: int = 400, seed: int = 0) -> Path:
    """A header row, a time column and a noisy sine around 10 (period 40, noise sd 0.2)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    y = 10 + 3 * np.sin(2 * np.pi * t / 40) + 0.2 * rng.standard_normal(n)
    rows = "".join(f"{a},{b:.6f}\n" for a, b in zip(t, y, strict=True))
    path.write_text("time,level\n" + rows)
    return path


def test_series_trains_on_a_csv_and_writes_its_outputs(tmp_path, capsys):
    csv = noisy_sine_csv(tmp_path / "level.csv")
    out = tmp_path / "run"
    # the defaults: 2000 iterations of 16 windows, H=32 (under a second)
    rc, stdout, err = run_cli(capsys, "series", "--csv", csv, "--column", "level", "--out", out)
    assert rc == 0, err
    assert "validation one-step mse" in stdout
    s = records(out / "metrics.jsonl")[-1]
    values = read_column(csv, "level")
    train, val = values[:320], values[320:]
    assert (s["n_train"], s["n_val"]) == (320, 80)
    assert s["mean"] == pytest.approx(train.mean()) and s["std"] == pytest.approx(train.std())
    assert s["val_mse"] == pytest.approx(s["val_mse_norm"] * s["std"] ** 2)
    # it learned: far better than "next = current", near the noise floor (0.2^2 = 0.04)
    assert s["val_mse"] < 0.5 * s["persistence_mse"]
    assert s["val_mse"] < 0.15
    assert s["forecast_mse"] < np.var(val)                 # beats predicting the mean
    assert (out / "series_forecast.png").stat().st_size > 10_000
    assert (out / "grad_norms.png").is_file()
    c = ck.load(out)
    assert c.spec.task == "regression" and c.vocab is None
    assert c.config["mean"] == s["mean"] and c.config["std"] == s["std"]
    assert c.config["column"] == "level" and c.config["window"] == 20


def test_series_without_validation_forecasts_past_the_end(tmp_path, capsys):
    csv = noisy_sine_csv(tmp_path / "level.csv", n=60)
    rc, stdout, err = run_cli(capsys, "series", "--csv", csv, "--column", "level",
                              "--val-frac", "0", "--iterations", "30", "--forecast-steps", "15",
                              "--out", tmp_path / "run")
    assert rc == 0, err
    s = records(tmp_path / "run" / "metrics.jsonl")[-1]
    assert s["n_val"] == 0 and s["val_mse"] is None
    assert "validation one-step" not in stdout


@pytest.mark.skipif(os.name == "nt", reason="signals")
def test_a_real_ctrl_c_ends_a_long_series_run_with_its_outputs(tmp_path):
    csv = noisy_sine_csv(tmp_path / "level.csv")
    out = tmp_path / "run"
    proc = subprocess.Popen(
        bptt_command("series", "--csv", csv, "--column", "level", "--iterations", "10000000",
                     "--out", out),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=subprocess_env(PYTHONUNBUFFERED="1"))
    try:
        seen = [proc.stdout.readline() for _ in range(3)]            # the start, iters 0, 100
        assert seen[-1].startswith("iter"), seen
        proc.send_signal(signal.SIGINT)
        out_text, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted after " in out_text and "validation one-step mse" in out_text
    summary = records(out / "metrics.jsonl")[-1]
    assert summary["interrupted"] is True and 100 < summary["iterations"] < 10_000_000
    assert ck.load(out / "last.safetensors").train["iterations"] == summary["iterations"]


def test_split_is_contiguous_and_the_minimum_length_is_exact():
    v = np.arange(100.0)
    train, val = split_series(v, 0.2, 20)
    np.testing.assert_array_equal(np.r_[train, val], v)
    assert len(val) == 20
    for window, frac in ((20, 0.2), (5, 0.5), (2, 0.0), (7, 0.01)):
        need = min_length(window, frac)
        split_series(np.zeros(need), frac, window)         # exactly enough: fine
        with pytest.raises(SeriesError, match=f"need at least {need} values, got {need - 1}"):
            split_series(np.zeros(need - 1), frac, window)


def test_read_column_handles_the_usual_csv_shapes(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("\ufeffdate;price\n2024-01-01; 1.5\n\n2024-01-02;2e1\n")   # BOM, ;, blanks
    np.testing.assert_array_equal(read_column(p, "price"), [1.5, 20.0])
    p.write_text('x\n1\n"2"\n-3\n')                                          # one column, quotes
    np.testing.assert_array_equal(read_column(p, "x"), [1.0, 2.0, -3.0])


BAD = {
    "missing file": (None, "level", [r"CSV file \S+nope\.csv does not exist"]),
    "empty file": ("", "level", [r"is empty"]),
    "blank file": ("\n  \n", "level", [r"is empty"]),
    "missing column": ("time,level\n1,2\n", "price",
                       [r"column 'price' not found", r"'time', 'level'"]),
    "non-numeric cell": ("time,level\n0,1.0\n1,2.0\n2,abc\n", "level",
                         [r"data row 3 \(line 4\)", r"'abc', not a number"]),
    "empty cell": ("time,level\n0,1.0\n1,\n", "level", [r"data row 2 \(line 3\)", r"empty"]),
    "non-finite cell": ("time,level\n0,inf\n", "level", [r"'inf', not a finite number"]),
    "too short": ("time,level\n" + "".join(f"{i},{i}\n" for i in range(12)), "level",
                  [r"too short for --window 20", r"need at least 25 values, got 12"]),
    "header only": ("time,level\n", "level", [r"need at least 25 values, got 0"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_csv_gives_one_error_line_and_exit_code_2(tmp_path, capsys, case):
    text, column, patterns = BAD[case]
    path = tmp_path / "nope.csv"
    if text is not None:
        path = tmp_path / "data.csv"
        path.write_text(text)
    rc, stdout, err = run_cli(capsys, "series", "--csv", path, "--column", column,
                              "--out", tmp_path / "run")
    assert rc == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("bptt series: error: "), err
    for pattern in patterns:
        assert re.search(pattern, lines[0]), (pattern, lines[0])
    assert not (tmp_path / "run" / "last.safetensors").exists()


def test_constant_series_is_refused(tmp_path, capsys):
    path = tmp_path / "flat.csv"
    path.write_text("v\n" + "3\n" * 40)
    rc, _, err = run_cli(capsys, "series", "--csv", path, "--column", "v", "--out", tmp_path)
    assert rc == 2 and "constant" in err and err.count("\n") == 1


def torch_engines_present() -> bool:
    try:
        import bptt.engine.torch.model  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not torch_engines_present(), reason="the torch engines are not there yet")
@pytest.mark.parametrize("engine", ["torch", "torch-autograd", "torch-builtin"])
@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_sine_runs_the_same_on_every_engine(tmp_path, engine, cell):
    kw = dict(cell=cell, iterations=60, dtype="float64", log_every=30, forecast_steps=10)
    ref = train_sine(SineConfig(out=str(tmp_path / "numpy"), **kw), log=None)
    got = train_sine(SineConfig(out=str(tmp_path / engine), engine=engine, device="cpu", **kw),
                     log=None)
    np.testing.assert_allclose(got.losses, ref.losses, rtol=1e-9, atol=0)
    assert got.forecast_mse == pytest.approx(ref.forecast_mse, rel=1e-8)
    a, b = ck.load(tmp_path / "numpy"), ck.load(tmp_path / engine)
    for name in a.params:
        np.testing.assert_allclose(b.params[name], a.params[name], rtol=1e-8, atol=1e-12)
