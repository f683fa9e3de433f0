"""How a stack of recurrent layers is laid out, shared by every engine.

torch's conventions: parameters ``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``,
``bias_hh_l{k}`` with suffix ``_reverse`` for the backward direction, then a cell's own
(``CellKind.params``, e.g. ``layernorm_ih_l{k}.weight``) and ``weight_hr_l{k}`` (the LSTM's
projection); stacked states (L*D, B, S) indexed ``l * D + d``, S the size of each state part
(:func:`state_sizes`: H, or P for a projected h). Inside the engines a state is a tuple of
parts, one per state part of the cell (``(h,)`` or ``(h, c)``, :mod:`bptt.cells`). Nothing here
reads more of an array than its shape (:func:`sum_biases` adds two vectors with ``+``), so the
same code serves NumPy arrays and torch tensors.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..cells import CellKind, get_cell, layer_suffix

_MODULES: dict[tuple[str, str], ModuleType] = {}


def cell_module(package: str, cell: str | CellKind) -> ModuleType:
    """``package.<cell>``: the module holding a cell's forward, backward and step.

    Imported once, on first use, then looked up in a dict: the hot paths (a training step, a
    graph traced by ``torch.compile``) never reach ``importlib``.
    """
    kind = get_cell(cell)
    key = (package, kind.name)
    mod = _MODULES.get(key)
    if mod is None:
        mod = _MODULES[key] = importlib.import_module(f"{package}.{kind.name}")
    return mod


def suffix(layer: int, direction: int) -> str:
    return layer_suffix(layer, direction)


def param_names(num_layers: int, bidirectional: bool, bias: bool,
                kind: CellKind | None = None, projection: bool = False) -> list[str]:
    """torch's parameter names, in torch's order (``bptt.model.param_shapes``): per layer and
    direction the four of torch.nn.RNN, then ``kind``'s own (``CellKind.params``), then
    ``weight_hr`` when the cell projects its output (torch.nn.LSTM(proj_size > 0))."""
    names = []
    for layer in range(num_layers):
        for d in range(2 if bidirectional else 1):
            s = suffix(layer, d)
            names += [f"weight_ih{s}", f"weight_hh{s}"]
            if bias:
                names += [f"bias_ih{s}", f"bias_hh{s}"]
            if kind is not None:
                names += [p.param_name(s) for p in kind.params if bias or not p.bias]
            if projection:
                names.append(f"weight_hr{s}")
    return names


def layer_params(params: dict, layer: int, direction: int, kind: CellKind | None = None) -> dict:
    """One (layer, direction)'s weights under the cell's argument names: the four of
    torch.nn.RNN (biases None when absent), then ``kind``'s own by their keys; ``weight_hr``
    only when the parameters have it (a projected LSTM), so other cells never see it."""
    s = suffix(layer, direction)
    out = {
        "weight_ih": params[f"weight_ih{s}"],
        "weight_hh": params[f"weight_hh{s}"],
        "bias_ih": params.get(f"bias_ih{s}"),
        "bias_hh": params.get(f"bias_hh{s}"),
    }
    if kind is not None:
        for p in kind.params:
            out[p.key] = params.get(p.param_name(s))
    hr = params.get(f"weight_hr{s}")
    if hr is not None:
        out["weight_hr"] = hr
    return out


def state_sizes(kind: CellKind, params: dict) -> tuple[int, ...]:
    """The size of each state part, from layer 0's weights: h is what ``weight_hh`` reads (H,
    or P when the output is projected), every further part (the LSTM's c) is H, the width of a
    gate block."""
    w = params["weight_hh_l0"]
    H = w.shape[0] // kind.num_gates
    return (w.shape[1], *(H,) * (kind.num_state_parts - 1))


def layer_keys(num_layers: int, kind: CellKind | None = None) -> list[tuple]:
    """The parameter names of each layer's forward direction, in the order of a cell's
    arguments: ``(weight_ih, weight_hh, bias_ih, bias_hh, own)`` (biases may be absent), ``own``
    the pairs (keyword, name) of ``kind``'s own parameters, and ``weight_hr`` for a cell that
    projects (None, and so the keyword's default, when the layer has no projection)."""
    keys = []
    for layer in range(num_layers):
        s = suffix(layer, 0)
        own = tuple((p.key, p.param_name(s)) for p in kind.params) if kind is not None else ()
        if kind is not None and kind.projects:
            own += (("weight_hr", f"weight_hr{s}"),)
        keys.append((*(f"{k}{s}" for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")),
                     own))
    return keys


def step_layers(step, options: dict, params: dict, keys: list, x, parts: tuple, stack):
    """One time step through every layer of a unidirectional stack (generation): the cell's
    ``step`` per layer, layer l + 1 reading layer l's h_t. ``parts`` are the stacked state
    parts (L, B, S); returns the top layer's h_t (B, S) and the new parts (L, B, S), stacked
    by ``stack`` (one layer: a view of the step's own arrays). ``keys`` from
    :func:`layer_keys`."""
    if len(keys) == 1:                                   # one layer (the book's model)
        (w_ih, w_hh, b_ih, b_hh, own), = keys
        new = step(x, tuple([p[0] for p in parts]), params[w_ih], params[w_hh],
                   params.get(b_ih), params.get(b_hh),
                   **{k: params.get(n) for k, n in own}, **options)
        return new[0], tuple([s[None] for s in new])
    inp, finals = x, []
    for (w_ih, w_hh, b_ih, b_hh, own), prev in zip(keys, zip(*parts, strict=True), strict=True):
        new = step(inp, prev, params[w_ih], params[w_hh], params.get(b_ih), params.get(b_hh),
                   **{k: params.get(n) for k, n in own}, **options)
        inp = new[0]                                     # h_t, the next layer's input
        finals.append(new)
    return inp, tuple(map(stack, zip(*finals, strict=True)))  # part by part, (L, B, S)


def check_stacked(parts: tuple | None, layers: int, batch: int, sizes: int | tuple,
                  name: str) -> None:
    """Every part of a stacked state (a tuple, or None) must be (L*D, B, S) or None, S the
    part's size (``sizes``: one per part, or one int for every part)."""
    sizes = (sizes,) * len(parts or ()) if isinstance(sizes, int) else sizes
    for part, size in zip(parts or (), sizes, strict=False):
        if part is not None and tuple(part.shape) != (layers, batch, size):
            raise ValueError(
                f"expected {name} of shape (L*D, B, H) = ({layers}, {batch}, {size}), "
                f"got {tuple(part.shape)}"
            )


def state_parts(kind: CellKind, state, batch: int, hidden: int, noun: str = "arrays") -> tuple:
    """A cell's state as its tuple of parts, the form checked; None gives every part None.

    ``(h0,)`` or ``(h0, c0)`` as :mod:`bptt.cells` declares the parts; the shapes are checked
    by each engine as it converts the parts.
    """
    n = len(kind.state)
    if state is None:
        return (None,) * n
    if type(state) is tuple and len(state) == n:
        return state
    if not isinstance(state, tuple | list) or len(state) != n:
        if hasattr(state, "shape"):
            got = f"a single array of shape {tuple(state.shape)}"
        else:
            got = type(state).__name__ + (f" of length {len(state)}"
                                          if isinstance(state, tuple | list) else "")
        form = "a pair" if n == 2 else "a tuple"
        names = ", ".join(f"{p}0" for p in kind.state) + ("," if n == 1 else "")
        raise ValueError(f"expected the {kind.title} state as {form} ({names}) of "
                         f"({batch}, {hidden}) {noun}, got {got}")
    return tuple(state)


def split_state(parts: tuple | None, index: int) -> tuple | None:
    """The state parts of one (layer, direction) from the stacked parts; None parts stay None."""
    if parts is None:
        return None
    return tuple([None if s is None else s[index] for s in parts])


def gate_shape(kind: CellKind) -> str:
    """``"4H"`` for a cell of four gates, ``"H"`` for one."""
    G = kind.num_gates
    return "H" if G == 1 else f"{G}H"


def check_gate_weights(kind: CellKind | str, weight_ih, weight_hh, bias_ih, bias_hh,
                       weight_hr=None) -> int:
    """Validate torch-shaped parameters of a cell (G*H rows, G its number of gates); return H.

    With a projection ``weight_hr`` (P, H), ``weight_hh`` is (G*H, P): it reads the projected
    h. Arrays or tensors alike: only shapes are read.
    """
    kind = get_cell(kind)
    gates = kind.num_gates
    if weight_hr is not None:
        if len(weight_hr.shape) != 2 or weight_hr.shape[0] >= weight_hr.shape[1]:
            raise ValueError(f"expected weight_hr of shape (P, H) with P < H, got "
                             f"{tuple(weight_hr.shape)}")
        P, H = weight_hr.shape
        if tuple(weight_hh.shape) != (gates * H, P):
            raise ValueError(f"expected weight_hh of shape ({gates * H}, {P}) with weight_hr "
                             f"({P}, {H}), got {tuple(weight_hh.shape)}")
    elif len(weight_hh.shape) != 2 or weight_hh.shape[0] != gates * weight_hh.shape[1]:
        raise ValueError(
            f"expected weight_hh of shape ({gate_shape(kind)}, H), got {tuple(weight_hh.shape)}"
        )
    H = weight_hh.shape[0] // gates
    if len(weight_ih.shape) != 2 or weight_ih.shape[0] != gates * H:
        raise ValueError(
            f"expected weight_ih of shape ({gates * H}, I), got {tuple(weight_ih.shape)}"
        )
    for name, b in (("bias_ih", bias_ih), ("bias_hh", bias_hh)):
        if b is not None and tuple(b.shape) != (gates * H,):
            raise ValueError(f"expected {name} of shape ({gates * H},), got {tuple(b.shape)}")
    return H


def check_own_params(kind: CellKind, H: int, given: dict) -> None:
    """Validate a cell's own parameters (``CellKind.params``), given by their keywords: each a
    vector of ``blocks * H`` values; only a bias may be None (absent).

    Arrays or tensors alike: only shapes are read.
    """
    for p in kind.params:
        value = given.get(p.key)
        if value is None:
            if p.bias:
                continue
            raise ValueError(f"expected {p.key} of shape ({p.blocks * H},) for the "
                             f"{kind.title}, got None")
        if tuple(value.shape) != (p.blocks * H,):
            raise ValueError(f"expected {p.key} of shape ({p.blocks * H},), got "
                             f"{tuple(value.shape)}")


def sum_biases(*biases):
    """The sum of the biases that exist (``b_ih + b_hh``, once for all steps); None when none."""
    total = None
    for b in biases:
        if b is not None:
            total = b if total is None else total + b
    return total


# -- packed sequences: a batch that shrinks as sequences end -------------------------------------
#
# ``batch_sizes`` (torch's PackedSequence.batch_sizes as a tuple of ints): b_t sequences still
# run at step t, the sequences sorted by length, longest first, so they are the first b_t rows
# of a padded (T, B, ...) array. None: every row runs every step. Nothing here reads more of an
# array than its shape and slices, so NumPy arrays and torch tensors are served alike.

def check_batch_sizes(batch_sizes: tuple[int, ...] | None, steps: int, batch: int) -> None:
    """``batch_sizes`` must be None, or T non-increasing counts from B down to at least 1."""
    if batch_sizes is None:
        return
    sizes = tuple(batch_sizes)
    ok = (len(sizes) == steps and steps > 0 and sizes[0] == batch and sizes[-1] >= 1
          and all(a >= b for a, b in zip(sizes, sizes[1:], strict=False)))
    if not ok:
        raise ValueError(f"expected batch_sizes of {steps} non-increasing counts from {batch} "
                         f"down to at least 1 (sequences sorted by length), got {sizes}")


def per_step(a, batch_sizes: tuple[int, ...] | None) -> list:
    """The steps of a time-major (T, B, ...) array as views: row t is (b_t, ...), the running
    sequences (every row without ``batch_sizes``)."""
    if batch_sizes is None:
        return list(a)
    return [a[t, :b] for t, b in enumerate(batch_sizes)]


def prev_rows(first, rows: list, batch_sizes: tuple[int, ...] | None) -> list:
    """The state each step reads: ``first`` (h0 (B, S)) at step 0, then step t-1's rows of
    ``rows`` (the views :func:`per_step` gives of the buffer the loop writes), cut to b_t."""
    if batch_sizes is None:
        return [first, *rows[:-1]]
    return [first[:batch_sizes[0]],                      # step t reads the first b_t rows of
            *(rows[t - 1][:b] for t, b in enumerate(batch_sizes) if t > 0)]  # h_{t-1}


def sequence_groups(batch_sizes: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """``(length, r0, r1)``: rows r0..r1-1 are the sequences of that length, longest first."""
    groups = []
    T = len(batch_sizes)
    for t in range(T - 1, -1, -1):
        lo = batch_sizes[t + 1] if t + 1 < T else 0
        if batch_sizes[t] > lo:
            groups.append((t + 1, lo, batch_sizes[t]))
    return groups


def last_rows(a, batch_sizes: tuple[int, ...] | None, concat) -> object:
    """(B, ...): each sequence's row at its own last step, ``a[-1]`` without ``batch_sizes``;
    ``concat`` joins the groups of equal length along axis 0."""
    if batch_sizes is None:
        return a[-1]
    pieces = [a[length - 1, r0:r1]                       # h_n[b] = h_{L_b - 1}[b]
              for length, r0, r1 in sequence_groups(batch_sizes)]
    return pieces[0] if len(pieces) == 1 else concat(pieces)


def ln_sum_grads(kind: CellKind, sums, has_bias_ih: bool, has_bias_hh: bool,
                 has_ln_bias_c: bool = False) -> dict:
    """The gains' and biases' gradients of a layer-normalised cell as views of ``sums``, the
    compiled backward's sums over all steps and rows (``kernel.h``, ``LnBwdArgs``): the LSTM's
    [dg_hh | dg_ih | db | dg_c | db_c] (4H 4H 4H H H), the GRU's [dg_hh | dg_ih | db_ih |
    db_hh] (3H each). Keys as the cells' ``backward`` gives them."""
    G = kind.num_gates
    H = sums.shape[0] // (14 if G == 4 else 12)
    GH = G * H
    grads = {"ln_weight_hh": sums[:GH], "ln_weight_ih": sums[GH:2 * GH]}
    bias_ih, bias_hh = sums[2 * GH:3 * GH], sums[3 * GH:4 * GH]
    if G == 4:                                           # one db for both biases
        bias_hh = bias_ih * 1 if has_bias_ih else bias_ih  # (a copy, NumPy or torch)
        grads["ln_weight_c"] = sums[3 * GH:3 * GH + H]
        if has_ln_bias_c:
            grads["ln_bias_c"] = sums[3 * GH + H:]
    if has_bias_ih:
        grads["bias_ih"] = bias_ih
    if has_bias_hh:
        grads["bias_hh"] = bias_hh
    return grads
