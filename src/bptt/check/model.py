"""The model-level rows: the word language model around the stack, checked whole.

A row builds a language model with an embedding (``embedding.weight`` (V, E)), a stack of L
layers, and the head (``head.weight``, or the embedding itself when the weights are tied), in
float64, with dropout masks drawn once and held fixed (Zaremba's places: the embedding's output,
between the layers and before the head; standard (T, B, width) or variational (1, B, width)).
The scalar loss is

    L = CE(logits, y) + sum(h_n * dh_n)   [+ sum(c_n * dc_n) for the LSTM]

(CE the mean softmax cross-entropy over the T*B targets), and the row compares the logits
(column ``out``), the final state, every parameter's gradient (the embedding's included: with
tied weights the sum of its two uses) and the initial state's gradient with:

  torch  ``torch.nn.Embedding`` + ``torch.nn.LSTM`` (RNN, GRU) + ``torch.nn.Linear`` under
         autograd, the same masks multiplied in (with masks between the layers, one one-layer
         module per layer); a tied head is the Embedding's own Parameter. A cell torch.nn
         lacks runs as its unrolled loop under autograd (bptt.check.autograd_reference)
  fd     central finite differences of L through our own forward, every parameter and
         initial-state entry

Ours is the NumPy engine's ``model_forward`` / ``model_backward`` or the torch engine's
``logits`` (EmbeddingFunction, StackFunction, HeadFunction) under ``loss.backward()``.
"""

from __future__ import annotations

import numpy as np

from ..engine.dropout import Masks, draw_masks
from ..model import EMBEDDING, ModelSpec, init_params
from .ours import ENGINES, check_config
from .record import FD_TOLERANCE, CheckRow, grads_error, parts, parts_error, rel_error
from .references import has_torch_reference, numerical_gradient, torch_module

DROPOUTS = ("-", "std", "var")     # none, standard (a mask per step), variational (per sequence)


def model_spec(cell: str, nonlinearity: str, vocab: int, embedding_size: int, hidden_size: int,
               num_layers: int, tied: bool, dropout: str) -> ModelSpec:
    if dropout not in DROPOUTS:
        raise ValueError(f"expected dropout one of {DROPOUTS}, got {dropout!r}")
    return ModelSpec(cell=cell, input_size=vocab, hidden_size=hidden_size, output_size=vocab,
                     num_layers=num_layers, nonlinearity=nonlinearity,
                     embedding_size=embedding_size, tie_weights=tied,
                     dropout=0.0 if dropout == "-" else 0.4,
                     dropout_placement="non-recurrent",
                     dropout_mode="variational" if dropout == "var" else "standard")


def model_draws(spec: ModelSpec, batch: int, steps: int, seed: int) -> dict:
    """Parameters, token ids and targets (T, B), initial states and upstream state gradients
    (tuples of (L, B, H) parts) and the fixed dropout masks, all float64, from one seed."""
    rng = np.random.default_rng(seed)
    S, V = spec.num_layers, spec.input_size
    n = spec.kind.num_state_parts
    keep = 1.0 - spec.dropout
    return {
        "params": init_params(spec, "uniform", rng, "float64", scale=0.5),
        "x": rng.integers(0, V, size=(steps, batch)),
        "y": rng.integers(0, V, size=(steps, batch)),
        "state0": tuple(0.5 * rng.standard_normal((S, batch, spec.hidden_size))
                        for _ in range(n)),
        "dstate_n": tuple(rng.standard_normal((S, batch, spec.hidden_size)) for _ in range(n)),
        "masks": draw_masks(spec, steps, batch,
                            lambda shape: (rng.random(shape) < keep) / keep),
    }


def state_term(state_n, dstate_n) -> float:
    return sum(float(np.vdot(s, g)) for s, g in zip(parts(state_n), dstate_n, strict=True))


