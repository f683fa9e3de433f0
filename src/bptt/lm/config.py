"""The training configuration: every ``bptt train`` flag is one field here, and the recipes."""

from __future__ import annotations

from dataclasses import dataclass, replace

from .. import ranges as R
from ..dictconfig import DictConfig


@dataclass
class TrainConfig(DictConfig):
    # -- data ---------------------------------------------------------------------------------
    data: str = "timemachine"          # a registered corpus name (NAME:train|valid|test for
    #                                    its parts) or a path to a UTF-8 file
    val_data: str | None = None        # a separate validation file (word corpora come split)
    normalization: str = "auto"        # auto: d2l for the built-in corpora (the book's
    #                                    lowercase letters and spaces), none (the text as it
    #                                    is) for your own file, so no script is lost
    tokenization: str = "char"         # char (Chinese: one character = one token) or word
    eos: bool = True                   # word tokenisation: <eos> ends every line (as PTB and
    #                                    WikiText are counted); char tokenisation has none
    max_tokens: int | None = None      # the book keeps the first 10,000 tokens
    min_freq: int = 0
    max_vocab: int | None = None       # the N most frequent (<unk>, <eos> included); rest <unk>
    val_frac: float = 0.0              # the last fraction of the tokens, held out
    # -- model --------------------------------------------------------------------------------
    cell: str = "rnn"
    hidden_size: int = 512             # the book's 512
    num_layers: int = 1
    nonlinearity: str = "tanh"
    proj_size: int = 0                 # lstm: h_t = m_t W_hr^T with P < H features (torch's
    #                                    proj_size), read by the next layer and the head; 0: none
    embedding_size: int | None = None  # None: the book's one-hot input; E: an embedding (V, E)
    tie_weights: bool = False          # the head's weight is the embedding (E = H, or P with
    #                                    proj_size; Press & Wolf)
    dropout: float = 0.0               # one-hot input: between layers (torch.nn's); with an
    #                                    embedding also on its output and before the head
    dropout_mode: str = "standard"     # standard: a mask per step; variational: per sequence
    init: str = "torch"                # torch: U(-1/sqrt(H), 1/sqrt(H)); d2l: N(0, 0.01^2);
    init_scale: float = 0.1            # uniform: every parameter U(-init_scale, init_scale)
    # -- engine -------------------------------------------------------------------------------
    engine: str = "numpy"
    device: str | None = None          # torch engines: cuda when available
    dtype: str = "float32"
    precision: str = "fp32"
    threads: int | None = None         # of every pool (the kernel's, the BLAS's, torch's)
    #                                    together; None: the cores this process may run on
    #                                    that other work leaves idle (at the start)
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
    lr_decay: float | None = None      # Zaremba: lr times this after each epoch from ...
    lr_decay_start: int = 1            # ... epoch N on (lr held for the first N epochs)
    # -- run ----------------------------------------------------------------------------------
    out: str = "runs/lm"
    seed: int = 0
    sample_every: int = 10             # print a continuation every N epochs (0: never)
    sample_prefix: str = "time traveller"
    sample_length: int = 50
    progress: str = "auto"             # auto (a bar on a terminal), bar, log

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """The settings in ``d`` (a checkpoint's); a setting ``d`` predates keeps the meaning
        it had then (:data:`LEGACY`), unknown keys are left out."""
        return super().from_dict({**LEGACY, **d})


LEGACY = {"eos": False}
"""What a config written before a setting existed meant by its absence: word corpora had no
``<eos>`` (the other settings added since default to what there was)."""

# The range of every number setting: checked by train() and, with the same words, where the
# command line parses the flag (bptt.cli.argtypes).
RANGES = {
    "max_tokens": R.TOKEN_LIMIT, "min_freq": R.COUNT0,
    "max_vocab": R.Range(int, lo=2, none="every token", about="<unk> and <eos> included"),
    "val_frac": R.Range(float, lo=0, hi=0.5, about="the validation fraction, held out"),
    "hidden_size": R.COUNT, "num_layers": R.COUNT, "dropout": R.FRACTION, "proj_size": R.COUNT0,
    "embedding_size": R.Range(int, lo=1, none="one-hot input"),
    "init_scale": R.POSITIVE,
    "batch_size": R.COUNT, "num_steps": R.COUNT, "epochs": R.COUNT, "lr": R.POSITIVE,
    "clip": R.THRESHOLD, "truncate": R.TRUNCATION, "seed": R.SEED,
    "lr_decay": R.Range(float, lo=0, hi=1, lo_open=True, none="no decay",
                        about="the factor per epoch"),
    "lr_decay_start": R.COUNT,
    "threads": R.Range(int, lo=1, none="the cores this process may run on"),
    "sample_every": R.COUNT0, "sample_length": R.COUNT0,
}


