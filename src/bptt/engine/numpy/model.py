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

The model around the stack: token ids enter as one-hot rows (the book: layer 0's projection is
a gather of ``W_ih^T``) or through the embedding (``embedding.weight`` rows, (T, B, E)); the
head reads ``head.weight``, or ``embedding.weight`` itself when the weights are tied. Training
multiplies the dropout masks of :mod:`bptt.engine.dropout` into the embedding's output, between
the layers and before the head, and :meth:`NumpyEngine.model_backward` multiplies the same
masks into the gradients. The embedding's gradient is a row scatter-add (sort and segment sum,
:func:`bptt.engine.numpy.common.token_weight_grad_`), added to the head's when tied.

Fast paths (docs/performance.md), same results up to float rounding:
  * one unidirectional layer (the book's model) skips the stack bookkeeping, computes the head
    and the softmax over all T*B rows at once in place, and hands the cell's backward the
    head's gradient lazily (``dL/dh = dy W_head``); the RNN's backward asks for it chunk by
    chunk, so besides the states only chunk-sized buffers are allocated: that is what keeps a
    long sequence's memory small;
  * ``forward`` over a single step (generation) goes through :meth:`NumpyEngine.step`, one
    cell step per layer without checks of the whole stack or a cache.

Every cell is reached through the registry (``spec.kind``) and this engine's module of it
(``stack.cell_module``); nothing here names a cell.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ...model import EMBEDDING, ModelSpec, check_params
from ..dropout import NO_MASKS, Masks, draw_masks
from ..layout import check_stacked, layer_keys, layer_params, split_state, step_layers
from ..products import matmul
from ..stack import cell_options, check_precision
from . import rnn, stack  # rnn: its CHUNK_ROWS sizes the head's blocks too
from .common import PRECISIONS, check_sequence, token_weight_grad_
from .loss import mse, softmax_cross_entropy_

DTYPES = ("float32", "float64")


def _head_product(rows: np.ndarray, W: np.ndarray, precision: str = "fp32") -> np.ndarray:
    """``rows @ W^T`` (N, O): one product, or for a long sequence one per block of rows.

    For N large next to O, OpenBLAS copies the whole (N, DH) operand into its own buffer, which
    would double a long sequence's memory; blocks of ``rnn.CHUNK_ROWS`` rows keep that copy
    small (docs/performance.md, "Memory"). The book's 35 x 32 rows are one product.
    """
    N = rows.shape[0]
    if N <= 4 * rnn.CHUNK_ROWS:
        return matmul(rows, W.T, precision=precision)
    y = np.empty((N, W.shape[0]), dtype=np.result_type(rows, W))
    for s in range(0, N, rnn.CHUNK_ROWS):
        matmul(rows[s:s + rnn.CHUNK_ROWS], W.T, y[s:s + rnn.CHUNK_ROWS], precision=precision)
    return y


class ModelCache(NamedTuple):
    """What :meth:`NumpyEngine.model_forward` keeps for :meth:`NumpyEngine.model_backward`."""

    ids: np.ndarray | None   # (T, B) token ids read through the embedding; None without one
    stack: Any               # the cell's Cache (one fused layer) or the StackCache
    rows: np.ndarray         # (T*B, D*H): the head's input, after its dropout mask
    masks: Masks             # the dropout masks of the forward (None where not dropped)
    steps: int               # T
    batch: int               # B


class NumpyEngine:
    """Hand-written BPTT on NumPy arrays, on the CPU."""

    name = "numpy"
    device = "cpu"

    def __init__(self, spec: ModelSpec, dtype: str = "float32", precision: str = "fp32",
                 device: str | None = None) -> None:
        if not isinstance(spec, ModelSpec):
            raise ValueError(f"expected a ModelSpec, got {type(spec).__name__}")
        if device not in (None, "cpu"):
            raise ValueError(f"expected device 'cpu' for the numpy engine, got {device!r}")
        if str(dtype) not in DTYPES:
            raise ValueError(f"expected dtype 'float32' or 'float64', got {dtype!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"expected precision 'fp32' or 'bf16', got {precision!r}")
        if precision == "bf16" and str(dtype) != "float32":
            raise ValueError(f"expected dtype 'float32' with precision 'bf16' (float32 master "
                             f"weights), got {dtype!r}")
        self.spec = spec
        self.dtype = np.dtype(dtype)
        self.precision = precision
        self.kind = spec.kind
        self.cell = stack.cell_module(self.kind)         # forward, backward, step
        check_precision(stack.cell_module, self.kind, precision)
        self.options = cell_options(self.kind, spec.nonlinearity, precision)
        self._layer_keys = layer_keys(spec.num_layers, self.kind)  # for step()

    # -- parameters and state -------------------------------------------------------------
    def from_numpy(self, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Fresh arrays of the engine's dtype (copies), checked against the spec."""
        check_params(self.spec, params)
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
        LD = s.num_layers * s.directions
        return self.kind.from_parts(tuple(np.zeros((LD, batch_size, size), self.dtype)
                                          for size in s.state_sizes))

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

    def _state_parts(self, state, batch: int) -> tuple | None:
        """The incoming state (torch's form) as its tuple of parts, each (L*D, B, S)."""
        if state is None:
            return None
        s = self.spec
        parts = self.kind.to_parts(state)
        check_stacked(parts, s.num_layers * s.directions, batch, s.state_sizes, "state")
        return parts

    def _fused(self) -> bool:
        """One unidirectional layer: the cell without the stack, the head's gradient lazily."""
        return self.spec.num_layers == 1 and not self.spec.bidirectional

    def forward(self, params: dict, X: np.ndarray, state=None):
        """Outputs (B, T, O) (logits or predictions) and the last state; evaluation mode."""
        x = self._inputs(X)
        if x.shape[0] == 1 and not self.spec.bidirectional:
            if x.dtype.kind in "iu" and x.ndim == 2 and 0 < x.size <= 64:
                ids = x.ravel().tolist()                 # a few ids: checked without reductions
                if min(ids) < 0 or max(ids) >= self.spec.input_size:
                    raise ValueError(f"expected input token ids in [0, {self.spec.input_size}),"
                                     f" got values in [{min(ids)}, {max(ids)}]")
            else:
                check_sequence(x, self.spec.input_size)  # shapes and the id range
            y, state_n = self.step(params, x[0], state)
            return y[:, None, :], state_n
        s = self.spec
        if s.embedding_size is not None:
            check_sequence(x, s.input_size)              # the id range, before the gather
            x = self._embed(params, x)                   # (T, B, E)
        out, state_n, _ = stack.forward(
            self.kind, params, x, state, num_layers=s.num_layers, bidirectional=s.bidirectional,
            nonlinearity=s.nonlinearity, precision=self.precision)
        T, B, DH = out.shape
        y = _head_product(out.reshape(T * B, DH), params[s.head_weight], self.precision)
        y += params["head.bias"]
        return y.reshape(T, B, -1).transpose(1, 0, 2), state_n

    def step(self, params: dict, x: np.ndarray, state=None):
        """One time step of every sequence: ``x`` (B,) token ids or (B, I) features.

        Returns the outputs (B, O) and the new state, laid out as ``begin_state``. The cell's
        single-step function per layer, no stack bookkeeping and no cache (generation).
        Unidirectional models (every language model); evaluation mode.
        """
        s = self.spec
        if s.bidirectional:
            raise ValueError("expected a unidirectional model for step(), got bidirectional")
        B = x.shape[0]
        if x.dtype.kind in "iu":
            if x.ndim != 1:
                raise ValueError(f"expected token ids of shape (B,), got {tuple(x.shape)}")
            if s.embedding_size is not None:
                x = self._embed(params, x)               # (B, E): the tokens' rows
        else:
            x = np.asarray(x, dtype=self.dtype)
        parts = self.kind.to_parts(self.begin_state(B) if state is None else state)
        for part, size in zip(parts, s.state_sizes, strict=True):
            shape = (s.num_layers, B, size)
            if not isinstance(part, np.ndarray) or part.shape != shape:
                got = tuple(part.shape) if hasattr(part, "shape") else type(part).__name__
                raise ValueError(f"expected a state of shape {shape}, got {got}")
        h, parts_n = step_layers(self.cell.step, self.options, params, self._layer_keys, x,
                                 parts, np.stack)
        y = matmul(h, params[s.head_weight].T, precision=self.precision)
        y += params["head.bias"]
        return y, self.kind.from_parts(parts_n)

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
        parts = self._state_parts(state, x.shape[1])
        masks = self.draw_masks(x.shape[0], x.shape[1], rng) if training else NO_MASKS
        y, state_n, cache = self.model_forward(params, x, parts, masks)
        if self.spec.task == "lm":
            loss, dy = softmax_cross_entropy_(y, np.asarray(Y).T.reshape(-1))  # y becomes dy
        else:
            T, B = x.shape[:2]
            target = np.asarray(Y, dtype=self.dtype).transpose(1, 0, 2).reshape(T * B, -1)
            loss, dy = mse(y, target)
        grads, _ = self.model_backward(params, dy, cache, truncate=truncate)
        return loss, grads, state_n

    def draw_masks(self, T: int, B: int, rng: np.random.Generator | None) -> Masks:
        """The dropout masks of one training call over (T, B) (:mod:`bptt.engine.dropout`),
        drawn from ``rng``; no masks when the model drops nothing out."""
        if not self.spec.drops_out:
            return NO_MASKS
        if rng is None:
            raise ValueError("expected an rng for training with dropout > 0, got None")
        p = self.spec.dropout
        return draw_masks(self.spec, T, B, lambda shape: stack.draw_mask(rng, shape, p,
                                                                          self.dtype))

    def model_forward(self, params: dict, x: np.ndarray, parts: tuple | None,
                      masks: Masks = NO_MASKS):
        """Embedding (when the model has one), stack and head over time-major ``x`` from the
        state ``parts``, with the dropout ``masks``: ``(y (T*B, O), state_n, cache)``."""
        s = self.spec
        ids = x if s.embedding_size is not None else None
        if ids is not None:
            check_sequence(ids, s.input_size)            # the id range, before the gather
        inp = x if ids is None else self._embed(params, ids)  # e_t = W_emb[x_t], (T, B, E)
        if masks.input is not None:
            inp *= masks.input                           # e_t *= m_t: the embedding's dropout
        # forward: the stack, then the head over all T*B rows at once
        if self._fused():
            out, parts_n, stack_cache = self.cell.forward(
                inp, split_state(parts, 0), **layer_params(params, 0, 0, self.kind),
                **self.options)
            # (T, B, H); the state parts (1, B, H) as the stack gives them
            state_n = self.kind.from_parts(tuple([p[None].copy() for p in parts_n]))
        else:
            out, state_n, stack_cache = stack.forward(
                self.kind, params, inp, self.kind.from_parts(parts), num_layers=s.num_layers,
                bidirectional=s.bidirectional, nonlinearity=s.nonlinearity, dropout=s.dropout,
                training=masks.layers is not None, masks=masks.layers, precision=self.precision)
        T, B, DH = out.shape
        if masks.output is not None:
            out = out * masks.output                     # o_t = h_t * m_t: before the head
        rows = out.reshape(T * B, DH)
        y = _head_product(rows, params[s.head_weight], self.precision)        # (T*B, O)
        y += params["head.bias"]
        return y, state_n, ModelCache(ids=ids, stack=stack_cache, rows=rows, masks=masks,
                                      steps=T, batch=B)

    def model_backward(self, params: dict, dy: np.ndarray, cache: ModelCache, dstate_n=None,
                       truncate: int | None = None):
        """Gradients of :meth:`model_forward` from dL/dy (T*B, O) and dL/dstate_n (None:
        zeros): ``(grads, dstate0)``, grads keyed by parameter name, dstate0 as the state."""
        s = self.spec
        W = params[s.head_weight]
        # backward: head (dW = dy^T out, db = sum dy, dout = dy W), then BPTT through the stack
        prec = self.precision
        grads = {s.head_weight: matmul(dy.T, cache.rows, precision=prec),
                 "head.bias": dy.sum(axis=0)}
        need_dx = cache.ids is not None                  # the embedding's rows need dx
        m_out = cache.masks.output
        T, B, DH = cache.steps, cache.batch, cache.rows.shape[1]
        if self._fused():
            def dout(a: int, e: int, buf: np.ndarray) -> None:   # dL/dh_t = dy_t W, t in a..e-1
                matmul(dy[a * B:e * B], W, buf.reshape((e - a) * B, DH), precision=prec)
                if m_out is not None:                    # dh_t = (dy_t W) * m_t, the same mask
                    buf *= m_out if m_out.shape[0] == 1 else m_out[a:e]

            dparts = None if dstate_n is None else split_state(self.kind.to_parts(dstate_n), 0)
            dx, d0, g = self.cell.backward(dout, dparts, cache.stack, truncate, need_dx=need_dx)
            grads.update({self.kind.param_name(k, "_l0"): v for k, v in g.items()})
            dstate0 = self.kind.from_parts(tuple([d[None] for d in d0]))
        else:
            dh = matmul(dy, W, precision=prec).reshape(T, B, DH)
            if m_out is not None:
                dh *= m_out                              # dh_t = (dy_t W) * m_t, the same mask
            dx, dstate0, g = stack.backward(dh, dstate_n, cache.stack, truncate, need_dx=need_dx)
            grads.update(g)
        if need_dx:
            self._embedding_backward(grads, dx, cache)
        return grads, dstate0

    def _embed(self, params: dict, ids: np.ndarray) -> np.ndarray:
        """``embedding.weight`` rows of the tokens: (T, B, E) (or (B, E) for (B,) ids)."""
        return np.take(params[EMBEDDING], ids, axis=0)

    def _embedding_backward(self, grads: dict, dx: np.ndarray, cache: ModelCache) -> None:
        """d embedding.weight: the gradient reaching the embedding's output, row-summed per
        token (a scatter-add, :func:`token_weight_grad_`); tied weights add it to the head's."""
        if cache.masks.input is not None:
            dx *= cache.masks.input                      # de_t *= m_t, the forward's mask
        T, B, E = dx.shape
        if self.spec.tie_weights:                        # tied: dW_emb = dW_head + scatter
            dE = grads[EMBEDDING]
        else:
            dE = np.zeros((self.spec.input_size, E), dtype=dx.dtype)
            grads[EMBEDDING] = dE
        # dW_emb[v] += sum of the rows de_t[b] whose token x_t[b] is v (dE^T: column v)
        token_weight_grad_(dE.T, cache.ids.reshape(-1), dx.reshape(T * B, E))
