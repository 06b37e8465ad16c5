"""Settings, read from the environment at call time.

This is the only module that reads ``os.environ``, apart from
:func:`hubcache.layout.warm_root`: the warm path (a cache hit) reads just the
two variables that locate the cache, without importing this module. Every setting has an
environment variable, a default, and a line in the README's configuration
table. ``TFHUB_*`` variables keep the meaning ``tensorflow_hub`` gives them;
hubcache's own are prefixed ``HUBCACHE_``.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Tuple
from urllib.parse import urlsplit

from .errors import ConfigError
from .layout import CACHE_DIR_VARIABLES, cache_root, configured_root

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
REMOTE_MODES = ("rw", "ro")

LOAD_FORMATS = ("COMPRESSED", "UNCOMPRESSED", "AUTO")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


@dataclass(frozen=True)
class Settings:
    """Everything a call needs to know about its environment, frozen at call time."""

    cache_dir: str
    #: Caches searched after ``cache_dir``, never written (HUBCACHE_READONLY_DIRS).
    readonly_dirs: Tuple[str, ...] = ()
    offline: bool = False
    #: "COMPRESSED" or "UNCOMPRESSED" (AUTO is read as COMPRESSED, as tensorflow_hub does).
    load_format: str = "COMPRESSED"
    tfhub_endpoint: str = DEFAULT_TFHUB_ENDPOINT
    kaggle_endpoint: str = DEFAULT_KAGGLE_ENDPOINT
    kaggle_api_endpoint: str = DEFAULT_KAGGLE_API_ENDPOINT
    gcs_endpoint: str = DEFAULT_GCS_ENDPOINT
    cn_mirror_endpoint: str = DEFAULT_CN_MIRROR_ENDPOINT
    #: True/False forces the progress bar on/off; None shows it when stderr is a terminal.
    progress: Optional[bool] = None
    #: Seconds to wait to connect, and between two reads of the body.
    timeout: float = DEFAULT_TIMEOUT
    #: Seconds to wait for another process that is downloading the same handle.
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    #: Failed attempts in a row (no new bytes in between) before giving up.
    max_retries: int = DEFAULT_MAX_RETRIES
    #: First wait between attempts, in seconds; doubled each time, with jitter.
    backoff: float = DEFAULT_BACKOFF
    #: Bounds on one archive: bytes extracted, members, and compression ratio (0: no bound).
    max_size: int = DEFAULT_MAX_SIZE
    max_files: int = DEFAULT_MAX_FILES
    max_ratio: float = DEFAULT_MAX_RATIO
    #: The progress floor: bytes per second on average over ``min_rate_window``
    #: seconds, below which an attempt counts as stalled (0: no floor).
    min_rate: int = DEFAULT_MIN_RATE
    min_rate_window: float = DEFAULT_MIN_RATE_WINDOW
    #: Seconds a resolved "latest" version is used before Kaggle is asked again (0: every time).
    latest_interval: float = DEFAULT_LATEST_INTERVAL
    #: The shared tier, normalized to "s3://bucket" or "s3://bucket/prefix" (None: no remote).
    remote: Optional[str] = None
    #: The S3 endpoint URL (None: the AWS SDK's own, e.g. AWS_ENDPOINT_URL_S3).
    remote_endpoint: Optional[str] = None
    #: "rw" (read, and upload what this node fetched) or "ro" (read only, never write).
    remote_mode: str = "rw"
    #: Seconds to wait to connect to the remote, and for each of its answers.
    remote_timeout: float = DEFAULT_REMOTE_TIMEOUT
    #: Seconds to wait for another node's lease on a handle before going upstream (0: no wait).
    remote_wait: float = DEFAULT_REMOTE_WAIT
    #: Seconds a lease lasts unless renewed; a dead holder is taken over after this.
    remote_lease: float = DEFAULT_REMOTE_LEASE
    #: Not from the environment: told of every download's progress as
    #: (bytes received, bytes announced), e.g. for an aggregate progress bar.
    progress_hook: Optional[Callable[[int, int], None]] = field(default=None, compare=False, repr=False)
    #: The Kaggle credentials' variables as they were at call time (the secret
    #: itself is read from them, or from kaggle.json, only when a download needs it).
    credentials_environ: Tuple[Tuple[str, str], ...] = field(default=(), compare=False, repr=False)
    #: Not from the environment: a :class:`hubcache.cancel.Cancellation` that
    #: stops this call's downloads from another thread (Ctrl-C in a parallel prefetch).
    cancellation: Optional[Any] = field(default=None, compare=False, repr=False)

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


#: The variables Kaggle credentials are read from (kagglehub's).
CREDENTIAL_VARIABLES = ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR")


def load_settings(
    *,
    cache_dir: Optional[str] = None,
    progress: Optional[bool] = None,
    environ: Optional[Mapping[str, str]] = None,
) -> Settings:
    """Read the settings from ``environ`` (default ``os.environ``).

    ``cache_dir`` and ``progress``, when given, win over the environment.
    """
    env = os.environ if environ is None else environ
    return Settings(
        cache_dir=_cache_dir(cache_dir, env),
        readonly_dirs=tuple(
            os.path.abspath(os.path.expanduser(p))
            for p in env.get("HUBCACHE_READONLY_DIRS", "").split(os.pathsep)
            if p.strip()
        ),
        offline=_bool(env, "HUBCACHE_OFFLINE", False),
        load_format=_load_format(env),
        tfhub_endpoint=_endpoint(env, "HUBCACHE_TFHUB_ENDPOINT", DEFAULT_TFHUB_ENDPOINT),
        kaggle_endpoint=_endpoint(env, "HUBCACHE_KAGGLE_ENDPOINT", DEFAULT_KAGGLE_ENDPOINT),
        kaggle_api_endpoint=_endpoint(env, "HUBCACHE_KAGGLE_API_ENDPOINT", DEFAULT_KAGGLE_API_ENDPOINT),
        gcs_endpoint=_endpoint(env, "HUBCACHE_GCS_ENDPOINT", DEFAULT_GCS_ENDPOINT),
        cn_mirror_endpoint=_endpoint(env, "HUBCACHE_CN_MIRROR_ENDPOINT", DEFAULT_CN_MIRROR_ENDPOINT),
        progress=_progress(progress, env),
        timeout=_positive_float(env, "HUBCACHE_TIMEOUT", DEFAULT_TIMEOUT),
        lock_timeout=_positive_float(env, "HUBCACHE_LOCK_TIMEOUT", DEFAULT_LOCK_TIMEOUT),
        max_retries=int(_number(env, "HUBCACHE_MAX_RETRIES", DEFAULT_MAX_RETRIES, integer=True)),
        backoff=_number(env, "HUBCACHE_BACKOFF", DEFAULT_BACKOFF),
        max_size=_size(env, "HUBCACHE_MAX_SIZE", DEFAULT_MAX_SIZE),
        max_files=int(_number(env, "HUBCACHE_MAX_FILES", DEFAULT_MAX_FILES, integer=True)),
        max_ratio=_number(env, "HUBCACHE_MAX_RATIO", DEFAULT_MAX_RATIO),
        min_rate=_size(env, "HUBCACHE_MIN_RATE", DEFAULT_MIN_RATE, allow_zero=True),
        min_rate_window=_positive_float(env, "HUBCACHE_MIN_RATE_WINDOW", DEFAULT_MIN_RATE_WINDOW),
        latest_interval=_number(env, "HUBCACHE_LATEST_INTERVAL", DEFAULT_LATEST_INTERVAL),
        remote=_remote(env),
        remote_endpoint=_remote_endpoint(env),
        remote_mode=_remote_mode(env),
        remote_timeout=_positive_float(env, "HUBCACHE_REMOTE_TIMEOUT", DEFAULT_REMOTE_TIMEOUT),
        remote_wait=_number(env, "HUBCACHE_REMOTE_WAIT", DEFAULT_REMOTE_WAIT),
        remote_lease=_positive_float(env, "HUBCACHE_REMOTE_LEASE", DEFAULT_REMOTE_LEASE),
        credentials_environ=tuple((name, env[name]) for name in CREDENTIAL_VARIABLES if name in env),
    )


#: Each setting and the variables it is read from, first match wins.
SETTING_VARIABLES = (
    ("cache_dir", CACHE_DIR_VARIABLES),
    ("readonly_dirs", ("HUBCACHE_READONLY_DIRS",)),
    ("offline", ("HUBCACHE_OFFLINE",)),
    ("load_format", ("TFHUB_MODEL_LOAD_FORMAT",)),
    ("progress", ("HUBCACHE_DISABLE_PROGRESS", "TFHUB_DOWNLOAD_PROGRESS")),
    ("tfhub_endpoint", ("HUBCACHE_TFHUB_ENDPOINT",)),
    ("kaggle_endpoint", ("HUBCACHE_KAGGLE_ENDPOINT",)),
    ("kaggle_api_endpoint", ("HUBCACHE_KAGGLE_API_ENDPOINT",)),
    ("gcs_endpoint", ("HUBCACHE_GCS_ENDPOINT",)),
    ("cn_mirror_endpoint", ("HUBCACHE_CN_MIRROR_ENDPOINT",)),
    ("timeout", ("HUBCACHE_TIMEOUT",)),
    ("lock_timeout", ("HUBCACHE_LOCK_TIMEOUT",)),
    ("max_retries", ("HUBCACHE_MAX_RETRIES",)),
    ("backoff", ("HUBCACHE_BACKOFF",)),
    ("max_size", ("HUBCACHE_MAX_SIZE",)),
    ("max_files", ("HUBCACHE_MAX_FILES",)),
    ("max_ratio", ("HUBCACHE_MAX_RATIO",)),
    ("min_rate", ("HUBCACHE_MIN_RATE",)),
    ("min_rate_window", ("HUBCACHE_MIN_RATE_WINDOW",)),
    ("latest_interval", ("HUBCACHE_LATEST_INTERVAL",)),
    ("remote", ("HUBCACHE_REMOTE",)),
    ("remote_endpoint", ("HUBCACHE_REMOTE_ENDPOINT",)),
    ("remote_mode", ("HUBCACHE_REMOTE_MODE",)),
    ("remote_timeout", ("HUBCACHE_REMOTE_TIMEOUT",)),
    ("remote_wait", ("HUBCACHE_REMOTE_WAIT",)),
    ("remote_lease", ("HUBCACHE_REMOTE_LEASE",)),
)


def _cache_dir(override: Optional[str], env: Mapping[str, str]) -> str:
    return cache_root(configured_root(override, env) or None)


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a yes/no value: use 1 or 0 (or true/false).")


def _progress(override: Optional[bool], env: Mapping[str, str]) -> Optional[bool]:
    if override is not None:
        return override
    if _bool(env, "HUBCACHE_DISABLE_PROGRESS", False):
        return False
    # tensorflow_hub's switch: any value but "0", "false" or "" turns the bar on.
    raw = env.get("TFHUB_DOWNLOAD_PROGRESS")
    if raw is not None:
        return raw.strip().lower() not in ("0", "false", "")
    return None


def _load_format(env: Mapping[str, str]) -> str:
    raw = env.get("TFHUB_MODEL_LOAD_FORMAT", "")
    value = raw.strip().upper() or "COMPRESSED"
    if value not in LOAD_FORMATS:
        raise ConfigError(
            f"TFHUB_MODEL_LOAD_FORMAT={raw!r} is not a load format: use one of "
            f"{', '.join(LOAD_FORMATS)} (case does not matter), or unset it."
        )
    return "COMPRESSED" if value == "AUTO" else value


def _endpoint(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
        raise ConfigError(f"{name}={raw!r} is not an endpoint: give an http(s) URL without a query, like {default}.")
    return raw.rstrip("/")


def _remote(env: Mapping[str, str]) -> Optional[str]:
    """HUBCACHE_REMOTE as "s3://bucket" or "s3://bucket/prefix" (no slash at either end of the prefix)."""
    raw = env.get("HUBCACHE_REMOTE", "").strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    bucket, prefix = parts.netloc, parts.path.strip("/")
    problem = None
    if parts.scheme.lower() != "s3":
        problem = "only s3:// is supported"
    elif not bucket:
        problem = "the bucket is missing"
    elif not _BUCKET.match(bucket):
        problem = f"{bucket!r} is not a bucket name (3-63 letters, digits, '.', '-' or '_', no user:password@ or port)"
    elif parts.query or parts.fragment:
        problem = "it has a query or fragment"
    elif any(segment in ("", ".", "..") for segment in prefix.split("/")) and prefix:
        problem = "its prefix has an empty, '.' or '..' segment"
    if problem:
        raise ConfigError(
            f"HUBCACHE_REMOTE={raw!r} is not a shared tier: {problem}. "
            "Give s3://bucket or s3://bucket/prefix (the endpoint goes in HUBCACHE_REMOTE_ENDPOINT), or unset it."
        )
    return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"


_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]$")


def _remote_endpoint(env: Mapping[str, str]) -> Optional[str]:
    raw = env.get("HUBCACHE_REMOTE_ENDPOINT", "").strip()
    if not raw:
        return None  # the AWS SDK's own: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, a profile's, or AWS's
    return _endpoint(env, "HUBCACHE_REMOTE_ENDPOINT", "")


def _remote_mode(env: Mapping[str, str]) -> str:
    raw = env.get("HUBCACHE_REMOTE_MODE", "")
    value = raw.strip().lower() or "rw"
    if value not in REMOTE_MODES:
        raise ConfigError(
            f"HUBCACHE_REMOTE_MODE={raw!r} is not a mode: use rw (read, and upload what this "
            "machine downloads) or ro (read only), or unset it."
        )
    return value


def _positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{name}={raw!r} must be a positive, finite number of seconds.")
    return value


def _number(env: Mapping[str, str], name: str, default: float, integer: bool = False) -> float:
    """A number >= 0 (0 where allowed means "none"/"off")."""
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = -1
    if not (value >= 0 and math.isfinite(value)):  # NaN fails every comparison
        kind = "whole number" if integer else "number"
        raise ConfigError(f"{name}={raw!r} must be a finite {kind} >= 0 (0: no bound).")
    return value


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _size(env: Mapping[str, str], name: str, default: int, allow_zero: bool = False) -> int:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    return parse_size(raw, name, allow_zero)


def parse_size(raw: str, name: str, allow_zero: bool = False) -> int:
    """A byte count, with an optional K/M/G/T suffix (powers of 1024): "20G"."""
    text = raw.strip().upper()
    for suffix in ("B", "I"):  # 20GiB, 20GB, 20G
        if text.endswith(suffix):
            text = text[:-1]
    unit = text[-1:] if text[-1:] in _SIZE_UNITS else ""
    try:
        number = float(text[: len(text) - len(unit)]) * _SIZE_UNITS[unit]
        value = int(number) if math.isfinite(number) else -1  # 1e308T overflows to inf
    except ValueError:
        value = -1
    if value < 0 or (value == 0 and not allow_zero):
        zero = " (0: no bound)" if allow_zero else ""
        raise ConfigError(f"{name}={raw!r} must be a finite size such as 500M or 20G{zero}.")
    return value


class KaggleCredentials:
    """An ``Authorization`` header value for Kaggle, and where it came from.

    The secret never appears in ``repr``/``str``, so it cannot leak into logs.
    """

    __slots__ = ("authorization", "source")

    def __init__(self, authorization: str, source: str) -> None:
        self.authorization = authorization
        self.source = source

    def __repr__(self) -> str:
        return f"KaggleCredentials(from {self.source})"

    __str__ = __repr__


def kaggle_credentials(environ: Optional[Mapping[str, str]] = None) -> Optional[KaggleCredentials]:
    """Find Kaggle credentials, in the order kagglehub looks for them.

    ``KAGGLE_API_TOKEN`` (Bearer), then ``KAGGLE_USERNAME`` + ``KAGGLE_KEY``
    (Basic), then ``kaggle.json`` in ``KAGGLE_CONFIG_DIR`` or ``~/.kaggle``.
    Returns None when there are none (public models need none).
    """
    env = os.environ if environ is None else environ
    token = env.get("KAGGLE_API_TOKEN", "").strip()
    if token:
        return KaggleCredentials(f"Bearer {token}", "KAGGLE_API_TOKEN")
    user, key = env.get("KAGGLE_USERNAME", "").strip(), env.get("KAGGLE_KEY", "").strip()
    if user and key:
        return KaggleCredentials(_basic(user, key), "KAGGLE_USERNAME/KAGGLE_KEY")
    config_dir = env.get("KAGGLE_CONFIG_DIR") or os.path.join(os.path.expanduser("~"), ".kaggle")
    path = os.path.join(config_dir, "kaggle.json")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"Kaggle credentials file {path} could not be read ({type(e).__name__}): "
            'fix it to hold {"username": ..., "key": ...} or remove it.'
        ) from None
    if not (isinstance(data, dict) and data.get("username") and data.get("key")):
        raise ConfigError(
            f'Kaggle credentials file {path} lacks "username" and "key": '
            "download a fresh one from your Kaggle account settings."
        )
    return KaggleCredentials(_basic(str(data["username"]), str(data["key"])), path)


def _basic(user: str, key: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode("ascii")
