"""The single exception type raised for bad data inputs."""

from __future__ import annotations


class DataError(ValueError):
    """Bad user input to the data pipeline.

    The message is always one line and says what was expected and what arrived, e.g.
    ``expected a UTF-8 text file, but /x/y.txt has byte 0xff at offset 12``.
    """
