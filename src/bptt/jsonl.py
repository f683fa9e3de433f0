"""metrics.jsonl lines: strict JSON, one record per line."""

from __future__ import annotations

import json
import math


def json_line(record: dict) -> str:
    """One strict JSON line: a non-finite float (an overflowed norm, a NaN loss) becomes null."""
    clean = {k: v if not isinstance(v, float) or math.isfinite(v) else None
             for k, v in record.items()}
    return json.dumps(clean, allow_nan=False) + "\n"
