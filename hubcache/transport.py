"""HTTP requests: redirects followed by hand, the credentials rule, retries with backoff.

Redirects are followed here rather than by ``requests`` so that the Kaggle
``Authorization`` header is attached to each hop by one rule,
:func:`may_carry_credentials`: only when the URL that goes on the wire names an
allowed origin, as every parser involved in opening the connection reads it.
A signed storage URL never sees it. Proxies and the CA bundle come from the
environment as ``requests`` reads them (``HTTPS_PROXY``, ``NO_PROXY``,
``REQUESTS_CA_BUNDLE``, ...).

Failures are retried: connection errors, timeouts and HTTP 408/429/5xx, with
exponential backoff and jitter, or after ``Retry-After`` when the server says.
A URL that cannot be requested at all (a redirect to ``file://`` or ``ftp://``,
a port out of range) fails at once. URLs in messages and logs are shown
without query values, which may be signatures.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import random
import re
import socket
import threading
import time
from typing import Any, Dict, FrozenSet, Iterator, List, Optional, Tuple
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from ._version import __version__
from .cancel import Cancellation
from .config import Settings
from .errors import DownloadError
from .origins import Origin, may_carry_credentials, origin_of
from .redaction import redact_text

log = logging.getLogger("hubcache")

MAX_REDIRECTS = 10
MAX_DELAY = 60.0  # longest wait between two attempts, in seconds
MAX_RETRY_AFTER = 300.0  # a longer Retry-After is reported, not waited for
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_PUBLIC_PARAMS = frozenset({"tf-hub-format", "tfhub-redirect"})
# Errors that say the URL itself cannot be requested: retrying cannot help.
_UNUSABLE_URL = (
    requests.exceptions.InvalidSchema,
    requests.exceptions.InvalidURL,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidHeader,
    requests.exceptions.URLRequired,
    urllib3.exceptions.LocationParseError,
    ValueError,  # e.g. a port out of range, from urllib.parse
)


class _RedactingFilter(logging.Filter):
    """urllib3 logs each request line, query included, at DEBUG: an application
    that turns on DEBUG for every logger would otherwise print signatures."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_text(a) if isinstance(a, str) else a for a in record.args)
        return True


logging.getLogger("urllib3.connectionpool").addFilter(_RedactingFilter())


def redact(url: str) -> str:
    """``url`` without user:password and without query parameters other than the
    tfhub protocol's own (the others may be signatures or tokens)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
    except ValueError:  # a port out of range: show no authority at all
        return "<an unparsable URL>"
    query = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(k, v) for k, v in query if k in _PUBLIC_PARAMS]
    shown = [urlencode(kept)] if kept else []
    if len(kept) < len(query):
        shown.append("...")
    return f"{parts.scheme}://{host}{parts.path}" + ("?" + "&".join(shown) if shown else "")


_SLOW_HEAD = "no complete response head within {:g} s"


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _deadlined(cls: type) -> type:
    """``cls`` (a urllib3 connection) whose response headers must arrive whole
    within twice the read timeout. The socket timeout bounds each read only: a
    server that drips the status line a byte at a time would otherwise never
    time out (a silent one still fails by the read timeout, first).
    When the deadline passes the socket is shut down, which fails the request
    like a dropped connection (retried, counted)."""

    class Deadlined(cls):  # type: ignore[misc]
        def getresponse(self, *args: Any, **kwargs: Any) -> Any:
            sock: Optional[socket.socket] = getattr(self, "sock", None)
            read_timeout = sock.gettimeout() if sock is not None else None
            if sock is None or not read_timeout:
                return super().getresponse(*args, **kwargs)
            limit = 2 * read_timeout
            fired = threading.Event()

            def expire() -> None:
                fired.set()
                _shut(sock)

            timer = threading.Timer(limit, expire)
            timer.daemon = True
            timer.start()
            try:
                return super().getresponse(*args, **kwargs)
            except Exception:
                if fired.is_set():  # failed like a dropped connection (retried), saying why
                    raise ConnectionAbortedError(_SLOW_HEAD.format(limit)) from None
                raise
            finally:
                timer.cancel()

    return Deadlined


class _Pool(HTTPConnectionPool):
    ConnectionCls = _deadlined(HTTPConnection)


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _deadlined(HTTPSConnection)


_POOLS = {"http": _Pool, "https": _TLSPool}


class _Adapter(HTTPAdapter):
    """requests' adapter with connections that bound the wait for headers."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **kwargs)
        if isinstance(manager, urllib3.ProxyManager):  # not SOCKS, which has pools of its own
            manager.pool_classes_by_scheme = _POOLS
        return manager


class _HopError(Exception):
    """A request of a redirect chain failed in a way worth retrying."""

    def __init__(self, url: str, error: Exception) -> None:
        super().__init__(url)
        self.url, self.error = url, error


def _auth_of(url: str) -> Any:
    """The URL's own user:password, for its own host; never a ~/.netrc entry, which
    requests would otherwise add (its `default` entry to every host), outside the
    credentials rule (and in place of the URL's own)."""
    user, password = requests.utils.get_auth_from_url(url)
    return (user, password) if user or password else _no_auth


