"""Turn a parsed :class:`~hubcache.handles.Handle` into a plan: a local path or
what to download (URLs, credentials, what the result must contain).

Pure functions of the handle and the settings: no network, no filesystem.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple, Union
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from . import handles as h
from .config import Settings
from .errors import HandleError
from .records import Record

FORMAT_PARAM = "tf-hub-format"


class LocalPlan(Record):
    """The handle is a path on this machine: use it where it is."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


class ArchivePlan(Record):
    """Download an archive and extract it into the cache.

    ``urls`` are tried in order: a later one is used only when an earlier one
    answers 404 or with a web page instead of an archive. When
    ``credentials_for`` is set (an endpoint URL), the Kaggle credentials (if
    configured) are sent to that endpoint's origin only, never to a host a
    redirect leads to (see :func:`hubcache.transport.may_carry_credentials`).
    ``model_page`` is the Kaggle model's page, for messages (a 403 needs its
    licence accepted there). ``rpc``, the last route: a POST of this JSON to
    this URL, Kaggle's RPC API (which also gets the credentials), answered by
    a redirect to the archive.
    """

    __slots__ = ("urls", "require_saved_model", "credentials_for", "model_page", "rpc")

    def __init__(
        self,
        urls: Tuple[str, ...],
        require_saved_model: bool,
        credentials_for: Optional[str] = None,
        model_page: Optional[str] = None,
        rpc: Optional[Tuple[str, str]] = None,
    ) -> None:
        self.urls, self.require_saved_model, self.credentials_for = urls, require_saved_model, credentials_for
        self.model_page, self.rpc = model_page, rpc


class LocationPlan(Record):
    """TFHUB_MODEL_LOAD_FORMAT=UNCOMPRESSED: ask ``url`` where the model lives
    (a ``gs://`` path in a 303 answer) and read it from there, uncached."""

    __slots__ = ("url",)

    def __init__(self, url: str) -> None:
        self.url = url


class LatestPlan(Record):
    """A Kaggle handle without a version: ask ``url`` (Kaggle's REST "get" of
    the model instance) for the current version, then plan that version;
    ``rpc`` is the RPC API's GetModelInstance (URL, JSON body), asked when the
    REST route fails."""

    __slots__ = ("url", "credentials_for", "rpc")

    def __init__(self, url: str, credentials_for: str, rpc: Optional[Tuple[str, str]] = None) -> None:
        self.url, self.credentials_for, self.rpc = url, credentials_for, rpc


class DirectoryPlan(Record):
    """A ``gs://`` directory: list ``listing`` (the storage JSON API) for the
    objects under ``prefix``, and fetch each from ``objects``/<name>. ``shown``
    is gs://bucket/path, for messages and the metadata; whether it must hold
    a SavedModel is judged by what it holds."""

    __slots__ = ("listing", "objects", "prefix", "shown", "require_saved_model")

    def __init__(self, listing: str, objects: str, prefix: str, shown: str, require_saved_model: bool = False) -> None:
        self.listing, self.objects, self.prefix, self.shown = listing, objects, prefix, shown
        self.require_saved_model = require_saved_model


Plan = Union[LocalPlan, ArchivePlan, LocationPlan, LatestPlan, DirectoryPlan]


