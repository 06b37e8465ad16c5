"""Kaggle credentials reach the Kaggle origin only, however a redirect spells its authority.

hubcache follows redirects by hand and attaches the ``Authorization`` header
to a hop only when :func:`hubcache.transport.may_carry_credentials` says the
prepared URL names the allowed (scheme, host, port). These tests check that
rule against what the connection layer really does:

* a differential test over a hand-built corpus of odd authorities (plus
  generated combinations): every hop that carries the credentials must be
  connected, by ``requests``' own adapter and urllib3's pool, to the Kaggle
  origin; conservative refusals are counted and shown, not asserted;
* a seeded fuzz of authorities around the real hosts (``HUBCACHE_FUZZ_CASES``
  sets how many, default 3000 over two setups);
* end to end over real sockets: Kaggle (127.0.0.1), storage (127.0.0.2) and an
  "evil" server (127.0.0.3); the storage hop redirects to each interesting
  ``Location``, and no server but Kaggle may ever see the token, nor may the
  error, the logs or the cache;
* redirects to other schemes, ports, userinfo, and URLs that cannot be
  requested at all: they fail at once with DownloadError, naming the redirect
  (not the URL that answered with it).

The differential tests fake only the adapters' ``send`` (no socket), so
``requests.Session.send`` runs as in production; the ground truth is the
connection pool ``requests`` would take the connection from.
"""

from __future__ import annotations

import base64
import io
import itertools
import logging
import os
import random
import re
import time
from dataclasses import dataclass
from typing import List, Optional, Tuple
from urllib.parse import urljoin

import pytest
import requests
from requests.structures import CaseInsensitiveDict

import hubcache
from hubcache import redaction
from hubcache import transport as transport_module
from hubcache.config import load_settings
from hubcache.errors import DownloadError, HubcacheError

from archives import fake_saved_model
from hubserver import HubServer, Reply

TOKEN = "kaggle-origin-secret-7f3a9c"
BEARER = f"Bearer {TOKEN}"
MODEL = "google/tiny/tensorFlow2/tiny/1"
HANDLE = f"https://www.kaggle.com/models/{MODEL}"

# --------------------------------------------------------------------------
# The corpus. Placeholders: {K} the Kaggle host as URLs write it, {KP} its
# port, {E} and {EP} the other ("evil") host and port; {KU} the Kaggle host in
# upper case, {K%} percent-encoded, {KFW} in fullwidth characters, {K。} with
# ideographic full stops, {KP+} the port plus 65536 (wraps to it in 16 bits).
# --------------------------------------------------------------------------

