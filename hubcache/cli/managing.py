"""``ls``, ``info``, ``rm``, ``prune``, ``verify`` and ``env``: looking after a cache."""

from __future__ import annotations

import argparse
import os
import platform
import shutil
from typing import Any, Dict, List, Optional

from .._version import __version__
from ..api import resolve_with
from ..cache import Cache
from ..config import Settings, parse_size, settings_report
from ..errors import ConfigError, HubcacheError
from ..inventory import (
    DAMAGED,
    INCOMPLETE,
    Entry,
    Removal,
    find,
    format_size,
    layers,
    parse_duration,
    plan_prune,
    removable_leftover,
    scan,
    verify,
)
from .output import EXIT_FAILED, EXIT_OK, EXIT_USAGE, confirm, emit_json, error, table, when

SORT_KEYS = {
    "handle": lambda e: (e.handle or "", e.key),
    "size": lambda e: -e.size,
    "fetched": lambda e: -(e.fetched_at or 0),
    "used": lambda e: -(e.last_used or e.fetched_at or 0),
}


def add_commands(command) -> None:  # type: ignore[no-untyped-def]
    p = command(
        "ls",
        _ls,
        "list what the cache holds",
        "List every entry (and read-only layer entry): handle, size on disk, files, when "
        "fetched, when last used, state (ok, damaged, foreign = made by tensorflow_hub, "
        "incomplete = a download's leftovers).",
    )
    p.add_argument("--sort", choices=sorted(SORT_KEYS), default="handle", help="order (default: handle)")

    p = command("info", _info, "show one handle's cache entry", "Show the cache entry of HANDLE.")
    p.add_argument("handle", metavar="HANDLE")
    p.add_argument("--signatures", action="store_true", help="also load it with TensorFlow and list its signatures")

    p = command(
        "rm",
        _rm,
        "remove handles from the cache",
        "Remove the cache entries of the handles. Entries in use (being downloaded or loaded) are left alone.",
    )
    p.add_argument("handles", nargs="+", metavar="HANDLE")
    _plan_options(p)

    p = command(
        "prune",
        _prune,
        "remove old, surplus, damaged or leftover entries",
        "Remove entries not used for a while, the least recently used ones over a size, damaged "
        "ones, and leftovers of interrupted downloads. Prints the plan and asks first.",
    )
    p.add_argument("--older-than", metavar="AGE", help="entries not used for AGE (30d, 12h, 90m)")
    p.add_argument("--max-size", metavar="SIZE", help="remove least recently used entries until the cache fits SIZE (20G)")
    p.add_argument("--damaged", action="store_true", help="damaged entries")
    p.add_argument("--temp", action="store_true", help="leftovers of downloads whose process is gone")
    _plan_options(p)

    p = command(
        "verify",
        _verify,
        "check entries against what was recorded when they were fetched",
        "Check every file of the entries (all, or the handles') against its recorded size and "
        "CRC-32. Exits 1 if any is damaged.",
    )
    p.add_argument("handles", nargs="*", metavar="HANDLE")
    p.add_argument("--repair", action="store_true", help="download damaged entries again")

    command("env", _env, "show every setting, its value and where it came from", "Show the settings, for bug reports.")


def _plan_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--dry-run", action="store_true", help="only print what would be removed")


