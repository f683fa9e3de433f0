"""Peak memory of training steps, each subject in a fresh process (RSS growth; tracemalloc too
for the NumPy engine).

    python benchmarks/memory.py [--configs long] [--json out.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import parser, run  # noqa: E402

if __name__ == "__main__":
    run(parser(__doc__.splitlines()[0]).parse_args(), ("memory",))