def _no_auth(request: Any) -> Any:
    return request


class _Session(requests.Session):
    """A session that never follows redirects itself. Even with
    ``allow_redirects=False``, ``Session.send`` asks ``resolve_redirects`` for
    the next request, which reads the whole redirect body first: a 302 whose
    body drips, or never ends, would hang or fill memory. hubcache follows
    redirects in :meth:`Transport._follow` and never reads their bodies."""

    def resolve_redirects(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        return iter(())


class Transport:
    """The HTTP side of one fetch: a session, the credentials rule, and the
    count of failed attempts in a row that :meth:`failed` enforces."""

    def __init__(
        self, handle: str, settings: Settings, credentials_for: Optional[str], also: Tuple[str, ...] = ()
    ) -> None:
        """``credentials_for`` (and the endpoints in ``also``) are the origins
        the Kaggle credentials may go to."""
        self.handle = handle
        self.settings = settings
        self.cancellation: Optional[Cancellation] = settings.cancellation
        self.credentials = settings.kaggle_credentials() if credentials_for else None
        origins = [origin_of(u) for u in ((credentials_for,) + also if credentials_for else ())]
        self.allowed: FrozenSet[Origin] = frozenset(o for o in origins if o)
        self.failures = 0  # failed attempts since the last progress
        self.chain: List[str] = []  # the URLs of the last request's redirect chain, in order
        self.session = _Session()
        for prefix in ("http://", "https://"):
            self.session.mount(prefix, _Adapter())
        self.session.headers["User-Agent"] = f"hubcache/{__version__}"
        # The bytes as stored: archives are compressed already, and an
        # on-the-fly encoding would make byte ranges meaningless.
        self.session.headers["Accept-Encoding"] = "identity"

    def twin(self, cancellation: Optional[Cancellation] = None) -> "Transport":
        """Another transport for this download (one more connection): the same
        credentials and origins, its own session, count of failures and, if
        given, cancellation."""
        settings = self.settings if cancellation is None else self.settings.replace(cancellation=cancellation)
        other = Transport(self.handle, settings, None)
        other.credentials, other.allowed = self.credentials, self.allowed
        return other

    def close(self) -> None:
        self.session.close()

    def check_cancelled(self) -> None:
        if self.cancellation is not None:
            self.cancellation.check()

    def get(
        self, url: str, headers: Optional[Dict[str, str]] = None, *, post: Optional[str] = None, retry: bool = True
    ) -> Tuple[requests.Response, str]:
        """GET ``url`` (or POST the JSON ``post`` to it), following redirects and
        retrying transient failures. Returns the final answer (any status that
        is not worth retrying, or any at all without ``retry``) and its URL."""
        while True:
            self.check_cancelled()
            try:
                response, final_url = self._follow(url, headers or {}, post)
            except _HopError as e:  # named by the hop that failed, not where the chain began
                problem = f"{redact(e.url)} did not answer ({reason(e.error, self.settings)})"
                if not retry:
                    raise DownloadError(f"could not download {self.handle}: {problem}", handle=self.handle) from None
                self.failed(problem, None, e.url)
                continue
            status = response.status_code
            if status not in RETRY_STATUSES or not retry:
                return response, final_url
            retry_after = _retry_after(response.headers.get("Retry-After"))
            self.close_response(response)
            if retry_after is not None and retry_after > MAX_RETRY_AFTER:
                raise http_error(status, final_url, self, f" The server asks to wait {retry_after:.0f} s.")
            self.failed(f"HTTP {status} from {redact(final_url)}", retry_after, final_url, status)

    def failed(self, problem: str, retry_after: Optional[float], url: str, status: Optional[int] = None) -> None:
        """Count a failed attempt: wait before the next, or give up."""
        self.check_cancelled()  # a cancelled download's failures are not worth reporting
        self.failures += 1
        limit = self.settings.max_retries
        if self.failures > limit:
            if status is not None:
                raise http_error(status, url, self, f" Gave up after {limit} retries.")
            raise DownloadError(
                f"could not download {self.handle}: {problem}; gave up after {limit} retries. "
                "Check the network (and HTTPS_PROXY / REQUESTS_CA_BUNDLE if you use them) and "
                "try again, or set HUBCACHE_OFFLINE=1 to use only the cache.",
                handle=self.handle,
                url=redact(url),
                status=status,
            )
        if retry_after is None:
            delay = min(MAX_DELAY, self.settings.backoff * 2 ** (self.failures - 1))
            delay *= random.uniform(0.5, 1.0)  # jitter: racing clients spread out
        else:
            delay = retry_after
        log.warning("%s: %s; retrying in %.1f s (%d of %d)", self.handle, problem, delay, self.failures, limit)
        if self.cancellation is not None:
            self.cancellation.sleep(delay)
        else:
            time.sleep(delay)

    def _follow(self, url: str, headers: Dict[str, str], post: Optional[str] = None) -> Tuple[requests.Response, str]:
        self.chain = []
        for _ in range(MAX_REDIRECTS + 1):
            self.chain.append(url)
            try:
                response = self._send(url, headers, post)
            except requests.RequestException as e:
                raise _HopError(url, e) from None
            if not response.is_redirect:
                return response, url
            location = response.headers["Location"]
            with contextlib.suppress(UnicodeError):  # as requests does: Latin-1 header, UTF-8 URL
                location = location.encode("latin1").decode("utf8")
            self.close_response(response)
            if response.status_code not in (307, 308):
                post = None  # a 301/302/303 after a POST is followed with a GET, as browsers do
            try:
                target = urljoin(url, location)
            except ValueError:
                raise self._unusable(redact_text(location[:200]), "it does not parse as a URL") from None
            log.debug(
                "%s: HTTP %d from %s, redirected to %s", self.handle, response.status_code, redact(url), redact(target)
            )
            url = target
        raise DownloadError(
            f"could not download {self.handle}: more than {MAX_REDIRECTS} redirects (last to "
            f"{redact(url)}). The server is misconfigured; report it to the model's publisher.",
            handle=self.handle,
            url=redact(url),
        )

    def _send(self, url: str, headers: Dict[str, str], post: Optional[str] = None) -> requests.Response:
        """One request to ``url``, credentials attached by the rule; a URL that
        cannot be requested raises :class:`DownloadError` at once."""
        scheme = url.partition(":")[0].lower()
        try:
            if scheme not in ("http", "https"):
                raise requests.exceptions.InvalidSchema(f"{scheme}:// is not http(s)")
            auth = _auth_of(url)
            if post is None:
                prepared = self.session.prepare_request(requests.Request("GET", url, headers=headers, auth=auth))
            else:
                json_headers = dict(headers, **{"Content-Type": "application/json"})
                prepared = self.session.prepare_request(
                    requests.Request("POST", url, headers=json_headers, data=post.encode(), auth=auth)
                )
            assert prepared.url is not None
            carries = self.credentials is not None and may_carry_credentials(prepared.url, self.allowed)
            if self.credentials is not None and carries:
                prepared.headers["Authorization"] = self.credentials.authorization
            log.debug(
                "%s: %s %s%s",
                self.handle,
                prepared.method,
                redact(prepared.url),
                " (with Kaggle credentials)" if carries else "",
            )
            options = self.session.merge_environment_settings(prepared.url, {}, True, None, None)
            response = self.session.send(
                prepared,
                allow_redirects=False,
                timeout=(self.settings.timeout, self.settings.timeout),
                **options,
            )
        except _UNUSABLE_URL as e:
            shown = f"{scheme}://..." if scheme not in ("http", "https") else redact_text(url)
            raise self._unusable(shown, type(e).__name__) from None
        if self.cancellation is not None:
            self.cancellation.track(response)
        return response

    def _unusable(self, shown: str, why: str) -> DownloadError:
        return DownloadError(
            f"could not download {self.handle}: {shown} cannot be requested ({why}: only "
            "http(s) URLs with a valid host and port are followed). A redirect that leads there "
            "means a misconfigured or hostile server; report it to the model's publisher.",
            handle=self.handle,
            url=shown,
        )

    def close_response(self, response: requests.Response) -> None:
        response.close()
        if self.cancellation is not None:
            self.cancellation.untrack(response)


def http_error(status: int, url: str, transport: Transport, extra: str = "") -> DownloadError:
    handle, credentials = transport.handle, transport.credentials
    where = redact(url)
    if status in (401, 403) and transport.allowed and origin_of(url) in transport.allowed:
        sent = (
            f"The credentials from {credentials.source} were sent and refused, or the licence is not accepted yet."
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
        advice = f"{handle} was not found (HTTP {status} from {where}): check the handle's spelling and version."
    elif status in RETRY_STATUSES or status >= 500:
        advice = f"the server could not serve {handle} right now (HTTP {status} from {where}): try again later."
    else:
        advice = f"unexpected HTTP {status} from {where} while downloading {handle}."
    return DownloadError(advice + extra, handle=handle, url=where, status=status)


def _retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), 1e9)  # 400 digits are "for ever", not inf
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when.timestamp() - time.time())


_ERRNO = re.compile(r"\[Errno -?\d+\][^'\")]*")


def reason(e: BaseException, settings: Settings) -> str:
    """A short, query-free description of a network failure."""
    if isinstance(e, requests.ConnectTimeout):
        return f"no connection within {settings.timeout:g} s"
    if isinstance(e, (requests.ReadTimeout, urllib3.exceptions.ReadTimeoutError)):
        return f"no data for {settings.timeout:g} s"
    if isinstance(e, requests.exceptions.SSLError):
        if "CERTIFICATE_VERIFY_FAILED" in str(e):
            return "TLS certificate verification failed (set REQUESTS_CA_BUNDLE for a private CA)"
        return "the TLS handshake failed (is it really an https:// server?)"
    text = str(e)
    slow = re.search(_SLOW_HEAD.replace("{:g}", r"[\d.e+]+"), text)
    if slow:
        return slow.group(0)
    found = _ERRNO.search(text)
    if found:
        return found.group(0).strip()
    if "IncompleteRead" in text or "Connection broken" in text or "ProtocolError" in type(e).__name__:
        return "the connection was closed early"
    return type(e).__name__