def ours_numpy(spec: ModelSpec, d: dict, with_h0: bool):
    """The NumPy engine: ``(logits (T*B, V), h_n parts, dstate0 parts, grads)``."""
    from ..engine.numpy.loss import softmax_cross_entropy
    from ..engine.numpy.model import NumpyEngine

    engine = NumpyEngine(spec, dtype="float64")
    parts0 = d["state0"] if with_h0 else None
    y, state_n, cache = engine.model_forward(d["params"], d["x"], parts0, d["masks"])
    logits = y.copy()
    _, dy = softmax_cross_entropy(y, d["y"].reshape(-1))
    grads, dstate0 = engine.model_backward(d["params"], dy, cache,
                                           spec.kind.from_parts(d["dstate_n"]))
    return logits, parts(state_n), parts(dstate0), grads


def ours_torch(spec: ModelSpec, d: dict, with_h0: bool):
    """The torch engine's pieces under autograd (their backward is ours)."""
    import torch
    import torch.nn.functional as F

    from ..engine.torch.model import TorchEngine

    engine = TorchEngine(spec, device="cpu", dtype="float64")
    p = {k: torch.tensor(v, requires_grad=True) for k, v in d["params"].items()}
    s0 = tuple(torch.tensor(s if with_h0 else np.zeros_like(s), requires_grad=True)
               for s in d["state0"])
    logits, state_n = engine.logits(p, torch.tensor(d["x"]), spec.kind.from_parts(s0),
                                    masks=_torch_masks(d["masks"]), training=True)
    loss = F.cross_entropy(logits, torch.tensor(d["y"].reshape(-1)))
    for s, g in zip(spec.kind.to_parts(state_n), d["dstate_n"], strict=True):
        loss = loss + (s * torch.tensor(g)).sum()
    loss.backward()
    return (logits.detach().numpy(), tuple(s.detach().numpy() for s in parts(state_n)),
            tuple(s.grad.numpy() for s in s0), {k: v.grad.numpy() for k, v in p.items()})


def _torch_masks(masks: Masks) -> Masks:
    import torch

    def t(m):
        return None if m is None else torch.tensor(m)

    layers = None if masks.layers is None else tuple(t(m) for m in masks.layers)
    return Masks(t(masks.input), layers, t(masks.output))


def reference(spec: ModelSpec, d: dict) -> dict:
    """torch.nn.Embedding + torch.nn.<cell> + torch.nn.Linear under autograd, float64."""
    import torch
    import torch.nn.functional as F

    kind, L, H = spec.kind, spec.num_layers, spec.hidden_size
    masks = _torch_masks(d["masks"])
    emb = torch.nn.Embedding.from_pretrained(torch.tensor(d["params"][EMBEDDING]), freeze=False)
    head = torch.nn.Linear(H, spec.output_size).double()
    head.weight = emb.weight if spec.tie_weights else torch.nn.Parameter(
        torch.tensor(d["params"]["head.weight"]))
    head.bias = torch.nn.Parameter(torch.tensor(d["params"]["head.bias"]))
    rnns = _torch_layers(spec, d["params"], per_layer=masks.layers is not None)
    s0 = tuple(torch.tensor(s, requires_grad=True) for s in d["state0"])
    x = emb(torch.tensor(d["x"]))
    if masks.input is not None:
        x = x * masks.input
    finals = []
    for i, rnn in enumerate(rnns):                       # one module, or one per layer
        rows = slice(i, i + 1) if len(rnns) > 1 else slice(0, L)
        x, state_n = rnn(x, kind.from_parts(tuple(s[rows] for s in s0)))
        finals.append(parts(state_n))
        if masks.layers is not None and i < L - 1:
            x = x * masks.layers[i]
    if masks.output is not None:
        x = x * masks.output
    logits = head(x.reshape(-1, H))
    h_n = tuple(torch.cat(p) for p in zip(*finals, strict=True))
    loss = F.cross_entropy(logits, torch.tensor(d["y"].reshape(-1)))
    loss = loss + sum((s * torch.tensor(g)).sum() for s, g in zip(h_n, d["dstate_n"],
                                                                   strict=True))
    loss.backward()
    grads = {EMBEDDING: emb.weight.grad.numpy(), "head.bias": head.bias.grad.numpy()}
    if not spec.tie_weights:
        grads["head.weight"] = head.weight.grad.numpy()
    for i, rnn in enumerate(rnns):
        for name, v in rnn.named_parameters():
            grads[name.replace("_l0", f"_l{i}") if len(rnns) > 1 else name] = v.grad.numpy()
    return {"out": logits.detach().numpy(), "h_n": tuple(s.detach().numpy() for s in h_n),
            "grads": grads, "dstate0": tuple(s.grad.numpy() for s in s0)}


