"""Settings, read from the environment at call time.

This is the only module that reads ``os.environ``, apart from
:func:`hubcache.layout.warm_root`: the warm path (a cache hit) reads just the
two variables that locate the cache, without importing this module. Every setting has an
environment variable, a default, and a line in the README's configuration
table. ``TFHUB_*`` variables keep the meaning ``tensorflow_hub`` gives them;
hubcache's own are prefixed ``HUBCACHE_``.
"""

from __future__ import annotations

import math
import os
import re
from typing import Mapping, Optional
from urllib.parse import urlsplit

from .credentials import CREDENTIAL_VARIABLES
from .credentials import KaggleCredentials as KaggleCredentials  # (users import them from here)
from .credentials import kaggle_credentials as kaggle_credentials
from .errors import ConfigError
from .layout import CACHE_DIR_VARIABLES, cache_root, configured_root
from .settings import (
    DEFAULT_BACKOFF,
    DEFAULT_CN_MIRROR_ENDPOINT,
    DEFAULT_CONNECTIONS,
    DEFAULT_GCS_ENDPOINT,
    DEFAULT_KAGGLE_API_ENDPOINT,
    DEFAULT_KAGGLE_ENDPOINT,
    DEFAULT_LATEST_INTERVAL,
    DEFAULT_LOCK_TIMEOUT,
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_RATIO,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MAX_SIZE,
    DEFAULT_MIN_RATE,
    DEFAULT_MIN_RATE_WINDOW,
    DEFAULT_REMOTE_LEASE,
    DEFAULT_REMOTE_TIMEOUT,
    DEFAULT_REMOTE_WAIT,
    DEFAULT_TFHUB_ENDPOINT,
    DEFAULT_TIMEOUT,
)
from .settings import Settings as Settings

REMOTE_MODES = ("rw", "ro")

LOAD_FORMATS = ("COMPRESSED", "UNCOMPRESSED", "AUTO")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


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
        remote_lease=_lease(env),
        connections=_connections(env),
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
    ("connections", ("HUBCACHE_CONNECTIONS",)),
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


def _lease(env: Mapping[str, str]) -> float:
    """HUBCACHE_REMOTE_LEASE: a second to a day. Shorter, renewals (every third of
    it) would flood the store; longer, a dead holder would keep the others waiting."""
    value = _positive_float(env, "HUBCACHE_REMOTE_LEASE", DEFAULT_REMOTE_LEASE)
    if not 1 <= value <= 86400:
        raise ConfigError(
            f"HUBCACHE_REMOTE_LEASE={env['HUBCACHE_REMOTE_LEASE']!r} is out of range: give 1 to 86400 seconds."
        )
    return value


#: More connections than this would only load the server: each adds a thread,
#: a socket and a share of the reorder buffer.
MAX_CONNECTIONS = 64


def _connections(env: Mapping[str, str]) -> int:
    """HUBCACHE_CONNECTIONS: 1 (a single stream) to MAX_CONNECTIONS."""
    value = int(_number(env, "HUBCACHE_CONNECTIONS", DEFAULT_CONNECTIONS, integer=True))
    if not 1 <= value <= MAX_CONNECTIONS:
        raise ConfigError(
            f"HUBCACHE_CONNECTIONS={env['HUBCACHE_CONNECTIONS']!r} is out of range: give 1 (one "
            f"connection per download) to {MAX_CONNECTIONS}."
        )
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
