"""What ``bptt bench`` measures: the workloads (configurations), the subjects' names, the parts
and the settings of a run. Nothing here imports NumPy or torch (``bptt bench --help`` reads it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..cells import CELL_NAMES, CELLS, RNN, get_cell

ENGINE_SUBJECTS = ("numpy", "torch", "torch-autograd", "torch-builtin")
BF16_SUBJECTS = {"numpy-bf16": "numpy", "torch-bf16": "torch"}
"""Our engines with ``precision="bf16"``: bfloat16 products, float32 everything else."""
REFERENCE = "torch.nn.RNN"          # the book's configurations' (each one's: BenchConfig.reference)
BOOK = "book"
MODULES = tuple(c.torch_name for c in CELLS.values() if c.torch_name)  # RNN, LSTM, GRU
MODULE_SUBJECTS = tuple(f"{package}.{m}" for m in MODULES for package in ("torch.nn", "bptt.nn"))
"""torch.nn.X (the reference of a configuration of that cell, written here independently of our
engines) and bptt.nn.X, the drop-in module on our BPTT, each with the same embedding (word
models), head, loss, optimiser and clipping."""
SUBJECTS = ("numpy", "numpy-bf16", "torch", "torch-bf16", "torch-autograd", "torch-builtin",
            *MODULE_SUBJECTS, BOOK)
PARTS = ("train", "generate", "memory")
ONE_ROW = (*MODULE_SUBJECTS, BOOK)   # one row each, on the configuration's cell


@dataclass(frozen=True)
class BenchConfig:
    """One workload: vocabulary V, hidden size H, batch B, steps T per batch; the cell (tanh
    for the rnn), its layers L, and an embedding of size E in front (a word model; None:
    one-hot characters). A language model: a linear head, cross-entropy."""

    name: str
    vocab: int
    hidden: int
    batch: int
    steps: int
    note: str = ""
    cell: str = "rnn"               # a name of bptt.cells (tanh for the rnn)
    layers: int = 1
    embedding: int | None = None

    @property
    def tokens(self) -> int:
        return self.batch * self.steps

    @property
    def module(self) -> str:
        """torch.nn's class of the cell (the registry's ``torch_name``): RNN, LSTM or GRU."""
        return get_cell(self.cell).torch_name

    @property
    def reference(self) -> str:
        """The subject every rate is a ratio to: torch.nn's module of the cell (behind
        torch.nn.Embedding in a word model)."""
        return f"torch.nn.{self.module}"

    @property
    def reference_model(self) -> str:
        """What the reference subject runs, in words."""
        return ("torch.nn.Embedding + " if self.embedding else "") + self.reference

    def takes(self, subject: str) -> bool:
        """Whether ``subject`` runs this workload: the engines (float32 and bf16) run every
        configuration, the modules their own cell's, the book's loop its one-layer character
        RNN alone."""
        if subject in MODULE_SUBJECTS:
            return subject.rsplit(".", 1)[1] == self.module
        if subject == BOOK:
            return get_cell(self.cell) is RNN and self.layers == 1 and self.embedding is None
        return True

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
    "lstm": BenchConfig("lstm", 28, 256, 32, 35, "a 2-layer LSTM, H = 256", "lstm", 2),
    "lstm-512": BenchConfig("lstm-512", 28, 512, 32, 35, "a 2-layer LSTM, H = 512", "lstm", 2),
    "gru": BenchConfig("gru", 28, 256, 32, 35, "a 2-layer GRU, H = 256", "gru", 2),
    "gru-512": BenchConfig("gru-512", 28, 512, 32, 35, "a 2-layer GRU, H = 512", "gru", 2),
    "word": _word("word", 10_000, 200, 20, 20, "Zaremba small: E = H = 200, 2 LSTM layers"),
    "word-medium": _word("word-medium", 10_000, 650, 20, 35, "Zaremba medium: E = H = 650"),
}
QUICK_CONFIGS = {
    "book": BenchConfig("book", 28, 48, 4, 12, "quick"),
    "small": BenchConfig("small", 28, 32, 4, 12, "quick"),
    "large": BenchConfig("large", 28, 64, 8, 12, "quick"),
    "long": BenchConfig("long", 28, 32, 2, 120, "quick"),
    "lstm": BenchConfig("lstm", 28, 32, 4, 12, "quick", "lstm", 2),
    "lstm-512": BenchConfig("lstm-512", 28, 48, 4, 12, "quick", "lstm", 2),
    "gru": BenchConfig("gru", 28, 32, 4, 12, "quick", "gru", 2),
    "gru-512": BenchConfig("gru-512", 28, 48, 4, 12, "quick", "gru", 2),
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
    cells: tuple[str, ...] = ("rnn",)  # the cells our engines run (bptt.cells) in the book's
                                       # RNN configurations; the references stay the book's RNN

    @classmethod
    def quick_settings(cls, **kw) -> BenchSettings:
        # one thread: a smoke test of tiny sizes must not depend on a busy machine's scheduling
        base = dict(quick=True, repeats=3, seconds=0.02, gen_chars=20, gen_repeats=2,
                    memory_steps=1, pause=0.0, memory_configs=("long",), threads=1)
        base.update(kw)
        return cls(**base)

    def engine_cells(self, cfg: BenchConfig) -> tuple[str, ...]:
        """The cells our engines run in ``cfg``: ``cells`` in the book's RNN configurations,
        the configuration's own cell in the others (lstm, gru)."""
        return self.cells if get_cell(cfg.cell) is RNN else (cfg.cell,)

    def rows(self, cfg: BenchConfig) -> list[tuple[str, str, str]]:
        """The table's rows of ``cfg`` as (row name, subject, cell), for the subjects that take
        it: every subject of our engines once per engine cell (named ``"numpy lstm"`` when there
        are several, else by the subject alone), each module and the book once, on the
        configuration's cell."""
        for c in self.cells:
            if c not in CELL_NAMES:
                raise ValueError(f"expected cells among {', '.join(CELL_NAMES)}, got {c!r}")
        cells = self.engine_cells(cfg)
        out = []
        for s in self.subjects:
            if not cfg.takes(s):
                continue
            if s in ONE_ROW:
                out.append((s, s, cfg.cell))
            else:
                out += [(s if len(cells) == 1 else f"{s} {c}", s, c) for c in cells]
        return out

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
