"""Parsing handles: what the user wrote -> a :class:`Handle` with a kind.

Parsing touches neither the network nor, with one exception, the filesystem:
a string that fits the Kaggle slug grammar (``owner/model/framework/variation
[/version]``) is a local path if that path exists, so one ``stat`` decides.

Entry names follow one rule (:attr:`Handle.cache_key`): a handle that
tensorflow_hub accepts is stored under the SHA-1 of the handle exactly as
written, tensorflow_hub's own name, so both tools share entries (a trailing
slash is another entry). The Kaggle spellings tensorflow_hub does not accept
(slugs, ``kaggle://``) are stored under the name of their canonical page URL,
``https://www.kaggle.com/models/<owner>/<model>/<framework>/<variation>/<version>``
with the framework spelled as in :data:`KAGGLE_FRAMEWORKS`. A handle without a
version has no entry of its own: it names the entry of the version that
"latest" resolves to (:mod:`hubcache.latest`).
"""

from __future__ import annotations

import os

from .errors import HandleError
from .redaction import redact

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
GCS_DIR = "gcs-dir"
URL = "url"

TFHUB_HOSTS = frozenset({"tfhub.dev", "www.tfhub.dev"})
KAGGLE_PAGE = "https://www.kaggle.com/models"  # the canonical Kaggle page URLs start so
#: Kaggle's frameworks: any spelling (compared lower-case) -> the one used in
#: canonical page URLs, and whether its bundles are SavedModels. Others are
#: accepted as written, and judged by what their archive holds.
KAGGLE_FRAMEWORKS = {
    "tensorflow1": ("tensorFlow1", True),
    "tensorflow2": ("tensorFlow2", True),
    "tflite": ("tfLite", False),
    "tfjs": ("tfJs", False),
    "keras": ("keras", False),
    "jax": ("jax", False),
    "flax": ("flax", False),
    "pytorch": ("pyTorch", False),
    "transformers": ("transformers", False),
    "onnx": ("onnx", False),
    "other": ("other", False),
}
#: The RPC API's enum names where they do not follow from the spelling.
_FRAMEWORK_ENUMS = {"tensorflow1": "TENSOR_FLOW_1", "tensorflow2": "TENSOR_FLOW_2", "tflite": "TF_LITE",
                    "tfjs": "TF_JS", "pytorch": "PY_TORCH"}  # fmt: skip
#: tfhub.dev paths of models that are not SavedModels (TFLite, TF.js).
_NOT_SAVED_MODEL_SEGMENTS = frozenset({"lite-model", "tfjs-model"})
#: Hosts users write without a scheme: "Did you mean https://...".
_SCHEMELESS_HOSTS = ("tfhub.dev", "www.kaggle.com", "kaggle.com", "hub.tensorflow.google.cn", "storage.googleapis.com")
KAGGLE_HOSTS = frozenset({"www.kaggle.com", "kaggle.com"})
TFHUB_CN_HOST = "hub.tensorflow.google.cn"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")

