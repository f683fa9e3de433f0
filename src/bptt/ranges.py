"""Numeric settings: one range check shared by the library and the command line.

A :class:`Range` says which values a setting takes (an integer or a finite number, its bounds,
and whether ``none`` is allowed and what it means). The library checks a value with
:meth:`Range.check` (a ``ValueError``); the command line parses a flag's text with the same
range (``bptt.cli.argtypes``), so both refuse the same values in the same words::

    expected lr > 0 and finite, got nan
    expected batch_size >= 1, got 0
    expected max_tokens >= 2 (or none: no limit), got 0

NaN compares false with everything, so every test here is written as "inside the range", never
as "outside it": a NaN is refused by construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real


@dataclass(frozen=True)
class Range:
    kind: type = float                # int, or float (always finite)
    lo: float | None = None           # lower bound (None: unbounded)
    hi: float | None = None           # upper bound (None: unbounded)
    lo_open: bool = False             # the lower bound itself excluded
    hi_open: bool = False             # the upper bound itself excluded
    none: str = ""                    # what ``none`` means; "" when None is not allowed
    about: str = ""                   # what the setting is, when its name does not say

    def bounds(self) -> str:
        """The range in words: ``>= 1``, ``> 0 and finite``, ``in [0, 1)``."""
        lo, hi = _fmt(self.lo), _fmt(self.hi)
        if self.lo is not None and self.hi is not None:
            text = f"in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            text = f"{'>' if self.lo_open else '>='} {lo}"
        elif self.hi is not None:
            text = f"{'<' if self.hi_open else '<='} {hi}"
        else:
            text = "a finite number" if self.kind is float else "an integer"
        if self.kind is float and (self.lo is None) != (self.hi is None):
            text += " and finite"
        return text

    def _notes(self) -> str:
        return ((f" ({self.about})" if self.about else "")
                + (f" (or none: {self.none})" if self.none else ""))

    def describe(self) -> str:
        """What the setting takes, as the end of 'expected NAME ...'."""
        return self.bounds() + self._notes()

    def noun(self) -> str:
        """The same with its kind named, for text that is not a number at all."""
        kind = "an integer" if self.kind is int else "a number"
        bounds = self.bounds()
        head = bounds if bounds.startswith(("an integer", "a finite")) else f"{kind} {bounds}"
        return head + self._notes()

    def contains(self, value) -> bool:
        if value is None:
            return bool(self.none)
        if isinstance(value, bool) or not isinstance(value, Integral if self.kind is int
                                                     else Real):
            return False
        if self.kind is float and not math.isfinite(value):
            return False
        if self.lo is not None and not (value > self.lo if self.lo_open else value >= self.lo):
            return False
        return self.hi is None or bool(value < self.hi if self.hi_open else value <= self.hi)

    def check(self, name: str, value):
        """``value`` when it is in the range, else ``ValueError("expected NAME ..., got ...")``."""
        if not self.contains(value):
            what = self.describe() if isinstance(value, Real) else self.noun()
            raise ValueError(f"expected {name} {what}, got {value!r}")
        return value


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:g}"


# The ranges the settings use.
COUNT = Range(int, lo=1)                                  # sizes, steps, epochs, ...
COUNT0 = Range(int, lo=0)                                 # 0 allowed (0: never / none)
SEED = Range(int, lo=0)                                   # NumPy seeds are non-negative
POSITIVE = Range(float, lo=0, lo_open=True)               # lr, seconds, radius
NONNEGATIVE = Range(float, lo=0)                          # temperature (0: greedy)
FINITE = Range(float)                                     # a bias, any finite number
FRACTION = Range(float, lo=0, hi=1, hi_open=True)         # dropout: [0, 1)
PROBABILITY = Range(float, lo=0, hi=1, lo_open=True)      # top_p: (0, 1]
THRESHOLD = Range(float, lo=0, lo_open=True, none="no clipping")      # clip
TRUNCATION = Range(int, lo=1, none="the whole batch")     # truncate
TOKEN_LIMIT = Range(int, lo=2, none="no limit")           # max_tokens: an input and a target
