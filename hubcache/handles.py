"""Parsing handles: what the user wrote -> a :class:`Handle` with a kind.

Parsing is pure: it touches neither the network nor the filesystem. The cache
key is the SHA-1 of the handle exactly as written, as tensorflow_hub computes
it, so both tools share cache entries (a trailing slash is another entry).
"""

from __future__ import annotations

import os

from .errors import HandleError

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing (2 ms) on the warm path

try:  # the interpreter's built-in SHA-1: importing hashlib loads OpenSSL (~4 ms)
    from _sha1 import sha1 as _sha1
except ImportError:  # pragma: no cover - interpreters without it
    from hashlib import sha1 as _sha1

if TYPE_CHECKING:
    from typing import List, Optional, Tuple

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

_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")


def cache_key(raw: str) -> str:
    """SHA-1 hex of ``raw``: the directory tensorflow_hub (and hubcache) cache it in."""
    digest: str = _sha1(raw.encode("utf8")).hexdigest()
    return digest


class Handle:
    """A parsed handle (immutable).

    ``location`` depends on ``kind``: the filesystem path (local), the URL path
    without trailing slash (tfhub, kaggle, tfhub-cn), ``bucket/object`` (gcs),
    or the whole URL (url). ``query`` is the query string the user wrote.
    ``kaggle`` holds (owner, model, framework, variation, version) for Kaggle.
    ``cache_key`` is the cache entry's name: the SHA-1 hex of ``raw``.
    """

    __slots__ = ("raw", "kind", "location", "query", "kaggle", "cache_key")

    def __init__(self, raw: str, kind: str, location: str, query: str = "", kaggle: "Tuple[str, ...]" = ()) -> None:
        self.raw = raw
        self.kind = kind
        self.location = location
        self.query = query
        self.kaggle = kaggle
        self.cache_key = cache_key(raw) if kind != LOCAL else ""

    @property
    def is_remote(self) -> bool:
        return self.kind != LOCAL

    @property
    def shown(self) -> str:
        """The handle as it may be displayed or stored: see :func:`redact`."""
        return redact(self.raw)

    def __repr__(self) -> str:
        return f"Handle({self.shown!r}, kind={self.kind!r})"


#: Query or fragment parameters whose names contain one of these may carry a
#: secret (X-Amz-Signature, X-Goog-Credential, sig, token, api_key, Policy, ...).
_SECRET_PARAM_WORDS = (
    "sig",
    "token",
    "key",
    "secret",
    "pass",
    "pwd",
    "credential",
    "auth",
    "session",
    "policy",
    "code",
)
REDACTED = "***"


def redact(raw: str) -> str:
    """``raw`` as it may be shown or stored: a URL's user information and the
    values of query and fragment parameters that may be secrets become ``***``.

    The cache key stays the SHA-1 of ``raw`` itself (tensorflow_hub's name);
    this form is what goes into metadata, descriptors, logs, messages and output.

    >>> redact("https://me:hunter2@host/m.tar.gz?X-Amz-Signature=abc&v=2")
    'https://***@host/m.tar.gz?X-Amz-Signature=***&v=2'
    """
    scheme, sep, rest = raw.partition("://")
    if not sep:
        return raw
    end = len(rest)
    for stop in "/?#":
        found = rest.find(stop)
        if found != -1:
            end = min(end, found)
    authority, rest = rest[:end], rest[end:]
    if "@" in authority:
        authority = REDACTED + "@" + authority.rpartition("@")[2]
    rest, hash_, fragment = rest.partition("#")
    path, question, query = rest.partition("?")
    return f"{scheme}://{authority}{path}{question}{_redact_params(query)}{hash_}{_redact_params(fragment)}"


def redact_text(text: str) -> str:
    """:func:`redact` for a URL, or for a request path with a query (as
    ``/m.tar.gz?sig=...`` in a log line)."""
    if "://" in text:
        return redact(text)
    path, question, query = text.partition("?")
    return path + question + _redact_params(query) if question else text


def _redact_params(text: str) -> str:
    if not text:
        return text
    out = []
    for param in text.split("&"):
        name, eq, _ = param.partition("=")
        lowered = name.lower()
        if eq and any(word in lowered for word in _SECRET_PARAM_WORDS):
            param = f"{name}={REDACTED}"
        out.append(param)
    return "&".join(out)


def requires_saved_model(handle: Handle) -> bool:
    """Whether a cache entry for ``handle`` must hold a SavedModel (plain archives need not)."""
    return handle.kind in (TFHUB, KAGGLE, TFHUB_CN)


def saved_model_required(raw: "Optional[str]") -> bool:
    """:func:`requires_saved_model` of a handle read back from a cache or a bundle
    (possibly redacted, or none): False when it does not parse."""
    if not raw:
        return False
    try:
        return requires_saved_model(parse(raw))
    except HandleError:
        return False


