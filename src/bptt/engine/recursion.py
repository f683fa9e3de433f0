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
                 width: int, batch_sizes: tuple[int, ...] | None = None) -> None:
        k = effective_truncate(truncate, T)
        self.ops = ops
        self.A = 1 if k is None else k + 1
        self.K = 1 if k is None else k
        self.truncating = k is not None
        self.width = width
        self.batch_sizes = batch_sizes
        self.dstate_n = dstate_n                         # (B, S) per part
        rows = dstate_n[0].shape[0] if batch_sizes is None else batch_sizes[-1]
        self._buffers(rows, tuple(ds[:rows] for ds in dstate_n), None)

    def _buffers(self, rows: int, enter: tuple, keep: tuple | None) -> None:
        """(Re)allocate the two buffers for ``rows`` sequences: the state read first holds
        ``keep`` (every age of the first rows, when widening) and then ``enter`` at age 0 (the
        sequences whose gradient starts here: dL/dstate_n)."""
        ops, A, K = self.ops, self.A, self.K
        self.rows = rows
        self.by_age = None if A == 1 else ops.empty(enter[0], (A, rows, self.width))
        # without truncation every slot is written before it is read; with it, ages start empty
        new = ops.zeros if self.truncating else ops.empty
        cur = tuple([new(e, (A, rows, *e.shape[1:])) for e in enter])  # (A, B, H): dh_t by age
        nxt = tuple([new(e, (A, rows, *e.shape[1:])) for e in enter])
        done = 0 if keep is None else keep[0].shape[1]
        for c, e, kept in zip(cur, enter, keep or (None,) * len(enter), strict=True):
            if kept is not None:
                c[:, :done] = kept                       # the sequences already running
            c[0, done:] = e[done:]                       # dL/dstate_n enters at age 0
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
        caller may leave values there for the step to read (the torch RNN does).

        With ``batch_sizes`` (packed sequences) one call runs every step: :meth:`_run_packed`.
        """
        if self.batch_sizes is not None:
            self._run_packed(step, dhs, dz)
        elif self.truncating:
            self._run_by_age(step, dhs, dz, start)
        else:
            self._run_rows(step, dhs, dz, start)

    def _run_packed(self, step: Step, dhs, dz) -> None:
        """:meth:`run` over packed sequences (docs/bptt.md, "Packed sequences"): step t sees
        only the first b_t = ``batch_sizes[t]`` rows, the sequences still running at t (sorted
        by length, longest first). Going back in time the batch grows: where it does, the
        state is widened, every age of the running rows kept, and the sequences that end at t
        enter with their dL/dstate_n at age 0. A stretch of steps with the same b_t runs as a
        whole batch of b_t rows, so a step's arrays are contiguous as without packing. The
        rows of dz past b_t (padding) are zeros."""
        sizes, T = self.batch_sizes, len(self.batch_sizes)
        t1 = T
        while t1 > 0:
            b = sizes[t1 - 1]
            t0 = t1 - 1
            while t0 > 0 and sizes[t0 - 1] == b:
                t0 -= 1                                  # steps t0..t1-1 run b rows
            if b > self.rows:                            # sequences ending at t1-1 join
                keep = tuple(c[:, :self.rows] for c in self.cur)
                self._buffers(b, tuple(ds[:b] for ds in self.dstate_n), keep)
            ups = None if dhs is None else dhs[t0:t1, :b]
            if self.truncating:
                self._run_by_age(step, ups, dz[t0:t1, :b], t0)
            else:
                self._run_rows(step, ups, dz[t0:t1, :b], t0)
            if b < dz.shape[1]:
                dz[t0:t1, b:] = 0                        # padding: no gradient
            t1 = t0

    def _run_rows(self, step: Step, dhs, dz, start: int) -> None:
        """:meth:`run` without truncation: one age, dz_out is row t of ``dz``."""
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
              width: int, batch_sizes: tuple[int, ...] | None = None) -> tuple[object, tuple]:
    """The whole backward recursion of a layer; returns ``(dz (T, B, W), dstate_0)``.

    ``dhs`` (T, B, H) or None (no gradient on the outputs); ``dstate_n`` one (B, S) array per
    state part (the sizes S of the parts may differ: the LSTM's projected h and its c);
    ``step`` the cell's one-step backward (the module docstring's contract); ``batch_sizes``
    the packed sequences' b_t (:meth:`Recursion._run_packed`).
    """
    ref = dstate_n[0]
    rec = Recursion(ops, dstate_n, T, truncate, width, batch_sizes)
    dz = ops.empty(ref, (T, ref.shape[0], width))
    rec.run(step, dhs, dz)
    return dz, rec.dstate0()


def compiled_or_loop(ops: ArrayOps, compiled: Callable[[], tuple | None],
                     step: Callable[[], Step], dhs, dstate_n: tuple, T: int,
                     truncate: int | None, width: int,
                     batch_sizes: tuple[int, ...] | None = None) -> tuple[object, tuple]:
    """:func:`bptt_loop`'s result from the compiled kernel's loop where it runs: ``compiled()``
    (None where the kernel does not cover the arrays) when nothing is truncated nor packed,
    else (or on None) :func:`bptt_loop` with ``step()``, the cell's one-step backward, made
    only then."""
    if effective_truncate(truncate, T) is None and batch_sizes is None:
        done = compiled()
        if done is not None:
            return done
    return bptt_loop(ops, step(), dhs, dstate_n, T, truncate, width, batch_sizes)