CORPUS: List[str] = [
    # plain references, the baseline
    "http://{K}:{KP}/x",
    "http://{E}:{EP}/x",
    "//{K}:{KP}/x",
    "//{E}:{EP}/x",
    "/x",
    "x",
    "../x",
    "?q=1",
    "#frag",
    "",
    # backslashes before/after @, and as the slash of the scheme
    "http://{E}:{EP}\\@{K}:{KP}/x",
    "http://{E}:{EP}\\\\@{K}:{KP}/x",
    "http://{K}:{KP}\\@{E}:{EP}/x",
    "http://{E}:{EP}\\{K}:{KP}/x",
    "http://{E}:{EP}\\.{K}:{KP}/x",
    "http://{K}:{KP}\\.{E}:{EP}/x",
    "http://\\{E}:{EP}@{K}:{KP}/x",
    "http://{E}\\:{EP}@{K}:{KP}/x",
    "http://{E}\\@{K}:{KP}/x",
    "http://{E}@\\{K}:{KP}/x",
    "http://{K}@\\{E}:{EP}/x",
    "http://{E}:{EP}@{K}:{KP}\\/x",
    "http://{K}:{KP}\\",
    "http:\\\\{E}:{EP}/x",
    "http:\\\\{K}:{KP}/x",
    "http:/\\{E}:{EP}/x",
    "http:/\\{K}:{KP}/x",
    "http:\\/{K}:{KP}/x",
    "http:\\/{E}:{EP}/x",
    "\\\\{E}:{EP}/x",
    "\\\\{K}:{KP}/x",
    "/\\{E}:{EP}/x",
    "/\\{K}:{KP}/x",
    "\\/{E}:{EP}/x",
    "https:\\\\{K}:{KP}/x",
    # percent-encoded delimiters
    "http://{E}:{EP}%5C@{K}:{KP}/x",
    "http://{E}:{EP}%5c@{K}:{KP}/x",
    "http://{K}:{KP}%5C@{E}:{EP}/x",
    "http://{E}:{EP}%5C{K}:{KP}/x",
    "http://{E}%5C{K}:{KP}/x",
    "http://{E}%40{K}:{KP}/x",
    "http://{K}%40{E}:{EP}/x",
    "http://{E}:{EP}%40{K}:{KP}/x",
    "http://{K}:{KP}%40{E}:{EP}/x",
    "http://{E}%2F@{K}:{KP}/x",
    "http://{E}%2f{K}:{KP}/x",
    "http://{K}%2F{E}:{EP}/x",
    "http://{K}%2f.{E}:{EP}/x",
    "http://{K}:{KP}%2F@{E}:{EP}/x",
    "http://{K}%23@{E}:{EP}/x",
    "http://{K}%3F@{E}:{EP}/x",
    "http://{K}%3A{KP}@{E}:{EP}/x",
    "http://{K}%3a{KP}/x",
    "http://{K%}:{KP}/x",
    "http://{K%}:{KP}@{E}:{EP}/x",
    "http://{E}:{EP}@{K%}:{KP}/x",
    "http://{K}%00:{KP}/x",
    "http://{K}%00.{E}:{EP}/x",
    "http://{K}%0a:{KP}/x",
    "http://{K}%20:{KP}/x",
    "http://{K}%2e:{KP}/x",
    "http://{K}%252e:{KP}/x",
    "http://{K}%:{KP}/x",
    "http://{K}%2:{KP}/x",
    # userinfo: with : and @ percent-encoded, several @, empty parts
    "http://user:pass@{K}:{KP}/x",
    "http://user@{K}:{KP}/x",
    "http://user%40{E}:{EP}@{K}:{KP}/x",
    "http://user%3Apass@{K}:{KP}/x",
    "http://user:pa%40ss@{K}:{KP}/x",
    "http://@{K}:{KP}/x",
    "http://:@{K}:{KP}/x",
    "http://@@{K}:{KP}/x",
    "http://a@b@{K}:{KP}/x",
    "http://{K}:{KP}@{E}:{EP}/x",
    "http://{E}:{EP}@{K}:{KP}/x",
    "http://{E}@{K}:{KP}@{E}:{EP}/x",
    "http://{K}:{KP}@{E}:{EP}@{K}:{KP}/x",
    "http://{K}@{K}:{KP}/x",
    "http://{K}:{KP}@{K}:{KP}/x",
    "http://{E}:{EP}@/x",
    "http://{K}:{KP}@/x",
    "http://{E}:{EP}@:{KP}/x",
    # # ? ; / inside the userinfo
    "http://{E}:{EP}#@{K}:{KP}/x",
    "http://{E}:{EP}?@{K}:{KP}/x",
    "http://{K}:{KP}#@{E}:{EP}/x",
    "http://{K}:{KP}?@{E}:{EP}/x",
    "http://{E}#{K}:{KP}@/x",
    "http://user:p#@{K}:{KP}/x",
    "http://user:p?@{K}:{KP}/x",
    "http://{E}:{EP};@{K}:{KP}/x",
    "http://{K}:{KP};@{E}:{EP}/x",
    "http://{E}:{EP}/@{K}:{KP}/x",
    "http://{K}:{KP}/@{E}:{EP}/x",
    "http://{K}:{KP}?@{E}:{EP}",
    "http://{K}:{KP}#@{E}:{EP}",
    "http://{E};{K}:{KP}/x",
    "http://{E},{K}:{KP}/x",
    # whitespace and control characters in the authority
    "http://{K}:{KP}\t@{E}:{EP}/x",
    "http://{E}:{EP}\t@{K}:{KP}/x",
    "http://{K}\t:{KP}/x",
    "http://{K}:\t{KP}/x",
    "http://{K}:{KP}\n/x",
    "http://{E}\r\n@{K}:{KP}/x",
    "http://{K}\r\n.{E}:{EP}/x",
    "http://{K}\x00.{E}:{EP}/x",
    "http://{E}\x00@{K}:{KP}/x",
    "http://{K}:{KP}\x00@{E}:{EP}/x",
    "http://{K} :{KP}/x",
    "http:// {K}:{KP}/x",
    "http://{K}: {KP}/x",
    "http://{K}:{KP} @{E}:{EP}/x",
    "http://{E}:{EP} @{K}:{KP}/x",
    "http://{E} {K}:{KP}/x",
    " http://{E}:{EP}/x",
    "\thttp://{K}:{KP}/x",
    "\x00http://{E}:{EP}/x",
    "http://{K}:{KP}\x0b/x",
    "http://{K}:{KP}\x0c@{E}:{EP}/x",
    "http://{K}\x7f:{KP}/x",
    "http://{K}\u00a0:{KP}/x",
    "ht\ttp://{K}:{KP}/x",
    "http:/\t/{K}:{KP}/x",
    "h\nttp://{E}:{EP}/x",
    # case, dots
    "HTTP://{K}:{KP}/x",
    "hTtP://{K}:{KP}/x",
    "HTTPS://{K}:{KP}/x",
    "http://{KU}:{KP}/x",
    "HTTP://{KU}:{KP}/X",
    "http://{K}.:{KP}/x",
    "http://{K}..:{KP}/x",
    "http://.{K}:{KP}/x",
    "http://{K}.{E}:{EP}/x",
    "http://{E}.{K}:{KP}/x",
    "http://{K}.:{EP}/x",
    # IPv6 literals and zone ids
    "http://[::1]:{KP}/x",
    "http://[::1]/x",
    "http://[::ffff:127.0.0.1]:{KP}/x",
    "http://[::ffff:7f00:1]:{KP}/x",
    "http://[0:0:0:0:0:ffff:127.0.0.1]:{KP}/x",
    "http://[::FFFF:7F00:1]:{KP}/x",
    "http://[::127.0.0.1]:{KP}/x",
    "http://[fe80::1%25eth0]:{KP}/x",
    "http://[fe80::1%eth0]:{KP}/x",
    "http://[::1%25{K}]:{KP}/x",
    "http://[{K}]:{KP}/x",
    "http://[::1]{K}:{KP}/x",
    "http://{K}[::1]:{KP}/x",
    "http://[::1]@{K}:{KP}/x",
    "http://{K}:{KP}@[::1]/x",
    "http://[{E}]@{K}:{KP}/x",
    "http://[::1]:{KP}:{KP}/x",
    "http://[::1]]:{KP}/x",
    "http://[[::1]]:{KP}/x",
    "http://[v1.fe]:{KP}/x",
    "http://[::1/x",
    "http://::1]/x",
    "http://[::1",
    "http://[/x",
    "http://]/x",
    # IPv4 in other notations (all 127.0.0.1 or 127.0.0.3 to the resolver)
    "http://2130706433:{KP}/x",
    "http://0177.0.0.1:{KP}/x",
    "http://0x7f.1:{KP}/x",
    "http://0x7f000001:{KP}/x",
    "http://0X7F.0.0.1:{KP}/x",
    "http://127.1:{KP}/x",
    "http://127.0.1:{KP}/x",
    "http://127.0.0.01:{KP}/x",
    "http://0127.0.0.1:{KP}/x",
    "http://017700000001:{KP}/x",
    "http://127.000.000.001:{KP}/x",
    "http://2130706435:{EP}/x",
    "http://0x7f.3:{EP}/x",
    "http://127.0.0.03:{EP}/x",
    "http://127.0.0.03:{KP}/x",
    "http://127.0.0.3:{KP}/x",
    "http://127.0.0.1:{EP}/x",
    "http://1.2.3.4.5:{KP}/x",
    "http://localhost:{KP}/x",
    # ports
    "http://{K}:0{KP}/x",
    "http://{K}:00{KP}/x",
    "http://{K}:+{KP}/x",
    "http://{K}:-{KP}/x",
    "http://{K}:{KP}./x",
    "http://{K}:{KP}a/x",
    "http://{K}:0x{KP}/x",
    "http://{K}:{KP}0/x",
    "http://{K}:{KP+}/x",
    "http://{K}:/x",
    "http://{K}:",
    "http://{K}::{KP}/x",
    "http://{K}/x",
    "http://{K}:80/x",
    "http://{K}:443/x",
    "https://{K}/x",
    "https://{K}:443/x",
    "https://{K}:0443/x",
    "https://{K}:/x",
    "https://{K}:80/x",
    "https://{K}:{KP}/x",
    "http://{K}:{KP}:{KP}/x",
    "http://{K}:{KP}:{EP}/x",
    "http://{K}:{EP}:{KP}/x",
    "http://{K}:65535/x",
    "http://{K}:65536/x",
    "http://{K}:99999/x",
    "http://{K}:-1/x",
    "http://{K}:0/x",
    "http://{K}:1e3/x",
    "http://{K}:\uff18\uff10/x",
    "http://{K}:\u0668\u0660/x",
    # empty host, odd slashes
    "http:///x",
    "http://:{KP}/x",
    "http://@/x",
    "http://@:{KP}/x",
    "http:/x",
    "http:x",
    "http:",
    "http://",
    "//",
    "///{E}:{EP}/x",
    "////{E}:{EP}/x",
    "http:////{E}:{EP}/x",
    "http:///{E}:{EP}/x",
    "http:/{E}:{EP}/x",
    "http:{K}:{KP}/x",
    "http:{E}:{EP}/x",
    "https:{K}:{KP}/x",
    "https:/{K}:{KP}/x",
    ".//{E}:{EP}/x",
    "/.//{E}:{EP}/x",
    "/..//{E}:{EP}/x",
    # unicode and IDNA
    "http://{KFW}:{KP}/x",
    "http://{K。}:{KP}/x",
    "http://{K}\u3002:{KP}/x",
    "http://{K}\uff0e{E}:{EP}/x",
    "http://{K}\uff20{E}:{EP}/x",
    "http://{E}\uff20{K}:{KP}/x",
    "http://{E}\uff0f{K}:{KP}/x",
    "http://{E}\uff3c@{K}:{KP}/x",
    "http://{E}\uff03@{K}:{KP}/x",
    "http://{E}\uff1f@{K}:{KP}/x",
    "http://{K}\uff1a{KP}/x",
    "http://{E}\u2044{K}:{KP}/x",
    "http://{E}\u2215{K}:{KP}/x",
    "http://{E}\u2100{K}:{KP}/x",
    "http://{E}\u2488{K}:{KP}/x",
    "http://{K}\u200b:{KP}/x",
    "http://{K}\u00ad:{KP}/x",
    "http://{K}\ufeff:{KP}/x",
    "http://xn--{K}:{KP}/x",
    "http://b\u00fccher.example/x",
    "http://xn--bcher-kva.example/x",
    "http://\u0261oogle.com/x",
    "http://{E}\u0130{K}:{KP}/x",
    # other schemes
    "file:///etc/passwd",
    "file://{K}/etc/passwd",
    "ftp://{K}:{KP}/x",
    "ftp://{E}:{EP}/x",
    "gopher://{K}:{KP}/x",
    "ws://{K}:{KP}/x",
    "wss://{K}:{KP}/x",
    "javascript:alert(1)",
    "data:text/plain,hi",
    "mailto:a@{K}",
    "httpx://{K}:{KP}/x",
    "http+unix://%2Ftmp%2Fsock/x",
    "https+http://{K}:{KP}/x",
    "h ttp://{K}:{KP}/x",
    "http\\://{K}:{KP}/x",
    "://{K}:{KP}/x",
    "ht%74p://{K}:{KP}/x",
]

