"""Checks of the command's arguments, made before anything is done.

A command that acts on cache entries checks every handle first, so that one
bad argument fails the whole command (exit 2) before anything is removed or
written: ``hubcache rm -y <cached> ./typo`` removes nothing.
"""

from __future__ import annotations

import argparse
import os
from typing import Callable, Iterable

from ..errors import HandleError
from ..handles import parse
from ..redaction import redact
from .output import UsageError

#: What a module's ``add_commands`` is given: it adds a subcommand (name, handler,
#: help, description, epilog[, needs_settings]) and returns its parser.
Command = Callable[..., argparse.ArgumentParser]


def entry_handles(command: str, handles: Iterable[str]) -> None:
    """Raise :class:`UsageError` unless every handle is a well-formed remote
    handle, the only kind that has a cache entry."""
    for handle in handles:
        try:
            parsed = parse(handle)
        except HandleError as e:
            raise UsageError(f"{command}: {e}") from None
        if not parsed.is_remote:
            raise UsageError(
                f"{command}: {redact(handle)!r} is a local path, not a cached handle: local models are "
                "used where they are and have no cache entry. Give the URL it was fetched under "
                "(`hubcache ls -q` lists them)."
            )


def _local_archive(path: str) -> bool:
    from ..local import is_archive

    return is_archive(path)


def download_handles(handles: Iterable[str]) -> None:
    """``prefetch``'s HANDLE arguments must be remote: a local path there is
    almost always a handle file given without ``-f``."""
    for handle in handles:
        try:
            parsed = parse(handle)
        except HandleError:
            continue  # fails as that handle's outcome, like any handle that cannot be fetched
        if parsed.is_remote or _local_archive(parsed.location):
            continue
        hint = ""
        if os.path.isfile(parsed.location):
            hint = f" Did you mean -f {handle} (read handles from that file)?"
        raise UsageError(
            f"prefetch: {redact(handle)!r} is a local path: prefetch downloads remote handles into the "
            f"cache, and a local model is used where it is.{hint}"
        )


def output_file(path: str, option: str, example: str = "models.tar") -> None:
    """Raise :class:`UsageError` if the file ``path`` (given with ``option``)
    could not be written: a directory, or in a directory that does not exist.
    Checked before the work, not after it."""
    if not path:
        raise UsageError(f"{option} needs a file name")
    if os.path.isdir(path):
        raise UsageError(f"{option} {path}: is a directory; give a file name, such as {os.path.join(path, example)}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"{option} {path}: the directory {parent} does not exist")
