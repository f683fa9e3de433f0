"""TensorBoard event files for a training run (``--tensorboard``; the extra
``bptt[tensorboard]``).

Written with tensorboardX, which needs neither torch nor TensorFlow, so the NumPy engine logs
as the torch engines do. Everything is logged against the optimiser step (TensorBoard's "step"):

  scalars     train/loss, train/perplexity, val/loss, val/perplexity, speed/tokens_per_s, lr
              and epoch at each epoch's last step (a language model); train/mse, lr and the
              summary's MSEs (sine, series); and every step's grad_norm/before_clip and
              grad_norm/after_clip, the global norm over all parameters
  histograms  grad_norm/<parameter>: the norms of that parameter's gradient (before clipping)
              over the steps of an epoch (a language model) or of a log window (sine, series)
  text        sample: the language model's generated continuation, whenever it samples

The event files go to ``OUT/tensorboard`` (or a folder given to ``--tensorboard``) and are
first written once the run has stepped, when its folder exists. A resumed run writes to the same
folder; events past the checkpoint, left by a run stopped after writing them, are dropped
(``purge_step``). View them with ``tensorboard --logdir OUT/tensorboard``
(``pip install tensorboard``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from .errors import require

FOLDER = "tensorboard"     # the event files' folder inside a run folder, by default
# an epoch record's keys (a language model's, bptt.lm.train) -> their tags
EPOCH_TAGS = {"loss": "train/loss", "perplexity": "train/perplexity", "val_loss": "val/loss",
              "val_perplexity": "val/perplexity", "tokens_per_s": "speed/tokens_per_s",
              "lr": "lr", "epoch": "epoch"}


def logdir(out: str | Path, tensorboard: str | Path | bool | None) -> Path | None:
    """The folder for event files: None or False (no logging), True or "" (``OUT/tensorboard``),
    or a folder of its own."""
    if tensorboard is None or tensorboard is False:
        return None
    if tensorboard is True or str(tensorboard) == "":
        return Path(out) / FOLDER
    return Path(tensorboard)


def open_log(out: str | Path, tensorboard: str | Path | bool | None) -> TensorBoardLog | None:
    """A :class:`TensorBoardLog` for ``logdir(out, tensorboard)``, or None when not asked."""
    folder = logdir(out, tensorboard)
    return None if folder is None else TensorBoardLog(folder)


def parameter_norms(grads: Mapping) -> dict:
    """Each parameter's gradient norm, as 0-d arrays or tensors (no host synchronisation)."""
    return {k: (g * g).sum() ** 0.5 for k, g in grads.items()}


class TensorBoardLog:
    """Event files in ``folder``, opened at the first write (tensorboardX is imported now, so a
    missing extra is said before anything runs). ``purge_step``: a resume's first step."""

    def __init__(self, folder: str | Path, *, purge_step: int | None = None) -> None:
        self._tbx = require("tensorboardX", "tensorboard", "--tensorboard")
        self.folder = Path(folder)
        self.purge_step = purge_step
        self.step = 0                     # the last step written
        self._writer = None
        self._norms: list[dict] = []      # per-parameter gradient norms of the steps since

    @property
    def writer(self):
        if self._writer is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            # the file name holds the second it was opened: a resume within the same second
            # must not write over the earlier file, and TensorBoard reads them in name order
            self._writer = self._tbx.SummaryWriter(str(self.folder), purge_step=self.purge_step,
                                                   flush_secs=30,
                                                   filename_suffix=f".{time.time_ns()}")
        return self._writer

    # -- what a training loop hands over ---------------------------------------------------------
    def collect(self, grads: Mapping) -> None:
        """One step's gradients, before clipping: each parameter's norm, kept for the next
        histogram (on the device until then)."""
        self._norms.append(parameter_norms(grads))

    def take_norms(self, scalar) -> dict[str, np.ndarray]:
        """The collected norms as {parameter: (steps,) float64}, via ``scalar`` (an engine's);
        the collection starts over."""
        names = list(self._norms[0]) if self._norms else []
        out = {k: np.array([scalar(s[k]) for s in self._norms], dtype=np.float64)
               for k in names}
        self._norms = []
        return out

    # -- writing ---------------------------------------------------------------------------------
    def scalars(self, values: Mapping[str, float | None], step: int) -> None:
        """Each finite value under its tag; None and non-finite values are left out."""
        for tag, value in values.items():
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(tag, float(value), step)
        self.step = max(self.step, step)

    def step_norms(self, records: Iterable[Mapping], first_step: int) -> None:
        """Each step record's global gradient norm before and after clipping (the
        ``grad_norm`` and ``grad_norm_clipped`` of bptt.training.norm_record), from
        ``first_step`` on."""
        for j, r in enumerate(records):
            self.scalars({"grad_norm/before_clip": r["grad_norm"],
                          "grad_norm/after_clip": r["grad_norm_clipped"]}, first_step + j)

    def histograms(self, per_parameter: Mapping[str, np.ndarray], step: int) -> None:
        for name, values in per_parameter.items():
            values = values[np.isfinite(values)]
            if values.size:
                self.writer.add_histogram(f"grad_norm/{name}", values, step)

    def text(self, tag: str, text: str, step: int) -> None:
        self.writer.add_text(tag, text, step)

    def epoch(self, record: Mapping, steps: list[Mapping], first_step: int, scalar) -> None:
        """A language model's epoch: the step records of its steps, numbered from
        ``first_step``; the record's scalars and the histograms at its last step."""
        self.step_norms(steps, first_step)
        last = first_step + len(steps) - 1
        self.scalars({tag: record.get(key) for key, tag in EPOCH_TAGS.items()}, last)
        self.histograms(self.take_norms(scalar), last)
        self.flush()

    def fit(self, steps: list[Mapping], lr: float, window: int, scalar) -> None:
        """A regression fit (sine, series): every step's MSE and gradient norms, and a
        histogram of the per-parameter norms of each ``window`` steps."""
        self.step_norms(steps, 1)
        for j, r in enumerate(steps):
            self.scalars({"train/mse": r["mse"], "lr": lr}, j + 1)
        norms = self.take_norms(scalar)
        n = len(steps)
        for end in range(window, n + window, window):
            self.histograms({k: v[end - window:min(end, n)] for k, v in norms.items()},
                            min(end, n))

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
