"""The ``hubcache`` command.

Data goes to stdout, messages and progress bars to stderr. Exit codes: 0 when
everything worked, 1 when a handle or entry failed, 2 for wrong usage or a bad
setting, 130 on Ctrl-C, 141 when stdout was closed early (``| head``).
Every failure is one ``hubcache: <message>`` line; tracebacks only with -v.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import textwrap
import traceback
from typing import Any, Dict, Optional, Sequence, Tuple

from .._version import __version__
from ..errors import ConfigError, HandleError, HubcacheError
from . import environment, fetching, managing
from .output import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    BarSafeHandler,
    Result,
    UsageError,
    error,
    render,
)

MAIN_EPILOG = """\
examples:
  hubcache prefetch -j 4 -f handles.txt --lock hubcache.lock
  hubcache ls --sort size

The options --cache-dir, --json, -q and -v go before or after the command.
Exit codes: 0 done; 1 a handle or entry failed; 2 wrong usage or a bad setting;
130 interrupted (Ctrl-C); 141 stdout closed early (as by `| head`).
Settings come from environment variables: `hubcache env` lists them.
`hubcache COMMAND --help` shows a command's options, examples and --json fields."""

#: The options every command takes, before or after the command's name.
_GLOBAL_OPTIONS: Tuple[Tuple[str, Tuple[str, ...], Dict[str, Any]], ...] = (
    (
        "cache_dir",
        ("--cache-dir",),
        {
            "metavar": "DIR",
            "help": "cache root (default: $TFHUB_CACHE_DIR, else $HUBCACHE_CACHE_DIR, else the user cache dir)",
        },
    ),
    ("json", ("--json",), {"action": "store_true", "help": "print results as JSON (fields: each command's --help)"}),
    (
        "quiet",
        ("-q", "--quiet"),
        {
            "action": "store_true",
            "help": "no progress bars, tables or notes: only warnings, errors and the data on stdout",
        },
    ),
    (
        "verbose",
        ("-v", "--verbose"),
        {"action": "store_true", "help": "log debugging detail, and tracebacks of errors"},
    ),
)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit code."""
    flags = argparse.Namespace(verbose=False)  # known once the arguments are parsed
    try:
        code = _run(argv, flags)
        sys.stdout.flush()  # a closed pipe shows here, where it is handled, not at exit
        return code
    except BrokenPipeError:
        # The reader of our output went away (`hubcache ls | head -1`): stop
        # quietly, as a program killed by SIGPIPE would.
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt as e:
        _restore_sigint()
        return _report("interrupted", e, flags.verbose, EXIT_INTERRUPTED)
    except UsageError as e:
        return _report(str(e), None, False, EXIT_USAGE)
    except (ConfigError, HandleError) as e:
        return _report(str(e), e, flags.verbose, EXIT_USAGE)
    except HubcacheError as e:
        return _report(str(e), e, flags.verbose, EXIT_FAILED)
    except OSError as e:  # the cache root is a file, a disk error, ...
        where = f"{e.filename}: " if e.filename else ""
        return _report(f"{where}{e.strerror or e}", e, flags.verbose, EXIT_FAILED)
    except Exception as e:
        first = (str(e).splitlines() or [""])[0]
        hint = "" if flags.verbose else "; run with -v for the traceback and report it"
        return _report(f"internal error ({type(e).__name__}: {first}){hint}", e, flags.verbose, EXIT_FAILED)


def _run(argv: Optional[Sequence[str]], flags: argparse.Namespace) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version (0), or argparse's usage error (2)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    _merge_global_options(args)
    flags.verbose = args.verbose
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    _setup_logging(args.verbose, args.quiet)
    settings = None
    if args.needs_settings:
        from ..config import load_settings

        settings = load_settings(cache_dir=args.cache_dir, progress=False if args.quiet else None)
    outcome = args.run(args, settings)
    return render(outcome, args.json) if isinstance(outcome, Result) else int(outcome)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hubcache",
        description="Get pre-trained TensorFlow models onto this machine and keep them there.",
        epilog=MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hubcache {__version__}")
    # Before the command: stored under "before_<name>". After it: under <name>,
    # with no default at all (SUPPRESS), so that a subcommand's default never
    # overwrites what was given before the command; _merge_global_options joins them.
    common = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("options of every command (also after it)")
    for name, flags, options in _GLOBAL_OPTIONS:
        group.add_argument(*flags, dest=f"before_{name}", **options)
        common.add_argument(*flags, dest=name, default=argparse.SUPPRESS, **options)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")

    def command(
        name: str,
        run: Any,
        help: str,
        description: str,
        epilog: str,
        needs_settings: bool = True,
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            parents=[common],
            help=help,
            description=textwrap.fill(description, 79),
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(run=run, needs_settings=needs_settings)
        return sub

    fetching.add_commands(command)
    managing.add_commands(command)
    environment.add_commands(command)
    return parser


def _merge_global_options(args: argparse.Namespace) -> None:
    """One value per global option, from either position; a conflict is an error."""
    before = {name: getattr(args, f"before_{name}") for name, _, _ in _GLOBAL_OPTIONS}
    after = {name: getattr(args, name) for name, _, _ in _GLOBAL_OPTIONS if hasattr(args, name)}
    if before["cache_dir"] and after.get("cache_dir") and before["cache_dir"] != after["cache_dir"]:
        raise UsageError("--cache-dir is given twice, with different directories: give it once")
    args.cache_dir = after.get("cache_dir") or before["cache_dir"]
    for name in ("json", "quiet", "verbose"):
        setattr(args, name, bool(before[name] or after.get(name)))
    if args.quiet and args.verbose:
        raise UsageError("-q (quiet) and -v (verbose) contradict each other: give one of them")


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logger = logging.getLogger("hubcache")
    for old in [h for h in logger.handlers if isinstance(h, BarSafeHandler)]:
        logger.removeHandler(old)  # main() called again in one process
    handler = BarSafeHandler()
    handler.setFormatter(logging.Formatter("hubcache: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)


def _report(message: str, exc: Optional[BaseException], verbose: bool, code: int) -> int:
    """The one line of a failure (after its traceback with -v); returns ``code``."""
    try:
        if verbose and exc is not None:
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        error(message)
    except OSError:  # stderr is gone too: the exit code says it
        pass
    return code


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's flush at exit does
    not fail again on what is still buffered (and print a second traceback)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a real file (embedded use)
        pass


def _restore_sigint() -> None:
    """After Ctrl-C, a second one kills at once (no traceback from the
    interpreter's wait for worker threads at exit)."""
    with contextlib.suppress(ValueError, OSError):  # not the main thread
        signal.signal(signal.SIGINT, signal.SIG_DFL)
