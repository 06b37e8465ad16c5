"""The exceptions hubcache raises.

Every error is a :class:`HubcacheError`, and each also subclasses the builtin
that matches its cause, so callers can catch either way (as with ``requests``)::

    try:
        path = hubcache.resolve(handle)
    except hubcache.OfflineError:      # or: except ConnectionError
        ...

Messages name the handle and say what to do next.
"""

from __future__ import annotations

from .redaction import redact

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing (2 ms) on the warm path

if TYPE_CHECKING:
    from typing import Optional


class HubcacheError(Exception):
    """Base class of every error raised by hubcache.

    ``handle`` is the handle the failing call was given, when there is one.
    """

    def __init__(self, message: str, *, handle: Optional[str] = None) -> None:
        super().__init__(message)
        self.handle = handle

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(HubcacheError, ValueError):
    """A setting (environment variable or argument) has a value hubcache cannot use."""


class HandleError(HubcacheError, ValueError):
    """The handle is not one of the forms hubcache understands, or is malformed."""


class ModelNotFoundError(HubcacheError, FileNotFoundError):
    """A local-path handle names a file or directory that does not exist."""


class DownloadError(HubcacheError, ConnectionError):
    """The model could not be downloaded: a network failure or an HTTP error.

    ``status`` is the HTTP status code when the server answered, else ``None``;
    ``url`` is the URL that failed (signed query strings are not shown).
    """

    def __init__(
        self,
        message: str,
        *,
        handle: Optional[str] = None,
        url: Optional[str] = None,
        status: Optional[int] = None,
    ) -> None:
        super().__init__(message, handle=handle)
        self.url = url
        self.status = status


class ArchiveError(HubcacheError, ValueError):
    """The downloaded archive is corrupt, truncated, not an archive, or unsafe.

    ``member`` names the archive member that was refused, when there is one.
    Nothing is published when this is raised.
    """

    def __init__(self, message: str, *, handle: Optional[str] = None, member: Optional[str] = None) -> None:
        super().__init__(message, handle=handle)
        self.member = member


class IntegrityError(HubcacheError, ValueError):
    """The download does not match its expected hash (a ``sha256=`` pin, a lock
    file, or the storage server's ``x-goog-hash``). Nothing is published."""


class CacheError(HubcacheError, OSError):
    """The cache directory could not be written (full disk, permissions, ...)."""


class CacheLockTimeout(HubcacheError, TimeoutError):  # noqa: N818 - public name, kept
    """Another process held the entry's lock for longer than ``HUBCACHE_LOCK_TIMEOUT``."""


class OfflineError(HubcacheError, ConnectionError):
    """Offline mode is on and the handle is not (validly) in the cache."""


class RemoteError(HubcacheError, ConnectionError):
    """The shared tier (``HUBCACHE_REMOTE``) could not be used: unreachable, too
    slow (``HUBCACHE_REMOTE_TIMEOUT``), refused (403), failing (5xx), or boto3 is
    missing. The remote only ever saves time, so a fetch warns once and goes upstream.

    ``status`` is the HTTP status code when the store answered, else ``None``;
    ``operation`` names the S3 call that failed (``GetObject``, ...); ``reason``
    says what went wrong, without the advice around it.
    """

    def __init__(
        self,
        message: str,
        *,
        handle: Optional[str] = None,
        status: Optional[int] = None,
        operation: Optional[str] = None,
        reason: Optional[str] = None,
    ) -> None:
        super().__init__(message, handle=handle)
        self.status = status
        self.operation = operation
        self.reason = reason or message


class TensorFlowNotInstalled(HubcacheError, ImportError):  # noqa: N818 - public name, kept
    """:func:`hubcache.load` needs TensorFlow; install ``hubcache[tf]``."""


class NotSupportedError(HubcacheError, AttributeError, NotImplementedError):
    """The asked-for feature is one hubcache does not provide; the message names the alternative.

    Raised for tensorflow_hub names hubcache leaves out (``hubcache.Module``,
    ``hubcache.text_embedding_column``, ...), so ``hasattr`` is False for them,
    and by ``KerasLayer.get_config`` for a layer made from a loaded object
    (a ``NotImplementedError`` there lets ``tf.saved_model.save`` go on without the config).
    """


class PrefetchError(HubcacheError):
    """One or more handles given to :func:`hubcache.prefetch` failed.

    The others were fetched. ``paths`` maps each handle that succeeded to its
    directory; ``errors`` maps each handle that failed to its exception.
    """

    def __init__(self, paths: "dict[str, str]", errors: "dict[str, HubcacheError]") -> None:
        lines = [f"{len(errors)} of {len(paths) + len(errors)} handles failed:"]
        lines += [f"  {redact(handle)}: {error}" for handle, error in errors.items()]
        super().__init__("\n".join(lines))
        self.paths = paths
        self.errors = errors
