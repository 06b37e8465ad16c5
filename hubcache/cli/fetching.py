"""``prefetch``, ``resolve``, ``export`` and ``import``: getting models in and out."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from typing import Any, Dict, List, Optional, Tuple, Union

from ..api import entry_metadata, iter_prefetch, resolve_with
from ..cache import Cache, write_atomic
from ..config import Settings
from ..errors import ConfigError, HubcacheError
from ..handles import parse
from ..inventory import Entry, find, format_size, layers
from ..redaction import redact
from .arguments import Command, download_handles, entry_handles, output_file
from .helptext import EXPORT_EPILOG, IMPORT_EPILOG, PREFETCH_EPILOG, RESOLVE_EPILOG
from .output import EXIT_FAILED, EXIT_OK, Result, UsageError, count_entries, error, say, table
from .progress import total_bar

log = logging.getLogger("hubcache.cli")

_COMMENT = re.compile(r"(^|\s)#.*$")  # '#' after a space: a URL's #fragment stays


def add_commands(command: Command) -> None:
    p = command(
        "prefetch",
        _prefetch,
        "download handles into the cache",
        "Download each handle into the cache. Goes on past a failing handle; exits 1 if any failed.",
        PREFETCH_EPILOG,
    )
    p.add_argument("handles", nargs="*", metavar="HANDLE", help="model handles (remote: URLs, gs://)")
    p.add_argument(
        "-f",
        "--file",
        action="append",
        default=[],
        metavar="FILE",
        help="read handles from FILE, one a line, each optionally followed by sha256=HEX and size=N; "
        "'#' starts a comment; '-' is stdin. A --lock file is such a file",
    )
    p.add_argument("-j", "--jobs", type=int, default=1, metavar="N", help="download N handles at once")
    p.add_argument("--sha256", metavar="HEX", help="the SHA-256 the archive of the (single) HANDLE must have")
    p.add_argument(
        "--lock",
        metavar="FILE",
        help="when every handle succeeded, write FILE: each handle with the SHA-256 and size "
        "of its archive, to verify later with -f FILE --require-hashes",
    )
    p.add_argument(
        "--require-hashes",
        action="store_true",
        help="refuse handles without a SHA-256 (from -f or --sha256); a mismatch fails the handle",
    )
    p.add_argument("--bundle", metavar="FILE", help="when every handle succeeded, also export them to FILE")
    p.add_argument(
        "--to",
        metavar="TARGET",
        help="fill the shared tier TARGET (s3://bucket/prefix, or a directory in the same layout to carry "
        "elsewhere) instead of the cache: each handle's archive and index record",
    )

    p = command(
        "resolve",
        _resolve,
        "print the local directory of a handle, downloading it if needed",
        "Print the local directory of HANDLE, downloading it first if it is not cached.",
        RESOLVE_EPILOG,
    )
    p.add_argument("handle", metavar="HANDLE", help="model handle")
    p.add_argument("--sha256", metavar="HEX", help="the SHA-256 the archive must have")

    p = command(
        "export",
        _export,
        "write cached handles to one bundle file, for an offline machine",
        "Write the cache entries of the handles to one tar file; `hubcache import` reads it.",
        EXPORT_EPILOG,
    )
    p.add_argument("handles", nargs="*", metavar="HANDLE", help="cached model handles")
    p.add_argument("-f", "--file", action="append", default=[], metavar="FILE", help="read handles from FILE")
    p.add_argument("-o", "--output", required=True, metavar="BUNDLE", help="the bundle file to write")

    p = command(
        "import",
        _import,
        "add the entries of bundle files to the cache",
        "Check every file of each bundle against its manifest, then publish its entries. "
        "Entries already present are left as they are.",
        IMPORT_EPILOG,
    )
    p.add_argument("bundles", nargs="+", metavar="BUNDLE", help="bundle files made by `hubcache export`")


def read_handle_file(name: str) -> List[Tuple[str, Optional[str], Optional[int]]]:
    """(handle, sha256 or None, size or None) for each line of a handle or lock file."""
    try:
        if name == "-":
            text = sys.stdin.read()
        else:
            with open(name, encoding="utf-8") as f:
                text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else "it is not UTF-8 text"
        raise ConfigError(f"cannot read the handle file {name}: {why}") from None
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        words = _COMMENT.sub("", line).split()
        if not words:
            continue
        fields = dict(word.partition("=")[::2] for word in words[1:])
        unknown = set(fields) - {"sha256", "size"}
        if unknown:
            raise ConfigError(
                f"{name}:{number}: unknown field {sorted(unknown)[0]!r}: a line is a handle, "
                "optionally followed by sha256=HEX (and size=N)"
            )
        size = fields.get("size")
        if size is not None and not size.isdigit():
            raise ConfigError(f"{name}:{number}: size={size!r} is not a number of bytes")
        entries.append((words[0], fields.get("sha256") or None, int(size) if size else None))
    return entries


def gather_handles(args: argparse.Namespace) -> Tuple[Dict[str, Optional[str]], Dict[str, int]]:
    """({handle: sha256 or None}, {handle: archive size}) from the arguments
    and -f files, in order; sizes come from lock files."""
    pins: Dict[str, Optional[str]] = {h: None for h in args.handles}
    sizes: Dict[str, int] = {}
    for name in args.file:
        for handle, sha256, size in read_handle_file(name):
            pins[handle] = sha256 or pins.get(handle)
            if size is not None:
                sizes[handle] = size
    return pins, sizes


def _prefetch(args: argparse.Namespace, settings: Settings) -> Result:
    download_handles(args.handles)
    pins, sizes = gather_handles(args)
    if not pins:
        raise UsageError("prefetch: no handles given (pass HANDLE... or -f FILE)")
    if args.jobs < 1:
        raise UsageError("prefetch: --jobs takes a number of at least 1")
    if args.sha256:
        if len(pins) != 1:
            raise UsageError(
                "prefetch: --sha256 pins a single handle; for several, put sha256=HEX after each in a -f file"
            )
        pins = {handle: args.sha256 for handle in pins}
    if args.require_hashes:
        unpinned = [redact(h) for h, sha in pins.items() if not sha]
        if unpinned:
            raise UsageError(f"prefetch: --require-hashes: no SHA-256 for {', '.join(unpinned)}")
    if args.lock:
        output_file(args.lock, "--lock", "hubcache.lock")
    if args.bundle:
        output_file(args.bundle, "--bundle")
    if args.to:
        return _seed(args, pins, settings)
    hashes = {h: sha for h, sha in pins.items() if sha}
    bar = total_bar(settings, pins, sizes, args.jobs)
    if bar is not None:
        settings = settings.replace(progress_hook=bar.hook)
    results: Dict[str, Dict[str, Any]] = {}
    started = time.monotonic()
    try:
        for handle, outcome in iter_prefetch(pins, settings, hashes, args.jobs):
            results[handle] = record(handle, outcome)
            results[handle]["seconds"] = round(time.monotonic() - started, 3)
            if isinstance(outcome, HubcacheError):
                log.debug("%s failed", redact(handle), exc_info=outcome)
                error(f"{redact(handle) or repr(handle)}: {outcome}")
            elif not args.json:
                say(f"{redact(handle)} -> {outcome}")
    finally:
        if bar is not None:
            bar.close()
    ordered = [results[h] for h in pins]
    failed = sum(not r["ok"] for r in ordered)
    if len(ordered) > 1 and not args.quiet and not args.json:
        _summary(list(pins), ordered, settings)
    notes = [f"{failed} of {len(ordered)} handles failed"] if failed else []
    for option, write in ((args.lock, _write_lock), (args.bundle, _write_bundle)):
        if option:
            if failed:
                notes.append(f"{option} not written, since handles failed")
            else:
                write(option, list(pins), settings, args.quiet)
    return Result(ordered, None, EXIT_FAILED if failed else EXIT_OK, notes)


def _seed(args: argparse.Namespace, pins: Dict[str, Optional[str]], settings: Settings) -> Result:
    """``prefetch --to``: each handle into the shared tier, through a miss's own code."""
    from ..seed import seed, target_settings

    if args.lock or args.bundle:
        raise UsageError("prefetch: --to fills a shared tier, not the cache: drop --lock and --bundle")
    settings = target_settings(args.to, settings)
    ordered = []
    started = time.monotonic()
    for handle, outcome in seed(pins, settings, args.jobs):
        if isinstance(outcome, HubcacheError):
            log.debug("%s failed", redact(handle), exc_info=outcome)
            error(f"{redact(handle) or repr(handle)}: {outcome}")
            ordered.append({**record(handle, outcome), "seconds": round(time.monotonic() - started, 3)})
            continue
        seconds = round(time.monotonic() - started, 3)
        ordered.append(
            {**record(handle, ""), "path": None, "seconds": seconds, "to": args.to, "sha256": outcome["sha256"]}
        )
        if not args.json:
            say(f"{redact(handle)} -> {args.to} (sha256={outcome['sha256']}, {outcome['size']} bytes)")
    failed = sum(not r["ok"] for r in ordered)
    notes = [f"{failed} of {len(ordered)} handles failed"] if failed else []
    return Result(ordered, None, EXIT_FAILED if failed else EXIT_OK, notes)


