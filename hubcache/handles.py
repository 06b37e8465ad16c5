"""Parsing handles: what the user wrote -> a :class:`Handle` with a kind.

Parsing is pure: it touches neither the network nor the filesystem. The cache
key is the SHA-1 of the handle exactly as written, as tensorflow_hub computes
it, so both tools share cache entries (a trailing slash is another entry).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Tuple
from urllib.parse import unquote, urlsplit

from .errors import HandleError

LOCAL = "local"
TFHUB = "tfhub"
KAGGLE = "kaggle"
TFHUB_CN = "tfhub-cn"
GCS = "gcs"
URL = "url"

TFHUB_HOSTS = frozenset({"tfhub.dev", "www.tfhub.dev"})
KAGGLE_HOSTS = frozenset({"www.kaggle.com", "kaggle.com"})
TFHUB_CN_HOST = "hub.tensorflow.google.cn"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")

ACCEPTED_FORMS = """\
  - a local directory: /models/m, ./m, ~/m, file:///models/m
  - tfhub.dev: https://tfhub.dev/<publisher>/<model>/<version>
  - Kaggle: https://www.kaggle.com/models/<owner>/<model>/<framework>/<variation>/<version>
  - the China mirror: https://hub.tensorflow.google.cn/<publisher>/<model>/<version>
  - Google Cloud Storage: gs://<bucket>/<path>.tar.gz (or .tgz, .tar)
  - any http(s) URL of a .tar or .tar.gz archive"""

_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass(frozen=True)
class Handle:
    """A parsed handle.

    ``location`` depends on ``kind``: the filesystem path (local), the URL path
    without trailing slash (tfhub, kaggle, tfhub-cn), ``bucket/object`` (gcs),
    or the whole URL (url). ``query`` is the query string the user wrote.
    ``kaggle`` holds (owner, model, framework, variation, version) for Kaggle.
    """

    raw: str
    kind: str
    location: str
    query: str = ""
    kaggle: Tuple[str, ...] = ()

    @property
    def cache_key(self) -> str:
        """The cache entry name: 40 hex chars of SHA-1 of the handle as written."""
        return cache_key(self.raw)

    @property
    def is_remote(self) -> bool:
        return self.kind != LOCAL


def cache_key(raw: str) -> str:
    """SHA-1 hex of ``raw``: the directory tensorflow_hub (and hubcache) cache it in."""
    return hashlib.sha1(raw.encode("utf8")).hexdigest()


def parse(raw: str) -> Handle:
    """Parse a handle string. Raises :class:`HandleError` for unknown or malformed forms.

    >>> parse("https://tfhub.dev/google/nnlm-en-dim128/2").kind
    'tfhub'
    >>> parse("/models/nnlm").kind
    'local'
    """
    if not isinstance(raw, str):
        raise HandleError(f"a handle is a string, not {type(raw).__name__}: {raw!r}.")
    if not raw or raw.strip() != raw:
        raise HandleError(
            f"handle {raw!r} is empty or has surrounding white space: "
            "pass the handle without spaces or newlines.",
            handle=raw,
        )
    scheme_match = _SCHEME.match(raw)
    if not scheme_match or _WINDOWS_DRIVE.match(raw):
        return Handle(raw, LOCAL, os.path.abspath(os.path.expanduser(raw)))
    scheme = scheme_match.group(1).lower()
    if scheme == "file":
        return _parse_file_url(raw)
    if scheme == "gs":
        return _parse_gcs(raw)
    if scheme in ("http", "https"):
        return _parse_http(raw)
    raise HandleError(
        f"handle {raw!r} has the scheme {scheme}://, which hubcache does not fetch. "
        f"Accepted forms:\n{ACCEPTED_FORMS}",
        handle=raw,
    )


def _parse_file_url(raw: str) -> Handle:
    parts = urlsplit(raw)
    if parts.netloc not in ("", "localhost"):
        raise HandleError(
            f"handle {raw!r} names the remote host {parts.netloc!r}: file:// URLs must be "
            "local (file:///path or file://localhost/path).",
            handle=raw,
        )
    path = unquote(parts.path)
    if os.name == "nt" and _WINDOWS_DRIVE.match(path[1:]):
        path = path[1:]  # file:///C:/models -> C:/models
    return Handle(raw, LOCAL, os.path.abspath(path))


def _parse_gcs(raw: str) -> Handle:
    bucket, _, obj = raw[len("gs://") :].partition("/")
    if not bucket or not obj.lower().endswith(ARCHIVE_SUFFIXES):
        raise HandleError(
            f"handle {raw!r} is not a gs:// archive: hubcache fetches gs://<bucket>/<path> "
            "ending in .tar.gz, .tgz or .tar (public objects, over HTTPS). For a SavedModel "
            "directory on GCS, call tf.saved_model.load on it directly.",
            handle=raw,
        )
    return Handle(raw, GCS, f"{bucket}/{obj}")


def _parse_http(raw: str) -> Handle:
    parts = urlsplit(raw)
    host = (parts.hostname or "").lower()
    if not host:
        raise HandleError(f"handle {raw!r} is a URL without a host.", handle=raw)
    segments = [s for s in parts.path.split("/") if s]
    path = "/" + "/".join(segments)
    if host in TFHUB_HOSTS:
        if len(segments) < 3 or not segments[-1].isdigit():
            raise HandleError(
                f"handle {raw!r} is not a tfhub.dev model: it should look like "
                "https://tfhub.dev/<publisher>/<model>/<version>, the version a number.",
                handle=raw,
            )
        return Handle(raw, TFHUB, path, parts.query)
    if host in KAGGLE_HOSTS:
        return Handle(raw, KAGGLE, path, parts.query, _kaggle_parts(raw, segments))
    if host == TFHUB_CN_HOST:
        if not segments:
            raise HandleError(
                f"handle {raw!r} names no model: use "
                f"https://{TFHUB_CN_HOST}/<publisher>/<model>/<version>.",
                handle=raw,
            )
        return Handle(raw, TFHUB_CN, path, parts.query)
    return Handle(raw, URL, raw, parts.query)


def _kaggle_parts(raw: str, segments: "list[str]") -> Tuple[str, ...]:
    """(owner, model, framework, variation, version) from a Kaggle model URL path."""
    parts: Tuple[str, ...] = ()
    if segments[:1] == ["models"]:
        rest = [unquote(s) for s in segments[1:]]
        if len(rest) == 5:
            parts = tuple(rest)
        elif len(rest) == 8 and (rest[2], rest[4], rest[6]) == (
            "frameworks",
            "variations",
            "versions",
        ):
            parts = (rest[0], rest[1], rest[3], rest[5], rest[7])
    if not parts or not parts[4].isdigit():
        raise HandleError(
            f"handle {raw!r} is not a Kaggle model version: it should look like "
            "https://www.kaggle.com/models/<owner>/<model>/<framework>/<variation>/<version> "
            "or .../models/<owner>/<model>/frameworks/<framework>/variations/<variation>/"
            "versions/<version>, the version a number.",
            handle=raw,
        )
    return parts


def suggest_remote(raw: str) -> str:
    """A hint for a local path that does not exist but looks like a model id."""
    segments = raw.strip("/").split("/")
    if len(segments) == 3 and segments[2].isdigit():
        return f" Did you mean https://tfhub.dev/{raw.strip('/')} ?"
    if len(segments) == 5 and segments[4].isdigit():
        return f" Did you mean https://www.kaggle.com/models/{raw.strip('/')} ?"
    return ""