def _ls(args: argparse.Namespace, settings: Settings) -> int:
    entries = [e for cache, ro in layers(settings) for e in scan(cache, ro)]
    entries.sort(key=SORT_KEYS[args.sort])
    if args.json:
        emit_json({"cache_dir": settings.cache_dir, "entries": [e.to_json() for e in entries]})
        return EXIT_OK
    if not entries:
        print(f"{settings.cache_dir}: empty")
        return EXIT_OK
    layered = bool(settings.readonly_dirs)
    rows = []
    for e in entries:
        state = e.state + (f" ({e.problem})" if e.state in (DAMAGED, INCOMPLETE) else "")
        row = [_name(e), format_size(e.size), str(e.files), when(e.fetched_at), when(e.last_used), state]
        rows.append(row + ([os.path.dirname(e.path)] if layered else []))
    headers = ["HANDLE", "SIZE", "FILES", "FETCHED", "LAST USED", "STATE"] + (["CACHE"] if layered else [])
    print(table(headers, rows, right=(1, 2)))
    counts = {s: sum(e.state == s for e in entries) for s in sorted({e.state for e in entries})}
    detail = ", ".join(f"{n} {s}" for s, n in counts.items())
    print(f"{len(entries)} entries ({detail}), {format_size(sum(e.size for e in entries))} on disk")
    return EXIT_OK


def _info(args: argparse.Namespace, settings: Settings) -> int:
    entry = _locate(args.handle, settings)
    if entry is None:
        error(f"{args.handle} is not in the cache at {settings.cache_dir}: `hubcache prefetch` it first")
        return EXIT_FAILED
    data = entry.to_json()
    if args.signatures:
        data["signatures"] = _signatures(entry.path)
    if args.json:
        emit_json(data)
    else:
        labels = [("handle", "handle"), ("directory", "path"), ("state", "state"), ("problem", "problem"),
                  ("source", "source_url"), ("sha256", "sha256"), ("files", "files"),
                  ("fetched", "fetched_at"), ("last used", "last_used")]
        for label, key in labels:
            if data.get(key) is not None:
                print(f"{label + ':':11}{data[key]}")
        print(f"{'size:':11}{format_size(entry.size)} on disk")
        if entry.readonly:
            print(f"{'layer:':11}read-only ({os.path.dirname(entry.path)})")
        for name, spec in (data.get("signatures") or {}).items():
            print(f"{'signature:':11}{name}{spec}")
    return EXIT_OK if entry.usable else EXIT_FAILED


def _signatures(path: str) -> Dict[str, str]:
    try:
        import tensorflow as tf
    except ImportError:
        return {"(TensorFlow is not installed)": ""}
    model = tf.saved_model.load(path)
    return {name: str(fn.structured_input_signature) + " -> " + str(fn.structured_outputs)
            for name, fn in model.signatures.items()}


def _locate(handle: str, settings: Settings) -> Optional[Entry]:
    for cache, readonly in layers(settings):
        entry = find(cache, handle, readonly)
        if entry is not None:
            return entry
    return None


def _rm(args: argparse.Namespace, settings: Settings) -> int:
    cache = Cache(settings.cache_dir)
    plan, missing = [], []
    for handle in args.handles:
        entry = find(cache, handle)
        if entry is None:
            missing.append(handle)
        else:
            plan.append(Removal(entry, "asked for"))
    for handle in missing:
        error(f"{handle} is not in the cache at {settings.cache_dir}")
    status = _carry_out(plan, cache, args)
    return EXIT_FAILED if missing and status == EXIT_OK else status


def _prune(args: argparse.Namespace, settings: Settings) -> int:
    if not (args.older_than or args.max_size or args.damaged or args.temp):
        error("prune: say what to remove: --older-than, --max-size, --damaged and/or --temp")
        return EXIT_USAGE
    try:
        older = parse_duration(args.older_than) if args.older_than else None
        max_size = parse_size(args.max_size, "--max-size") if args.max_size else None
    except (ValueError, ConfigError) as e:
        error(f"prune: {e}")
        return EXIT_USAGE
    cache = Cache(settings.cache_dir)
    plan = plan_prune(scan(cache), cache, older_than=older, max_size=max_size, damaged=args.damaged, temp=args.temp)
    return _carry_out(plan, cache, args)