def _resolve(args: argparse.Namespace, settings: Settings) -> Result:
    try:
        path = resolve_with(args.handle, settings, args.sha256)
    except HubcacheError as e:
        log.debug("%s failed", redact(args.handle), exc_info=e)
        return Result(record(args.handle, e), None, EXIT_FAILED, [str(e)])
    return Result(record(args.handle, path), path)


def record(handle: str, outcome: Union[str, HubcacheError]) -> Dict[str, Any]:
    """The JSON record of one handle's outcome (fields listed in the epilogs).
    Output is often logged: the handle is shown with its secrets redacted."""
    if isinstance(outcome, HubcacheError):
        return {
            "handle": redact(handle),
            "ok": False,
            "path": None,
            "error": str(outcome),
            "error_type": type(outcome).__name__,
        }
    return {"handle": redact(handle), "ok": True, "path": outcome}


def _summary(handles: List[str], results: List[Dict[str, Any]], settings: Settings) -> None:
    rows = []
    for handle, r in zip(handles, results):
        metadata = entry_metadata(handle, settings) if r["ok"] else None
        size = format_size(metadata["bytes"]) if metadata and "bytes" in metadata else "-"
        rows.append((r["handle"], "ok" if r["ok"] else r["error_type"], size, f"{r['seconds']:.1f} s"))
    say(table(("HANDLE", "RESULT", "ARCHIVE", "DONE AFTER"), rows, right=(2, 3)), sys.stderr)


