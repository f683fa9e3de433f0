"""The training configuration: every ``bptt train`` flag is one field here."""

from __future__ import annotations

from dataclasses import dataclass, replace

from .. import ranges as R
from ..dictconfig import DictConfig


@dataclass
class TrainConfig(DictConfig):
    # -- data ---------------------------------------------------------------------------------
    data: str = "timemachine"          # a registered corpus name or a path to a UTF-8 file
    val_data: str | None = None        # a separate validation file (word corpora come split)
    normalization: str = "auto"        # auto: d2l for the built-in corpora (the book's
    #                                    lowercase letters and spaces), none (the text as it
    #                                    is) for your own file, so no script is lost
    tokenization: str = "char"         # char (Chinese: one character = one token) or word
    max_tokens: int | None = None      # the book keeps the first 10,000 tokens
    min_freq: int = 0
    val_frac: float = 0.0              # the last fraction of the tokens, held out
    # -- model --------------------------------------------------------------------------------
    cell: str = "rnn"
    hidden_size: int = 512             # the book's 512
    num_layers: int = 1
    nonlinearity: str = "tanh"
    dropout: float = 0.0
    proj_size: int = 0                 # lstm: h_t = m_t W_hr^T with P < H features (torch's
    #                                    proj_size), read by the next layer and the head; 0: none
    init: str = "torch"                # torch: U(-1/sqrt(H), 1/sqrt(H)); d2l: N(0, 0.01^2)
    # -- engine -------------------------------------------------------------------------------
    engine: str = "numpy"
    device: str | None = None          # torch engines: cuda when available
    dtype: str = "float32"
    precision: str = "fp32"
    # -- optimisation -------------------------------------------------------------------------
    batch_size: int = 32               # the book's 32 sequences
    num_steps: int = 35                # of 35 steps each
    partition: str = "sequential"      # sequential (state carried) or random (fresh state)
    epochs: int = 500                  # the book's 500
    optimizer: str = "sgd"
    lr: float = 1.0                    # the book's SGD learning rate
    clip: float | None = 1.0           # the book clips the global norm at 1
    clip_mode: str = "norm"            # norm (global rescale) or value (element-wise clamp)
    truncate: int | None = None        # BPTT truncation inside a batch (None: the whole batch)
    lr_halving: bool = False           # halve lr when the monitored loss rises (the seed's rule)
    # -- run ----------------------------------------------------------------------------------
    out: str = "runs/lm"
    seed: int = 0
    sample_every: int = 10             # print a continuation every N epochs (0: never)
    sample_prefix: str = "time traveller"
    sample_length: int = 50
    progress: str = "auto"             # auto (a bar on a terminal), bar, log


# The range of every number setting: checked by train() and, with the same words, where the
# command line parses the flag (bptt.cli.argtypes).
RANGES = {
    "max_tokens": R.TOKEN_LIMIT, "min_freq": R.COUNT0,
    "val_frac": R.Range(float, lo=0, hi=0.5, about="the validation fraction, held out"),
    "hidden_size": R.COUNT, "num_layers": R.COUNT, "dropout": R.FRACTION, "proj_size": R.COUNT0,
    "batch_size": R.COUNT, "num_steps": R.COUNT, "epochs": R.COUNT, "lr": R.POSITIVE,
    "clip": R.THRESHOLD, "truncate": R.TRUNCATION, "seed": R.SEED,
    "sample_every": R.COUNT0, "sample_length": R.COUNT0,
}

RECIPES = {
    # Dive into Deep Learning 8.5: the scratch RNN on the first 10,000 characters.
    "d2l": dict(
        data="timemachine", normalization="d2l", tokenization="char", max_tokens=10_000,
        cell="rnn", hidden_size=512, num_layers=1, nonlinearity="tanh", init="d2l",
        batch_size=32, num_steps=35, epochs=500, optimizer="sgd", lr=1.0, clip=1.0,
        clip_mode="norm", partition="sequential", sample_prefix="time traveller",
    ),
}


def apply_recipe(config: TrainConfig, name: str, overrides: dict | None = None) -> TrainConfig:
    """The recipe's settings, then ``overrides`` (flags the user gave explicitly) on top."""
    if name not in RECIPES:
        raise ValueError(f"expected recipe one of {sorted(RECIPES)}, got {name!r}")
    return replace(replace(config, **RECIPES[name]), **(overrides or {}))
