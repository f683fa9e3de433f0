"""The NumPy engine: a whole model (stack + head + loss) forward and backward, by hand.

Every engine offers this interface (see ``bptt.engine.get_engine``); the trainer, generator and
evaluator only ever call it, so engines are interchangeable:

    params = engine.from_numpy(numpy_params)          # native arrays (here: the same arrays)
    state = engine.begin_state(batch_size)            # (L*D, B, H), or the pair (h, c)
    loss, grads, state = engine.loss_and_grads(params, X, Y, state, truncate=..., training=...)
    out, state = engine.forward(params, X, state)     # logits / predictions, no gradients

Inputs are batch-first as the batch iterators give them: X (B, T) token ids for a language
model, (B, T, I) floats for regression; Y (B, T) ids or (B, T, O) floats. Inside, everything is
time-major (T, B, ...), as the book and the cells are.
"""

from __future__ import annotations

import numpy as np

from ...model import ModelSpec
from . import stack
from .loss import mse, softmax_cross_entropy


class NumpyEngine:
    """Hand-written BPTT on NumPy arrays, on the CPU."""

    name = "numpy"
    device = "cpu"

    def __init__(self, spec: ModelSpec, dtype: str = "float32", **_: object) -> None:
        self.spec = spec
        self.dtype = np.dtype(dtype)

    # -- parameters and state -------------------------------------------------------------
    def from_numpy(self, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: np.array(v, dtype=self.dtype) for k, v in params.items()}

    def to_numpy(self, params: dict) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in params.items()}

    def state_from_numpy(self, state):
        if state is None:
            return None
        if isinstance(state, tuple):
            return tuple(np.array(s, dtype=self.dtype) for s in state)
        return np.array(state, dtype=self.dtype)

    def state_to_numpy(self, state):
        return state

    def begin_state(self, batch_size: int):
        s = self.spec
        shape = (s.num_layers * s.directions, batch_size, s.hidden_size)
        if s.cell == "lstm":
            return (np.zeros(shape, self.dtype), np.zeros(shape, self.dtype))
        return np.zeros(shape, self.dtype)

    def detach_state(self, state):
        return state  # NumPy arrays carry no graph: the gradient stops at the batch boundary

    def scalar(self, x) -> float:
        return float(x)

    # -- the model --------------------------------------------------------------------------
    def _inputs(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X)
        if self.spec.task == "lm":
            return np.ascontiguousarray(X.T)                       # (T, B) token ids
        return np.ascontiguousarray(X.transpose(1, 0, 2), dtype=self.dtype)  # (T, B, I)

    def _stack_forward(self, params, x, state, training, rng):
        s = self.spec
        return stack.forward(
            s.cell, params, x, state, num_layers=s.num_layers, bidirectional=s.bidirectional,
            nonlinearity=s.nonlinearity, dropout=s.dropout, training=training, rng=rng,
        )

    def forward(self, params: dict, X: np.ndarray, state=None):
        """Outputs (B, T, O) (logits or predictions) and the last state; evaluation mode."""
        x = self._inputs(X)
        out, state_n, _ = self._stack_forward(params, x, state, False, None)
        T, B, DH = out.shape
        y = out.reshape(T * B, DH) @ params["head.weight"].T + params["head.bias"]
        return y.reshape(T, B, -1).transpose(1, 0, 2), state_n

    def loss_and_grads(
        self,
        params: dict,
        X: np.ndarray,
        Y: np.ndarray,
        state=None,
        *,
        truncate: int | None = None,
        training: bool = True,
        rng: np.random.Generator | None = None,
    ):
        """Mean loss over the T*B targets, gradients of every parameter, and the last state."""
        x = self._inputs(X)
        # forward: the stack, then the head over all T*B rows at once
        out, state_n, cache = self._stack_forward(params, x, state, training, rng)  # (T, B, DH)
        T, B, DH = out.shape
        rows = out.reshape(T * B, DH)
        y = rows @ params["head.weight"].T + params["head.bias"]              # (T*B, O)
        if self.spec.task == "lm":
            loss, dy = softmax_cross_entropy(y, np.asarray(Y).T.reshape(-1))
        else:
            target = np.asarray(Y, dtype=self.dtype).transpose(1, 0, 2).reshape(T * B, -1)
            loss, dy = mse(y, target)
        # backward: head (dW = dy^T out, db = sum dy, dout = dy W), then BPTT through the stack
        grads = {"head.weight": dy.T @ rows, "head.bias": dy.sum(axis=0)}
        dout = (dy @ params["head.weight"]).reshape(T, B, DH)
        _, _, g = stack.backward(dout, None, cache, truncate)
        grads.update(g)
        return loss, grads, state_n
