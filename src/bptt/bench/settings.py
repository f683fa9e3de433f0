"""What ``bptt bench`` measures: the workloads (configurations), the subjects' names, the parts
and the settings of a run. Nothing here imports NumPy or torch (``bptt bench --help`` reads it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..cells import CELL_NAMES

ENGINE_SUBJECTS = ("numpy", "torch", "torch-autograd", "torch-builtin")
REFERENCE = "torch.nn.RNN"
BOOK = "book"
SUBJECTS = ("numpy", "torch", "torch-bf16", "torch-autograd", "torch-builtin", REFERENCE, BOOK)
PARTS = ("train", "generate", "memory")
REFERENCES = (REFERENCE, BOOK)   # the book's tanh RNN whatever cells the engines run


@dataclass(frozen=True)
class BenchConfig:
    """One workload: vocabulary V, hidden size H, batch B, steps T per batch."""

    name: str
    vocab: int
    hidden: int
    batch: int
    steps: int
    note: str = ""

    @property
    def tokens(self) -> int:
        return self.batch * self.steps


CONFIGS = {
    "book": BenchConfig("book", 28, 512, 32, 35, "the book's model (d2l 8.5)"),
    "small": BenchConfig("small", 28, 256, 32, 35, "H = 256"),
    "large": BenchConfig("large", 28, 1024, 128, 35, "H = 1024, B = 128"),
    "long": BenchConfig("long", 28, 256, 16, 1000, "T = 1000 (B and H smaller to stay bounded)"),
}
QUICK_CONFIGS = {
    "book": BenchConfig("book", 28, 48, 4, 12, "quick"),
    "small": BenchConfig("small", 28, 32, 4, 12, "quick"),
    "large": BenchConfig("large", 28, 64, 8, 12, "quick"),
    "long": BenchConfig("long", 28, 32, 2, 120, "quick"),
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

    def rows(self) -> list[tuple[str, str, str]]:
        """The table's rows as (row name, subject, cell): every subject of our engines once per
        cell (named ``"numpy lstm"`` when there are several cells, else by the subject alone),
        each reference once."""
        for c in self.cells:
            if c not in CELL_NAMES:
                raise ValueError(f"expected cells among {', '.join(CELL_NAMES)}, got {c!r}")
        out = []
        for s in self.subjects:
            if s in REFERENCES:
                out.append((s, s, "rnn"))
            else:
                out += [(s if len(self.cells) == 1 else f"{s} {c}", s, c) for c in self.cells]
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
