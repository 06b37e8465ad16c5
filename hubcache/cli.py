"""The ``hubcache`` command.

Data goes to stdout, messages and progress bars to stderr. Exit codes: 0 when
everything worked, 1 when a handle failed, 2 for wrong usage or settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ._version import __version__
from .api import entry_metadata, iter_prefetch, resolve_with
from .config import load_settings
from .errors import ConfigError, HubcacheError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_COMMENT = re.compile(r"(^|\s)#.*$")  # '#' after a space: a URL's #fragment stays


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, args.quiet)
    try:
        settings = load_settings(cache_dir=args.cache_dir, progress=False if args.quiet else None)
        return int(args.run(args, settings))
    except ConfigError as e:
        print(f"hubcache: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("hubcache: interrupted; nothing half-written was left in the cache.", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="cache root (default: $TFHUB_CACHE_DIR, else $HUBCACHE_CACHE_DIR, else the user cache dir)",
    )
    common.add_argument("--json", action="store_true", help="print results as JSON")
    common.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars, only warnings and errors"
    )
    common.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")

    parser = argparse.ArgumentParser(
        prog="hubcache",
        description="Get pre-trained TensorFlow models onto this machine and keep them there.",
        epilog="Settings come from environment variables; see the README's configuration table.",
    )
    parser.add_argument("--version", action="version", version=f"hubcache {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    prefetch = commands.add_parser(
        "prefetch",
        parents=[common],
        help="download handles into the cache",
        description="Download each handle into the cache. Goes on past a failing handle; "
        "exits 1 if any failed.",
    )
    prefetch.add_argument("handles", nargs="*", metavar="HANDLE", help="model handles")
    prefetch.add_argument(
        "-f",
        "--file",
        action="append",
        default=[],
        metavar="FILE",
        help="read handles from FILE, one a line, each optionally followed by sha256=HEX; "
        "'#' starts a comment; '-' is stdin. A --lock file is such a file",
    )
    prefetch.add_argument(
        "--sha256", metavar="HEX", help="the SHA-256 the archive of the (single) HANDLE must have"
    )
    prefetch.add_argument(
        "--lock",
        metavar="FILE",
        help="when every handle succeeded, write FILE: each handle with the SHA-256 and size "
        "of its archive, to verify later with -f FILE --require-hashes",
    )
    prefetch.add_argument(
        "--require-hashes",
        action="store_true",
        help="refuse handles without a SHA-256 (from -f or --sha256); a mismatch fails the handle",
    )
    prefetch.set_defaults(run=_prefetch)

    resolve = commands.add_parser(
        "resolve",
        parents=[common],
        help="print the local directory of a handle, downloading it if needed",
        description="Print the local directory of HANDLE, downloading it first if it is not cached.",
    )
    resolve.add_argument("handle", metavar="HANDLE", help="model handle")
    resolve.set_defaults(run=_resolve)
    return parser


def _prefetch(args: argparse.Namespace, settings) -> int:  # type: ignore[no-untyped-def]
    pins: Dict[str, Optional[str]] = {h: None for h in args.handles}
    for name in args.file:
        for handle, sha256 in _read_handle_file(name):
            pins[handle] = sha256 or pins.get(handle)
    if not pins:
        return _usage("no handles given (pass HANDLE... or -f FILE)")
    if args.sha256:
        if len(pins) != 1:
            return _usage("--sha256 pins a single handle; for several, put sha256=HEX after each in a -f file")
        pins = {handle: args.sha256 for handle in pins}
    if args.require_hashes:
        unpinned = [h for h, sha in pins.items() if not sha]
        if unpinned:
            return _usage(f"--require-hashes: no SHA-256 for {', '.join(unpinned)}")
    hashes = {h: sha for h, sha in pins.items() if sha}
    results: List[Dict[str, Any]] = []
    for handle, outcome in iter_prefetch(pins, settings, hashes):
        ok = not isinstance(outcome, HubcacheError)
        results.append(_result(handle, outcome))
        if args.json:
            continue
        if ok:
            print(f"{handle} -> {outcome}", flush=True)
        else:
            print(f"hubcache: {handle}: {outcome}", file=sys.stderr, flush=True)
    failed = sum(not r["ok"] for r in results)
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
    elif failed:
        print(f"hubcache: {failed} of {len(results)} handles failed", file=sys.stderr)
    if args.lock:
        if failed:
            print(f"hubcache: {args.lock} not written, since handles failed", file=sys.stderr)
        else:
            _write_lock(args.lock, [r["handle"] for r in results], settings)
    return EXIT_FAILED if failed else EXIT_OK


def _write_lock(path: str, handles: List[str], settings) -> None:  # type: ignore[no-untyped-def]
    lines = [
        "# hubcache lock file: each handle with the SHA-256 and size of its archive.",
        f"# Verify or fetch exactly these: hubcache prefetch -f {os.path.basename(path)} --require-hashes",
    ]
    for handle in handles:
        metadata = entry_metadata(handle, settings)
        if metadata and metadata.get("sha256"):
            lines.append(f"{handle} sha256={metadata['sha256']} size={metadata['bytes']}")
        else:
            why = "no archive hash recorded: a local path, or cached by tensorflow_hub"
            print(f"hubcache: {handle} is not pinned in {path}: {why}", file=sys.stderr)
            lines.append(f"# {handle}  (not pinned: {why})")
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)


def _usage(message: str) -> int:
    print(f"hubcache prefetch: {message}", file=sys.stderr)
    return EXIT_USAGE


def _resolve(args: argparse.Namespace, settings) -> int:  # type: ignore[no-untyped-def]
    outcome: Union[str, HubcacheError]
    try:
        outcome = resolve_with(args.handle, settings)
    except HubcacheError as e:
        outcome = e
        print(f"hubcache: {e}", file=sys.stderr)
    if args.json:
        json.dump(_result(args.handle, outcome), sys.stdout)
        print()
    elif isinstance(outcome, str):
        print(outcome)
    return EXIT_FAILED if isinstance(outcome, HubcacheError) else EXIT_OK


def _result(handle: str, outcome: Union[str, HubcacheError]) -> Dict[str, Any]:
    """The JSON record of one handle's outcome."""
    if isinstance(outcome, HubcacheError):
        return {"handle": handle, "ok": False, "path": None, "error": str(outcome),
                "error_type": type(outcome).__name__}
    return {"handle": handle, "ok": True, "path": outcome}


def _read_handle_file(name: str) -> List[Tuple[str, Optional[str]]]:
    """(handle, sha256 or None) for each line of a handle or lock file."""
    try:
        if name == "-":
            text = sys.stdin.read()
        else:
            with open(name, encoding="utf-8") as f:
                text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read the handle file {name}: {e.strerror}") from None
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
        entries.append((words[0], fields.get("sha256") or None))
    return entries


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("hubcache: %(message)s"))
    logger = logging.getLogger("hubcache")
    logger.addHandler(handler)
    logger.setLevel(level)