def _torch_layers(spec: ModelSpec, params: dict, per_layer: bool) -> list:
    """``torch.nn.<cell>`` (or, for a cell torch.nn lacks, its unrolled loop under autograd,
    :func:`~bptt.check.references.torch_module`) holding our parameters: one L-layer module, or
    L one-layer ones."""
    import torch

    H, L = spec.hidden_size, spec.num_layers

    def cls(input_size: int, num_layers: int):
        return torch_module(spec.kind, spec.nonlinearity, input_size, H, num_layers, False,
                            True, 0)

    if not per_layer:
        rnn = cls(spec.stack_input_size, L)
        rnn.load_state_dict({k: torch.tensor(params[k]) for k, _ in rnn.named_parameters()})
        return [rnn]
    out = []
    for i in range(L):
        rnn = cls(spec.stack_input_size if i == 0 else H, 1)
        rnn.load_state_dict({k: torch.tensor(params[k.replace("_l0", f"_l{i}")])
                             for k, _ in rnn.named_parameters()})
        out.append(rnn)
    return out


def _row(spec: ModelSpec, method: str, engine: str, batch: int, steps: int, with_h0: bool,
         dropout: str, **errors) -> CheckRow:
    return CheckRow(
        cell=spec.cell, engine=engine,
        nonlinearity=spec.nonlinearity if spec.kind.takes_nonlinearity else "-", batch=batch,
        steps=steps, input_size=spec.input_size, hidden_size=spec.hidden_size,
        layers=spec.num_layers, bidirectional=False, with_h0=with_h0, truncate=None,
        method=method, embedding=spec.embedding_size, tied=spec.tie_weights, dropout=dropout,
        **errors)


def check_model_against_torch(
    cell: str = "lstm", *, nonlinearity: str = "tanh", batch: int = 3, steps: int = 5,
    vocab: int = 11, embedding_size: int = 4, hidden_size: int = 4, num_layers: int = 2,
    tied: bool = False, dropout: str = "-", with_h0: bool = True, seed: int = 0,
    engine: str = "numpy",
) -> CheckRow:
    """Our language model (embedding, stack, head, fixed dropout masks) vs torch.nn.Embedding
    + torch.nn.<cell> + torch.nn.Linear under autograd, float64; ``engine`` "numpy" or
    "torch"."""
    check_config(cell, nonlinearity, batch, steps, vocab, hidden_size, num_layers, None, False)
    if not has_torch_reference(cell):
        raise ValueError(f"expected a cell with a torch reference (torch.nn, or a step of "
                         f"the unrolled loop), got {cell!r}")
    if engine not in ENGINES:
        raise ValueError(f"expected engine {' or '.join(map(repr, ENGINES))}, got {engine!r}")
    spec = model_spec(cell, nonlinearity, vocab, embedding_size, hidden_size, num_layers, tied,
                      dropout)
    d = model_draws(spec, batch, steps, seed)
    if not with_h0:
        d["state0"] = tuple(np.zeros_like(s) for s in d["state0"])
    run = ours_numpy if engine == "numpy" else ours_torch
    logits, h_n, dstate0, grads = run(spec, d, with_h0)
    ref = reference(spec, d)
    return _row(spec, "torch", engine, batch, steps, with_h0, dropout,
                out=rel_error(logits, ref["out"]), h_n=parts_error(h_n, ref["h_n"]),
                params=grads_error(grads, ref["grads"]),
                dh0=parts_error(dstate0, ref["dstate0"]))