def parse(raw: str) -> Handle:
    """Parse a handle string. Raises :class:`HandleError` for unknown or malformed forms.

    >>> parse("https://tfhub.dev/google/nnlm-en-dim128/2").kind
    'tfhub'
    >>> parse("/models/nnlm").kind
    'local'
    """
    if not isinstance(raw, str):
        raise HandleError(f"a handle is a string, not {type(raw).__name__}.")
    if not raw or raw.strip() != raw:
        raise HandleError(
            f"handle {redact(raw)!r} is empty or has surrounding white space: "
            "pass the handle without spaces or newlines.",
            handle=redact(raw),
        )
    scheme = _scheme(raw)
    if not scheme or _is_windows_drive(raw):
        return Handle(raw, LOCAL, os.path.abspath(os.path.expanduser(raw)))
    if scheme == "file":
        return _parse_file_url(raw)
    if scheme == "gs":
        return _parse_gcs(raw)
    if scheme in ("http", "https"):
        return _parse_http(raw)
    raise HandleError(
        f"handle {redact(raw)!r} has the scheme {scheme}://, which hubcache does not fetch. "
        f"Accepted forms:\n{ACCEPTED_FORMS}",
        handle=redact(raw),
    )


def _scheme(raw: str) -> str:
    """The lower-case scheme of ``scheme://...``, or "" if ``raw`` has none."""
    scheme, sep, _ = raw.partition("://")
    if not sep or not scheme or not scheme[0].isalpha() or not set(scheme) <= _SCHEME_CHARS:
        return ""
    return scheme.lower()


def _is_windows_drive(text: str) -> bool:
    return len(text) > 2 and text[0].isalpha() and text[1] == ":" and text[2] in "\\/"


def _split(url: str) -> "Tuple[str, str, str]":
    """(netloc, path, query) of ``scheme://netloc/path?query#fragment``."""
    rest = url.partition("://")[2].partition("#")[0]
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    return netloc, slash + path, query


def _host_and_port(netloc: str) -> "Tuple[str, str]":
    """(lower-case host, port text) of ``[user@]host[:port]``."""
    host = netloc.rpartition("@")[2]
    if host.startswith("["):  # [IPv6]:port
        inside, bracket, after = host[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            return "", ""  # an unclosed or malformed literal: no host
        return inside.lower(), after[1:]
    name, _, port = host.partition(":")
    return name.lower(), port


def _parse_file_url(raw: str) -> Handle:
    from urllib.parse import unquote

    netloc, path, _ = _split(raw)
    if netloc.lower() not in ("", "localhost"):
        raise HandleError(
            f"handle {redact(raw)!r} names the remote host {redact('x://' + netloc)[4:]!r}: file:// URLs must be "
            "local (file:///path or file://localhost/path).",
            handle=redact(raw),
        )
    path = unquote(path)
    if not path:  # file:// and file://localhost: no path at all
        raise HandleError(
            f"handle {redact(raw)!r} names no path (it would mean the current directory): write "
            "file:///absolute/path/to/model.",
            handle=redact(raw),
        )
    if os.name == "nt" and _is_windows_drive(path[1:]):
        path = path[1:]  # file:///C:/models -> C:/models
    return Handle(raw, LOCAL, os.path.abspath(path))


def _parse_gcs(raw: str) -> Handle:
    bucket, _, obj = raw[len("gs://") :].partition("/")
    if not bucket or not obj.lower().endswith(ARCHIVE_SUFFIXES):
        raise HandleError(
            f"handle {redact(raw)!r} is not a gs:// archive: hubcache fetches gs://<bucket>/<path> "
            "ending in .tar.gz, .tgz or .tar (public objects, over HTTPS). For a SavedModel "
            "directory on GCS, call tf.saved_model.load on it directly.",
            handle=redact(raw),
        )
    return Handle(raw, GCS, f"{bucket}/{obj}")


def _parse_http(raw: str) -> Handle:
    netloc, url_path, query = _split(raw)
    host, port = _host_and_port(netloc)
    shown = redact(raw)
    if not host:
        raise HandleError(f"handle {shown!r} is a URL without a host.", handle=shown)
    if port and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise HandleError(
            f"handle {shown!r} has the port {port!r}: a port is a number from 1 to 65535.",
            handle=shown,
        )
    segments = [s for s in url_path.split("/") if s]
    path = "/" + "/".join(segments)
    if host in TFHUB_HOSTS:
        if len(segments) < 3 or not segments[-1].isdigit():
            raise HandleError(
                f"handle {redact(raw)!r} is not a tfhub.dev model: it should look like "
                "https://tfhub.dev/<publisher>/<model>/<version>, the version a number.",
                handle=redact(raw),
            )
        return Handle(raw, TFHUB, path, query)
    if host in KAGGLE_HOSTS:
        return Handle(raw, KAGGLE, path, query, _kaggle_parts(raw, segments))
    if host == TFHUB_CN_HOST:
        if not segments:
            raise HandleError(
                f"handle {redact(raw)!r} names no model: use https://{TFHUB_CN_HOST}/<publisher>/<model>/<version>.",
                handle=redact(raw),
            )
        return Handle(raw, TFHUB_CN, path, query)
    return Handle(raw, URL, raw, query)


def _kaggle_parts(raw: str, segments: "List[str]") -> "Tuple[str, ...]":
    """(owner, model, framework, variation, version) from a Kaggle model URL path."""
    from urllib.parse import unquote

    parts: "Tuple[str, ...]" = ()
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
            f"handle {redact(raw)!r} is not a Kaggle model version: it should look like "
            "https://www.kaggle.com/models/<owner>/<model>/<framework>/<variation>/<version> "
            "or .../models/<owner>/<model>/frameworks/<framework>/variations/<variation>/"
            "versions/<version>, the version a number.",
            handle=redact(raw),
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
