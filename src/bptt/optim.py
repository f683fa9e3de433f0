"""Optimisers and gradient clipping over a flat dict ``name -> array``.

They work unchanged on NumPy arrays and torch tensors (CPU or CUDA): only arithmetic operators
and in-place updates are used, so every engine takes bit-for-bit the same kind of step, and a
torch engine never synchronises with the host to clip or to step.
Optimiser state is a flat dict of arrays too (and Python numbers, such as Adam's step count), so
checkpoints store it in safetensors (bptt/training.py splits it).

Adding an optimiser: a dataclass here with ``lr``, ``state`` and ``step(params, grads)``, and
its entry in :data:`OPTIMIZERS`; ``--optimizer`` of ``bptt train``, ``sine`` and ``series`` lists
those names. Importing this module loads neither NumPy nor torch (the command line reads it).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

Arrays = Mapping[str, object]


def _is_numpy(x) -> bool:
    return type(x).__module__ == "numpy"


def _eps(x) -> float:
    """Machine epsilon of an array's or tensor's dtype (NumPy, or torch, is already loaded for
    its array)."""
    module = "numpy" if _is_numpy(x) else "torch"
    return float(sys.modules[module].finfo(x.dtype).eps)


def _sqrt(x):
    return x.sqrt() if hasattr(x, "sqrt") else x ** 0.5


def global_norm(grads: Arrays):
    """sqrt(sum over every parameter of sum(g^2)); a 0-d array or tensor."""
    return _sqrt(sum((g * g).sum() for g in grads.values()))


def clip_grad_norm_(grads: Arrays, max_norm: float):
    """Rescale all gradients together so their global norm is at most ``max_norm``.

    The book's rule, if ||g|| > theta then g <- theta / ||g|| * g, with torch's 1e-6 added to
    the norm so the clipped norm never exceeds theta by a rounding step. Returns the norm
    before clipping (a 0-d array/tensor; no host synchronisation on torch).
    """
    norm = global_norm(grads)
    # A few units of rounding in the gradients' own dtype on top of torch's 1e-6: scaling
    # float32 gradients rounds every element, which could otherwise lift the norm past theta.
    margin = 1.0 + 8 * _eps(norm)
    if _is_numpy(norm):
        scale = min(1.0, max_norm / (float(norm) * margin + 1e-6))
    else:
        scale = (max_norm / (norm * margin + 1e-6)).clamp(max=1.0)
    for g in grads.values():
        g *= scale
    return norm


def clip_grad_value_(grads: Arrays, clip_value: float) -> None:
    """Clamp every gradient element into [-clip_value, clip_value] (char-rnn's rule)."""
    for g in grads.values():
        if _is_numpy(g):
            g.clip(-clip_value, clip_value, out=g)
        else:
            g.clamp_(-clip_value, clip_value)


@dataclass
class SGD:
    """p <- p - lr * g"""

    lr: float = 1.0
    state: dict = field(default_factory=dict)

    def step(self, params: Arrays, grads: Arrays) -> None:
        for name, g in grads.items():
            params[name] -= self.lr * g


@dataclass
class Adam:
    """Adam (Kingma & Ba) with bias correction, as torch.optim.Adam without weight decay.

    m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
    p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    """

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    state: dict = field(default_factory=dict)

    def step(self, params: Arrays, grads: Arrays) -> None:
        b1, b2 = self.betas
        t = int(self.state.get("step", 0)) + 1
        self.state["step"] = t
        c1, c2 = 1.0 - b1 ** t, 1.0 - b2 ** t
        for name, g in grads.items():
            m = self.state.setdefault(f"exp_avg.{name}", g * 0)
            v = self.state.setdefault(f"exp_avg_sq.{name}", g * 0)
            m *= b1
            m += (1.0 - b1) * g
            v *= b2
            v += (1.0 - b2) * (g * g)
            denom = _sqrt(v) / math.sqrt(c2)
            denom += self.eps
            params[name] -= (self.lr / c1) * m / denom


@dataclass
class Adagrad:
    """Adagrad as torch.optim.Adagrad: s <- s + g^2;  p <- p - lr * g / (sqrt(s) + eps)"""

    lr: float = 1e-2
    eps: float = 1e-10
    state: dict = field(default_factory=dict)

    def step(self, params: Arrays, grads: Arrays) -> None:
        for name, g in grads.items():
            s = self.state.setdefault(f"sum.{name}", g * 0)
            s += g * g
            denom = _sqrt(s)
            denom += self.eps
            params[name] -= self.lr * g / denom


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adagrad": Adagrad}
"""Every optimiser by its ``--optimizer`` name."""

OPTIMIZER_NAMES: tuple[str, ...] = tuple(OPTIMIZERS)


def make_optimizer(name: str, lr: float):
    """An optimiser by name: one of :data:`OPTIMIZER_NAMES` ('sgd', 'adam', 'adagrad')."""
    if name not in OPTIMIZERS:
        *first, last = (repr(n) for n in OPTIMIZER_NAMES)
        raise ValueError(f"expected optimizer {', '.join(first)} or {last}, got {name!r}")
    return OPTIMIZERS[name](lr=lr)
