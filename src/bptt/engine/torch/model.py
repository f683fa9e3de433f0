"""The torch engines: the NumPy engine's interface on torch tensors, CPU or CUDA.

Three ways to compute the same model (see :mod:`bptt.engine`), all offering exactly the
:class:`bptt.engine.numpy.model.NumpyEngine` interface:

    params = engine.from_numpy(numpy_params)          # dict of plain tensors on the device
    state = engine.begin_state(batch_size)            # (L*D, B, H), or the pair (h, c)
    loss, grads, state = engine.loss_and_grads(params, X, Y, state, truncate=..., training=...)
    out, state = engine.forward(params, X, state)     # (B, T, O) logits / predictions

  torch           :class:`TorchEngine`: the stack through ``StackFunction`` (our BPTT)
  torch-autograd  :class:`TorchAutogradEngine`: the book's loop over time steps, autograd
  torch-builtin   :class:`TorchBuiltinEngine`: torch.nn.RNN/LSTM/GRU (cuDNN on a GPU)

The head (``head.weight``, ``head.bias``) and the loss (mean cross-entropy over the T*B targets
for ``lm``, mean squared error for ``regression``) are torch ops differentiated by autograd in
every engine (in the ``torch`` engine the head is :class:`HeadFunction`, the same product with
its three-line gradient written out so that its products run through oneDNN on the CPU).
Parameters are plain tensors (``requires_grad`` False): ``loss_and_grads`` makes detached
leaves sharing their storage, so an optimiser from :mod:`bptt.optim` updates them in place
between calls. X and Y arrive batch-first as NumPy arrays, (B, T) int ids or (B, T, F)
floats; they are checked on the host and copied to the device once per call. Nothing reads the
device back inside a time loop; ``scalar`` is the one place a loss becomes a Python float.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from ...model import EMBEDDING, ModelSpec, check_params
from ..dropout import NO_MASKS, Masks, draw_masks
from ..layout import layer_keys, step_layers, suffix
from . import stack, unrolled
from .common import check_truncate, is_tokens, matmul
from .embedding import EmbeddingFunction, embed

DTYPES = {"float32": torch.float32, "float64": torch.float64}

# fp32 everywhere; bf16 (bfloat16 matrix products with float32 accumulation, float32 master
# weights, state and loss) in the "torch" engine for the rnn cell: see ``TorchEngine``. Branches
# on ``self.precision`` are marked "precision:" below.
PRECISIONS = ("fp32", "bf16")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None -> "cuda" when available, else "cpu"; a CUDA device without CUDA is a ValueError."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"expected device cpu, cuda, cuda:N or mps, got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"expected device 'cpu' (CUDA is not available here), got {device!r}")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"expected a CUDA device index below {torch.cuda.device_count()}, got "
                         f"{device!r}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"expected device 'cpu' (MPS is not available here), got {device!r}")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"expected device cpu, cuda, cuda:N or mps, got {device!r}")
    return dev


class _TorchBase:
    """What the three engines share: conversions, state, input checks, head and loss."""

    name = "torch-base"
    precisions: tuple[str, ...] = ("fp32",)

    def __init__(self, spec: ModelSpec, device: str | torch.device | None = None,
                 dtype: str = "float32", precision: str = "fp32") -> None:
        if not isinstance(spec, ModelSpec):
            raise ValueError(f"expected a ModelSpec, got {type(spec).__name__}")
        key = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
        if key not in DTYPES:
            raise ValueError(f"expected dtype 'float32' or 'float64', got {dtype!r}")
        if precision not in self.precisions:
            expected = " or ".join(repr(p) for p in self.precisions)
            note = "" if "bf16" in self.precisions else (
                f" (the {self.name} engine computes in fp32; bf16 is the 'torch' engine's)")
            raise ValueError(f"expected precision {expected}, got {precision!r}{note}")
        self.spec = spec
        self.device = resolve_device(device)
        self.dtype = DTYPES[key]
        self.np_dtype = np.dtype(key)
        self.precision = precision
        self.kind = spec.kind
        self.names = stack.param_names(spec.num_layers, spec.bidirectional, spec.bias,
                                       self.kind, spec.proj_size > 0)

    # -- parameters and state -------------------------------------------------------------
    def from_numpy(self, params: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Fresh tensors on the device (copies: updating them never touches the arrays)."""
        check_params(self.spec, params)
        return {k: torch.tensor(np.asarray(v), dtype=self.dtype, device=self.device)
                for k, v in params.items()}

    def to_numpy(self, params: dict) -> dict[str, np.ndarray]:
        """CPU NumPy copies of the parameters (a snapshot)."""
        return {k: v.detach().to("cpu", copy=True).numpy() for k, v in params.items()}

    def state_from_numpy(self, state):
        if state is None:
            return None
        if isinstance(state, tuple | list):
            return tuple(torch.tensor(np.asarray(s), dtype=self.dtype, device=self.device)
                         for s in state)
        return torch.tensor(np.asarray(state), dtype=self.dtype, device=self.device)

    def state_to_numpy(self, state):
        if state is None:
            return None
        if isinstance(state, tuple | list):
            return tuple(s.detach().to("cpu", copy=True).numpy() for s in state)
        return state.detach().to("cpu", copy=True).numpy()

    def begin_state(self, batch_size: int):
        s = self.spec
        LD = s.num_layers * s.directions
        return self.kind.from_parts(tuple(
            torch.zeros((LD, batch_size, size), dtype=self.dtype, device=self.device)
            for size in s.state_sizes))

    def detach_state(self, state):
        """The state without its graph: the gradient stops at the batch boundary."""
        if state is None:
            return None
        if isinstance(state, tuple | list):
            return tuple(s.detach() for s in state)
        return state.detach()

    def scalar(self, x) -> float:
        return float(x)

    # -- inputs -------------------------------------------------------------------------------
    def _check_batch(self, X, Y=None) -> tuple[int, int]:
        """Shapes (and, for NumPy ids, the id range) on the host; returns (B, T)."""
        s = self.spec
        lm = s.task == "lm"
        shape = tuple(X.shape)
        if lm and (len(shape) != 2 or not _is_int(X)):
            raise ValueError(f"expected X token ids of shape (B, T), got {_describe(X)}")
        if not lm and (len(shape) != 3 or shape[2] != s.input_size):
            raise ValueError(
                f"expected X of shape (B, T, {s.input_size}), got {_describe(X)}"
            )
        if shape[0] < 1 or shape[1] < 1:
            raise ValueError(f"expected X with B >= 1 and T >= 1, got shape {shape}")
        if lm:
            _check_ids(X, s.input_size, "X")
        if Y is not None:
            if lm:
                if tuple(Y.shape) != shape[:2] or not _is_int(Y):
                    raise ValueError(
                        f"expected Y token ids of shape {shape[:2]}, got {_describe(Y)}"
                    )
                _check_ids(Y, s.output_size, "Y")
            elif tuple(Y.shape) != (*shape[:2], s.output_size):
                raise ValueError(
                    f"expected Y of shape {(*shape[:2], s.output_size)}, got {_describe(Y)}"
                )
        return shape[0], shape[1]

    def _to_device(self, a, dtype: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(a, dtype=dtype).to(self.device, non_blocking=True)

    def _inputs(self, X) -> torch.Tensor:
        """Time-major on the device: (T, B) int64 ids or (T, B, I) floats."""
        if isinstance(X, torch.Tensor):
            x = X.transpose(0, 1)
            dtype = torch.int64 if self.spec.task == "lm" else self.dtype
            return x.to(self.device, dtype).contiguous()
        X = np.asarray(X)
        if self.spec.task == "lm":
            return self._to_device(np.ascontiguousarray(X.T), torch.int64)
        return self._to_device(np.ascontiguousarray(X.transpose(1, 0, 2)), self.dtype)

    def _targets(self, Y) -> torch.Tensor:
        """Time-major rows matching the head's: (T*B,) int64 ids or (T*B, O) floats."""
        lm = self.spec.task == "lm"
        if isinstance(Y, torch.Tensor):
            y = Y.transpose(0, 1).to(self.device, torch.int64 if lm else self.dtype)
            return y.reshape(-1) if lm else y.reshape(-1, y.shape[-1])
        Y = np.asarray(Y)
        if lm:
            return self._to_device(np.ascontiguousarray(Y.T).reshape(-1), torch.int64)
        y = np.ascontiguousarray(Y.transpose(1, 0, 2)).reshape(-1, Y.shape[2])
        return self._to_device(y, self.dtype)

    def _state_in(self, state, batch: int):
        """The incoming state, detached, on the device; its shape (L*D, B, H) checked."""
        parts = self._state_parts(state, batch)
        return None if parts is None else self.kind.from_parts(parts)

    def _state_parts(self, state, batch: int) -> tuple | None:
        """:meth:`_state_in` as the tuple of the state's parts."""
        if state is None:
            return None
        s, kind = self.spec, self.kind
        try:
            parts = kind.to_parts(state)
        except ValueError:
            form = ("one tensor" if not kind.paired_state else
                    f"a tuple ({', '.join(kind.state)}) of tensors")
            raise ValueError(f"expected the {kind.title} state as {form}, "
                             f"got {type(state).__name__}") from None
        for part, size in zip(parts, s.state_sizes, strict=True):
            shape = (s.num_layers * s.directions, batch, size)
            if tuple(part.shape) != shape:
                raise ValueError(
                    f"expected state of shape (L*D, B, H) = {shape}, got {tuple(part.shape)}"
                )
        return tuple(torch.as_tensor(p).detach().to(self.device, self.dtype) for p in parts)

    def _generator(self, rng, training: bool) -> torch.Generator | None:
        """The dropout generator: a torch.Generator as given, one seeded from a NumPy
        Generator (drawn only when masks will be drawn), or None (the global torch RNG)."""
        if rng is None or not (training and self.spec.drops_out):
            return None
        if isinstance(rng, torch.Generator):
            if rng.device.type != self.device.type:
                raise ValueError(
                    f"expected a torch.Generator on {self.device.type} (the engine's device), "
                    f"got one on {rng.device.type}"
                )
            return rng
        if isinstance(rng, np.random.Generator):
            gen = torch.Generator(device=self.device)
            gen.manual_seed(int(rng.integers(0, 2**63 - 1)))
            return gen
        raise ValueError(
            f"expected rng None, a torch.Generator or a numpy Generator, got {type(rng).__name__}"
        )

    def draw_masks(self, T: int, B: int, generator: torch.Generator | None,
                   like: torch.Tensor) -> Masks:
        """The dropout masks of one training call over (T, B) (:mod:`bptt.engine.dropout`),
        drawn by :func:`stack.draw_mask` from ``generator`` (None: the global torch RNG), of
        ``like``'s dtype and device."""
        p = self.spec.dropout
        return draw_masks(self.spec, T, B, lambda shape: stack.draw_mask(
            shape, p, like=like, generator=generator), layers=self._draws_layer_masks)

    _draws_layer_masks = True    # False: the stack's module draws its own (torch-builtin)

    # -- the model --------------------------------------------------------------------------
    def _stack(self, params, x, state, *, training, generator, truncate, masks=None):
        """(out (T, B, D*H), state_n); differentiable w.r.t. the parameter leaves. ``masks``:
        the dropout masks between the layers (None: no dropout there, or drawn by the stack)."""
        raise NotImplementedError

    def _stack_eval(self, params, x, state):
        return self._stack(params, x, state, training=False, generator=None, truncate=None)

    def _embed(self, params, x: torch.Tensor, mask=None) -> torch.Tensor:
        """The stack's input: token ids as they are (one-hot), or their ``embedding.weight``
        rows (T, B, E) times the dropout ``mask``; autograd differentiates it."""
        if self.spec.embedding_size is None:
            return x
        e = F.embedding(x, params[EMBEDDING])
        return e if mask is None else e * mask

    def _head(self, params, out: torch.Tensor, mask=None) -> torch.Tensor:
        T, B, DH = out.shape
        rows = out.reshape(T * B, DH)
        if mask is not None:
            rows = (out * mask).reshape(T * B, DH)       # dropout before the head
        # precision: fp32 head product (bf16 is TorchEngine's, see HeadFunction)
        return F.linear(rows, params[self.spec.head_weight], params["head.bias"])

    def logits(self, params: dict, x: torch.Tensor, state=None, *, masks: Masks = NO_MASKS,
               training: bool = False, generator=None, truncate: int | None = None):
        """The model on time-major ``x`` ((T, B) ids or (T, B, I) features): embedding (when
        the model has one), stack and head with the dropout ``masks``, differentiable w.r.t.
        ``params``; returns ``(y (T*B, O), state_n)``."""
        inp = self._embed(params, x, masks.input)
        out, state_n = self._stack(params, inp, state, training=training, generator=generator,
                                   truncate=truncate, masks=masks.layers)
        return self._head(params, out, masks.output), state_n

    def forward(self, params: dict, X, state=None):
        """Outputs (B, T, O) (logits or predictions) and the last state; evaluation mode."""
        B, _ = self._check_batch(X)
        state = self._state_in(state, B)
        with torch.no_grad():
            x = self._inputs(X)
            out, state_n = self._stack_eval(params, self._embed(params, x), state)
            T, B, _ = out.shape
            y = self._head(params, out).view(T, B, -1).transpose(0, 1)
        return y, state_n

    def loss_and_grads(
        self,
        params: dict,
        X,
        Y,
        state=None,
        *,
        truncate: int | None = None,
        training: bool = True,
        rng: torch.Generator | np.random.Generator | None = None,
    ):
        """Mean loss over the T*B targets (a 0-d tensor), gradients of every parameter (named
        as ``params``), and the last state (detached).

        ``truncate=k``: the loss at step t crosses at most k recurrent transitions (per layer,
        as :func:`bptt.engine.numpy.common.bptt_loop`). ``rng`` drives the dropout masks.
        """
        check_truncate(truncate)
        self._check_truncate_supported(truncate)
        B, _ = self._check_batch(X, Y)
        state = self._state_in(state, B)
        x = self._inputs(X)
        target = self._targets(Y)
        leaves = {k: v.detach().requires_grad_() for k, v in params.items()}  # no copy
        generator = self._generator(rng, training)
        masks = (self.draw_masks(x.shape[0], x.shape[1], generator, params["head.bias"])
                 if training else NO_MASKS)
        with torch.enable_grad():
            y, state_n = self.logits(leaves, x, state, masks=masks, training=training,
                                     generator=generator, truncate=truncate)
            # precision: the loss is always computed in float32 (or float64) from fp32 logits
            if self.spec.task == "lm":
                loss = F.cross_entropy(y, target)
            else:
                loss = F.mse_loss(y, target)
            grads = torch.autograd.grad(loss, list(leaves.values()))
        return loss.detach(), dict(zip(leaves, grads, strict=True)), self.detach_state(state_n)

    def _check_truncate_supported(self, truncate) -> None:
        pass


class HeadFunction(torch.autograd.Function):
    """The linear head ``y = (x * m) W^T + b`` over all N = T*B rows, with its three products
    through :func:`bptt.engine.torch.common.matmul` (on the CPU the product this machine runs
    fastest: the compiled kernel, oneDNN or MKL, measured at first use; torch.mm elsewhere):

        xm = x * m,   y = xm W^T + b,   dx = (dy W) * m,   dW = dy^T xm,   db = sum_rows dy

    ``x`` (N, D*H), its rows time-major; ``mask`` (optional) the dropout mask before the head,
    (T, B, D*H) or (1, B, D*H) (variational), or None (1). ``precision="bf16"``: the products
    take bfloat16 operands (float32 accumulation) and return float32; x, W, b, y and the
    gradients stay float32.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, precision, *masks):
        ctx.inputs = 4 + len(masks)                      # apply's arguments: the mask optional
        mask = masks[0] if masks else None
        if mask is not None:                             # dropout before the head
            x = (x.view(-1, *mask.shape[1:]) * mask).view(x.shape)
        y = matmul(x, weight.t(), precision)
        y += bias
        ctx.save_for_backward(x, weight, mask)
        ctx.precision = precision
        return y

    @staticmethod
    def backward(ctx, dy):
        xm, weight, mask = ctx.saved_tensors
        # the products read their transposed operands in place (no copy of W^T (V x D*H) or
        # of dy^T (V x N) per step)
        dx = matmul(dy, weight, ctx.precision)                   # dy W
        if mask is not None:                                     # the forward's mask, again
            dx = (dx.view(-1, *mask.shape[1:]) * mask).view(dx.shape)
        dW = matmul(dy.t(), xm, ctx.precision)                   # dy^T xm
        return (dx, dW, dy.sum(dim=0), None, None)[:ctx.inputs]


class TorchEngine(_TorchBase):
    """Hand-written BPTT on torch tensors: the stack is :class:`stack.StackFunction`.

    ``precision="bf16"`` (rnn cell, float32 parameters): every matrix product -- recurrent,
    weight-gradient and head -- takes bfloat16 operands and accumulates in float32 (oneDNN on
    the CPU), its bfloat16 result added into float32 tensors; the master weights, the state, the
    pre-activations, the gradients and the loss stay float32. The head is
    :class:`HeadFunction` (its gradient written out, its products through oneDNN on the CPU);
    the loss is torch's, differentiated by autograd. A single step (generation) skips the stack:
    one ``step`` of the cell's module per layer, under no_grad.
    """

    name = "torch"
    precisions = PRECISIONS

    def __init__(self, spec: ModelSpec, device: str | torch.device | None = None,
                 dtype: str = "float32", precision: str = "fp32") -> None:
        super().__init__(spec, device=device, dtype=dtype, precision=precision)
        stack.check_precision(self.kind, precision)
        if precision == "bf16" and self.dtype != torch.float32:
            raise ValueError(
                f"expected dtype 'float32' with precision 'bf16' (float32 master weights), "
                f"got {dtype!r}"
            )
        # generation: the cell's step per layer
        self.cell = stack.cell_module(self.kind)
        self.options = stack.cell_options(self.kind, spec.nonlinearity, precision)
        self._layer_keys = layer_keys(spec.num_layers, self.kind)

    def _config(self, training: bool, generator, truncate, masks=None) -> stack.StackConfig:
        s = self.spec
        return stack.StackConfig(
            cell=s.cell, names=tuple(self.names), num_layers=s.num_layers,
            bidirectional=s.bidirectional, nonlinearity=s.nonlinearity, dropout=s.dropout,
            training=training, truncate=truncate, generator=generator, masks=masks,
            precision=self.precision,
        )

    def _embed(self, params, x: torch.Tensor, mask=None) -> torch.Tensor:
        """Token ids as they are (one-hot), or their ``embedding.weight`` rows through
        :class:`EmbeddingFunction` (its backward a row scatter-add) with the dropout mask."""
        if self.spec.embedding_size is None:
            return x
        if torch.is_grad_enabled():
            return EmbeddingFunction.apply(x, params[EMBEDDING], mask)
        return embed(x, params[EMBEDDING])

    def _head(self, params, out: torch.Tensor, mask=None) -> torch.Tensor:
        """The head through :class:`HeadFunction` (oneDNN products on the CPU; precision:
        bfloat16 operands with ``precision="bf16"``), the dropout mask folded in."""
        T, B, DH = out.shape
        rows, W, b = out.reshape(T * B, DH), params[self.spec.head_weight], params["head.bias"]
        if torch.is_grad_enabled():
            return HeadFunction.apply(rows, W, b, self.precision, mask)
        if self.precision == "bf16":                     # no graph: the product alone
            low = torch.bfloat16
            return F.linear(rows.to(low), W.to(low), b.to(low)).to(out.dtype)
        if rows.shape[0] < 64:                           # a generation step: torch.addmm
            return F.linear(rows, W, b)
        y = matmul(rows, W.t())
        y += b
        return y

    def forward(self, params: dict, X, state=None):
        """Outputs (B, T, O) and the last state; a single step of a unidirectional stack
        (generation) runs the cell's step per layer, without the stack's bookkeeping."""
        s = self.spec
        if s.bidirectional or len(np.shape(X)) < 2 or np.shape(X)[1] != 1:
            return super().forward(params, X, state)
        B, _ = self._check_batch(X)
        parts = self._state_parts(state, B)
        with torch.no_grad():
            x = self._inputs(X)[0]                       # (B,) ids or (B, I) features
            if s.embedding_size is not None:
                x = embed(x, params[EMBEDDING])          # (B, E): the tokens' rows
            if parts is None:
                w = params["weight_hh_l0"]
                parts = tuple(w.new_zeros((s.num_layers, B, size)) for size in s.state_sizes)
            h, parts_n = step_layers(self.cell.step, self.options, params, self._layer_keys,
                                     x, parts, torch.stack)
            y = self._head(params, h.unsqueeze(0))       # (B, O)
        return y.view(1, B, -1).transpose(0, 1), self.kind.from_parts(parts_n)

    def _stack(self, params, x, state, *, training, generator, truncate, masks=None):
        out, state_n, _ = stack.apply(self._config(training, generator, truncate, masks), x,
                                      params, state)
        return out, state_n

    def _stack_eval(self, params, x, state):
        s = self.spec
        out, state_n, _ = stack.forward(
            self.kind, params, x, state, num_layers=s.num_layers, bidirectional=s.bidirectional,
            nonlinearity=s.nonlinearity, dropout=s.dropout, training=False,
            precision=self.precision,
        )
        return out, state_n


class TorchAutogradEngine(_TorchBase):
    """The book's way: a Python loop over time steps with torch ops, differentiated by autograd
    (truncation by recomputing each step's window from a detached state)."""

    name = "torch-autograd"

    def _stack(self, params, x, state, *, training, generator, truncate, masks=None):
        s = self.spec
        return unrolled.stack_forward(
            s.cell, params, x, state, num_layers=s.num_layers, bidirectional=s.bidirectional,
            nonlinearity=s.nonlinearity, dropout=s.dropout, training=training,
            generator=generator, truncate=truncate, masks=masks,
        )


_BUILTIN_WARNING = ".*weights are not part of single contiguous chunk of memory.*"


class TorchBuiltinEngine(_TorchBase):
    """torch.nn.RNN/LSTM/GRU (cuDNN on a GPU) with our parameters, plus the head.

    The module is built once; each call runs it through ``torch.func.functional_call`` with the
    parameter tensors themselves (no copy). Token ids enter as one-hot vectors, or through the
    embedding (autograd's). Its dropout masks between layers are torch's own (an ``rng`` seeds
    the global RNG for the call on the CPU); with variational dropout the layers run as
    one-layer modules with our masks between them. It supports full backpropagation only
    (``truncate=None``).
    """

    name = "torch-builtin"

    def __init__(self, spec: ModelSpec, device=None, dtype: str = "float32",
                 precision: str = "fp32") -> None:
        super().__init__(spec, device=device, dtype=dtype, precision=precision)
        kind = self.kind
        if kind.torch_name is None:
            raise ValueError(f"expected a cell torch.nn computes for the torch-builtin engine, "
                             f"got {kind.name!r} (torch has no {kind.title}); use the 'torch' "
                             f"engine")
        cls = getattr(torch.nn, kind.torch_name)
        kwargs = kind.options(spec.nonlinearity)
        if spec.proj_size:
            kwargs["proj_size"] = spec.proj_size
        # variational dropout between layers: torch.nn draws a mask per step, so one module
        # per layer, our masks (one per sequence) multiplied between them
        self._draws_layer_masks = spec.dropout_mode == "variational" and spec.num_layers > 1
        sizes = ([spec.stack_input_size] + [spec.directions * spec.out_size]
                 * (spec.num_layers - 1) if self._draws_layer_masks else [spec.stack_input_size])
        self.modules = [cls(
            size, spec.hidden_size, num_layers=spec.num_layers if len(sizes) == 1 else 1,
            bias=spec.bias, dropout=spec.dropout if len(sizes) == 1 and spec.num_layers > 1
            else 0.0, bidirectional=spec.bidirectional, **kwargs,
        ).to(device=self.device, dtype=self.dtype).requires_grad_(False) for size in sizes]
        self.module = self.modules[0]

    def _check_truncate_supported(self, truncate) -> None:
        if truncate is not None:
            raise ValueError(
                f"expected truncate=None for the torch-builtin engine (torch.nn.RNN/LSTM/GRU "
                f"backpropagate through the whole sequence), got {truncate!r}; "
                f"truncated BPTT is supported by the engines 'numpy', 'torch' and "
                f"'torch-autograd'"
            )

    def _stack(self, params, x, state, *, training, generator, truncate, masks=None):
        self._check_truncate_supported(truncate)
        if is_tokens(x):
            x = F.one_hot(x, self.spec.input_size).to(self.dtype)   # (T, B, V)
        if len(self.modules) > 1:
            return self._layer_by_layer(params, x, state, masks)
        weights = {n: params[n] for n in self.names}
        self.module.train(training)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_BUILTIN_WARNING)
            if generator is None:
                return torch.func.functional_call(self.module, weights, (x, state))
            seed = int(torch.randint(0, 2**62, (1,), generator=generator,
                                     device=generator.device))
            devices = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices, device_type=self.device.type):
                torch.manual_seed(seed)
                return torch.func.functional_call(self.module, weights, (x, state))

    def _layer_by_layer(self, params, x, state, masks):
        """The one-layer modules in turn, ``masks`` (None: no dropout) between them."""
        kind, D = self.kind, self.spec.directions
        parts = kind.to_parts(state)
        finals = []
        for layer, module in enumerate(self.modules):
            weights = {f"{k}{suffix(0, d)}": params[f"{k}{suffix(layer, d)}"]
                       for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
                       for d in range(D) if f"{k}{suffix(layer, d)}" in params}
            hx = None if parts is None else kind.from_parts(
                tuple(p[layer * D:(layer + 1) * D] for p in parts))
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_BUILTIN_WARNING)
                x, state_n = torch.func.functional_call(module, weights, (x, hx))
            finals.append(kind.to_parts(state_n))
            if masks is not None and layer < len(self.modules) - 1:
                x = x * masks[layer]                     # the same mask at every step
        return x, kind.from_parts(tuple(torch.cat(p) for p in zip(*finals, strict=True)))


def _is_int(a) -> bool:
    if isinstance(a, torch.Tensor):
        return is_tokens(a)
    return np.issubdtype(np.asarray(a).dtype, np.integer)


def _describe(a) -> str:
    dtype = a.dtype if hasattr(a, "dtype") else type(a).__name__
    return f"shape {tuple(np.shape(a))} of {dtype}"


def _check_ids(a, size: int, name: str) -> None:
    """Ids in [0, size); checked for host arrays only (a device tensor would synchronise)."""
    if isinstance(a, torch.Tensor) and a.device.type != "cpu":
        return
    a = np.asarray(a)
    if a.size and (a.min() < 0 or a.max() >= size):
        raise ValueError(f"expected {name} token ids in [0, {size}), "
                         f"got values in [{a.min()}, {a.max()}]")


TORCH_ENGINES = {
    "torch": TorchEngine,
    "torch-autograd": TorchAutogradEngine,
    "torch-builtin": TorchBuiltinEngine,
}

__all__ = ["TORCH_ENGINES", "TorchAutogradEngine", "TorchBuiltinEngine", "TorchEngine"]