def _write_lock(path: str, handles: List[str], settings: Settings, quiet: bool) -> None:
    lines = [
        "# hubcache lock file: each handle with the SHA-256 and size of its archive.",
        f"# Verify or fetch exactly these: hubcache prefetch -f {os.path.basename(path)} --require-hashes",
    ]
    for handle in handles:
        metadata = entry_metadata(handle, settings)
        if redact(handle) != handle:  # secrets never reach disk, and a signed URL expires anyway
            why = "its handle carries a secret (a password or a signed query), which is not written"
        elif metadata and metadata.get("sha256"):
            pinned = handle
            if parse(handle).is_latest:  # "latest" is pinned as the version it resolved to
                pinned = metadata["handle"]
                lines.append(f"# {handle}: the latest version when this was written")
            lines.append(f"{pinned} sha256={metadata['sha256']} size={metadata['bytes']}")
            continue
        else:
            why = "no archive hash recorded: a local path, or cached by tensorflow_hub"
        error(f"{redact(handle)} is not pinned in {path}: {why}")
        lines.append(f"# {redact(handle)}  (not pinned: {why})")
    write_atomic(path, "\n".join(lines) + "\n")


def _write_bundle(path: str, handles: List[str], settings: Settings, quiet: bool) -> None:
    found = _find_entries(handles, settings)
    if isinstance(found, str):
        error(f"{path} not written: {found}")
        return
    from ..bundle import export_bundle

    export_bundle(found, path)
    if not quiet:
        say(f"wrote {path}: {count_entries(len(found))}, {format_size(os.path.getsize(path))}", sys.stderr)


def _find_entries(handles: List[str], settings: Settings) -> Union[str, List[Tuple[Entry, Cache]]]:
    """The usable cache entry of each remote handle (local paths, which a
    prefetch -f file may hold, are skipped), or the reason one is missing."""

    found = []
    for handle in handles:
        if not parse(handle).is_remote:
            continue
        for cache, readonly in layers(settings):
            entry = find(cache, handle, readonly)
            if entry is not None and entry.usable:
                found.append((entry, cache))
                break
        else:
            return f"{redact(handle)} is not (validly) cached: prefetch it first"
    return found


def _export(args: argparse.Namespace, settings: Settings) -> Result:
    handles = list(gather_handles(args)[0])
    if not handles:
        raise UsageError("export: no handles given (pass HANDLE... or -f FILE)")
    entry_handles("export", handles)
    output_file(args.output, "-o")
    found = _find_entries(handles, settings)
    if isinstance(found, str):
        return Result(code=EXIT_FAILED, notes=[f"nothing written: {found}"])
    from ..bundle import export_bundle

    try:
        manifest = export_bundle(found, args.output)
    except OSError as e:
        return Result(code=EXIT_FAILED, notes=[f"nothing written: cannot write {args.output} ({e.strerror or e})"])
    size = os.path.getsize(args.output)
    data = {"bundle": args.output, "bytes": size, "handles": [e["handle"] for e in manifest["entries"]]}
    return Result(
        data, None if args.quiet else f"wrote {args.output}: {count_entries(len(found))}, {format_size(size)}"
    )


def _import(args: argparse.Namespace, settings: Settings) -> Result:
    from ..bundle import import_bundle

    cache = Cache(settings.cache_dir)
    limits = settings.limits()
    results, failed = [], 0
    for bundle in args.bundles:
        try:
            for handle, outcome in import_bundle(cache, bundle, lock_timeout=settings.lock_timeout, limits=limits):
                results.append({"bundle": bundle, "handle": handle, "ok": True, "result": outcome})
                if not args.json:
                    say(f"{redact(handle)}: {outcome}")
        except (HubcacheError, OSError) as e:
            failed += 1
            message = str(e) if isinstance(e, HubcacheError) else f"cannot read it ({e.strerror or e})"
            results.append({"bundle": bundle, "ok": False, "error": message, "error_type": type(e).__name__})
            log.debug("%s failed", bundle, exc_info=e)
            error(f"{bundle}: {message}")
    return Result(results, None, EXIT_FAILED if failed else EXIT_OK)
