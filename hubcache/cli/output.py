"""Output helpers of the command line: tables, sizes, times, confirmation, JSON."""

from __future__ import annotations

import datetime
import json
import sys
from typing import Any, List, Optional, Sequence

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def table(headers: Sequence[str], rows: List[Sequence[str]], *, right: Sequence[int] = ()) -> str:
    """A plain text table; columns in ``right`` are right-aligned."""
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers)] + [line(r) for r in rows])


def when(timestamp: Optional[float]) -> str:
    if timestamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")


def emit_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    print()


def error(message: str) -> None:
    print(f"hubcache: {message}", file=sys.stderr, flush=True)


def confirm(question: str, *, yes: bool) -> Optional[bool]:
    """True to go ahead. Asks on a terminal; elsewhere needs ``-y`` and returns
    None (a usage error) without it."""
    if yes:
        return True
    if not sys.stdin.isatty():
        error("not on a terminal: pass -y to confirm, or --dry-run to only show the plan")
        return None
    answer = input(f"{question} [y/N] ").strip().lower()
    return answer in ("y", "yes")
