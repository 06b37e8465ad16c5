"""``ls``, ``info``, ``rm``, ``prune`` and ``verify``: looking after a cache."""

from __future__ import annotations

import argparse
import os
from typing import Any, Dict, List, Optional, Union

from ..api import resolve_with
from ..cache import Cache
from ..config import Settings, parse_size
from ..errors import ConfigError, HubcacheError, TensorFlowNotInstalled
from ..inventory import (
    DAMAGED,
    FOREIGN,
    INCOMPLETE,
    OK,
    Entry,
    Removal,
    find,
    format_size,
    layers,
    parse_duration,
    plan_prune,
    remove_leftover,
    scan,
    verify,
)
from ..loader import signatures
from ..redaction import REDACTED, redact
from .arguments import Command, entry_handles
from .helptext import INFO_EPILOG, LS_EPILOG, PRUNE_EPILOG, RM_EPILOG, VERIFY_EPILOG
from .output import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Result,
    UsageError,
    confirm,
    count_entries,
    error,
    say,
    table,
    when,
)

SORT_KEYS = {
    "handle": lambda e: (e.handle or "", e.key),
    "size": lambda e: -e.size,
    "fetched": lambda e: -(e.fetched_at or 0),
    "used": lambda e: -(e.last_used or e.fetched_at or 0),
}
STATES = (OK, FOREIGN, DAMAGED, INCOMPLETE)

#: The fields of an entry in ``ls --json`` and ``info --json``, exactly.
ENTRY_FIELDS = (
    "handle",
    "key",
    "path",
    "state",
    "problem",
    "size",
    "files",
    "fetched_at",
    "last_used",
    "source_url",
    "sha256",
    "readonly",
    "latest_of",
)


def add_commands(command: Command) -> None:
    p = command(
        "ls",
        _ls,
        "list what the cache holds",
        "List every entry (and read-only layer entry): handle, size on disk, files, when "
        "fetched, when last used, state (ok, damaged, foreign = made by tensorflow_hub, "
        "incomplete = a download's leftovers).",
        LS_EPILOG,
    )
    p.add_argument("--sort", choices=sorted(SORT_KEYS), default="handle", help="order (default: handle)")
    p.add_argument("--filter", metavar="TEXT", help="only entries whose handle (or key) contains TEXT, ignoring case")
    p.add_argument("--state", action="append", choices=STATES, help="only entries in this state (repeatable)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N entries (after --sort)")

    p = command("info", _info, "show one handle's cache entry", "Show the cache entry of HANDLE.", INFO_EPILOG)
    p.add_argument("handle", metavar="HANDLE")
    p.add_argument("--signatures", action="store_true", help="also load it with TensorFlow and list its signatures")

    p = command(
        "rm",
        _rm,
        "remove handles from the cache",
        "Remove the cache entries of the handles. Entries in use (being downloaded or loaded) are left alone.",
        RM_EPILOG,
    )
    p.add_argument("handles", nargs="+", metavar="HANDLE")
    _plan_options(p)

    p = command(
        "prune",
        _prune,
        "remove old, surplus, damaged or leftover entries",
        "Remove entries not used for a while, the least recently used ones over a size, damaged "
        "ones, and leftovers of interrupted downloads. Prints the plan and asks first.",
        PRUNE_EPILOG,
    )
    p.add_argument("--older-than", metavar="AGE", help="entries not used for AGE (30d, 12h, 90m; a unit is required)")
    p.add_argument(
        "--max-size", metavar="SIZE", help="remove least recently used entries until the cache fits SIZE (20G)"
    )
    p.add_argument("--damaged", action="store_true", help="damaged entries")
    p.add_argument("--temp", action="store_true", help="leftovers of downloads whose process is gone")
    _plan_options(p)

    p = command(
        "verify",
        _verify,
        "check entries against what was recorded when they were fetched",
        "Check every file of the entries (all, or the handles') against its recorded size and "
        "CRC-32. Exits 1 if any is damaged.",
        VERIFY_EPILOG,
    )
    p.add_argument("handles", nargs="*", metavar="HANDLE")
    p.add_argument("--repair", action="store_true", help="download damaged entries again")


def _plan_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--dry-run", action="store_true", help="only print what would be removed")


def entry_json(entry: Entry) -> Dict[str, Any]:
    """An entry's JSON record: exactly :data:`ENTRY_FIELDS`, as documented."""
    data = entry.to_json()
    return {name: data.get(name) for name in ENTRY_FIELDS}