def _zaremba(hidden: int, steps: int, dropout: float, init: float, epochs: int, clip: float,
             hold: int, decay: float) -> dict:
    """Zaremba, Sutskever & Vinyals (2014), "Recurrent neural network regularization", in our
    loss scale: the paper's SGD lr 1 and norm clip ``clip`` act on the loss summed over the
    ``steps`` time steps (mean over the batch); ours is the mean over all T*B tokens, T times
    smaller, so the same steps are lr 1 * T and clip ``clip`` / T (docs/results.md)."""
    return dict(
        tokenization="word", eos=True, cell="lstm", hidden_size=hidden, num_layers=2,
        embedding_size=hidden, tie_weights=False, dropout=dropout, dropout_mode="standard",
        init="uniform", init_scale=init, batch_size=20, num_steps=steps, partition="sequential",
        epochs=epochs, optimizer="sgd", lr=1.0 * steps, clip=clip / steps, clip_mode="norm",
        truncate=None, lr_halving=False, lr_decay=1.0 / decay, lr_decay_start=hold,
        **ZAREMBA_CORPUS, sample_prefix="the time traveller", sample_length=30,
    )


ZAREMBA_CORPUS = dict(data="timemachine:train", val_data="timemachine:valid", min_freq=2,
                      max_vocab=None, normalization="auto")
"""The corpus the Zaremba recipes read unless --data names another: The Time Machine at word
level, lines split 80/10/10 (bptt.data.SPLITS), words seen once read as <unk> so that the
model meets <unk> in training as it does in the 10k-word benchmark corpus. Given --data, these
settings are left at their defaults (unless given too): the paper's corpus comes prepared."""

RECIPES = {
    # Dive into Deep Learning 8.5: the scratch RNN on the first 10,000 characters.
    "d2l": dict(
        data="timemachine", normalization="d2l", tokenization="char", max_tokens=10_000,
        cell="rnn", hidden_size=512, num_layers=1, nonlinearity="tanh", init="d2l",
        batch_size=32, num_steps=35, epochs=500, optimizer="sgd", lr=1.0, clip=1.0,
        clip_mode="norm", partition="sequential", sample_prefix="time traveller",
    ),
    # Zaremba et al. (2014): 2 x 200 LSTM, no dropout, U(-0.1, 0.1), lr 1 for 4 epochs then
    # halved each epoch, 13 epochs, clip 5, batch 20 x 20 steps.
    "zaremba-small": _zaremba(200, 20, 0.0, 0.1, 13, 5.0, 4, 2.0),
    # 2 x 650, dropout 0.5, U(-0.05, 0.05), lr 1 for 6 epochs then / 1.2, 39 epochs, clip 5,
    # batch 20 x 35 steps.
    "zaremba-medium": _zaremba(650, 35, 0.5, 0.05, 39, 5.0, 6, 1.2),
    # 2 x 1500, dropout 0.65, U(-0.04, 0.04), lr 1 for 14 epochs then / 1.15, 55 epochs,
    # clip 10, batch 20 x 35 steps.
    "zaremba-large": _zaremba(1500, 35, 0.65, 0.04, 55, 10.0, 14, 1.15),
}

RECIPE_CORPUS = {name: tuple(ZAREMBA_CORPUS) for name in RECIPES if name.startswith("zaremba")}
"""The settings a recipe makes for its own corpus, dropped when --data names another."""

PAPER = {
    "zaremba-small": "Zaremba et al. (2014) report test perplexity 114.5 (validation 120.7) "
                     "for the small model on the standard 10k-word corpus (PTB)",
    "zaremba-medium": "Zaremba et al. (2014) report test perplexity 82.7 (validation 86.2) for "
                      "the medium model on the standard 10k-word corpus (PTB)",
    "zaremba-large": "Zaremba et al. (2014) report test perplexity 78.4 (validation 82.2) for "
                     "the large model on the standard 10k-word corpus (PTB)",
}
"""What the paper reports for each recipe, printed by ``bptt train --recipe``."""


def apply_recipe(config: TrainConfig, name: str, overrides: dict | None = None) -> TrainConfig:
    """The recipe's settings, then ``overrides`` (flags the user gave explicitly) on top; a
    recipe's corpus settings (:data:`RECIPE_CORPUS`) go when ``overrides`` names the data."""
    if name not in RECIPES:
        raise ValueError(f"expected recipe one of {sorted(RECIPES)}, got {name!r}")
    overrides = overrides or {}
    recipe = dict(RECIPES[name])
    if "data" in overrides:
        defaults = TrainConfig()
        recipe.update({k: getattr(defaults, k) for k in RECIPE_CORPUS.get(name, ())})
    return replace(replace(config, **recipe), **overrides)
