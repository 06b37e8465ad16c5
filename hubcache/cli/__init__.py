"""The ``hubcache`` command.

Data goes to stdout, messages and progress bars to stderr. Exit codes: 0 when
everything worked, 1 when a handle or entry failed, 2 for wrong usage or settings.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from .._version import __version__
from ..config import load_settings
from ..errors import ConfigError
from . import fetching, managing
from .output import EXIT_USAGE, error


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    _setup_logging(args.verbose, args.quiet)
    try:
        settings = load_settings(cache_dir=args.cache_dir, progress=False if args.quiet else None)
        return int(args.run(args, settings))
    except ConfigError as e:
        error(str(e))
        return EXIT_USAGE
    except KeyboardInterrupt:
        error("interrupted; nothing half-written was left in the cache.")
        return 130


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="cache root (default: $TFHUB_CACHE_DIR, else $HUBCACHE_CACHE_DIR, else the user cache dir)",
    )
    common.add_argument("--json", action="store_true", help="print results as JSON")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars, only warnings and errors")
    common.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    parser = argparse.ArgumentParser(
        prog="hubcache",
        description="Get pre-trained TensorFlow models onto this machine and keep them there.",
        epilog="Settings come from environment variables: `hubcache env` lists them.",
    )
    parser.add_argument("--version", action="version", version=f"hubcache {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def command(name: str, run, help: str, description: str) -> argparse.ArgumentParser:  # type: ignore[no-untyped-def]
        sub = commands.add_parser(name, parents=[common], help=help, description=description)
        sub.set_defaults(run=run)
        return sub

    fetching.add_commands(command)
    managing.add_commands(command)
    return parser


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("hubcache: %(message)s"))
    logger = logging.getLogger("hubcache")
    logger.addHandler(handler)
    logger.setLevel(level)
