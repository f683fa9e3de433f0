"""Errors shared by the training jobs (language model, sine, series)."""

from __future__ import annotations


class Diverged(RuntimeError):
    """The loss or the parameters blew up; the last sound state was saved. ``bptt`` exits 3."""
