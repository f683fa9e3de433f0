"""The argument checks of :mod:`bptt.nn`: the exception type torch.nn raises for the same misuse
(``TypeError`` for a constructor argument of the wrong type, ``ValueError`` for a wrong value or
a wrong number of input dimensions, ``RuntimeError`` for sizes that do not fit together: input
size, hidden size, batch, devices, an empty sequence), each with what was expected and what
arrived.

Symbols: T steps, B batch, I input size, H hidden size, S the size of h (P with a projection),
L layers, D directions.
"""

from __future__ import annotations

import numbers
import warnings

import torch

from ..cells import NONLINEARITIES, CellKind


def _type_name(value) -> str:
    return type(value).__name__


def check_flag(name: str, value) -> None:
    """``bias``, ``batch_first``, ``bidirectional``: a bool (torch: TypeError)."""
    if not isinstance(value, bool):
        raise TypeError(f"expected {name} a bool, got {_type_name(value)} {value!r}")


def check_size(name: str, value, minimum: int = 1) -> None:
    """An int (TypeError otherwise) of at least ``minimum`` (ValueError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected {name} an int, got {_type_name(value)} {value!r}")
    if value < minimum:
        what = "greater than zero" if minimum == 1 else f"at least {minimum}"
        raise ValueError(f"expected {name} {what}, got {value}")


def check_constructor(kind: CellKind, input_size, hidden_size, num_layers, bias, batch_first,
                      dropout, bidirectional, proj_size, nonlinearity) -> None:
    """Every argument of a sequence module's constructor, as torch.nn.RNNBase checks them."""
    if (not isinstance(dropout, numbers.Number) or isinstance(dropout, bool)
            or not 0 <= dropout <= 1):
        raise ValueError(f"expected dropout a number in [0, 1] (the probability of zeroing an "
                         f"element), got {dropout!r}")
    for name, flag in (("bias", bias), ("batch_first", batch_first),
                       ("bidirectional", bidirectional)):
        check_flag(name, flag)
    check_size("input_size", input_size)
    check_size("hidden_size", hidden_size)
    check_size("num_layers", num_layers)
    check_size("proj_size", proj_size, minimum=0)
    if proj_size >= hidden_size:
        raise ValueError(f"expected proj_size smaller than hidden_size {hidden_size}, got "
                         f"{proj_size}")
    if kind.takes_nonlinearity and nonlinearity not in NONLINEARITIES:
        raise ValueError(f"expected nonlinearity {' or '.join(map(repr, NONLINEARITIES))}, "
                         f"got {nonlinearity!r}")
    if dropout > 0 and num_layers == 1:
        warnings.warn(f"dropout={dropout} has no effect with num_layers=1: dropout acts "
                      f"between stacked layers, after all but the last", stacklevel=4)


def no_projection(title: str, proj_size) -> None:
    """torch.nn.RNN and GRU refuse ``proj_size`` (ValueError): only the LSTM projects."""
    if proj_size is not None:
        raise ValueError(f"expected no proj_size for the {title} (proj_size is the LSTM's), "
                         f"got proj_size={proj_size!r}")


def is_tokens(x: torch.Tensor) -> bool:
    return not (x.is_floating_point() or x.is_complex())