# Generated combinations: scheme x userinfo x host x port x suffix.
_PREFIXES = ["http://", "HTTP://", "https://", "//", "http:/\\", "http:\\\\"]
_USERINFO = ["", "u:p@", "{E}:{EP}@", "{K}:{KP}@", "{E}:{EP}\\@", "{E}%40", "{E}#@", "@"]
_HOSTS = ["{K}", "{E}", "{KU}", "{K}.", "[::1]", "2130706433", "{K}%2F{E}", "{K%}"]
_PORTS = ["", ":", ":{KP}", ":0{KP}", ":{EP}", ":80", ":443", ":99999"]
_SUFFIXES = ["/x", "\\@{E}:{EP}/x", "#@{E}:{EP}/x", "?@{E}:{EP}/x", "@{E}:{EP}/x", "\\{E}/x", ""]


GENERATED_SAMPLE = 2500  # of the 21,504 combinations, per setup (all: about 20 s each)


def generated(sample: Optional[int] = GENERATED_SAMPLE) -> List[str]:
    """The product of the pieces above, or a fixed sample of it."""
    every = ["".join(parts) for parts in itertools.product(_PREFIXES, _USERINFO, _HOSTS, _PORTS, _SUFFIXES)]
    if sample is None or sample >= len(every):
        return every
    return random.Random(5).sample(every, sample)


# Random authorities: pieces around the real hosts.
_FUZZ_PIECES = [
    "{K}", "{K}", "{K}", "{E}", "{E}", ":", ":", "{KP}", "{KP}", "{EP}", "@", "@", "\\", "\\", "/", "//",
    "%40", "%5C", "%2F", "%2e", "%25", "%", "#", "?", ";", ",", "[", "]", "[::1]", "::", ".", "..", "\t",
    " ", "\x00", "\r", "\n", "\x0b", "\u00a0", "\uff20", "\u3002", "\uff0e", "\uff0f", "\uff3c", "\uff1a",
    "0", "00", "0x7f", "2130706433", "65536", "80", "443", "u:p", "xn--", "-", "_", "~", "!", "$", "'",
    "(", ")", "*", "+", "=", "&", "\u00df", "\u0131",
]
_FUZZ_PREFIXES = [
    "http://", "http://", "http://", "https://", "HTTP://", "//", "http:/\\", "http:\\\\", "\\\\", "/\\",
    "http:", "http:/", "http:///", " http://", "\thttp://",
]