def plan(handle: h.Handle, settings: Settings) -> Plan:
    """Decide how to get ``handle``."""
    kind = handle.kind
    if kind == h.LOCAL:
        return LocalPlan(handle.location)
    require = h.requires_saved_model(handle)
    if kind == h.GCS:
        url = f"{settings.gcs_endpoint}/{quote(handle.location, safe='/')}"
        return ArchivePlan((url,), require)
    if kind == h.GCS_DIR:
        bucket, _, path = handle.location.partition("/")
        return DirectoryPlan(
            listing=f"{settings.gcs_endpoint}/storage/v1/b/{quote(bucket, safe='')}/o",
            objects=f"{settings.gcs_endpoint}/{quote(bucket, safe='')}",
            prefix=path.rstrip("/") + "/",
            shown=f"gs://{bucket}/{path.rstrip('/')}",
        )
    if kind == h.TFHUB_CN:
        # tensorflow_hub's documented rewrite: no format query, straight to storage.
        url = f"{settings.cn_mirror_endpoint}/tfhub-modules{handle.location}.tar.gz"
        return ArchivePlan((url,), require)

    api = ""
    if kind == h.TFHUB:
        page = _join(settings.tfhub_endpoint, handle.location, handle.query)
    elif kind == h.KAGGLE:
        endpoint = settings.kaggle_endpoint
        instance = "/".join(quote(p, safe="") for p in handle.kaggle[:4])
        if handle.is_latest:
            get = _rpc(settings, "GetModelInstance", handle.kaggle)
            return LatestPlan(f"{endpoint}/api/v1/models/{instance}/get", credentials_for=endpoint, rpc=get)
        api = f"{endpoint}/api/v1/models/{instance}/{handle.kaggle[4]}/download"
        if handle.location.startswith("/models/"):
            page = _join(endpoint, handle.location, handle.query)
        else:  # the API URL itself: its page is the fallback
            page = f"{endpoint}/models/{instance}/{handle.kaggle[4]}"
    else:
        page = handle.location
        if _is_archive_url(page):
            # Fetched exactly as written, so pre-signed URLs keep their signature.
            return ArchivePlan((page,), require)

    if settings.load_format == "UNCOMPRESSED":
        return LocationPlan(with_format(page, "uncompressed"))

    urls: Tuple[str, ...] = (with_format(page, "compressed"),)
    if kind == h.URL:
        return ArchivePlan(urls, require)
    if api:  # the page first, as tensorflow_hub fetches it, unless the handle is the API's URL
        urls = (api,) + urls if handle.location.startswith("/api/") else urls + (api,)
    model_page = h.kaggle_page(handle.kaggle) if handle.kaggle else None
    rpc = _rpc(settings, "DownloadModelInstanceVersion", handle.kaggle) if handle.kaggle else None
    # tfhub.dev redirects to Kaggle, so both kinds may need the Kaggle credentials.
    return ArchivePlan(urls, require, credentials_for=settings.kaggle_endpoint, model_page=model_page, rpc=rpc)


def _rpc(settings: Settings, method: str, kaggle: Tuple[str, ...]) -> Tuple[str, str]:
    """A call of Kaggle's ModelApiService: its URL and JSON body (camelCase, the
    framework as the API's enum name), as kagglehub 1.x sends it."""
    import json

    owner, model, framework, variation, version = kaggle
    body: Dict[str, Union[str, int]] = {"ownerSlug": owner, "modelSlug": model}
    body.update(framework=h.kaggle_framework_enum(framework), instanceSlug=variation)
    if version:
        body["versionNumber"] = int(version)
    return f"{settings.kaggle_api_endpoint}/v1/models.ModelApiService/{method}", json.dumps(body)


def kaggle_fallback(url: str, settings: Settings) -> Optional[Tuple[str, str]]:
    """When ``url`` (where a redirect chain ended, e.g. tfhub.dev's) is a Kaggle
    model version's page on the Kaggle endpoint: that version's REST download
    URL and its canonical page. Else None."""
    base = urlsplit(settings.kaggle_endpoint)
    parts = urlsplit(url)
    if (parts.scheme, parts.netloc.lower()) != (base.scheme, base.netloc.lower()):
        return None
    path = parts.path[len(base.path.rstrip("/")) :] if parts.path.startswith(base.path.rstrip("/")) else ""
    try:
        kaggle = h.parse(h.KAGGLE_PAGE.rsplit("/", 1)[0] + path).kaggle
    except HandleError:
        return None
    if len(kaggle) != 5 or not kaggle[4] or not path.startswith("/models/"):
        return None
    instance = "/".join(quote(p, safe="") for p in kaggle)
    return f"{settings.kaggle_endpoint}/api/v1/models/{instance}/download", h.kaggle_page(kaggle)


def with_format(url: str, value: str) -> str:
    """``url`` with ``tf-hub-format=value`` in its query (replacing any such
    parameter, keeping the others)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != FORMAT_PARAM]
    query.append((FORMAT_PARAM, value))
    return urlunsplit(parts._replace(query=urlencode(query)))


def _join(endpoint: str, path: str, query: str) -> str:
    return f"{endpoint}{path}" + (f"?{query}" if query else "")


def _is_archive_url(url: str) -> bool:
    return urlsplit(url).path.lower().endswith(h.ARCHIVE_SUFFIXES)
