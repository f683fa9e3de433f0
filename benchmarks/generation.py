"""Single-stream generation (characters/s at batch 1, greedy) of every engine and reference.

    python benchmarks/generation.py [--configs book] [--json out.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import parser, run  # noqa: E402

if __name__ == "__main__":
    run(parser(__doc__.splitlines()[0]).parse_args(), ("generate",))
