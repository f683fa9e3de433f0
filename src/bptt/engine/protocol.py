"""The contracts of the engine layer, as ``typing.Protocol``s: what an engine offers the jobs,
what a cell module offers the stacks, and the few array operations NumPy and torch spell
differently (so that the BPTT loop and the stack are written once).

    Engine      the interface the jobs use (``bptt.lm``, ``bptt.series``, ``bptt.bench``):
                every engine of :data:`bptt.engine.ENGINES` satisfies it
    CellModule  ``bptt.engine.<numpy|torch>.<cell>``: one recurrent layer, one direction
    ArrayOps    ``zeros``, ``empty``, ``sum_ages``, ``flip``, ``concat``, ``stack``

States: the public form is torch's (``h`` (L*D, B, H), or the pair ``(h, c)`` for a cell whose
state has two parts, :mod:`bptt.cells`); inside the engines (cells, stacks, the loop) a state
is always the tuple of its parts, ``(h,)`` or ``(h, c)``. ``Array`` is a NumPy array or a torch
tensor, as the engine computes.

Nothing here imports NumPy or torch at run time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..cells import CellKind
    from ..model import ModelSpec

Array = Any
State = Any        # the public form: h, or (h, c); None for zeros


@runtime_checkable
class Engine(Protocol):
    """A model (stack + head + loss) computed forward and backward on some arrays.

    ``X`` and ``Y`` are batch-first NumPy arrays as the batch iterators give them: (B, T) token
    ids for a language model, (B, T, I) / (B, T, O) floats for regression. Parameters are a
    flat dict named as torch names them (``bptt.model.param_shapes``).
    """

    name: str                # its name in ENGINES
    device: Any              # "cpu", or a torch.device
    spec: ModelSpec

    def from_numpy(self, params: dict) -> dict:
        """The engine's own arrays from NumPy parameters (checked against ``spec``)."""

    def to_numpy(self, params: dict) -> dict:
        """NumPy copies (or views) of the engine's parameters."""

    def begin_state(self, batch_size: int) -> State:
        """The zero state: (L*D, B, H), or a pair of them."""

    def state_from_numpy(self, state: Any) -> State:
        """A NumPy state (or any dict value of arrays: optimiser state) as the engine's."""

    def state_to_numpy(self, state: State) -> Any:
        """The engine's state as NumPy arrays (same form)."""

    def detach_state(self, state: State) -> State:
        """The state without its graph: the gradient stops at the batch boundary."""

    def scalar(self, x: Any) -> float:
        """A loss or norm as a Python float (the one place a value is read to the host)."""

    def loss_and_grads(self, params: dict, X: Any, Y: Any, state: State = None, *,
                       truncate: int | None = None, training: bool = True,
                       rng: Any = None) -> tuple[Any, dict, State]:
        """Mean loss over the T*B targets, the gradient of every parameter, the last state."""

    def forward(self, params: dict, X: Any, state: State = None) -> tuple[Array, State]:
        """Outputs (B, T, O) (logits or predictions) and the last state; evaluation mode."""


@runtime_checkable
class CellModule(Protocol):
    """One recurrent layer, one direction, of one cell kind in one engine (a module).

    Options beyond these parameters are keyword arguments with defaults: the ones the
    registry declares (``KIND.options(...)``: ``nonlinearity``), the cell's own parameters
    (``KIND.params``: a layer norm's gains and biases, each under its ``key``, its gradient
    returned under the same key) and the engine's own (the torch modules' ``precision``, one
    of their ``PRECISIONS``).
    """

    KIND: CellKind           # the registry's entry this module computes
    Cache: type              # a typing.NamedTuple: what forward keeps for backward

    def forward(self, x: Array, state0: tuple | None, weight_ih: Array, weight_hh: Array,
                bias_ih: Array | None = None,
                bias_hh: Array | None = None) -> tuple[Array, tuple, tuple]:
        """``(hs (T, B, H), state_n parts, cache)`` from x (T, B[, I]) and the parts of the
        initial state (None, or a part None: zeros)."""

    def backward(self, dhs: Array | None, dstate_n: tuple | None, cache: tuple,
                 truncate: int | None = None,
                 need_dx: bool = True) -> tuple[Array | None, tuple, dict]:
        """``(dx, dstate_0 parts, grads)`` from dL/dh_t (T, B, H) and dL/dstate_n; grads keyed
        ``weight_ih, weight_hh[, bias_ih, bias_hh]`` and the keys of the cell's own
        parameters."""

    def step(self, x: Array, state: tuple, weight_ih: Array, weight_hh: Array,
             bias_ih: Array | None = None, bias_hh: Array | None = None) -> tuple:
        """One step, no checks and no cache (generation): the new state parts."""


class ArrayOps(Protocol):
    """What the shared BPTT loop and stack need that NumPy and torch spell differently."""

    def zeros(self, like: Array, shape: tuple) -> Array:
        """Zeros of ``like``'s dtype (and device)."""

    def empty(self, like: Array, shape: tuple) -> Array:
        """Uninitialised, of ``like``'s dtype (and device)."""

    def sum_ages(self, a: Array, out: Array | None = None) -> Array:
        """The sum over axis 0 (into ``out`` when given)."""

    def flip(self, x: Array, batch_sizes: tuple | None = None) -> Array:
        """``x`` reversed along axis 0 (time); with ``batch_sizes`` (packed sequences, padded
        (T, B, ...)) each sequence reversed within its own length, the padding kept."""

    def concat(self, xs: list) -> Array:
        """Concatenated along axis 2 (features)."""

    def stack(self, xs: list) -> Array:
        """Stacked along a new axis 0."""
