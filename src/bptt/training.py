"""The training core the jobs share: the language model (``bptt.lm.train``) and sequence
regression (``bptt.series``) both take their steps, watch for divergence and keep their runs in
checkpoints with these pieces.

    before, after = clip_and_step(opt, params, grads, clip, clip_mode)   # clip, then step
    record = norm_record(before, after, clip, clip_mode)     # grad_norm before/after, clipped
    if not sound(loss, max_loss):                            # NaN, inf or above the limit
        state = snapshot.restore(params, opt)                #   back to the last sound point
    ckpt = to_checkpoint(spec, engine, params, opt, state, train=...)     # into a checkpoint
    restore_optimizer(engine, opt, ckpt)                     # and out of one

Each job keeps its own loop, because they differ on purpose: the language model clips every
batch but keeps the norms on the device and tests for divergence once per epoch (the mean loss
and the parameters), going back to the epoch's start; a regression run tests every window's
loss before it steps and goes back one window.

Everything here works on any engine: arrays are the engine's (NumPy arrays or torch tensors)
until a function says it returns NumPy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import optim
from .cells import get_cell
from .checkpoint import Checkpoint
from .engine import as_numpy, copy_arrays
from .model import ModelSpec


# -- one step: clip, record the norms, step ----------------------------------------------------
def clip_and_step(opt, params: dict, grads: dict, clip: float | None, clip_mode: str = "norm",
                  *, measure_clipped: bool = False) -> tuple[Any, Any | None]:
    """Clip ``grads`` in place, then take one step of the optimiser ``opt`` on ``params``.

    ``clip_mode`` "norm" rescales all gradients together to a global norm of at most ``clip``
    (the book's rule), "value" clamps every element into [-clip, clip]; ``clip`` None leaves
    them. Returns the global norm before clipping and after it, 0-d arrays or tensors (no host
    synchronisation). The norm after is None where it was not measured: without clipping (it is
    the norm before), and with norm clipping unless ``measure_clipped`` (it is then
    min(before, clip) up to rounding, what :func:`norm_record` writes).
    """
    if clip is None:
        before, after = optim.global_norm(grads), None
    elif clip_mode == "norm":
        before = optim.clip_grad_norm_(grads, clip)
        after = optim.global_norm(grads) if measure_clipped else None
    elif clip_mode == "value":
        before = optim.global_norm(grads)
        optim.clip_grad_value_(grads, clip)
        after = optim.global_norm(grads)
    else:
        raise ValueError(f"expected clip mode 'norm' or 'value', got {clip_mode!r}")
    opt.step(params, grads)
    return before, after


def host_norms(engine, norms: Iterable[tuple[Any, Any | None]]) -> list[tuple[float,
                                                                               float | None]]:
    """(before, after-or-None) gradient norms as Python floats: one host sync each, here."""
    return [(engine.scalar(b), None if a is None else engine.scalar(a)) for b, a in norms]


def norm_record(before: float, after: float | None, clip: float | None,
                clip_mode: str = "norm") -> dict:
    """The gradient-norm fields of a ``{"kind": "step"}`` line of metrics.jsonl (host floats):
    ``grad_norm`` before clipping, ``grad_norm_clipped`` after it (``after``; unmeasured norm
    clipping gives min(before, clip)) and ``clipped``, whether clipping changed the gradients."""
    if clip is None:
        return {"grad_norm": before, "grad_norm_clipped": before, "clipped": False}
    if clip_mode == "norm":
        return {"grad_norm": before,
                "grad_norm_clipped": min(before, clip) if after is None else after,
                "clipped": bool(before > clip)}
    return {"grad_norm": before, "grad_norm_clipped": after, "clipped": bool(after < before)}


def norm_threshold(clip: float | None, clip_mode: str) -> float | None:
    """The clipping threshold grad_norms.png draws: norm clipping's, else none (a value bound
    is per element, not a norm)."""
    return clip if clip is not None and clip_mode == "norm" else None


# -- divergence ---------------------------------------------------------------------------------
def sound(loss: float, max_loss: float, params: Mapping | None = None) -> bool:
    """Whether training may go on: ``loss`` at most ``max_loss`` (False for NaN and inf) and,
    when ``params`` (an engine's arrays) are given, every parameter finite. The parameters are
    looked at only when the loss is sound."""
    return loss <= max_loss and (params is None or all(np.isfinite(as_numpy(v)).all()
                                                       for v in params.values()))


@dataclass(frozen=True)
class Snapshot:
    """A sound point to go back to: copies of the parameters and of the optimiser state, and
    the carried hidden state there (the engine's, or None)."""

    params: dict
    opt_state: dict
    state: Any = None

    @classmethod
    def take(cls, params: Mapping, opt, state: Any = None) -> Snapshot:
        """Copy ``params`` and ``opt.state`` now (optimisers update them in place)."""
        return cls(copy_arrays(params), copy_arrays(opt.state), state)

    def restore(self, params: dict, opt) -> Any:
        """Put the parameters (in place) and the optimiser state back; returns the state."""
        params.update(self.params)
        opt.state = self.opt_state
        return self.state


# -- checkpoints: the run's arrays in and out ---------------------------------------------------
def host_arrays(engine, arrays: Mapping) -> dict[str, np.ndarray]:
    """An engine's dict of arrays or tensors as NumPy arrays on the host."""
    return {k: np.asarray(as_numpy(v)) for k, v in engine.to_numpy(dict(arrays)).items()}


def state_parts(engine, cell: str, state: Any) -> tuple[np.ndarray, ...] | None:
    """The engine's carried state as NumPy parts, ``(h,)`` or ``(h, c)`` as the cell kind
    names them: a checkpoint's ``state.h`` / ``state.c``. None stays None."""
    if state is None:
        return None
    parts = get_cell(cell).to_parts(engine.state_to_numpy(state))
    return tuple(np.asarray(as_numpy(p)) for p in parts)


def state_from_parts(engine, cell: str, parts: tuple[np.ndarray, ...] | None) -> Any:
    """The reverse of :func:`state_parts`: a checkpoint's parts as the engine's state."""
    return engine.state_from_numpy(get_cell(cell).from_parts(parts))


def to_checkpoint(spec: ModelSpec, engine, params: Mapping, opt, state: Any, *, train: dict,
                  vocab=None, text: dict | None = None, config: dict | None = None,
                  metrics: list | None = None) -> Checkpoint:
    """A checkpoint of the run: the parameters, the optimiser's state and the carried state
    as NumPy arrays, and the metadata given.

    The optimiser's state is one flat dict (``bptt.optim``): its arrays (moments, sums) become
    the tensors ``optim.<key>``, its Python numbers (Adam's ``step``) ``train["optim_scalars"]``.
    """
    arrays = {k: v for k, v in opt.state.items() if not isinstance(v, int | float)}
    scalars = {k: v for k, v in opt.state.items() if isinstance(v, int | float)}
    return Checkpoint(spec=spec, params=host_arrays(engine, params), vocab=vocab,
                      text=text or {}, config=config or {},
                      train={**train, "optim_scalars": scalars},
                      optim=host_arrays(engine, arrays),
                      state=state_parts(engine, spec.cell, state),
                      metrics=metrics if metrics is not None else [])


def restore_optimizer(engine, opt, ckpt: Checkpoint) -> None:
    """The optimiser state of ``ckpt`` as ``opt.state``: its arrays on the engine's device and
    dtype, and its scalars (the reverse of :func:`to_checkpoint`)."""
    # plain array conversions (from_numpy would check the arrays are the model's parameters)
    opt.state = {k: engine.state_from_numpy(v) for k, v in ckpt.optim.items()}
    opt.state.update(ckpt.train.get("optim_scalars", {}))