def check_model_finite_differences(
    cell: str = "lstm", *, nonlinearity: str = "tanh", batch: int = 2, steps: int = 3,
    vocab: int = 5, embedding_size: int = 3, hidden_size: int = 3, num_layers: int = 2,
    tied: bool = False, dropout: str = "-", seed: int = 0, eps: float = 1e-6,
    engine: str = "numpy",
) -> CheckRow:
    """Our language model's gradients vs central differences of L through our own forward
    (every parameter and initial-state entry), float64; keep it small."""
    check_config(cell, nonlinearity, batch, steps, vocab, hidden_size, num_layers, None, False)
    spec = model_spec(cell, nonlinearity, vocab, embedding_size, hidden_size, num_layers, tied,
                      dropout)
    d = model_draws(spec, batch, steps, seed)
    run = {"numpy": ours_numpy, "torch": ours_torch}.get(engine)
    if run is None:
        raise ValueError(f"expected engine {' or '.join(map(repr, ENGINES))}, got {engine!r}")
    _, _, dstate0, grads = run(spec, d, True)

    def loss() -> float:
        return _loss(spec, d)

    num_params = {k: numerical_gradient(loss, v, eps) for k, v in d["params"].items()}
    num_ds0 = tuple(numerical_gradient(loss, s, eps) for s in d["state0"])
    return _row(spec, "fd", engine, batch, steps, True, dropout,
                params=grads_error(grads, num_params), dh0=parts_error(dstate0, num_ds0),
                tolerance=FD_TOLERANCE)


def _loss(spec: ModelSpec, d: dict) -> float:
    """L = CE + sum(h_n * dh_n) [+ c] through the NumPy engine's forward (float64)."""
    from ..engine.numpy.loss import softmax_cross_entropy_
    from ..engine.numpy.model import NumpyEngine

    engine = NumpyEngine(spec, dtype="float64")
    y, state_n, _ = engine.model_forward(d["params"], d["x"], d["state0"], d["masks"])
    ce, _ = softmax_cross_entropy_(y, d["y"].reshape(-1))
    return ce + state_term(state_n, d["dstate_n"])


def model_rows(cell: str, quick: bool, engine: str = "numpy") -> list[dict]:
    """The word language model whole (:mod:`bptt.check.model`) for one cell: embedding and
    head, tied or not, one to three layers, fixed masks (none, standard, variational)."""
    def row(method, **kw):
        return {"method": method, "cell": cell, "model": True, "engine": engine, **kw}

    if quick:                                        # the LSTM's, tied, both kinds of mask
        rows = [row("torch", tied=True, dropout="var"), row("fd", tied=True, dropout="std")]
        return rows[:1 if engine == "torch" else 2] if cell == "lstm" else []
    rows = [row("torch", tied=True, dropout="std"),
            row("torch", tied=True, dropout="var", with_h0=False),
            row("fd", tied=True, dropout="var")]
    if engine == "torch":
        return rows
    rows += [row("torch", embedding_size=3, hidden_size=5),
             row("torch", embedding_size=5, hidden_size=4, dropout="var", num_layers=3),
             row("torch", tied=True, num_layers=1, dropout="std"),
             row("fd", embedding_size=2, dropout="std", num_layers=1)]
    return rows


def run_model_config(config: dict) -> CheckRow:
    """Run one :func:`model_rows` entry."""
    kw = {k: v for k, v in config.items() if k not in ("method", "cell", "model")}
    method, cell = config["method"], config["cell"]
    if method not in ("torch", "fd"):
        raise ValueError(f"expected method 'torch' or 'fd' in a table entry, got {method!r}")
    check = check_model_against_torch if method == "torch" else check_model_finite_differences
    return check(cell, **kw)


__all__ = ["DROPOUTS", "check_model_against_torch",
           "check_model_finite_differences", "model_draws", "model_rows", "model_spec",
           "reference", "run_model_config"]
