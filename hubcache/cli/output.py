"""Output helpers of the command line: tables, sizes, times, messages, confirmation, JSON.

Everything the command writes goes through :func:`say`, so that a line never
lands in the middle of a progress bar (see :func:`say`).
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, TextIO

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: Ctrl-C: 128 + SIGINT, what a shell reports for a program killed by it.
EXIT_INTERRUPTED = 130
#: stdout closed early (``hubcache ls | head -1``): 128 + SIGPIPE, what a shell
#: reports for a program killed by SIGPIPE, as C programs are.
EXIT_BROKEN_PIPE = 141


@dataclass
class Result:
    """What a command returns: ``data`` for ``--json``, ``text`` otherwise
    (None: nothing to print), its exit code, and ``notes`` for stderr after the
    output (failures, warnings). :func:`render` prints it."""

    data: Any = None
    text: Optional[str] = None
    code: int = EXIT_OK
    notes: List[str] = field(default_factory=list)


def render(result: Result, as_json: bool) -> int:
    """Print ``result`` as JSON or as text; return its exit code."""
    if as_json:
        if result.data is not None:
            emit_json(result.data)
    elif result.text:
        say(result.text)
    for note in result.notes:
        error(note)
    return result.code


class UsageError(Exception):
    """Wrong use of the command: ``hubcache: <message>`` and exit 2, no traceback."""


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[int] = ()) -> str:
    """A plain text table; columns in ``right`` are right-aligned."""
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]

    def line(cells: Sequence[str]) -> str:
        parts = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers)] + [line(r) for r in rows])


def when(timestamp: Optional[float]) -> str:
    if timestamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")


def say(text: str, file: Optional[TextIO] = None) -> None:
    """Print ``text`` (a line, or lines) to ``file`` (default stdout).

    Progress bars are drawn only by tqdm, and only once it is imported: then
    the text goes through ``tqdm.write``, which takes tqdm's lock, clears the
    bars (stdout and stderr share a terminal), writes, and draws them again.
    Otherwise it is a plain print, and tqdm is never imported for it.
    """
    out = sys.stdout if file is None else file
    tqdm = sys.modules.get("tqdm")
    if tqdm is not None and hasattr(tqdm, "tqdm"):
        tqdm.tqdm.write(text, file=out)
    else:
        print(text, file=out)


def error(message: str) -> None:
    """A message on stderr, prefixed ``hubcache:`` (errors, warnings, notes)."""
    say(f"hubcache: {message}", sys.stderr)


def emit_json(data: Any) -> None:
    say(json.dumps(data, indent=2))


class BarSafeHandler(logging.Handler):
    """The command's log handler: each record as ``hubcache: <message>`` on
    stderr, through :func:`say` so that log lines never garble progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            say(self.format(record), sys.stderr)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def confirm(question: str, *, yes: bool) -> Optional[bool]:
    """True to go ahead. Asks on a terminal; elsewhere needs ``-y`` and returns
    None (a usage error) without it."""
    if yes:
        return True
    if not sys.stdin.isatty():
        error("not on a terminal: pass -y to confirm, or --dry-run to only show the plan")
        return None
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:  # Ctrl-D: no
        print(file=sys.stderr)
        return False
    except KeyboardInterrupt:
        print(file=sys.stderr)  # end the prompt's line before "interrupted"
        raise
    return answer.strip().lower() in ("y", "yes")


def count_entries(n: int) -> str:
    """ "1 entry", "2 entries"."""
    return f"{n} entry" if n == 1 else f"{n} entries"
