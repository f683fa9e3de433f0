"""What ``bptt bench`` measures: the workloads (configurations), the subjects' names, the parts
and the settings of a run. Nothing here imports NumPy or torch (``bptt bench --help`` reads it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

ENGINE_SUBJECTS = ("numpy", "torch", "torch-autograd", "torch-builtin")
BF16_SUBJECTS = {"numpy-bf16": "numpy", "torch-bf16": "torch"}
"""Our engines with ``precision="bf16"``: bfloat16 products, float32 everything else."""
REFERENCE = "torch.nn"
BOOK = "book"
SUBJECTS = ("numpy", "numpy-bf16", "torch", "torch-bf16", "torch-autograd", "torch-builtin",
            REFERENCE, BOOK)
PARTS = ("train", "generate", "memory")
TORCH_NN = {"rnn": "torch.nn.RNN", "lstm": "torch.nn.LSTM", "gru": "torch.nn.GRU"}


@dataclass(frozen=True)
class BenchConfig:
    """One workload: vocabulary V, hidden size H, batch B, steps T per batch; the cell, its
    layers L, and an embedding of size E in front (a word model; None: one-hot characters)."""

    name: str
    vocab: int
    hidden: int
    batch: int
    steps: int
    note: str = ""
    cell: str = "rnn"
    layers: int = 1
    embedding: int | None = None

    @property
    def tokens(self) -> int:
        return self.batch * self.steps

    @property
    def reference(self) -> str:
        """The torch.nn module of the reference subject (nn.Embedding in front of a word model)."""
        return ("torch.nn.Embedding + " if self.embedding else "") + TORCH_NN[self.cell]

    def runs(self, subject: str) -> bool:
        """Whether ``subject`` has this workload: the book's model is its one-layer character
        RNN; every other subject runs every configuration."""
        return subject != BOOK or (self.cell == "rnn" and self.layers == 1
                                   and self.embedding is None)

    @property
    def generates(self) -> bool:
        """Generation is measured on the character models (the book's 28 characters)."""
        return self.embedding is None


def _word(name: str, vocab: int, hidden: int, batch: int, steps: int, note: str) -> BenchConfig:
    """A Zaremba et al. (2014) word model: embedding E = H, 2 LSTM layers, a linear head."""
    return BenchConfig(name, vocab, hidden, batch, steps, note, cell="lstm", layers=2,
                       embedding=hidden)


CONFIGS = {
    "book": BenchConfig("book", 28, 512, 32, 35, "the book's model (d2l 8.5)"),
    "small": BenchConfig("small", 28, 256, 32, 35, "H = 256"),
    "large": BenchConfig("large", 28, 1024, 128, 35, "H = 1024, B = 128"),
    "long": BenchConfig("long", 28, 256, 16, 1000, "T = 1000 (B and H smaller to stay bounded)"),
    "lstm": BenchConfig("lstm", 28, 256, 32, 35, "an LSTM over characters", cell="lstm"),
    "lstm-512": BenchConfig("lstm-512", 28, 512, 32, 35, "H = 512", cell="lstm"),
    "gru": BenchConfig("gru", 28, 256, 32, 35, "a GRU over characters", cell="gru"),
    "gru-512": BenchConfig("gru-512", 28, 512, 32, 35, "H = 512", cell="gru"),
    "word": _word("word", 10_000, 200, 20, 20, "Zaremba small: E = H = 200, 2 LSTM layers"),
    "word-medium": _word("word-medium", 10_000, 650, 20, 35, "Zaremba medium: E = H = 650"),
}
QUICK_CONFIGS = {
    "book": BenchConfig("book", 28, 48, 4, 12, "quick"),
    "small": BenchConfig("small", 28, 32, 4, 12, "quick"),
    "large": BenchConfig("large", 28, 64, 8, 12, "quick"),
    "long": BenchConfig("long", 28, 32, 2, 120, "quick"),
    "lstm": BenchConfig("lstm", 28, 32, 4, 12, "quick", cell="lstm"),
    "lstm-512": BenchConfig("lstm-512", 28, 48, 4, 12, "quick", cell="lstm"),
    "gru": BenchConfig("gru", 28, 32, 4, 12, "quick", cell="gru"),
    "gru-512": BenchConfig("gru-512", 28, 48, 4, 12, "quick", cell="gru"),
    "word": _word("word", 300, 16, 4, 6, "quick"),
    "word-medium": _word("word-medium", 300, 24, 4, 6, "quick"),
}


@dataclass
class BenchSettings:
    configs: tuple[str, ...] = tuple(CONFIGS)
    subjects: tuple[str, ...] = SUBJECTS
    parts: tuple[str, ...] = PARTS
    quick: bool = False
    repeats: int = 7                 # rounds of timed blocks per configuration
    seconds: float = 0.4             # the length of one timed training block
    gen_chars: int = 300             # characters per generation block
    gen_repeats: int = 5
    memory_steps: int = 2
    pause: float = 0.15              # between two workers' blocks (spinning threads settle)
    seed: int = 0
    memory_configs: tuple[str, ...] | None = None   # None: every configuration
    threads: int | None = None       # threads per worker (every pool); None: the engines'
    #                                  default, the cores the machine's other work leaves idle

    @classmethod
    def quick_settings(cls, **kw) -> BenchSettings:
        # one thread: a smoke test of tiny sizes must not depend on a busy machine's scheduling
        base = dict(quick=True, repeats=3, seconds=0.02, gen_chars=20, gen_repeats=2,
                    memory_steps=1, pause=0.0, memory_configs=("long",), threads=1)
        base.update(kw)
        return cls(**base)

    def config(self, name: str) -> BenchConfig:
        table = QUICK_CONFIGS if self.quick else CONFIGS
        if name not in table:
            raise ValueError(f"expected a configuration among {', '.join(table)}, got {name!r}")
        return table[name]


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


THREADS_ENV = "BPTT_BENCH_THREADS"


def threads() -> int:
    """Threads for torch and the BLAS in a worker: ``$BPTT_BENCH_THREADS``, else every core."""
    value = os.environ.get(THREADS_ENV)
    return int(value) if value else cores()