ACCEPTED_FORMS = """\
  - a local directory or archive: /models/m, ./m, ~/m, ./model.tar.gz, file:///models/m
  - tfhub.dev: https://tfhub.dev/<publisher>/<model>/<version>
  - Kaggle: https://www.kaggle.com/models/<owner>/<model>/<framework>/<variation>[/<version>],
    <owner>/<model>/<framework>/<variation>[/<version>], kaggle://<owner>/<model>/<framework>/<variation>[/<version>]
    or https://www.kaggle.com/api/v1/models/<owner>/<model>/<framework>/<variation>/<version>/download
    (no version: the latest)
  - the China mirror: https://hub.tensorflow.google.cn/<publisher>/<model>/<version>
  - Google Cloud Storage: gs://<bucket>/<path>.tar.gz (or .tgz, .tar, .zip), or a directory gs://<bucket>/<path>
  - any http(s) URL of a .tar, .tar.gz or .zip archive"""

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
    ``kaggle`` holds (owner, model, framework, variation, version) for Kaggle,
    the version "" when the handle means the latest. ``cache_key`` is the cache
    entry's name (see the module's rule), "" for a local path or an unversioned
    Kaggle handle.
    """

    __slots__ = ("raw", "kind", "location", "query", "kaggle", "cache_key")

    def __init__(self, raw: str, kind: str, location: str, query: str = "", kaggle: "Tuple[str, ...]" = ()) -> None:
        self.raw = raw
        self.kind = kind
        self.location = location
        self.query = query
        self.kaggle = kaggle
        if kind == LOCAL or (kaggle and not kaggle[4]):
            self.cache_key = ""
        elif kaggle and not raw.lower().startswith(("http://", "https://")):
            self.cache_key = cache_key(kaggle_page(kaggle))
        else:
            self.cache_key = cache_key(raw)

    @property
    def is_remote(self) -> bool:
        return self.kind != LOCAL

    @property
    def is_latest(self) -> bool:
        """A Kaggle handle without a version: the current one, asked for."""
        return bool(self.kaggle) and not self.kaggle[4]

    def at_version(self, version: int) -> "Handle":
        """The handle of one version of this Kaggle model: its canonical page URL."""
        return parse(kaggle_page(self.kaggle[:4] + (str(version),)))

    @property
    def shown(self) -> str:
        """The handle as it may be displayed or stored: see :func:`redact`."""
        return redact(self.raw)

    def __repr__(self) -> str:
        return f"Handle({self.shown!r}, kind={self.kind!r})"


def requires_saved_model(handle: Handle) -> bool:
    """Whether a cache entry for ``handle`` must hold a SavedModel: a TensorFlow
    framework on Kaggle, or a tfhub.dev model other than TFLite and TF.js.
    Other entries are valid when their archive holds files (plain archives,
    other frameworks), and :func:`hubcache.load` says what they hold."""
    if handle.kind == KAGGLE:
        return KAGGLE_FRAMEWORKS.get(handle.kaggle[2].lower(), ("", False))[1]
    if handle.kind in (TFHUB, TFHUB_CN):
        return not _NOT_SAVED_MODEL_SEGMENTS & set(handle.location.lower().split("/"))
    return False


def kaggle_framework_enum(framework: str) -> str:
    """The Kaggle RPC API's name for ``framework`` (any spelling):
    ``tensorFlow2`` -> ``MODEL_FRAMEWORK_TENSOR_FLOW_2``, ``keras`` -> ``MODEL_FRAMEWORK_KERAS``."""
    lowered = framework.lower()
    return "MODEL_FRAMEWORK_" + _FRAMEWORK_ENUMS.get(lowered, lowered.upper())


def kaggle_page(parts: "Tuple[str, ...]") -> str:
    """The canonical page URL of a Kaggle model version (or of its latest, with
    no version): the framework in Kaggle's spelling, the rest as written."""
    owner, model, framework, variation, version = parts
    framework = KAGGLE_FRAMEWORKS.get(framework.lower(), (framework, False))[0]
    from urllib.parse import quote

    path = "/".join(quote(p, safe="") for p in (owner, model, framework, variation) + ((version,) if version else ()))
    return f"{KAGGLE_PAGE}/{path}"


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
        return _parse_schemeless(raw)
    if scheme == "kaggle":
        return _parse_kaggle_uri(raw)
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
    if not bucket or not obj.strip("/") or "?" in raw or "#" in raw:
        raise HandleError(
            f"handle {redact(raw)!r} is not a gs:// object or directory: write gs://<bucket>/<path>, "
            "an archive (.tar.gz, .tgz, .tar, .zip) or a directory (public objects, over HTTPS).",
            handle=redact(raw),
        )
    if obj.lower().endswith(ARCHIVE_SUFFIXES):
        return Handle(raw, GCS, f"{bucket}/{obj}")
    return Handle(raw, GCS_DIR, f"{bucket}/{obj}")


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
        if len(segments) < 3 or not (segments[-1].isascii() and segments[-1].isdigit()):
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


_KAGGLE_SHAPE = (
    "https://www.kaggle.com/models/<owner>/<model>/<framework>/<variation>[/<version>] (or the long "
    ".../frameworks/<framework>/variations/<variation>[/versions/<version>]), the version a number; "
    "without one, the latest version is fetched"
)


