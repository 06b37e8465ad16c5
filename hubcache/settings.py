"""The settings a call runs with: :class:`Settings`, and their defaults.

:mod:`hubcache.config` reads them from the environment; the README's
configuration table documents each.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple

from .credentials import KaggleCredentials, kaggle_credentials

if TYPE_CHECKING:
    from .archive import Limits

DEFAULT_TFHUB_ENDPOINT = "https://tfhub.dev"
DEFAULT_KAGGLE_ENDPOINT = "https://www.kaggle.com"
DEFAULT_KAGGLE_API_ENDPOINT = "https://api.kaggle.com"  # the RPC API of kagglehub 1.x
DEFAULT_GCS_ENDPOINT = "https://storage.googleapis.com"
DEFAULT_CN_MIRROR_ENDPOINT = "https://gcs.tensorflow.google.cn"
DEFAULT_TIMEOUT = 30.0
DEFAULT_LOCK_TIMEOUT = 3600.0
DEFAULT_MAX_RETRIES = 5
DEFAULT_BACKOFF = 1.0
DEFAULT_MAX_SIZE = 100 << 30  # bytes extracted from one archive
DEFAULT_MAX_FILES = 1_000_000  # members of one archive
DEFAULT_MAX_RATIO = 250  # extracted bytes per downloaded byte, past MAX_RATIO_FLOOR
# The progress floor: a body slower than this on average over the window is a
# stalled attempt (a server dripping a byte per read never trips the timeout).
# 1 KiB/s over a minute passes any honest link, even a poor mobile one.
DEFAULT_MIN_RATE = 1 << 10  # bytes per second
DEFAULT_MIN_RATE_WINDOW = 60.0  # seconds
# A model's versions change in weeks or months, and a cluster may start
# thousands of processes a day: asking Kaggle once a day keeps "latest" current
# without a request per start (and without meeting its rate limits).
DEFAULT_LATEST_INTERVAL = 86400.0  # seconds
# The shared tier: a remote call that takes longer than this is a failed one
# (then the fetch goes upstream), so a bucket that accepts and never answers
# costs seconds, not the download timeout.
DEFAULT_REMOTE_TIMEOUT = 5.0  # seconds
# How long to wait for another node that holds the lease on a handle (it is
# downloading it) before going upstream too. A dead holder is noticed sooner, when
# its lease expires; this bounds the wait on a live but slow one. A slow holder
# means a slow upstream, where more downloads would not help: 10 minutes is a
# 10 GiB model at 17 MiB/s.
DEFAULT_REMOTE_WAIT = 600.0  # seconds
# How long a lease on a handle lasts unless its holder renews it (every third of
# this, while it downloads). A holder killed mid-download (kill -9, a preempted
# VM) keeps the others waiting this long at most; short enough for a cold start,
# long enough that a busy holder's renewals are not late.
DEFAULT_REMOTE_LEASE = 60.0  # seconds

# The most connections one archive may be fetched over (HUBCACHE_CONNECTIONS).
# Connections are added only while they raise the rate; 16 is aria2c's ceiling,
# and at a CDN's typical 25 MB/s per connection, ~400 MB/s: this machine's
# single-stream extraction rate.
DEFAULT_CONNECTIONS = 16

#: Not compared, and not shown: they are not settings of the environment.
_NOT_COMPARED = frozenset({"progress_hook", "credentials_environ", "cancellation"})


class Settings:
    """Everything a call needs to know about its environment, frozen at call
    time; :meth:`replace` makes a changed copy.

    A plain class, not a dataclass: importing dataclasses (it imports inspect,
    ast and dis) and generating the class cost 7 ms, half the start-up budget
    of a small model's download.
    """

    cache_dir: str
    #: Caches searched after ``cache_dir``, never written (HUBCACHE_READONLY_DIRS).
    readonly_dirs: Tuple[str, ...]
    offline: bool
    #: "COMPRESSED" or "UNCOMPRESSED" (AUTO is read as COMPRESSED, as tensorflow_hub does).
    load_format: str
    tfhub_endpoint: str
    kaggle_endpoint: str
    kaggle_api_endpoint: str
    gcs_endpoint: str
    cn_mirror_endpoint: str
    #: True/False forces the progress bar on/off; None shows it when stderr is a terminal.
    progress: Optional[bool]
    #: Seconds to wait to connect, and between two reads of the body.
    timeout: float
    #: Seconds to wait for another process that is downloading the same handle.
    lock_timeout: float
    #: Failed attempts in a row (no new bytes in between) before giving up.
    max_retries: int
    #: First wait between attempts, in seconds; doubled each time, with jitter.
    backoff: float
    #: Bounds on one archive: bytes extracted, members, and compression ratio (0: no bound).
    max_size: int
    max_files: int
    max_ratio: float
    #: The progress floor: bytes per second on average over ``min_rate_window``
    #: seconds, below which an attempt counts as stalled (0: no floor).
    min_rate: int
    min_rate_window: float
    #: Seconds a resolved "latest" version is used before Kaggle is asked again (0: every time).
    latest_interval: float
    #: The shared tier, normalized to "s3://bucket" or "s3://bucket/prefix" (None: no remote).
    remote: Optional[str]
    #: The S3 endpoint URL (None: the AWS SDK's own, e.g. AWS_ENDPOINT_URL_S3).
    remote_endpoint: Optional[str]
    #: "rw" (read, and upload what this node fetched) or "ro" (read only, never write).
    remote_mode: str
    #: Seconds to wait to connect to the remote, and for each of its answers.
    remote_timeout: float
    #: Seconds to wait for another node's lease on a handle before going upstream (0: no wait).
    remote_wait: float
    #: Seconds a lease lasts unless renewed; a dead holder is taken over after this.
    remote_lease: float
    #: The most connections one archive download may use (1: a single stream).
    connections: int
    #: Not from the environment: told of every download's progress as
    #: (bytes received, bytes announced), e.g. for an aggregate progress bar.
    progress_hook: Optional[Callable[[int, int], None]]
    #: The Kaggle credentials' variables as they were at call time (the secret
    #: itself is read from them, or from kaggle.json, only when a download needs it).
    credentials_environ: Tuple[Tuple[str, str], ...]
    #: Not from the environment: a :class:`hubcache.cancel.Cancellation` that
    #: stops this call's downloads from another thread (Ctrl-C in a parallel prefetch).
    cancellation: Optional[Any]

    def __init__(
        self,
        cache_dir: str,
        readonly_dirs: Tuple[str, ...] = (),
        offline: bool = False,
        load_format: str = "COMPRESSED",
        tfhub_endpoint: str = DEFAULT_TFHUB_ENDPOINT,
        kaggle_endpoint: str = DEFAULT_KAGGLE_ENDPOINT,
        kaggle_api_endpoint: str = DEFAULT_KAGGLE_API_ENDPOINT,
        gcs_endpoint: str = DEFAULT_GCS_ENDPOINT,
        cn_mirror_endpoint: str = DEFAULT_CN_MIRROR_ENDPOINT,
        progress: Optional[bool] = None,
        timeout: float = DEFAULT_TIMEOUT,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        max_size: int = DEFAULT_MAX_SIZE,
        max_files: int = DEFAULT_MAX_FILES,
        max_ratio: float = DEFAULT_MAX_RATIO,
        min_rate: int = DEFAULT_MIN_RATE,
        min_rate_window: float = DEFAULT_MIN_RATE_WINDOW,
        latest_interval: float = DEFAULT_LATEST_INTERVAL,
        remote: Optional[str] = None,
        remote_endpoint: Optional[str] = None,
        remote_mode: str = "rw",
        remote_timeout: float = DEFAULT_REMOTE_TIMEOUT,
        remote_wait: float = DEFAULT_REMOTE_WAIT,
        remote_lease: float = DEFAULT_REMOTE_LEASE,
        connections: int = DEFAULT_CONNECTIONS,
        progress_hook: Optional[Callable[[int, int], None]] = None,
        credentials_environ: Tuple[Tuple[str, str], ...] = (),
        cancellation: Optional[Any] = None,
    ) -> None:
        for name, value in locals().items():  # every parameter is a field
            if name != "self":
                object.__setattr__(self, name, value)

    def replace(self, **changes: Any) -> "Settings":
        """A copy with ``changes``: ``settings.replace(offline=True)``."""
        return Settings(**{**vars(self), **changes})

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Settings are frozen: use settings.replace({name}=...)")

    def __repr__(self) -> str:  # not the hook, the cancellation nor the credentials' variables
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in self._compared().items())})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Settings) and self._compared() == other._compared()

    def __hash__(self) -> int:
        return hash(tuple(self._compared().values()))

    def _compared(self) -> Dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k not in _NOT_COMPARED}

    def show_progress(self) -> bool:
        """Whether to draw progress bars: as configured, else on a terminal."""
        if self.progress is not None:
            return self.progress
        import sys

        return sys.stderr.isatty()

    def limits(self) -> "Limits":
        """The bounds on one archive."""
        from .archive import Limits

        return Limits(self.max_size, self.max_files, self.max_ratio)

    def kaggle_credentials(self) -> "Optional[KaggleCredentials]":
        """The Kaggle credentials configured when these settings were read."""
        return kaggle_credentials(dict(self.credentials_environ))
