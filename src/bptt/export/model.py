"""What an exported file holds, whatever its format: the model read from a checkpoint, its
parameters grouped by layer, and the description (``description.json``) that lets a program
with no ``bptt`` installed use the file.

The exported computation is the model of ``bptt generate``, in evaluation mode (no dropout):

  input   lm: token ids (B, T) int64 -> one-hot (B, T, V), or ``embedding.weight`` rows (B, T, E)
          when the checkpoint has an embedding; regression: features (B, T, I) float32
  stack   the recurrent layers (L layers x D directions), initial state parts ``h0`` (and ``c0``
          for the LSTM), each (L*D, B, H), indexed ``l * D + d`` as torch; a projected LSTM's
          ``h0`` is (L*D, B, P) (``state_sizes``)
  head    ``y W_head^T + b_head``: logits (B, T, V) for lm, predictions (B, T, O) for regression

Inputs ``tokens`` (or ``inputs``) and one ``<part>0`` per state part; outputs ``logits`` (or
``outputs``) and one ``<part>_n`` per state part. Weights are float32.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from ..cells import CellKind, get_cell
from ..engine import layout
from ..model import ModelSpec

FORMAT, VERSION = "bptt.export", 1


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bptt")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


@dataclass
class Exportable:
    """A model ready to export: spec, float32 parameters, and what a user of the file needs."""

    spec: ModelSpec
    params: dict[str, np.ndarray]
    vocab: list[str] | None = None                 # idx_to_token of a language model
    text: dict | None = None                       # normalization, tokenization

    @classmethod
    def from_checkpoint(cls, ckpt) -> Exportable:
        params = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in ckpt.params.items()}
        vocab = list(ckpt.vocab.idx_to_token) if ckpt.vocab is not None else None
        return cls(ckpt.spec, params, vocab, dict(ckpt.text))

    @property
    def kind(self) -> CellKind:
        return get_cell(self.spec.cell)

    @property
    def is_lm(self) -> bool:
        return self.spec.task == "lm"

    @property
    def has_embedding(self) -> bool:
        return "embedding.weight" in self.params

    @property
    def input_name(self) -> str:
        return "tokens" if self.is_lm else "inputs"

    @property
    def output_name(self) -> str:
        return "logits" if self.is_lm else "outputs"

    @property
    def state_inputs(self) -> list[str]:
        return [f"{p}0" for p in self.kind.state]

    @property
    def state_outputs(self) -> list[str]:
        return [f"{p}_n" for p in self.kind.state]

    @property
    def state_sizes(self) -> list[int]:
        """The last dimension of each state part: H, or P for a projected LSTM's h."""
        return list(self.spec.state_sizes)

    @property
    def num_states(self) -> int:
        """L*D: the first dimension of every state part."""
        return self.spec.num_layers * self.spec.directions

    def head_weight(self) -> np.ndarray:
        """``head.weight`` (O, D*H); a tied head reads ``embedding.weight``."""
        return self.params.get("head.weight", self.params.get("embedding.weight"))

    def layer_params(self, layer: int, direction: int) -> dict[str, np.ndarray]:
        """The parameters of one layer and direction under the cell's argument names:
        ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh`` and the cell's own
        (``CellKind.params`` by their keys, e.g. ``ln_weight_ih``); absent biases left out."""
        given = layout.layer_params(self.params, layer, direction, self.kind)
        return {k: v for k, v in given.items() if v is not None}

    def description(self) -> dict:
        """The ``description.json`` stored in the file: how to call it and read its output."""
        return {
            "format": FORMAT, "version": VERSION, "bptt_version": _version(),
            "task": self.spec.task, "cell": self.spec.cell, "spec": self.spec.to_dict(),
            "inputs": [self.input_name, *self.state_inputs],
            "outputs": [self.output_name, *self.state_outputs],
            "state_shape": ["L*D", "B", "H"], "num_states": self.num_states,
            "hidden_size": self.spec.hidden_size, "state_sizes": self.state_sizes,
            "embedding": self.has_embedding,
            "vocab": self.vocab, "unk_index": 0 if self.vocab is not None else None,
            "text": self.text or {},
        }

    def description_json(self) -> str:
        return json.dumps(self.description(), ensure_ascii=False)

    def probe(self, batch: int = 2, steps: int = 7, seed: int = 0):
        """Inputs to compare the file against the model: (x, state parts), random but fixed."""
        rng = np.random.default_rng(seed)
        if self.is_lm:
            x = rng.integers(0, self.spec.input_size, size=(batch, steps), dtype=np.int64)
        else:
            x = rng.standard_normal((batch, steps, self.spec.input_size)).astype(np.float32)
        state = [(0.5 * rng.standard_normal((self.num_states, batch, size))).astype(np.float32)
                 for size in self.state_sizes]
        return x, state