def _kaggle_parts(raw: str, segments: "List[str]") -> "Tuple[str, ...]":
    """(owner, model, framework, variation, version or "") from a Kaggle URL path."""
    from urllib.parse import unquote

    rest = [unquote(s) for s in segments]
    parts: "List[str]" = []
    if rest[:1] == ["models"]:
        rest = rest[1:]
        if len(rest) in (6, 8) and rest[2:3] == ["frameworks"] and rest[4:5] == ["variations"]:
            if len(rest) == 6 or rest[6] == "versions":
                parts = [rest[0], rest[1], rest[3], rest[5]] + rest[7:]
        elif len(rest) in (4, 5):
            parts = rest
    elif rest[:3] == ["api", "v1", "models"] and len(rest) == 9 and rest[8] == "download":
        parts = rest[3:8]  # tensorflow_hub fetches this form as it would any URL
    if len(parts) == 5 and parts[4].lower() == "latest":
        raise HandleError(
            f"handle {redact(raw)!r} ends in /latest, which Kaggle's URLs do not have. Did you mean "
            f"{redact(raw).rsplit('/', 1)[0]} ? A Kaggle handle without a version means the latest.",
            handle=redact(raw),
        )
    if len(parts) < 4 or not all(parts) or (len(parts) == 5 and not (parts[4].isascii() and parts[4].isdigit())):
        raise HandleError(
            f"handle {redact(raw)!r} is not a Kaggle model: it should look like {_KAGGLE_SHAPE}.",
            handle=redact(raw),
        )
    return tuple(parts) + (("",) if len(parts) == 4 else ())


_SLUG_PART = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _slug(segments: "List[str]") -> "Optional[Tuple[str, ...]]":
    """(owner, model, framework, variation, version or "") if ``segments`` fit
    Kaggle's slug grammar, else None."""
    if len(segments) not in (4, 5) or (len(segments) == 5 and not (segments[4].isascii() and segments[4].isdigit())):
        return None
    allowed = set(_SLUG_PART + "._-")
    for part in segments:  # each starts with a letter or digit: never ".", "..", "~" or "-x"
        if not part or part[0] not in _SLUG_PART or not set(part) <= allowed:
            return None
    if not segments[2].isalnum():  # a framework is one word: tensorFlow2, tfLite, keras...
        return None
    return tuple(segments) + (("",) if len(segments) == 4 else ())


def _parse_schemeless(raw: str) -> Handle:
    """A local path, or a Kaggle slug when it fits the grammar and names no
    existing path."""
    segments = raw.split("/")
    if segments[0].lower() not in _SCHEMELESS_HOSTS and not os.path.isabs(raw):
        parts = _slug(segments)
        if parts is not None and not os.path.lexists(raw):
            return Handle(raw, KAGGLE, "/models/" + raw, "", parts)
    return Handle(raw, LOCAL, os.path.abspath(os.path.expanduser(raw)))


def _parse_kaggle_uri(raw: str) -> Handle:
    """keras-hub's ``kaggle://<owner>/<model>/<framework>/<variation>[/<version>]``."""
    body = raw.partition("://")[2]
    parts = _slug(body[:-1].split("/") if body.endswith("/") else body.split("/"))
    if parts is None:
        raise HandleError(
            f"handle {redact(raw)!r} is not a Kaggle model: it should look like "
            "kaggle://<owner>/<model>/<framework>/<variation>[/<version>], the version a number; "
            "without one, the latest version is fetched.",
            handle=redact(raw),
        )
    return Handle(raw, KAGGLE, "/models/" + "/".join(p for p in parts if p), "", parts)


def suggest_remote(raw: str) -> str:
    """A hint for a local path that does not exist but looks like a model id."""
    head = raw.split("/", 1)[0].lower()
    if head in _SCHEMELESS_HOSTS:
        return f" Did you mean https://{raw} ?"
    segments = raw.strip("/").split("/")
    if len(segments) == 3 and segments[2].isdigit():
        return f" Did you mean https://tfhub.dev/{raw.strip('/')} ?"
    if len(segments) == 5:
        return (
            " A Kaggle slug is <owner>/<model>/<framework>/<variation>[/<version>], the version a number: "
            f"did you mean {'/'.join(segments[:4])} (the latest version)?"
        )
    return ""