def check_sequence_input(module, x: torch.Tensor, packed: bool) -> None:
    """The input of a sequence module, before any reshaping: its type, dimensions, dtype,
    device, size and length. Token ids (an integer dtype) stand for one-hot vectors of size
    ``input_size``: (T,) unbatched, (T, B) or (B, T) batched, (N,) as packed data."""
    name = type(module).__name__
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected the {name} input as a tensor or a PackedSequence, got "
                        f"{_type_name(x)}")
    weight = module.weight_ih_l0
    tokens = is_tokens(x)
    dims = (1,) if packed and tokens else (2,) if packed else (1, 2) if tokens else (2, 3)
    if x.dim() not in dims:
        what = "token ids" if tokens else "features"
        got = " or ".join(f"{d}-D" for d in dims)
        raise ValueError(f"expected {name} input {what} of {got}, got a {x.dim()}-D tensor of "
                         f"shape {tuple(x.shape)}")
    if x.device != weight.device:
        raise RuntimeError(f"expected the {name} input on {weight.device} (the parameters' "
                           f"device), got it on {x.device}")
    if (not tokens and x.dtype != weight.dtype
            and not torch.is_autocast_enabled(x.device.type)):
        raise ValueError(f"expected {name} input of dtype {weight.dtype} (the parameters'), "
                         f"got {x.dtype}: convert the input, input.to({weight.dtype}), or the "
                         f"model, model.to({x.dtype})")
    if not tokens and x.shape[-1] != module.input_size:
        raise RuntimeError(f"expected {name} input of size {module.input_size} in its last "
                           f"dimension (input_size), got shape {tuple(x.shape)}")
    if tokens:
        check_token_ids(module, x)
    steps = x.shape[0] if packed or not module.batch_first or x.dim() == dims[0] else x.shape[1]
    if steps == 0:
        raise RuntimeError(f"expected a {name} input sequence of at least one step, got "
                           f"length 0 (shape {tuple(x.shape)})")


def check_token_ids(module, x: torch.Tensor) -> None:
    """Ids in [0, input_size): IndexError as torch.nn.Embedding. Checked on the CPU only (on a
    GPU reading the values back would wait for the device)."""
    if x.device.type != "cpu" or x.numel() == 0:
        return
    if torch.compiler.is_compiling():                   # no value read back inside a graph:
        torch._assert_async(((x >= 0) & (x < module.input_size)).all(),  # checked in it
                            f"expected token ids in [0, {module.input_size}) (input_size is "
                            f"the vocabulary)")
        return
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or hi >= module.input_size:
        raise IndexError(f"expected token ids in [0, {module.input_size}) (input_size is the "
                         f"vocabulary), got values in [{lo}, {hi}]")


def check_state(module, hx, expected: tuple[tuple[int, ...], ...], dims: int,
                like: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``hx`` as the tuple of its parts, each checked against its ``expected`` shape: the form
    (one tensor, or the LSTM's pair), the dimensions, device, dtype and shape."""
    name = type(module).__name__
    kind = module.kind
    if kind.paired_state:
        if not isinstance(hx, tuple | list) or len(hx) != kind.num_state_parts:
            got = (f"a {_type_name(hx)} of length {len(hx)}" if isinstance(hx, tuple | list)
                   else _type_name(hx))
            raise ValueError(f"expected the {name} state as a pair ({', '.join(kind.state)}) "
                             f"of tensors, got {got}")
        parts = tuple(hx)
    else:
        if not isinstance(hx, torch.Tensor):
            raise ValueError(f"expected the {name} state h as one tensor, got {_type_name(hx)}")
        parts = (hx,)
    for part, label, shape in zip(parts, kind.state, expected, strict=True):
        if not isinstance(part, torch.Tensor):
            raise ValueError(f"expected the {name} state {label} as a tensor, got "
                             f"{_type_name(part)}")
        if part.dim() != dims:
            form = "batched 3-D" if dims == 3 else "unbatched 2-D"
            raise RuntimeError(f"expected the {name} state {label} {dims}-D for {form} input, "
                               f"got a {part.dim()}-D tensor")
        if part.device != like.device:
            raise RuntimeError(f"expected the {name} state {label} on {like.device} (the "
                               f"input's device), got it on {part.device}")
        if (part.dtype != like.dtype and like.is_floating_point()
                and not torch.is_autocast_enabled(like.device.type)):
            raise RuntimeError(f"expected the {name} state {label} of dtype {like.dtype} (the "
                               f"input's), got {part.dtype}")
        if tuple(part.shape) != shape:
            raise RuntimeError(f"expected the {name} state {label} of shape {shape}, got "
                               f"{tuple(part.shape)}")
    return parts