def _carry_out(plan: List[Removal], cache: Cache, args: argparse.Namespace) -> int:
    """Print the plan, confirm, remove; report what was removed or skipped."""
    freed = sum(r.entry.size for r in plan)
    if not args.json:
        if not plan:
            print("nothing to remove")
            return EXIT_OK
        rows = [(_name(r.entry), format_size(r.entry.size), r.reason) for r in plan]
        print(table(("HANDLE", "SIZE", "WHY"), rows, right=(1,)))
        print(f"{len(plan)} to remove, {format_size(freed)}")
    if args.dry_run:
        if args.json:
            emit_json({"dry_run": True, "plan": [_removal_json(r) for r in plan]})
        return EXIT_OK
    if plan and not args.json:
        go = confirm(f"Remove {len(plan)} entries ({format_size(freed)})?", yes=args.yes)
        if go is None:
            return EXIT_USAGE
        if not go:
            print("nothing removed")
            return EXIT_OK
    elif plan and not args.yes:
        error("--json removes nothing without -y (or use --dry-run)")
        return EXIT_USAGE
    removed, skipped = [], []
    for r in plan:
        (removed if _remove(r.entry, cache) else skipped).append(r)
    for r in skipped:
        error(f"{_name(r.entry)} is in use (being downloaded or loaded): left in place")
    if args.json:
        emit_json({"removed": [_removal_json(r) for r in removed], "skipped": [_removal_json(r) for r in skipped],
                   "freed": sum(r.entry.size for r in removed)})
    else:
        print(f"removed {len(removed)}, freed {format_size(sum(r.entry.size for r in removed))}")
    return EXIT_FAILED if skipped else EXIT_OK


def _remove(entry: Entry, cache: Cache) -> bool:
    if entry.state == INCOMPLETE:
        if not removable_leftover(cache, entry):
            return False
        shutil.rmtree(entry.path, ignore_errors=True)
        return True
    return cache.remove(entry.key, entry.handle or entry.key)


def _removal_json(r: Removal) -> Dict[str, Any]:
    return {"handle": r.entry.handle, "key": r.entry.key, "path": r.entry.path, "size": r.entry.size, "reason": r.reason}


def _verify(args: argparse.Namespace, settings: Settings) -> int:
    if args.handles:
        targets = []
        for handle in args.handles:
            entry = _locate(handle, settings)
            if entry is None:
                error(f"{handle} is not in the cache at {settings.cache_dir}")
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
        if not args.json:
            print(f"{_name(entry)}: {outcome}" + (f" ({problem})" if problem else ""))
    if args.json:
        emit_json(results)
    bad = sum(r["result"] not in ("ok", "repaired") for r in results)
    if bad and not args.json:
        error(f"{bad} of {len(results)} entries are damaged" + ("" if args.repair else ": --repair downloads them again"))
    return EXIT_FAILED if bad else EXIT_OK


def _repair(entry: Entry, cache: Cache, settings: Settings) -> str:
    if entry.readonly:
        return "damaged (read-only cache: not repaired)"
    if not entry.handle:
        return "damaged (handle unknown: not repaired)"
    if not cache.remove(entry.key, entry.handle):
        return "damaged (in use: not repaired)"
    try:
        resolve_with(entry.handle, settings)
    except HubcacheError as e:
        return f"damaged (repair failed: {e})"
    return "repaired"


def _env(args: argparse.Namespace, settings: Settings) -> int:
    rows = settings_report(settings, cache_dir_argument=bool(args.cache_dir))
    versions = [("hubcache", __version__), ("python", platform.python_version()), ("platform", platform.platform())]
    if args.json:
        emit_json({"versions": dict(versions), "settings": [{"setting": n, "value": v, "source": s} for n, v, s in rows]})
        return EXIT_OK
    for name, value in versions:
        print(f"{name}: {value}")
    print(table(("SETTING", "VALUE", "FROM"), rows))
    return EXIT_OK


def _name(entry: Entry) -> str:
    return entry.handle or (f"({entry.key[:12]}…)" if entry.key else f"({os.path.basename(entry.path)})")