def fuzz_cases(seed: int, count: int) -> List[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        pieces = [rng.choice(_FUZZ_PIECES) for _ in range(rng.randint(1, 9))]
        if rng.random() < 0.5:  # keep a real authority in the mix most of the time
            pieces.insert(rng.randint(0, len(pieces)), rng.choice(["{K}:{KP}", "{E}:{EP}", "{K}", "{E}"]))
        tail = rng.choice(["/x", "", "/x?y=1", "#f", "/\\x", "?@{E}"])
        out.append(rng.choice(_FUZZ_PREFIXES) + "".join(pieces) + tail)
    return out


# --------------------------------------------------------------------------
# Setups: the Kaggle endpoint, the other host, and the hop that redirects.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    name: str
    endpoint: str  # HUBCACHE_KAGGLE_ENDPOINT: the credentials' origin
    k: str  # the Kaggle host as written in URLs
    kp: str  # its port
    e: str  # another host
    ep: str  # its port
    base: str  # the URL whose answer redirects

    def fill(self, template: str) -> str:
        values = {
            "K": self.k,
            "KP": self.kp,
            "E": self.e,
            "EP": self.ep,
            "KU": self.k.upper(),
            "K%": "".join(c if c in "[]:" else f"%{ord(c):02X}" for c in self.k),
            "KFW": "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in self.k),
            "K。": self.k.replace(".", "\u3002"),
            "KP+": str(int(self.kp) + 65536),
        }
        return re.sub(r"\{(K%|K。|KP\+|KFW|KU|KP|EP|K|E)\}", lambda m: values[m.group(1)], template)


SETUPS = [
    # Kaggle and storage on loopback, as the end-to-end tests have them.
    Setup("loopback", "http://127.0.0.1:8001", "127.0.0.1", "8001", "127.0.0.3", "8003",
          "http://127.0.0.2:8002/kaggle-models/blob?X-Goog-Signature=ab"),
    # The same, but the Kaggle answer itself redirects (relative references stay on Kaggle).
    Setup("loopback-from-kaggle", "http://127.0.0.1:8001", "127.0.0.1", "8001", "127.0.0.3", "8003",
          "http://127.0.0.1:8001/api/v1/models/o/m/f/v/1/download"),
    # The real endpoint: https, default port.
    Setup("kaggle.com", "https://www.kaggle.com", "www.kaggle.com", "443", "evil.example", "443",
          "https://storage.googleapis.com/kaggle-models/blob?X-Goog-Signature=ab"),
    Setup("kaggle.com-from-kaggle", "https://www.kaggle.com", "www.kaggle.com", "443", "evil.example", "443",
          "https://www.kaggle.com/models/o/m/f/v/1?tf-hub-format=compressed"),
    # http on its default port, a name whose upper case differs.
    Setup("name-port-80", "http://kaggle.example", "kaggle.example", "80", "evil.example", "80",
          "http://mirror.example/blob"),
    # An IPv6 literal endpoint.
    Setup("ipv6", "http://[::1]:8001", "[::1]", "8001", "127.0.0.3", "8001", "http://127.0.0.2:8002/blob"),
]
SETUP_IDS = [s.name for s in SETUPS]


def variants(location: str) -> List[str]:
    """``location``, and as ``requests`` would read it from the wire when the
    server sent it in UTF-8 (headers are decoded as Latin-1)."""
    out = [location]
    if not location.isascii():
        out.append(location.encode("utf-8").decode("latin-1"))
    return out


# --------------------------------------------------------------------------
# The harness: Transport._follow with only the socket send replaced.
# --------------------------------------------------------------------------


def _norm(origin: Optional[Tuple[str, str, int]]) -> Optional[Tuple[str, str, int]]:
    if origin is None:
        return None
    scheme, host, port = origin
    return scheme.lower(), host.lower().strip("[]"), int(port)


def ground_truth(session: requests.Session, prepared: requests.PreparedRequest) -> Optional[Tuple[str, str, int]]:
    """(scheme, host, port) of the pool requests would open the connection
    from (no proxy), or None when it would open none."""
    try:
        adapter = session.get_adapter(prepared.url)
        pool = adapter.get_connection_with_tls_context(prepared, True, {}, None)
    except Exception:  # noqa: BLE001 - any refusal means no connection at all
        return None
    return _norm((pool.scheme, pool.host, pool.port))


@dataclass
class Outcome:
    location: str
    target: Optional[str]  # urljoin(base, location), None if urljoin raised
    hop: Optional[requests.PreparedRequest]  # the request sent after the redirect
    carried: bool  # the Kaggle Authorization was on it
    verdict: Optional[bool]  # may_carry_credentials(prepared.url), computed directly
    truth: Optional[Tuple[str, str, int]]  # where the connection would go
    error: Optional[BaseException]  # what _follow raised instead

    def describe(self) -> str:
        hop = self.hop.url if self.hop is not None else None
        err = f"{type(self.error).__name__}: {self.error}" if self.error else None
        return (f"Location={self.location!r} target={self.target!r} sent={hop!r} carried={self.carried} "
                f"verdict={self.verdict} truth={self.truth} error={err}")


class Harness:
    """One Transport with credentials; ``run(location)`` follows one redirect
    from ``setup.base`` to ``location`` with only the socket replaced.

    By default the adapters' ``send`` is faked, so ``requests.Session.send``
    runs for real (it parses the ``Location`` too, to compute
    ``response.next``). With ``fake="session"`` the whole ``Session.send`` is
    faked: the Transport's own logic alone."""

    def __init__(self, setup: Setup, cache_dir: str, fake: str = "adapter") -> None:
        self.setup = setup
        # The settings as a call reads them, credentials included (from the environment).
        self.transport = transport_module.Transport("test-handle", load_settings(cache_dir=cache_dir), setup.endpoint)
        assert self.transport.credentials is not None, "KAGGLE_API_TOKEN must be set"
        self.authorization = self.transport.credentials.authorization
        self.allowed = self.transport.allowed
        self.kaggle = _norm(next(iter(self.allowed)))
        self.sent: List[requests.PreparedRequest] = []
        self.location = ""
        if fake == "session":
            self.transport.session.send = self._send  # type: ignore[method-assign]
        else:
            for adapter in self.transport.session.adapters.values():
                adapter.send = self._send  # type: ignore[method-assign]

    def _send(self, prepared: requests.PreparedRequest, **kwargs: object) -> requests.Response:
        self.sent.append(prepared)
        response = requests.Response()
        response.raw = io.BytesIO(b"")
        response.url = prepared.url
        response.request = prepared
        response.reason = "Found"
        if len(self.sent) == 1:
            response.status_code = 302
            response.headers = CaseInsensitiveDict({"Location": self.location})
        else:
            response.status_code = 200
            response.headers = CaseInsensitiveDict({"Content-Type": "application/octet-stream"})
        return response

    def run(self, location: str) -> Outcome:
        self.sent, self.location = [], location
        error: Optional[BaseException] = None
        try:
            self.transport._follow(self.setup.base, {})
        except Exception as e:  # noqa: BLE001 - classified by the callers
            error = e
        assert self.sent and self.sent[0].url is not None
        try:
            target: Optional[str] = urljoin(self.setup.base, location)
        except ValueError:
            target = None
        hop = self.sent[1] if len(self.sent) > 1 else None
        carried = hop is not None and hop.headers.get("Authorization") == self.authorization
        verdict = truth = None
        if hop is not None:
            verdict = transport_module.may_carry_credentials(hop.url, self.allowed)
            truth = ground_truth(self.transport.session, hop)
        return Outcome(location, target, hop, carried, verdict, truth, error)

    def leaks(self, outcome: Outcome) -> List[str]:
        """Why ``outcome`` leaks the credentials, if it does."""
        problems = []
        if outcome.carried and outcome.truth != self.kaggle:
            problems.append(f"credentials carried to {outcome.truth}, not {self.kaggle}")
        if outcome.verdict and outcome.truth != self.kaggle:
            problems.append(f"may_carry_credentials said yes for {outcome.truth}, not {self.kaggle}")
        if outcome.hop is not None and outcome.carried != bool(outcome.verdict):
            problems.append("the Transport's decision differs from may_carry_credentials")
        if outcome.hop is not None and outcome.truth != self.kaggle:
            for name, value in outcome.hop.headers.items():
                if TOKEN in value or TOKEN in name:
                    problems.append(f"the token is in header {name!r} to {outcome.truth}")
            if outcome.hop.url and TOKEN in outcome.hop.url:
                problems.append("the token is in the URL")
        return problems


@pytest.fixture
def creds(monkeypatch, tmp_path):
    """A clean environment with a Kaggle token; no proxies."""
    for name in list(os.environ):
        if name.startswith(("HUBCACHE_", "KAGGLE_")) or name.lower().endswith("_proxy"):
            monkeypatch.delenv(name, raising=False)
    (tmp_path / "kaggle-config").mkdir()
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle-config"))
    monkeypatch.setenv("KAGGLE_API_TOKEN", TOKEN)
    return str(tmp_path / "cache")


@dataclass
class Tally:
    cases: int = 0
    unusable: int = 0  # refused before any send (DownloadError)
    to_kaggle_with: int = 0  # connection to the Kaggle origin, credentials attached
    to_kaggle_without: int = 0  # ... without them: a conservative "no"
    elsewhere: int = 0  # connection to another origin (never with credentials)
    conservative: Optional[List[str]] = None

    def add(self, outcome: Outcome, kaggle: Optional[Tuple[str, str, int]]) -> None:
        self.cases += 1
        if outcome.hop is None:
            self.unusable += 1
        elif outcome.truth == kaggle:
            if outcome.carried:
                self.to_kaggle_with += 1
            else:
                self.to_kaggle_without += 1
                if self.conservative is not None and len(self.conservative) < 6:
                    self.conservative.append(outcome.hop.url or "")
        else:
            self.elsewhere += 1

    def line(self, name: str) -> str:
        return (f"{name:24} {self.cases:6} cases: {self.unusable:5} refused before sending, "
                f"{self.to_kaggle_with:4} to Kaggle with credentials, {self.to_kaggle_without:4} to "
                f"Kaggle without (conservative), {self.elsewhere:5} elsewhere, never with them")


def _run_corpus(setup: Setup, cache_dir: str, locations: List[str]) -> Tuple[Harness, Tally, List[str], List[Outcome]]:
    harness = Harness(setup, cache_dir)
    tally = Tally(conservative=[])
    leaks: List[str] = []
    outcomes = []
    for template in locations:
        for location in variants(setup.fill(template)):
            outcome = harness.run(location)
            outcomes.append(outcome)
            tally.add(outcome, harness.kaggle)
            for problem in harness.leaks(outcome):
                leaks.append(f"{problem}: {outcome.describe()}")
    return harness, tally, leaks, outcomes


def _report(capsys, lines: List[str]) -> None:
    with capsys.disabled():
        print("\n" + "\n".join(lines))


def test_corpus_is_big_enough():
    assert len(CORPUS) >= 150
    assert len(set(CORPUS)) == len(CORPUS), [c for c in CORPUS if CORPUS.count(c) > 1]
    assert len(generated(None)) == 6 * 8 * 8 * 8 * 7


def _for(setup: Setup, templates: List[str]) -> List[str]:
    """``templates``, and for an https endpoint each again with its lower-case
    ``http:`` made ``https:`` (most of the corpus is written for http)."""
    if not setup.endpoint.startswith("https:"):
        return templates
    return templates + [t.replace("http:", "https:") for t in templates if "http:" in t]


@pytest.mark.parametrize("setup", SETUPS, ids=SETUP_IDS)
def test_differential_corpus_never_carries_credentials_elsewhere(creds, setup, capsys):
    _, tally, leaks, _ = _run_corpus(setup, creds, _for(setup, CORPUS))
    lines = [tally.line(f"corpus/{setup.name}")]
    lines += [f"    conservative no: {u}" for u in tally.conservative or []]
    _report(capsys, lines)
    assert not leaks, "\n".join(leaks[:30])
    # The corpus reaches the Kaggle origin with credentials for the plain spellings.
    if setup.k != "[::1]":
        assert tally.to_kaggle_with >= 3
    assert tally.elsewhere > 10 and tally.unusable > 10


@pytest.mark.parametrize("setup", [s for s in SETUPS if s.name in ("loopback", "kaggle.com-from-kaggle")],
                         ids=["loopback", "kaggle.com-from-kaggle"])
def test_differential_generated_combinations(creds, setup, capsys):
    _, tally, leaks, _ = _run_corpus(setup, creds, generated())
    _report(capsys, [tally.line(f"generated/{setup.name}")])
    assert not leaks, "\n".join(leaks[:30])
    assert tally.to_kaggle_with > 0


def test_known_spellings_are_decided_as_expected(creds):
    """A few spellings whose answer is certain, so the harness itself is tested."""
    setup = SETUPS[0]
    harness = Harness(setup, creds)
    kaggle = ("http", "127.0.0.1", 8001)
    evil = ("http", "127.0.0.3", 8003)
    expected = {
        "http://127.0.0.1:8001/x": (True, kaggle),
        "HTTP://127.0.0.1:08001/x": (True, kaggle),
        "//127.0.0.1:8001/x": (True, kaggle),
        "http://127.0.0.3:8003\\@127.0.0.1:8001/x": (False, evil),  # the outside tester's case
        "http://127.0.0.1:8001\\@127.0.0.3:8003/x": (True, kaggle),  # the "@..." is path
        "http://127.0.0.3:8003@127.0.0.1:8001/x": (False, kaggle),  # userinfo: never
        "http://127.0.0.1:8001@127.0.0.3:8003/x": (False, evil),
        "http://127.0.0.1:8001#@127.0.0.3:8003/x": (True, kaggle),
        "http://127.0.0.1:8003/x": (False, ("http", "127.0.0.1", 8003)),
        "https://127.0.0.1:8001/x": (False, ("https", "127.0.0.1", 8001)),
        "http://2130706433:8001/x": (False, ("http", "2130706433", 8001)),
        "/\\127.0.0.3:8003/x": (False, ("http", "127.0.0.2", 8002)),
    }
    for location, (carried, truth) in expected.items():
        outcome = harness.run(location)
        assert (outcome.carried, outcome.truth) == (carried, truth), outcome.describe()
    for location in ("file:///etc/passwd", "ftp://127.0.0.1:8001/x", "http://127.0.0.1:99999/x"):
        outcome = harness.run(location)
        assert outcome.hop is None and isinstance(outcome.error, DownloadError), outcome.describe()


def test_an_ipv6_kaggle_endpoint_gets_its_credentials(creds):
    """A conservative "no" for every URL of an IPv6 endpoint: ``origin_of``
    keeps urllib3's brackets ("[::1]"), ``urlsplit().hostname`` drops them
    ("::1"), so ``may_carry_credentials`` never agrees, even on the endpoint
    itself, and a gated model behind such an endpoint is always refused."""
    endpoint = "http://[::1]:8001"
    allowed = frozenset([transport_module.origin_of(endpoint)])
    assert transport_module.may_carry_credentials(endpoint + "/models/o/m/f/v/1?tf-hub-format=compressed", allowed)
    harness = Harness(SETUPS[-1], creds)
    assert harness.run("http://[::1]:8001/x").carried


FUZZ_CASES = int(os.environ.get("HUBCACHE_FUZZ_CASES", "3000"))  # in all, over the two setups


@pytest.mark.parametrize("setup", [s for s in SETUPS if s.name in ("loopback", "kaggle.com")],
                         ids=["loopback", "kaggle.com"])
def test_fuzzed_authorities_never_carry_credentials_elsewhere(creds, setup, capsys):
    seeds = (20240501, 7, 1337) if setup.name == "loopback" else (42, 2718, 31337)
    per_seed = max(1, FUZZ_CASES // (2 * len(seeds)))
    locations = [c for seed in seeds for c in fuzz_cases(seed, per_seed)]
    _, tally, leaks, _ = _run_corpus(setup, creds, locations)
    _report(capsys, [tally.line(f"fuzz/{setup.name} seeds {seeds}")])
    assert not leaks, "\n".join(leaks[:30])


def _blames(message: str, url: str) -> bool:
    """Whether an error ``message`` says ``url`` itself cannot be requested
    (however hubcache shows it: ``redact`` or ``redact_text``)."""
    shown = {transport_module.redact(url), url}
    shown.add(redaction.redact_text(url))
    return any(f"{s} cannot be requested" in message for s in shown)


@pytest.mark.parametrize("setup", [SETUPS[0], SETUPS[3]], ids=["loopback", "kaggle.com-from-kaggle"])
def test_an_unfollowable_redirect_fails_as_download_error_naming_the_redirect(creds, setup, capsys):
    """Whatever the Location, following it raises DownloadError or nothing:
    never a ValueError, nor a requests exception (which ``Transport.get`` would
    retry, though the URL can never be requested); and the error names the
    redirect, not the URL that answered with it (which was requested fine)."""
    locations = CORPUS + generated()[::5] + fuzz_cases(99 if setup is SETUPS[0] else 98, 800)
    harness = Harness(setup, creds)
    raw, blamed = [], []
    cases = 0
    for template in locations:
        for location in variants(setup.fill(template)):
            cases += 1
            outcome = harness.run(location)
            if outcome.error is None:
                continue
            if not isinstance(outcome.error, DownloadError):
                raw.append(outcome.describe())
            elif _blames(str(outcome.error), setup.base):
                blamed.append(outcome.describe())
    summary = (f"unfollowable/{setup.name}: {cases} cases, {len(raw)} raw exceptions, "
               f"{len(blamed)} errors blaming the redirecting URL")
    _report(capsys, [summary])
    assert not raw, f"{len(raw)} Locations escape as raw exceptions:\n" + "\n".join(sorted(set(raw))[:20])
    assert not blamed, (
        f"{len(blamed)} of {cases} Locations fail with an error that says the redirecting URL "
        f"{transport_module.redact(setup.base)} cannot be requested:\n" + "\n".join(sorted(set(blamed))[:20])
    )


@pytest.mark.parametrize("location", [
    "http://[::1",
    "http://[::1/x",
    "http://[127.0.0.1]:8001/x",
    "http://[[::1]]:8001/x",
    "http://127.0.0.3:8003\uff20127.0.0.1:8001/x",
    "http://127.0.0.1:8001\uff0f@127.0.0.3/x",
    "//127.0.0.3\uff03@127.0.0.1:8001/x",
])
def test_follow_itself_turns_an_unparsable_location_into_download_error(creds, location):
    """``Transport._follow`` joins the Location with ``urljoin``, which raises
    ValueError for these. Today ``requests.Session.send`` happens to raise
    first (it parses the Location too, for ``response.next``), so with the
    whole ``Session.send`` faked this checks the Transport's own handling."""
    harness = Harness(SETUPS[0], creds, fake="session")
    outcome = harness.run(location)
    assert outcome.hop is None
    assert isinstance(outcome.error, DownloadError), outcome.describe()


# --------------------------------------------------------------------------
# End to end: real servers on loopback.
# --------------------------------------------------------------------------

E2E_LOCATIONS = [
    "http://{E}:{EP}/x",
    "//{E}:{EP}/x",
    "http://{K}:{KP}/x",
    "http://{E}:{EP}\\@{K}:{KP}/x",
    "http://{E}:{EP}\\\\@{K}:{KP}/x",
    "http://{K}:{KP}\\@{E}:{EP}/x",
    "http://{E}:{EP}\\{K}:{KP}/x",
    "http://\\{E}:{EP}@{K}:{KP}/x",
    "http://{E}\\:{EP}@{K}:{KP}/x",
    "http:\\\\{E}:{EP}/x",
    "http:/\\{E}:{EP}/x",
    "http:/\\{K}:{KP}/x",
    "/\\{E}:{EP}/x",
    "\\\\{E}:{EP}/x",
    "http://{E}:{EP}%5C@{K}:{KP}/x",
    "http://{E}%40{K}:{KP}/x",
    "http://{K}:{KP}%40{E}:{EP}/x",
    "http://{E}%2F@{K}:{KP}/x",
    "http://{K}:{KP}@{E}:{EP}/x",
    "http://{E}:{EP}@{K}:{KP}/x",
    "http://{E}@{K}:{KP}@{E}:{EP}/x",
    "http://{K}:{KP}@{E}:{EP}@{K}:{KP}/x",
    "http://user%40{E}:{EP}@{K}:{KP}/x",
    "http://user:pass@{K}:{KP}/x",
    "http://{E}:{EP}#@{K}:{KP}/x",
    "http://{E}:{EP}?@{K}:{KP}/x",
    "http://{K}:{KP}#@{E}:{EP}/x",
    "http://{K}:{KP}?@{E}:{EP}/x",
    "http://{E}:{EP};@{K}:{KP}/x",
    "http://{E}:{EP}/@{K}:{KP}/x",
    "http://{E}:{EP}\t@{K}:{KP}/x",
    "http://{K}:{KP}\t@{E}:{EP}/x",
    "http://{E}\x00@{K}:{KP}/x",
    "http://{E}:{EP} @{K}:{KP}/x",
    "HTTP://{K}:{KP}/x",
    "http://{K}:0{KP}/x",
    "http://{K}.:{KP}/x",
    "http://[::ffff:{K}]:{KP}/x",
    "http://[::1]:{KP}/x",
    "http://[{K}]:{KP}/x",
    "http://2130706433:{KP}/x",
    "http://0177.0.0.1:{KP}/x",
    "http://0x7f.1:{KP}/x",
    "http://2130706435:{EP}/x",
    "http://0x7f.3:{EP}/x",
    "http://127.0.0.03:{EP}/x",
    "http://127.0.0.03:{KP}/x",
    "http://{E}:{KP}/x",
    "http://{K}:{EP}/x",
    "http://localhost:{KP}/x",
    "http://{K}:{KP}:{EP}/x",
    "http://{K}:{KP+}/x",
    "http://{K}:99999/x",
    "http://{K}:/x",
    "http://:{KP}/x",
    "http:///{E}:{EP}/x",
    "http:{K}:{KP}/x",
    "https://{K}:{KP}/x",
    "http://{KFW}:{KP}/x",
    "http://{K。}:{KP}/x",
    "http://{E}\uff20{K}:{KP}/x",
    "http://{K}\uff20{E}:{EP}/x",
    "http://{E}\u2100{K}:{KP}/x",
    "file:///etc/passwd",
    "ftp://{E}:{EP}/x",
    "gopher://{E}:{EP}/x",
]


def _to_wire(location: str) -> str:
    """The header value to give http.server (which writes Latin-1): UTF-8 bytes."""
    return location if all(ord(c) < 256 for c in location) else location.encode("utf-8").decode("latin-1")


def _files_under(root: str) -> List[str]:
    out = []
    for dirpath, _, files in os.walk(root):
        out += [os.path.join(dirpath, f) for f in files]
    return out


_WITH_CREDENTIALS = re.compile(r"GET (\S+) \(with Kaggle credentials\)")


def check_no_leak(secrets: List[str], kaggle: HubServer, servers: List[HubServer], error: Optional[BaseException],
                  caplog, cache_dir: str) -> None:
    """No server but ``kaggle`` (and Kaggle's RPC API, HUBCACHE_KAGGLE_API_ENDPOINT)
    saw the credentials; no message, log or file holds them."""
    for server in servers:
        if server is kaggle or server.name == "kaggle-api":
            continue
        for req in server.log:
            auth = req.headers.get("authorization")
            shown = " ".join(f"{k}: {v}" for k, v in req.headers.items())
            assert not any(s in shown for s in secrets), f"{server.name} got the credentials: {req}"
            if auth is not None:  # only the URL's own userinfo, as requests sends it
                assert auth.startswith("Basic "), f"{server.name} got {auth!r}"
                decoded = base64.b64decode(auth[6:]).decode("latin-1")
                assert not any(s in decoded for s in secrets), f"{server.name} got the credentials: {req}"
    if error is not None:
        text = f"{error} {error!r} {getattr(error, 'url', '')}"
        assert not any(s in text for s in secrets), text
    assert not any(s in caplog.text for s in secrets)
    # hubcache's own log says where the credentials went: only to Kaggle's origin.
    allowed = transport_module.origin_of(kaggle.url)
    for url in _WITH_CREDENTIALS.findall(caplog.text):
        assert transport_module.origin_of(url) == allowed and url.startswith(kaggle.url + "/"), url
    for path in _files_under(cache_dir):
        with open(path, "rb") as f:
            data = f.read()
        assert not any(s.encode() in data for s in secrets), path


@pytest.fixture
def evil():
    server = HubServer("evil", host="127.0.0.3")
    server.put("/x", fake_saved_model())
    yield server
    server.stop()


def _setup_for(hub, evil: HubServer, base: str) -> Setup:
    kh, kp = hub.kaggle.url[len("http://"):].split(":")
    eh, ep = evil.url[len("http://"):].split(":")
    return Setup("e2e", hub.kaggle.url, kh, kp, eh, ep, base)


@pytest.mark.parametrize("template", E2E_LOCATIONS)
def test_storage_redirect_never_takes_the_token_elsewhere(env, hub, evil, monkeypatch, caplog, cache_dir, template):
    monkeypatch.setenv("KAGGLE_API_TOKEN", TOKEN)
    # Some targets are refused connections or odd names the resolver looks up
    # (and fails): retried, as they should be, but a few times is enough here.
    monkeypatch.setenv("HUBCACHE_MAX_RETRIES", "2")
    blob = hub.publish_kaggle(MODEL, fake_saved_model(), authorization=BEARER)
    hub.kaggle.put("/x", fake_saved_model())  # a redirect back to Kaggle can succeed too
    setup = _setup_for(hub, evil, f"{hub.storage.url}{blob}?X-Goog-Signature=deadbeef&X-Goog-Expires=600")
    location = setup.fill(template)
    expected = Harness(setup, cache_dir).run(location)  # what the code decides, without sockets
    hub.storage.route(blob, lambda req: Reply(302, headers={"Location": _to_wire(location)}))

    error: Optional[BaseException] = None
    started = time.monotonic()
    with caplog.at_level(logging.DEBUG):
        try:
            hubcache.resolve(HANDLE)
        except HubcacheError as e:
            error = e
    elapsed = time.monotonic() - started

    check_no_leak([TOKEN], hub.kaggle, hub.servers + [evil], error, caplog, cache_dir)
    assert hub.kaggle.log and hub.kaggle.log[0].headers.get("authorization") == BEARER  # the gate was passed
    assert hub.storage.count(blob) >= 1
    if expected.hop is None:  # a URL that cannot be requested: fails at once, never retried
        assert isinstance(error, DownloadError), expected.describe()
        assert "cannot be requested" in str(error) or "redirects" in str(error), str(error)
        assert "retrying" not in caplog.text, expected.describe()
        assert hub.storage.count(blob) == 1, hub.storage.log  # asked once: not retried
    assert elapsed < 10, f"{elapsed:.1f} s for {location!r}"


@pytest.mark.parametrize("template", [
    "http://{E}:{EP}/x",
    "http://{E}:{EP}\\@{K}:{KP}/x",
    "http://{K}:{KP}@{E}:{EP}/x",
    "http://{K}:{KP}/x",
    "/\\{E}:{EP}/x",
])
def test_basic_credentials_never_leave_kaggle_either(env, hub, evil, monkeypatch, caplog, cache_dir, template):
    user, key = "kaggle-user", "kaggle-key-5e1d"
    monkeypatch.setenv("KAGGLE_USERNAME", user)
    monkeypatch.setenv("KAGGLE_KEY", key)
    basic = "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()
    blob = hub.publish_kaggle(MODEL, fake_saved_model(), authorization=basic)
    setup = _setup_for(hub, evil, hub.storage.url + blob)
    location = setup.fill(template)
    hub.storage.route(blob, lambda req: Reply(302, headers={"Location": location}))
    error = None
    with caplog.at_level(logging.DEBUG):
        try:
            hubcache.resolve(HANDLE)
        except HubcacheError as e:
            error = e
    check_no_leak([key, basic[6:]], hub.kaggle, hub.servers + [evil], error, caplog, cache_dir)
    assert hub.kaggle.log[0].headers.get("authorization") == basic


# --------------------------------------------------------------------------
# Redirects from Kaggle itself.
# --------------------------------------------------------------------------

KAGGLE_PAGE = f"/models/{MODEL}"


def _kaggle_redirects_to(hub, location: str) -> None:
    def page(req):
        if req.headers.get("authorization") != BEARER:
            return Reply(403, b'{"message": "Permission denied"}')
        return Reply(302, headers={"Location": location})

    hub.kaggle.route(KAGGLE_PAGE, page)
    hub.kaggle.route(f"/api/v1/models/{MODEL}/download", page)


def _resolve(caplog) -> Tuple[Optional[BaseException], float]:
    started = time.monotonic()
    with caplog.at_level(logging.DEBUG):
        try:
            hubcache.resolve(HANDLE)
            error = None
        except HubcacheError as e:
            error = e
    return error, time.monotonic() - started


def test_kaggle_redirect_to_https_on_the_same_host_and_port_gets_no_credentials(env, hub, monkeypatch, caplog, cache_dir):
    monkeypatch.setenv("KAGGLE_API_TOKEN", TOKEN)
    _kaggle_redirects_to(hub, hub.kaggle.url.replace("http://", "https://") + "/x")
    error, _ = _resolve(caplog)
    assert isinstance(error, DownloadError)  # TLS to a plain HTTP server
    check_no_leak([TOKEN], hub.kaggle, hub.servers, error, caplog, cache_dir)
    sent = _WITH_CREDENTIALS.findall(caplog.text)
    assert sent and all(u.startswith(hub.kaggle.url + "/") for u in sent)
    assert not any(u.startswith("https://") for u in sent)


def test_kaggle_redirect_to_another_port_on_the_same_host_gets_no_credentials(env, hub, monkeypatch, caplog, cache_dir):
    monkeypatch.setenv("KAGGLE_API_TOKEN", TOKEN)
    other = HubServer("same-host-other-port")  # 127.0.0.1, another port
    try:
        other.put("/x.tar.gz", fake_saved_model())
        _kaggle_redirects_to(hub, other.url + "/x.tar.gz")
        error, _ = _resolve(caplog)
        assert error is None
        assert other.log and all("authorization" not in r.headers for r in other.log)
        check_no_leak([TOKEN], hub.kaggle, hub.servers + [other], error, caplog, cache_dir)
    finally:
        other.stop()


def test_kaggle_redirect_to_itself_with_userinfo_gets_no_kaggle_credentials(env, hub, monkeypatch, caplog, cache_dir):
    monkeypatch.setenv("KAGGLE_API_TOKEN", TOKEN)
    hub.kaggle.put("/landing", fake_saved_model())
    host = hub.kaggle.url[len("http://"):]
    _kaggle_redirects_to(hub, f"http://user:pass@{host}/landing")
    error, _ = _resolve(caplog)
    landing = hub.kaggle.requests_to("/landing")
    assert landing, error
    for req in landing:
        assert req.headers.get("authorization") != BEARER
        assert TOKEN not in " ".join(req.headers.values())
    check_no_leak([TOKEN], hub.kaggle, hub.servers, error, caplog, cache_dir)


UNREQUESTABLE = [
    ("file:///etc/passwd", "file://"),
    ("ftp://127.0.0.3:21/x", "ftp://"),
    ("gopher://127.0.0.3:70/x", "gopher://"),
    ("FILE:///etc/passwd", "file://"),
    ("javascript:alert(1)", "javascript://"),
    ("http://{K}:99999/", None),
    ("http://{K}:65536/", None),
    ("http://:99/x", "http://:99/x"),
    ("http://[::1", None),
    ("http://[::1/x", None),
]


@pytest.mark.parametrize("location, shown", UNREQUESTABLE, ids=[u for u, _ in UNREQUESTABLE])
def test_kaggle_redirect_to_an_unrequestable_url_fails_at_once(env, hub, monkeypatch, caplog, cache_dir, location, shown):
    monkeypatch.setenv("KAGGLE_API_TOKEN", TOKEN)
    monkeypatch.setenv("HUBCACHE_BACKOFF", "1")  # a retry would take seconds
    location = location.replace("{K}", hub.kaggle.url[len("http://"):].split(":")[0])
    _kaggle_redirects_to(hub, location)
    started = time.monotonic()
    with caplog.at_level(logging.DEBUG), pytest.raises(Exception) as info:
        hubcache.resolve(HANDLE)
    elapsed = time.monotonic() - started
    error = info.value
    assert type(error) is DownloadError, f"{type(error).__name__}: {error}"
    assert elapsed < 2, f"{elapsed:.1f} s: retried"
    assert "retrying" not in caplog.text
    message = str(error)
    assert "cannot be requested" in message and "redirect" in message, message
    page = f"{hub.kaggle.url}{KAGGLE_PAGE}?tf-hub-format=compressed"
    assert not _blames(message, page), f"the Kaggle page is blamed, not the redirect: {message}"
    if shown:
        assert shown in message, message
    check_no_leak([TOKEN], hub.kaggle, hub.servers, error, caplog, cache_dir)
