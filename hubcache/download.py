"""HTTP: one ``requests`` session per fetch, redirects followed by hand, bodies streamed.

Redirects are followed here rather than by ``requests`` so that the Kaggle
``Authorization`` header is attached to each hop by one rule: only when the
hop's origin is the Kaggle endpoint's. A signed storage URL never sees it.
Proxies and the CA bundle come from the environment as ``requests`` reads them
(``HTTPS_PROXY``, ``NO_PROXY``, ``REQUESTS_CA_BUNDLE``, ...).

URLs in messages and logs are shown without their query strings, which may
carry signatures.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import re
import sys
from contextlib import contextmanager
from typing import Iterator, Optional, Tuple
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import requests
import urllib3

from ._version import __version__
from .archive import is_compressed
from .config import KaggleCredentials, Settings, kaggle_credentials
from .errors import DownloadError
from .resolvers import ArchivePlan, LocationPlan, origin

log = logging.getLogger("hubcache")

CHUNK_SIZE = 1 << 20
MAX_REDIRECTS = 10
_READ_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)


_PUBLIC_PARAMS = frozenset({"tf-hub-format", "tfhub-redirect"})


def redact(url: str) -> str:
    """``url`` without user:password and without query parameters other than the
    tfhub protocol's own (the others may be signatures or tokens)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    query = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(k, v) for k, v in query if k in _PUBLIC_PARAMS]
    shown = [urlencode(kept)] if kept else []
    if len(kept) < len(query):
        shown.append("...")
    return f"{parts.scheme}://{host}{parts.path}" + ("?" + "&".join(shown) if shown else "")


def new_session() -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = f"hubcache/{__version__}"
    # Ask for the bytes as stored: archives are compressed already, and an
    # on-the-fly encoding would make byte ranges meaningless.
    session.headers["Accept-Encoding"] = "identity"
    return session


class Body:
    """An archive download in progress. Iterate :meth:`chunks` once; afterwards
    ``sha256`` and ``bytes_read`` describe every byte received."""

    def __init__(
        self,
        response: requests.Response,
        requested_url: str,
        url: str,
        handle: str,
        settings: Settings,
    ) -> None:
        self.requested_url = requested_url
        self.url = url  # the URL that answered, after redirects
        self.handle = handle
        length = response.headers.get("Content-Length", "")
        self.size: Optional[int] = int(length) if length.isdigit() else None
        self.bytes_read = 0
        self._hash = hashlib.sha256()
        self._response = response
        self._settings = settings
        self._first = self._read()  # peeked, to tell a web page from an archive

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def is_web_page(self) -> bool:
        """Markup where an archive was expected (no archive starts with '<'); the
        Content-Type is believed only when the bytes are not compressed data."""
        if self._first.lstrip()[:1] == b"<":
            return True
        content_type = self._response.headers.get("Content-Type", "").lower()
        return content_type.startswith(("text/html", "application/xhtml")) and not is_compressed(self._first)

    def chunks(self) -> Iterator[bytes]:
        bar = _progress_bar(self.size, self.handle, self._settings)
        try:
            data = self._first
            while data:
                self.bytes_read += len(data)
                self._hash.update(data)
                bar.update(len(data))
                yield data
                data = self._read()
        finally:
            bar.close()
        if self.size is not None and self.bytes_read != self.size:
            raise DownloadError(
                f"the download of {self.handle} from {redact(self.url)} ended after "
                f"{self.bytes_read} of {self.size} bytes: try again.",
                handle=self.handle,
                url=redact(self.url),
            )

    def _read(self) -> bytes:
        raw = self._response.raw
        try:
            # read1 (urllib3 2) hands over what has arrived instead of waiting for a
            # whole chunk, so a failure loses nothing already received.
            if hasattr(raw, "read1"):
                return raw.read1(CHUNK_SIZE, decode_content=False)
            return raw.read(CHUNK_SIZE, decode_content=False)
        except _READ_ERRORS as e:
            raise DownloadError(
                f"the download of {self.handle} from {redact(self.url)} failed after "
                f"{self.bytes_read} of {self.size or 'unknown'} bytes: {_reason(e, self._settings)}. "
                "Try again.",
                handle=self.handle,
                url=redact(self.url),
            ) from None


@contextmanager
def open_archive(plan: ArchivePlan, *, handle: str, settings: Settings) -> Iterator[Body]:
    """Open the first of ``plan.urls`` that answers with an archive."""
    credentials = kaggle_credentials() if plan.credentials_origin else None
    with new_session() as session:
        for index, url in enumerate(plan.urls):
            fallback_left = index + 1 < len(plan.urls)
            response, final_url = _get(session, url, handle, settings, credentials, plan.credentials_origin)
            with response:
                if response.status_code == 404 and fallback_left:
                    log.debug("%s: 404 from %s, trying the next source", handle, redact(final_url))
                    continue
                if not 200 <= response.status_code < 300:
                    raise _http_error(response.status_code, final_url, handle, credentials, plan.credentials_origin)
                body = Body(response, url, final_url, handle, settings)
                if body.is_web_page():
                    if fallback_left:
                        log.debug("%s: web page at %s, trying the next source", handle, redact(final_url))
                        continue
                    raise DownloadError(
                        f"{handle} answered with a web page from {redact(final_url)} instead of an "
                        "archive: the model may have been removed (tfhub.dev models that were not "
                        "migrated to Kaggle end on a listing page), or the URL is not a download "
                        "link. Check the handle in a browser.",
                        handle=handle,
                        url=redact(final_url),
                    )
                log.info("Downloading %s from %s", handle, redact(final_url))
                yield body
                return