def _ls(args: argparse.Namespace, settings: Settings) -> Result:
    if args.limit is not None and args.limit < 0:
        raise UsageError("ls: --limit takes a number of at least 0")
    every = [e for cache, ro in layers(settings) for e in scan(cache, ro)]
    entries = [e for e in every if _matches(e, args.filter, args.state)]
    entries.sort(key=SORT_KEYS[args.sort])
    if args.limit is not None:
        entries = entries[: args.limit]
    data = {"cache_dir": settings.cache_dir, "entries": [entry_json(e) for e in entries]}
    if args.quiet:  # handles only, for scripts
        return Result(data, "\n".join(dict.fromkeys(e.handle for e in entries if e.handle)))
    if not entries:
        none = f"no entry of the {len(every)} in the cache matches"
        return Result(data, none if every else f"{settings.cache_dir}: empty")
    layered = bool(settings.readonly_dirs)
    rows = []
    for e in entries:
        state = e.state + (f" ({e.problem})" if e.state in (DAMAGED, INCOMPLETE) else "")
        name = _name(e) + (f" (latest of {', '.join(e.latest_of)})" if e.latest_of else "")
        row = [name, format_size(e.size), str(e.files), when(e.fetched_at), when(e.last_used), state]
        rows.append(row + ([os.path.dirname(e.path)] if layered else []))
    headers = ["HANDLE", "SIZE", "FILES", "FETCHED", "LAST USED", "STATE"] + (["CACHE"] if layered else [])
    counts = {s: sum(e.state == s for e in entries) for s in sorted({e.state for e in entries})}
    detail = ", ".join(f"{n} {s}" for s, n in counts.items())
    count = (
        count_entries(len(entries)) if len(entries) == len(every) else f"{len(entries)} of {count_entries(len(every))}"
    )
    total = f"{count} ({detail}), {format_size(sum(e.size for e in entries))} on disk"
    return Result(data, table(headers, rows, right=(1, 2)) + "\n" + total)


def _matches(entry: Entry, text: Optional[str], states: Optional[List[str]]) -> bool:
    if states and entry.state not in states:
        return False
    if text:
        needle = text.lower()
        return needle in (entry.handle or "").lower() or needle in entry.key
    return True


def _info(args: argparse.Namespace, settings: Settings) -> Union[int, Result]:
    entry_handles("info", [args.handle])
    entry = _locate(args.handle, settings)
    if entry is None:
        error(f"{redact(args.handle)} is not in the cache at {settings.cache_dir}: `hubcache prefetch` it first")
        return EXIT_FAILED
    data = entry_json(entry)
    if args.signatures:
        try:
            data["signatures"] = _signatures(entry.path, _name(entry))
        except Exception as e:  # TensorFlow's errors are many and long: the first line says it
            first = (str(e).strip().splitlines() or [""])[0]
            error(f"{_name(entry)}: TensorFlow cannot load {entry.path}: {type(e).__name__}: {first}")
            return EXIT_FAILED
    labels = [
        ("handle", "handle"),
        ("directory", "path"),
        ("state", "state"),
        ("problem", "problem"),
        ("source", "source_url"),
        ("sha256", "sha256"),
        ("files", "files"),
        ("fetched", "fetched_at"),
        ("last used", "last_used"),
    ]
    if entry.latest_of:
        labels.append(("latest of", "latest_of"))
    shown = {k: ", ".join(v) if isinstance(v, list) else v for k, v in data.items()}
    lines = [f"{label + ':':11}{shown[key]}" for label, key in labels if data.get(key) is not None]
    lines.append(f"{'size:':11}{format_size(entry.size)} on disk")
    if entry.readonly:
        lines.append(f"{'layer:':11}read-only ({os.path.dirname(entry.path)})")
    lines += [f"{'signature:':11}{name}{spec}" for name, spec in (data.get("signatures") or {}).items()]
    return Result(data, "\n".join(lines), EXIT_OK if entry.usable else EXIT_FAILED)


def _signatures(path: str, handle: str) -> Dict[str, str]:
    try:
        return signatures(path, handle=handle)
    except TensorFlowNotInstalled:
        return {"(TensorFlow is not installed)": ""}


def _locate(handle: str, settings: Settings) -> Optional[Entry]:
    for cache, readonly in layers(settings):
        entry = find(cache, handle, readonly)
        if entry is not None:
            return entry
    return None


def _rm(args: argparse.Namespace, settings: Settings) -> Union[int, Result]:
    entry_handles("rm", args.handles)  # all of them before removing any
    cache = Cache(settings.cache_dir)
    plan, missing = [], []
    for handle in dict.fromkeys(args.handles):
        entry = find(cache, handle)
        if entry is None:
            missing.append(handle)
        else:
            plan.append(Removal(entry, "asked for"))
    result = _carry_out(plan, cache, args)
    if isinstance(result, int):
        return result
    result.notes[:0] = [f"{redact(handle)} is not in the cache at {settings.cache_dir}" for handle in missing]
    if missing and result.code == EXIT_OK:
        result.code = EXIT_FAILED
    return result


