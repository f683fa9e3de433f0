"""What ``bptt bench`` measures: the workloads (configurations), the subjects' names, the parts
and the settings of a run. Nothing here imports NumPy or torch (``bptt bench --help`` reads it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..cells import CELL_NAMES, CELLS, RNN, get_cell

ENGINE_SUBJECTS = ("numpy", "torch", "torch-autograd", "torch-builtin")
REFERENCE = "torch.nn.RNN"
BOOK = "book"
MODULES = tuple(c.torch_name for c in CELLS.values() if c.torch_name)  # RNN, LSTM, GRU
MODULE_SUBJECTS = tuple(f"{package}.{m}" for m in MODULES for package in ("torch.nn", "bptt.nn"))
"""torch.nn.X (the reference of a configuration of that cell) and bptt.nn.X, the drop-in
module on our BPTT, each with the same head, loss, optimiser and clipping."""
SUBJECTS = ("numpy", "torch", "torch-bf16", "torch-autograd", "torch-builtin", *MODULE_SUBJECTS,
            BOOK)
PARTS = ("train", "generate", "memory")
RNN_ONLY = ("torch-bf16", BOOK)     # bfloat16 products and the book's loop: the Elman RNN's
ONE_ROW = (*MODULE_SUBJECTS, BOOK)   # one row each, on the configuration's cell


@dataclass(frozen=True)
class BenchConfig:
    """One workload: vocabulary V, hidden size H, batch B, steps T per batch, the cell and its
    layers (a language model: one-hot input, a linear head, cross-entropy)."""

    name: str
    vocab: int
    hidden: int
    batch: int
    steps: int
    note: str = ""
    cell: str = "rnn"               # a name of bptt.cells (tanh for the rnn)
    layers: int = 1

    @property
    def tokens(self) -> int:
        return self.batch * self.steps

    @property
    def module(self) -> str:
        """torch.nn's class of the cell (the registry's ``torch_name``): RNN, LSTM or GRU."""
        return get_cell(self.cell).torch_name

    @property
    def reference(self) -> str:
        """The subject every rate is a ratio to: torch.nn's module of the cell."""
        return f"torch.nn.{self.module}"

    def takes(self, subject: str) -> bool:
        """Whether ``subject`` runs this workload: the engines run every cell, the modules
        their own, the bfloat16 engine and the book's loop the Elman RNN alone."""
        if subject in MODULE_SUBJECTS:
            return subject.rsplit(".", 1)[1] == self.module
        return get_cell(self.cell) is RNN or subject not in RNN_ONLY


CONFIGS = {
    "book": BenchConfig("book", 28, 512, 32, 35, "the book's model (d2l 8.5)"),
    "small": BenchConfig("small", 28, 256, 32, 35, "H = 256"),
    "large": BenchConfig("large", 28, 1024, 128, 35, "H = 1024, B = 128"),
    "long": BenchConfig("long", 28, 256, 16, 1000, "T = 1000 (B and H smaller to stay bounded)"),
    "lstm": BenchConfig("lstm", 28, 256, 32, 35, "a 2-layer LSTM, H = 256", "lstm", 2),
    "gru": BenchConfig("gru", 28, 256, 32, 35, "a 2-layer GRU, H = 256", "gru", 2),
}
QUICK_CONFIGS = {
    "book": BenchConfig("book", 28, 48, 4, 12, "quick"),
    "small": BenchConfig("small", 28, 32, 4, 12, "quick"),
    "large": BenchConfig("large", 28, 64, 8, 12, "quick"),
    "long": BenchConfig("long", 28, 32, 2, 120, "quick"),
    "lstm": BenchConfig("lstm", 28, 32, 4, 12, "quick", "lstm", 2),
    "gru": BenchConfig("gru", 28, 32, 4, 12, "quick", "gru", 2),
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
    threads: int | None = None       # torch and BLAS threads per worker; None: every core
    cells: tuple[str, ...] = ("rnn",)  # the cells our engines run (bptt.cells); the references
                                       # (torch.nn.RNN, book) are the book's RNN whatever these

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