def fetch_location(plan: LocationPlan, *, handle: str, settings: Settings) -> str:
    """The ``gs://`` location a server gives for an uncompressed model."""
    with new_session() as session:
        response, url = _get(session, plan.url, handle, settings, None, None)
        with response:
            body = response.raw.read(4096, decode_content=True) if response.status_code == 303 else b""
    location = body.decode("utf-8", "replace").strip()
    if response.status_code != 303 or not location.startswith("gs://"):
        got = f"HTTP {response.status_code}" + (f" with {location[:80]!r}" if location else "")
        raise DownloadError(
            f"asked {redact(url)} where {handle} lives (TFHUB_MODEL_LOAD_FORMAT=UNCOMPRESSED) and "
            f"expected '303 See Other' with a gs:// path, but got {got}. Unset "
            "TFHUB_MODEL_LOAD_FORMAT to download the compressed model instead.",
            handle=handle,
            url=redact(url),
            status=response.status_code,
        )
    return location


def _get(
    session: requests.Session,
    url: str,
    handle: str,
    settings: Settings,
    credentials: Optional[KaggleCredentials],
    credentials_origin: Optional[str],
) -> Tuple[requests.Response, str]:
    """GET ``url``, following redirects; returns the first non-redirect answer and its URL."""
    for _ in range(MAX_REDIRECTS + 1):
        headers = {}
        if credentials is not None and origin(url) == credentials_origin:
            headers["Authorization"] = credentials.authorization
        try:
            response = session.get(
                url,
                headers=headers,
                stream=True,
                allow_redirects=False,
                timeout=(settings.timeout, settings.timeout),
            )
        except requests.RequestException as e:
            raise DownloadError(
                f"could not download {handle}: {redact(url)} did not answer "
                f"({_reason(e, settings)}). Check the network, HTTPS_PROXY and REQUESTS_CA_BUNDLE "
                "if you use them, or set HUBCACHE_OFFLINE=1 to use only the cache.",
                handle=handle,
                url=redact(url),
            ) from None
        if not response.is_redirect:
            return response, url
        url = urljoin(url, response.headers["Location"])
        response.close()
    raise DownloadError(
        f"could not download {handle}: more than {MAX_REDIRECTS} redirects (last to "
        f"{redact(url)}). The server is misconfigured; report it to the model's publisher.",
        handle=handle,
        url=redact(url),
    )


def _http_error(
    status: int,
    url: str,
    handle: str,
    credentials: Optional[KaggleCredentials],
    credentials_origin: Optional[str],
) -> DownloadError:
    where = redact(url)
    if status in (401, 403) and credentials_origin and origin(url) == credentials_origin:
        sent = (
            f"The credentials from {credentials.source} were sent and refused, or the licence "
            "is not accepted yet."
            if credentials
            else "No Kaggle credentials are configured."
        )
        advice = (
            f"Kaggle refused access to {handle} (HTTP {status}). If the model is gated, accept "
            "its licence on its Kaggle page and configure credentials: KAGGLE_API_TOKEN, or "
            f"KAGGLE_USERNAME and KAGGLE_KEY, or ~/.kaggle/kaggle.json. {sent}"
        )
    elif status in (401, 403):
        advice = (
            f"{where} refused access to {handle} (HTTP {status}): a signed URL may have "
            "expired, or the object is not public. Try again, or check the URL's permissions."
        )
    elif status in (404, 410):
        advice = (
            f"{handle} was not found (HTTP {status} from {where}): check the handle's "
            "spelling and version."
        )
    elif status in (408, 429) or status >= 500:
        advice = (
            f"the server could not serve {handle} right now (HTTP {status} from {where}): "
            "try again later."
        )
    else:
        advice = f"unexpected HTTP {status} from {where} while downloading {handle}."
    return DownloadError(advice, handle=handle, url=where, status=status)


_ERRNO = re.compile(r"\[Errno -?\d+\][^'\")]*")


def _reason(e: BaseException, settings: Settings) -> str:
    """A short, query-free description of a network failure."""
    if isinstance(e, (requests.ConnectTimeout,)):
        return f"no connection within {settings.timeout:g} s"
    if isinstance(e, (requests.ReadTimeout, urllib3.exceptions.ReadTimeoutError)):
        return f"no data for {settings.timeout:g} s"
    if isinstance(e, requests.exceptions.SSLError):
        return "TLS certificate verification failed (set REQUESTS_CA_BUNDLE for a private CA)"
    found = _ERRNO.search(str(e))
    if found:
        return found.group(0).strip()
    text = str(e)
    if "IncompleteRead" in text or "Connection broken" in text:
        return "the connection was closed early"
    return type(e).__name__


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: Optional[int], handle: str, settings: Settings):  # type: ignore[no-untyped-def]
    enabled = settings.progress if settings.progress is not None else sys.stderr.isatty()
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    label = handle if len(handle) <= 48 else "…" + handle[-47:]
    return tqdm(
        total=total,
        desc=label,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        leave=False,
        mininterval=0.25,
    )