def _prune(args: argparse.Namespace, settings: Settings) -> Union[int, Result]:
    if not (args.older_than or args.max_size or args.damaged or args.temp):
        raise UsageError("prune: say what to remove: --older-than AGE, --max-size SIZE, --damaged and/or --temp")
    older = max_size = None
    if args.older_than is not None:
        try:
            older = parse_duration(args.older_than)
        except ValueError as e:
            raise UsageError(f"prune: --older-than: {e}") from None
    if args.max_size is not None:
        try:
            max_size = parse_size(args.max_size, "--max-size")
        except ConfigError as e:
            raise UsageError(f"prune: {e}") from None
    cache = Cache(settings.cache_dir)
    plan = plan_prune(scan(cache), cache, older_than=older, max_size=max_size, damaged=args.damaged, temp=args.temp)
    return _carry_out(plan, cache, args)


def _carry_out(plan: List[Removal], cache: Cache, args: argparse.Namespace) -> Union[int, Result]:
    """Show the plan, confirm, remove; report what was removed or skipped."""
    freed = sum(r.entry.size for r in plan)
    if args.json and not (args.dry_run or args.yes) and plan:
        raise UsageError("--json removes nothing without -y (or use --dry-run)")
    shown = "nothing to remove"
    if plan:
        rows = [(_name(r.entry), format_size(r.entry.size), r.reason) for r in plan]
        shown = table(("HANDLE", "SIZE", "WHY"), rows, right=(1,)) + f"\n{len(plan)} to remove, {format_size(freed)}"
    if args.dry_run:  # the plan is the answer, -q or not
        return Result({"dry_run": True, "plan": [_removal_json(r) for r in plan]}, shown)
    if not args.json:
        if not args.quiet or not args.yes:  # -q shows the plan only before a question
            say(shown)
        if plan:
            go = confirm(f"Remove {count_entries(len(plan))} ({format_size(freed)})?", yes=args.yes)
            if go is None:
                return EXIT_USAGE
            if not go:
                return Result(text="nothing removed")
    removed: List[Removal] = []
    skipped: List[Removal] = []
    for r in plan:
        (removed if _remove(r.entry, cache) else skipped).append(r)
    gone = sum(r.entry.size for r in removed)
    return Result(
        {
            "removed": [_removal_json(r) for r in removed],
            "skipped": [_removal_json(r) for r in skipped],
            "freed": gone,
        },
        f"removed {len(removed)}, freed {format_size(gone)}" if plan and not args.quiet else None,
        EXIT_FAILED if skipped else EXIT_OK,
        [f"{_name(r.entry)} is in use (being downloaded or loaded): left in place" for r in skipped],
    )


def _remove(entry: Entry, cache: Cache) -> bool:
    if entry.state == INCOMPLETE:  # a leftover directory or file: only if its process is gone
        return remove_leftover(cache, entry)
    return cache.remove(entry.key, entry.handle or entry.key)


def _removal_json(r: Removal) -> Dict[str, Any]:
    return {
        "handle": r.entry.handle,
        "key": r.entry.key,
        "path": r.entry.path,
        "size": r.entry.size,
        "reason": r.reason,
    }


def _verify(args: argparse.Namespace, settings: Settings) -> Union[int, Result]:
    if args.handles:
        entry_handles("verify", args.handles)
        targets = []
        for handle in dict.fromkeys(args.handles):
            entry = _locate(handle, settings)
            if entry is None:
                error(f"{redact(handle)} is not in the cache at {settings.cache_dir}")
                return EXIT_FAILED
            targets.append(entry)
    else:
        targets = [e for cache, ro in layers(settings) for e in scan(cache, ro) if e.state != INCOMPLETE]
    results = []
    for entry in targets:
        cache = Cache(os.path.dirname(entry.path))
        problem = verify(cache, entry)
        outcome = "ok" if problem is None else "damaged"
        if problem and args.repair:
            outcome = _repair(entry, cache, settings)
        results.append({"handle": entry.handle, "path": entry.path, "result": outcome, "problem": problem})
        if not args.json:  # as it goes: a verify of a large cache takes a while
            say(f"{_name(entry)}: {outcome}" + (f" ({problem})" if problem else ""))
    bad = sum(r["result"] not in ("ok", "repaired") for r in results)
    advice = "" if args.repair else ": --repair downloads them again"
    notes = [f"{bad} of {count_entries(len(results))} damaged{advice}"] if bad else []
    return Result(results, None, EXIT_FAILED if bad else EXIT_OK, notes)


def _repair(entry: Entry, cache: Cache, settings: Settings) -> str:
    if entry.readonly:
        return "damaged (read-only cache: not repaired)"
    if not entry.handle:
        return "damaged (handle unknown: not repaired)"
    if REDACTED in entry.handle:  # the stored handle lost its secret: it cannot be fetched again
        return "damaged (handle recorded without its credentials: not repaired; prefetch it again)"
    if not cache.remove(entry.key, entry.handle):
        return "damaged (in use: not repaired)"
    try:
        resolve_with(entry.handle, settings)
    except HubcacheError as e:
        return f"damaged (repair failed: {e})"
    return "repaired"


def _name(entry: Entry) -> str:
    return entry.handle or (f"({entry.key[:12]}…)" if entry.key else f"({os.path.basename(entry.path)})")
