"""``python -m bptt.bench --worker``: a benchmark worker (see :mod:`bptt.bench.worker`);
``python -m bptt.bench [options]``: the same as ``bptt bench [options]``."""

from __future__ import annotations

import sys

if sys.argv[1:] == ["--worker"]:
    from .worker import worker_main

    sys.exit(worker_main())

from ..cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
