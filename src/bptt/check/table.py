"""The ``bptt check`` table: aligned columns, errors as %.1e, and a closing count."""

from __future__ import annotations

from .record import ERROR_COLUMNS, TOLERANCE, CheckRow

HEADER = ("cell", "engine", "method", "nonlin", "B", "T", "I", "H", "P", "L", "bidir", "h0",
          "trunc", "bias", "E", "tied", "drop", "kernel", *ERROR_COLUMNS, "worst", "tol", "ok")
TEXT_COLUMNS = 4                                     # left-aligned; numbers right-aligned


def _fmt_error(e: float | None) -> str:
    return "-" if e is None else f"{e:.1e}"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _cells(r: CheckRow) -> tuple[str, ...]:
    """One row's columns as text, in the order of :data:`HEADER`."""
    return (
        r.cell, r.engine, r.method, r.nonlinearity, str(r.batch), str(r.steps),
        str(r.input_size), str(r.hidden_size), str(r.proj_size or "-"), str(r.layers),
        _yes(r.bidirectional),
        _yes(r.with_h0), "-" if r.truncate is None else str(r.truncate), _yes(r.bias),
        "-" if r.embedding is None else str(r.embedding), _yes(r.tied), r.dropout, _yes(r.kernel),
        *(_fmt_error(getattr(r, c)) for c in ERROR_COLUMNS), _fmt_error(r.worst),
        f"{r.tolerance:.0e}", "ok" if r.ok else "FAIL",
    )


def _summary(rows: list[CheckRow]) -> str:
    """The last line: how many rows, and how many over which tolerance (per method when the
    methods have different ones)."""
    by_method: dict[str, set] = {}
    for r in rows:
        by_method.setdefault(r.method, set()).add(r.tolerance)
    tols = {t for ts in by_method.values() for t in ts} or {TOLERANCE["float64"]}
    if len(tols) == 1:
        tol = f"{tols.pop():.0e}"
    else:
        tol = "their tolerance (" + ", ".join(
            f"{m} {'/'.join(f'{t:.0e}' for t in sorted(ts))}" for m, ts in by_method.items()
        ) + ")"
    bad = sum(not r.ok for r in rows)
    if bad:
        return f"{bad} of {len(rows)} rows over {tol}"
    return f"{len(rows)} rows, all under {tol}"


def format_table(rows: list[CheckRow]) -> str:
    """Aligned columns, errors as %.1e, and a last line counting the rows over tolerance."""
    lines = [HEADER, *(_cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    out = []
    for line in lines:
        cells = [v.ljust(w) if i < TEXT_COLUMNS else v.rjust(w)
                 for i, (v, w) in enumerate(zip(line, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
    out.append(_summary(rows))
    return "\n".join(out)
