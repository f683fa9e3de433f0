"""What ``bptt sine`` and ``bptt series`` share: a regression model of one real value per step,
its training loop (sample windows -> loss and BPTT -> clip -> step, with the pieces of
bptt/training.py), one-step predictions, free-running forecasts, checkpoints and metrics.

The model reads x_t (one value) and predicts x_{t+1} at every step: input the first W-1 points
of a window, target the last W-1 (the seed's ``data[:-1]`` / ``data[1:]``), loss the MSE over
all of them. Every computation goes through an engine (``bptt.engine.get_engine``), so the same
loop runs the NumPy hand-written BPTT or any torch engine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .. import checkpoint as ck
from .. import memory, optim, training
from ..engine import as_numpy, get_engine
from ..errors import Diverged, StopFlag
from ..jsonl import json_line
from ..model import ModelSpec, init_params

# A window whose MSE exceeds this many times the targets' mean square (the MSE of predicting 0
# everywhere) has diverged even when still finite: tanh saturates, so a huge learning rate
# drives the head's output, and the loss, to 1e15 without a NaN.
DIVERGED_MSE_FACTOR = 100.0


def regression_spec(cell: str, hidden_size: int, num_layers: int = 1,
                    nonlinearity: str = "tanh") -> ModelSpec:
    """One value in, one value out per step, mean squared error."""
    return ModelSpec(cell=cell, input_size=1, hidden_size=hidden_size, output_size=1,
                     num_layers=num_layers, nonlinearity=nonlinearity, task="regression")


class RegressionModel(NamedTuple):
    """A regression run's model: what it computes, the engine computing it, the parameters
    (the engine's arrays, trained in place) and the optimiser."""

    spec: ModelSpec
    engine: Any
    params: dict
    opt: Any


def build(cfg) -> RegressionModel:
    """The model of a SineConfig or SeriesConfig, with fresh parameters from
    ``default_rng([seed, 0])``."""
    spec = regression_spec(cfg.cell, cfg.hidden_size, cfg.num_layers, cfg.nonlinearity)
    engine = get_engine(cfg.engine, spec, device=cfg.device, dtype=cfg.dtype)
    batch, steps = cfg.batch_shape                     # refused before allocating, if too big
    memory.require(memory.estimate(spec, batch_size=batch, num_steps=steps,
                                   optimizer=cfg.optimizer, dtype=cfg.dtype,
                                   records=cfg.iterations + cfg.forecast_steps), engine.device,
                   hint="lower --hidden-size, --num-layers, --iterations or --forecast-steps"
                   + (", --batch-size or --window" if batch > 1 else ""))
    params = engine.from_numpy(init_params(spec, cfg.init, np.random.default_rng([cfg.seed, 0]),
                                           dtype=cfg.dtype))
    return RegressionModel(spec, engine, params, optim.make_optimizer(cfg.optimizer, cfg.lr))


def check_training_args(iterations: int, lr: float, clip: float | None, clip_mode: str,
                        batch_size: int = 1, log_every: int = 100) -> None:
    """The training settings sine and series share, each refused with what was expected."""
    from .config import SERIES_RANGES

    for name, value in (("iterations", iterations), ("lr", lr), ("clip", clip),
                        ("batch_size", batch_size), ("log_every", log_every)):
        SERIES_RANGES[name].check(name, value)             # finite and in range (never NaN)
    if clip_mode not in ("norm", "value"):
        raise ValueError(f"expected clip mode 'norm' or 'value', got {clip_mode!r}")


@dataclass
class Fit:
    """What the training loop leaves: the loss per iteration, the carried state, records."""

    losses: np.ndarray
    state: object                       # the engine's state after the last iteration
    last_window: tuple                  # (X, Y, state before it) of the last iteration
    steps: list = field(default_factory=list)      # {"kind": "step", ...} per iteration
    logs: list = field(default_factory=list)       # {"kind": "log", ...} every log_every
    seconds: float = 0.0
    diverged: str = ""                  # why training stopped early; "" when it did not
    interrupted: bool = False           # Ctrl-C: stopped after ``iterations`` steps

    @property
    def iterations(self) -> int:
        return len(self.losses)


def fit(engine, params: dict, opt, sample: Callable[[int], tuple[np.ndarray, np.ndarray]],
        iterations: int, *, clip: float | None = None, clip_mode: str = "norm",
        carry_state: bool = True, log_every: int = 100,
        log: Callable[[str], None] | None = print, max_loss: float = math.inf,
        collect: Callable[[dict], None] | None = None) -> Fit:
    """Train in place: each iteration ``X, Y = sample(i)`` ((B, T, 1) each), the MSE and its
    hand-written (or torch) gradients, optional clipping, one optimiser step.

    With ``carry_state`` the last state of an iteration is the first of the next, detached (no
    gradient crosses iterations), as the seed carries ``hidden_prev``; otherwise every window
    starts from zeros. A loss that is NaN, infinite or above ``max_loss`` stops training: the
    parameters, optimiser state and carried state go back to where the last sound loss was
    computed, and ``Fit.diverged`` says why (``Fit.losses`` ends at the last sound iteration).
    Ctrl-C stops after the current step with ``Fit.interrupted`` set (a second one at once).
    ``collect`` (``--tensorboard``) is handed every step's gradients before clipping.
    """
    losses = np.empty(iterations)
    steps, logs = [], []
    state = None
    last_window = None
    diverged, snapshot, interrupted = "", None, False
    t0 = time.perf_counter()
    with StopFlag() as flag:
        for i in range(iterations):
            X, Y = sample(i)
            if state is None or not carry_state:
                state = engine.begin_state(X.shape[0])
            else:
                state = engine.detach_state(state)
            start_state = state
            with np.errstate(over="ignore", invalid="ignore"):   # a blow-up is caught just below
                loss, grads, state = engine.loss_and_grads(params, X, Y, state, training=True)
            loss = engine.scalar(loss)
            if not training.sound(loss, max_loss):                # NaN, inf, or diverged
                if snapshot is not None:
                    state = snapshot.restore(params, opt)
                diverged = (f"the loss became {loss:.4g} at iteration {i + 1} (diverged: expected "
                            f"a finite MSE below {max_loss:.4g} = {DIVERGED_MSE_FACTOR:g} x the "
                            f"targets' mean square)")
                done = max(i - 1, 0)                              # steps behind the restored state
                losses = losses[:done]                            # the step records keep them all
                logs = [r for r in logs if r["iteration"] <= done]
                last_window = None
                break
            snapshot = training.Snapshot.take(params, opt, start_state)   # gave a sound loss
            if collect is not None:
                collect(grads)
            (before, after), = training.host_norms(engine, [training.clip_and_step(
                opt, params, grads, clip, clip_mode, measure_clipped=True)])
            losses[i] = loss
            steps.append({"kind": "step", "step": i + 1, "mse": loss,
                          **training.norm_record(before, after, clip, clip_mode)})
            if i % log_every == 0 or i == iterations - 1:
                logs.append(_log_record(losses, i, log_every, time.perf_counter() - t0, log))
            last_window = (X, Y, start_state)
            if flag.stop:                                         # Ctrl-C: stop here, keep the work
                interrupted = True
                losses = losses[:i + 1]
                break
    return Fit(losses, state, last_window, steps, logs, time.perf_counter() - t0, diverged,
               interrupted)


def log_tensorboard(board, run: Fit, cfg, engine, summary: dict | None = None) -> None:
    """``--tensorboard``: the fit's steps (MSE, gradient norms, per-parameter histograms per
    ``log_every`` steps), or, given ``summary``, its MSEs at the last step, and close."""
    if board is None:
        return
    if summary is None:
        board.fit(run.steps, cfg.lr, cfg.log_every, engine.scalar)
        board.flush()
        return
    board.scalars({f"summary/{k}": v for k, v in summary.items()
                   if "mse" in k and isinstance(v, float)}, max(run.iterations, 1))
    board.close()


def _log_record(losses: np.ndarray, i: int, log_every: int, seconds: float,
                log: Callable[[str], None] | None) -> dict:
    """Iteration ``i``'s ``{"kind": "log"}`` record (its MSE and the mean of the last
    ``log_every``), printed through ``log`` as the seed prints it."""
    loss = float(losses[i])
    recent = float(losses[max(0, i + 1 - log_every):i + 1].mean())
    if log is not None:
        log(f"iter {i:>6}  mse {loss:.3e}  (mean of last {min(i + 1, log_every)}: "
            f"{recent:.3e})")
    return {"kind": "log", "iteration": i + 1, "mse": loss, f"mse_mean_{log_every}": recent,
            "seconds": seconds}


def check_stopped(run: Fit, cfg, out: Path, model: RegressionModel, config: dict,
                  log: Callable[[str], None] | None) -> None:
    """After ``fit``: a blown-up loss saves the restored (last sound) parameters and raises
    Diverged; a Ctrl-C is logged (the caller goes on to write the outputs so far)."""
    if run.diverged:
        raise _save_diverged(run, out, model, config,
                             training.norm_threshold(cfg.clip, cfg.clip_mode))
    if run.interrupted and log is not None:
        log(f"interrupted after {run.iterations} of {cfg.iterations} iterations; the outputs "
            f"below are the model's so far")


def _save_diverged(run: Fit, out: Path, model: RegressionModel, config: dict,
                   clip: float | None) -> Diverged:
    """grad_norms.png, metrics.jsonl and last.safetensors with the restored parameters, up to
    there; the error to raise."""
    from ..plot import plot_grad_norms

    if run.steps:
        plot_grad_norms(run.steps, out / "grad_norms.png", threshold=clip)
    path = save_run(out, run, model, config,
                    {"diverged": run.diverged, "iterations": run.iterations})["checkpoint"]
    where = f"after {run.iterations} iterations" if run.iterations else "the initial ones"
    return Diverged(f"{run.diverged}; the last sound parameters ({where}) are in {path}; "
                    f"lower --lr or set --clip")


# -- prediction ---------------------------------------------------------------------------------
def one_step(engine, params: dict, values: np.ndarray, state=None):
    """Feed ``values`` (T,) in; return the prediction after each (T,) and the last state."""
    X = np.asarray(values, dtype=np.float64).reshape(1, -1, 1)
    out, state = engine.forward(params, X, state)
    return np.asarray(as_numpy(out), dtype=np.float64)[0, :, 0], state


def free_run(engine, params: dict, warmup: np.ndarray, steps: int, state=None):
    """Teacher-forced over ``warmup`` (T,), then ``steps`` values each fed back as the next
    input. Returns (one-step predictions over the warm-up (T,), the forecast (steps,)); the
    forecast's first value is the prediction after the last warm-up value."""
    if steps < 1:
        raise ValueError(f"expected forecast steps >= 1, got {steps}")
    preds, state = one_step(engine, params, warmup, state)
    forecast = np.empty(steps)
    forecast[0] = preds[-1]
    for k in range(1, steps):
        p, state = one_step(engine, params, forecast[k - 1:k], state)
        forecast[k] = p[0]
    return preds, forecast


# -- checkpoints and metrics --------------------------------------------------------------------
def save_run(out: Path, run: Fit, model: RegressionModel, config: dict,
             summary: dict) -> dict[str, Path]:
    """metrics.jsonl (see :func:`write_metrics`) and last.safetensors: a checkpoint of task
    regression, no vocabulary, with the optimiser state, the carried state, ``config`` and
    ``train`` = the iterations, the seed and ``summary``. Returns the two paths by name."""
    metrics = write_metrics(out / "metrics.jsonl", run, summary)
    spec, engine, params, opt = model
    ckpt = training.to_checkpoint(spec, engine, params, opt, run.state, config=config,
                                  train={"iterations": run.iterations,
                                         "seed": config.get("seed"), "summary": summary},
                                  metrics=run.logs)
    return {"metrics": metrics, "checkpoint": ck.save(ckpt, out / "last.safetensors")}


def write_metrics(path: Path, run: Fit, summary: dict) -> Path:
    """metrics.jsonl: the log records, every step record, and one summary record."""
    with path.open("w", encoding="utf-8") as f:
        for rec in [*run.logs, *run.steps, {"kind": "summary", **summary}]:
            f.write(json_line(rec))
    return path
