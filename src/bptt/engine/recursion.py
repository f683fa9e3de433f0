"""The backward recursion through time, written once for every cell of every engine.

A cell's backward is the loop below with the cell's one-step backward (its ``step``) plugged
in; NumPy and torch differ only in the few operations of :class:`bptt.engine.protocol.ArrayOps`
(``numpy.common.OPS``, ``torch.common.OPS``). Nothing here reads a value back to the host, so a
CUDA backward never waits inside the loop.

Symbols: T steps, B batch, H hidden size, W the width of the step's pre-activations (G*H),
A ages (1 without truncation, k + 1 with ``truncate = k``), K = the ages carried back (1
without truncation, k with it).

The step contract, ``step(t, dstate, dz_out, prev_out)``:

  dstate    a tuple, one (A, B, H) array per state part (``(dh,)`` or ``(dh, dc)``): by age,
            the gradients reaching the state after step t, dL/dh_t included at age 0. The step
            may overwrite them (they are scratch once it returns).
  dz_out    (A, B, W): the step writes the gradient of its pre-activations dz_t, by age.
  prev_out  a tuple of (K, B, H) arrays: the step writes the gradients reaching the state
            before step t, of ages 0..K-1 (age k would cross a (k + 1)-th transition: dropped).

It returns None; or, without truncation only, it may return those gradients as a tuple of
(1, B, H) arrays of its own instead of writing ``prev_out`` (the torch RNN returns the product
it made rather than copying it).

Each step is linear in ``dstate`` and treats every age alike, so one batched product per step
serves every pending loss term (docs/bptt.md, "Truncation").
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

from .protocol import ArrayOps

Step = Callable[[int, tuple, object, tuple], None]


def check_truncate(truncate: int | None) -> None:
    if truncate is not None and (
        isinstance(truncate, bool) or not isinstance(truncate, numbers.Integral) or truncate < 0
    ):
        raise ValueError(f"expected bptt_truncate None or an integer >= 0, got {truncate!r}")


def effective_truncate(truncate: int | None, T: int) -> int | None:
    """``truncate`` as the loop needs it: k >= T cuts nothing (the longest path, from the loss
    at T-1 to h0, crosses T transitions), so it is full BPTT, computed without the k + 1 ages."""
    check_truncate(truncate)
    return None if truncate is None or truncate >= T else int(truncate)


class Recursion:
    """The pending state gradients of one backward pass, by age, carried from step to step.

    Without truncation A = K = 1 and ``dh_t = dL/dh_t + dh_{t+1} -> h_t`` is passed straight
    along; ``dz_out`` is then row t of ``dz`` itself, so nothing is copied.

    With ``truncate = k`` the gradient of the loss at step t may cross at most k recurrent
    transitions (h_t -> h_{t-1} -> ... -> h_{t-k}; it reaches z_{t-k} but not h_{t-k-1}). The
    pending gradients are kept by age a = transitions already crossed (A = k + 1 slots): a step
    moves age a to a + 1 and drops age k (only ages 0..k-1 are carried back), so each loss term
    is cut at its own horizon in one batched product per step instead of one per loss term.

    The ages live in two preallocated buffers per state part, used in turn: nothing is
    allocated per step. :meth:`run` may be called several times, for consecutive chunks of
    steps from the last chunk to the first (the NumPy RNN's chunked backward).
    """

    def __init__(self, ops: ArrayOps, dstate_n: tuple, T: int, truncate: int | None,
                 width: int) -> None:
        k = effective_truncate(truncate, T)
        self.ops = ops
        self.A = A = 1 if k is None else k + 1
        self.K = K = 1 if k is None else k
        self.truncating = k is not None
        ref = dstate_n[0]                                # (B, H)
        shape = (A, *ref.shape)
        self.by_age = None if A == 1 else ops.empty(ref, (A, ref.shape[0], width))
        # without truncation every slot is written before it is read; with it, ages start empty
        new = ops.zeros if self.truncating else ops.empty
        cur = tuple([new(ref, shape) for _ in dstate_n])  # (A, B, H): dh_t by age
        nxt = tuple([new(ref, shape) for _ in dstate_n])
        for c, ds in zip(cur, dstate_n, strict=True):
            c[0] = ds                                    # dL/dstate_n enters at age 0
        # the two buffers in turn: (the state read, where the step writes: ages 0..K-1 of the
        # state before it, the slots of ages A-K..A-1 of the other buffer, swapped next)
        self.turns = tuple((c, o if A == K else tuple(n[A - K:] for n in o))
                           for c, o in ((cur, nxt), (nxt, cur)))
        self.turn = 0
        self.cur = cur                                   # the state the next step reads

    def run(self, step: Step, dhs, dz, start: int = 0) -> None:
        """Steps ``start + n - 1`` down to ``start``: ``dhs`` (n, B, H) (dL/dh_t, or None) and
        ``dz`` (n, B, W), where dz_t is written. ``dhs`` may be ``dz`` itself (row t is read
        before it is written). Without truncation row t of ``dz`` is the step's ``dz_out``, so a
        caller may leave values there for the step to read (the torch RNN does)."""
        if self.truncating:
            self._run_by_age(step, dhs, dz, start)
            return
        turns, turn, cur = self.turns, self.turn, self.cur
        n = dz.shape[0]
        rows = list(dz[:, None])                         # row t as (1, B, W): dz_out itself
        ups = [None] * n if dhs is None else list(dhs)   # dL/dh_t, (B, H) views
        slots = (turns[0][0][0][0], turns[1][0][0][0]) if dhs is not None else (None, None)
        age0 = slots[turn] if cur is turns[turn][0] else cur[0][0]  # h's age-0 slot
        for t, row, up in zip(range(start + n - 1, start - 1, -1), rows[::-1], ups[::-1],
                              strict=True):
            if up is not None:
                age0 += up                               # dh_t += dL/dh_t (age 0)
            new = step(t, cur, row, turns[turn][1])
            if new is None:                              # written into the other buffer
                turn ^= 1
                cur, age0 = turns[turn][0], slots[turn]
            else:                                        # the step's own arrays
                cur = new
                age0 = new[0][0] if dhs is not None else None
        self.turn, self.cur = turn, cur

    def _run_by_age(self, step: Step, dhs, dz, start: int) -> None:
        """:meth:`run` with truncation: A ages, the step writes them into ``by_age``."""
        turns, turn, by_age, sum_ages = self.turns, self.turn, self.by_age, self.ops.sum_ages
        bufs = (turns[0][0], turns[1][0])
        # per turn: h's age-0 slot in the buffer read, and the age-0 slots of the other buffer
        slots = [(bufs[i][0][0], tuple(n[0] for n in bufs[1 - i])) for i in (0, 1)]
        for j in range(dz.shape[0] - 1, -1, -1):
            (cur, prev), (age0, nxt0) = turns[turn], slots[turn]
            if dhs is not None:
                age0 += dhs[j]                           # dh_t += dL/dh_t (age 0)
            if by_age is None:                           # k = 0: one age, none carried back
                step(start + j, cur, dz[j][None], prev)
            else:
                step(start + j, cur, by_age, prev)
                sum_ages(by_age, out=dz[j])              # dz_t: all ages together
            for n0 in nxt0:                              # age a -> a + 1, age k dropped (the
                n0[...] = 0                              # step wrote ages 1..k; the new age 0
            turn ^= 1                                    # starts empty)
        self.turn = turn
        self.cur = turns[turn][0]

    def dstate0(self) -> tuple:
        """The gradients reaching the initial state, every age together: (B, H) per part."""
        return tuple(c[0] if self.A == 1 else self.ops.sum_ages(c) for c in self.cur)


def bptt_loop(ops: ArrayOps, step: Step, dhs, dstate_n: tuple, T: int, truncate: int | None,
              width: int) -> tuple[object, tuple]:
    """The whole backward recursion of a layer; returns ``(dz (T, B, W), dstate_0)``.

    ``dhs`` (T, B, H) or None (no gradient on the outputs); ``dstate_n`` one (B, H) array per
    state part; ``step`` the cell's one-step backward (the module docstring's contract).
    """
    ref = dstate_n[0]
    rec = Recursion(ops, dstate_n, T, truncate, width)
    dz = ops.empty(ref, (T, ref.shape[0], width))
    rec.run(step, dhs, dz)
    return dz, rec.dstate0()
