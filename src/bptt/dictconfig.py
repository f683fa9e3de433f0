"""The dict form of the settings dataclasses (TrainConfig, SineConfig, SeriesConfig): a
checkpoint keeps its run's settings as a dict, and reads them back ignoring unknown keys."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Self  # Python 3.11; the annotations are strings here


class DictConfig:
    """Mixed into a dataclass: ``to_dict`` and ``from_dict``."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Self:
        """The settings in ``d``, keys this version does not know left out."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
