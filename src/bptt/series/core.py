"""What ``bptt sine`` and ``bptt series`` share: a regression model of one real value per step,
its training loop (sample windows -> loss and BPTT -> clip -> step), one-step predictions,
free-running forecasts, checkpoints and metrics.

The model reads x_t (one value) and predicts x_{t+1} at every step: input the first W-1 points
of a window, target the last W-1 (the seed's ``data[:-1]`` / ``data[1:]``), loss the MSE over
all of them. Every computation goes through an engine (``bptt.engine.get_engine``), so the same
loop runs the NumPy hand-written BPTT or any torch engine.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import optim
from ..engine import as_numpy
from ..model import ModelSpec


def regression_spec(cell: str, hidden_size: int, num_layers: int = 1,
                    nonlinearity: str = "tanh") -> ModelSpec:
    """One value in, one value out per step, mean squared error."""
    return ModelSpec(cell=cell, input_size=1, hidden_size=hidden_size, output_size=1,
                     num_layers=num_layers, nonlinearity=nonlinearity, task="regression")


def check_training_args(iterations: int, lr: float, clip: float | None, clip_mode: str,
                        batch_size: int = 1, log_every: int = 100) -> None:
    if iterations < 1:
        raise ValueError(f"expected iterations >= 1, got {iterations}")
    if not lr > 0:
        raise ValueError(f"expected lr > 0, got {lr}")
    if clip is not None and not clip > 0:
        raise ValueError(f"expected clip > 0 (or none), got {clip}")
    if clip_mode not in ("norm", "value"):
        raise ValueError(f"expected clip mode 'norm' or 'value', got {clip_mode!r}")
    if batch_size < 1:
        raise ValueError(f"expected batch size >= 1, got {batch_size}")
    if log_every < 1:
        raise ValueError(f"expected log_every >= 1, got {log_every}")


@dataclass
class Fit:
    """What the training loop leaves: the loss per iteration, the carried state, records."""

    losses: np.ndarray
    state: object                       # the engine's state after the last iteration
    last_window: tuple                  # (X, Y, state before it) of the last iteration
    steps: list = field(default_factory=list)      # {"kind": "step", ...} per iteration
    logs: list = field(default_factory=list)       # {"kind": "log", ...} every log_every
    seconds: float = 0.0


def fit(engine, params: dict, opt, sample: Callable[[int], tuple[np.ndarray, np.ndarray]],
        iterations: int, *, clip: float | None = None, clip_mode: str = "norm",
        carry_state: bool = True, log_every: int = 100,
        log: Callable[[str], None] | None = print) -> Fit:
    """Train in place: each iteration ``X, Y = sample(i)`` ((B, T, 1) each), the MSE and its
    hand-written (or torch) gradients, optional clipping, one optimiser step.

    With ``carry_state`` the last state of an iteration is the first of the next, detached (no
    gradient crosses iterations), as the seed carries ``hidden_prev``; otherwise every window
    starts from zeros. A loss that becomes NaN or infinite stops training with a ValueError.
    """
    losses = np.empty(iterations)
    steps, logs = [], []
    state = None
    last_window = None
    t0 = time.perf_counter()
    for i in range(iterations):
        X, Y = sample(i)
        if state is None or not carry_state:
            state = engine.begin_state(X.shape[0])
        else:
            state = engine.detach_state(state)
        start_state = state
        loss, grads, state = engine.loss_and_grads(params, X, Y, state, training=True)
        loss = engine.scalar(loss)
        if not math.isfinite(loss):
            raise ValueError(f"the loss became {loss} at iteration {i + 1}; lower --lr or set "
                             f"--clip")
        if clip is None:
            before = after = float(engine.scalar(optim.global_norm(grads)))
            fired = False
        elif clip_mode == "norm":
            before = float(engine.scalar(optim.clip_grad_norm_(grads, clip)))
            after = float(engine.scalar(optim.global_norm(grads)))
            fired = before > clip
        else:
            before = float(engine.scalar(optim.global_norm(grads)))
            optim.clip_grad_value_(grads, clip)
            after = float(engine.scalar(optim.global_norm(grads)))
            fired = after < before
        opt.step(params, grads)
        losses[i] = loss
        steps.append({"kind": "step", "step": i + 1, "mse": loss, "grad_norm": before,
                      "grad_norm_clipped": after, "clipped": bool(fired)})
        if i % log_every == 0 or i == iterations - 1:
            recent = float(losses[max(0, i + 1 - log_every):i + 1].mean())
            logs.append({"kind": "log", "iteration": i + 1, "mse": loss,
                         f"mse_mean_{log_every}": recent,
                         "seconds": time.perf_counter() - t0})
            if log is not None:
                log(f"iter {i:>6}  mse {loss:.3e}  (mean of last {min(i + 1, log_every)}: "
                    f"{recent:.3e})")
        if i == iterations - 1:
            last_window = (X, Y, start_state)
    return Fit(losses, state, last_window, steps, logs, time.perf_counter() - t0)


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
def state_tuple(engine, state):
    """The engine's state as a tuple of NumPy arrays ((h,) or (h, c)) for a checkpoint."""
    if state is None:
        return None
    st = engine.state_to_numpy(state)
    st = tuple(st) if isinstance(st, tuple) else (st,)
    return tuple(np.asarray(as_numpy(s)) for s in st)


def save_checkpoint(path: Path, spec: ModelSpec, engine, params: dict, opt, state,
                    config: dict, train: dict, metrics: list) -> Path:
    """A ``bptt.lm.checkpoint`` file: task regression, no vocabulary, the optimiser state."""
    from ..lm import checkpoint as ck

    arrays = {k: v for k, v in opt.state.items() if not isinstance(v, int | float)}
    scalars = {k: v for k, v in opt.state.items() if isinstance(v, int | float)}
    return ck.save(ck.Checkpoint(
        spec=spec, params={k: np.asarray(as_numpy(v)) for k, v in
                           engine.to_numpy(params).items()},
        vocab=None, text={}, config=config, train={**train, "optim_scalars": scalars},
        optim={k: np.asarray(as_numpy(v)) for k, v in engine.to_numpy(arrays).items()},
        state=state_tuple(engine, state), metrics=metrics), path)


def write_metrics(path: Path, run: Fit, summary: dict) -> Path:
    """metrics.jsonl: the log records, every step record, and one summary record."""
    with path.open("w", encoding="utf-8") as f:
        for rec in run.logs:
            f.write(json.dumps(rec) + "\n")
        for rec in run.steps:
            f.write(json.dumps(rec) + "\n")
        f.write(json.dumps({"kind": "summary", **summary}) + "\n")
    return path
