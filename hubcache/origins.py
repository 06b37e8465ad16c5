"""Which origin a URL names, and whether a request there may carry the Kaggle
credentials: one rule, :func:`may_carry_credentials`, decided with the same
parsers that open the connection (urllib3's and the standard library's).
"""

from __future__ import annotations

from typing import FrozenSet, Optional, Tuple
from urllib.parse import urlsplit

import urllib3

Origin = Tuple[str, str, int]


def origin_of(url: str) -> Optional[Origin]:
    """(scheme, host, port) of ``url`` as urllib3 reads it, or None if it has none."""
    try:
        parsed = urllib3.util.parse_url(url)
    except urllib3.exceptions.LocationParseError:
        return None
    scheme = (parsed.scheme or "").lower()
    if scheme not in ("http", "https") or not parsed.host:
        return None
    # urllib3 keeps an IPv6 literal's brackets; the standard library drops them.
    return scheme, parsed.host.lower().strip("[]"), parsed.port or (443 if scheme == "https" else 80)


def may_carry_credentials(url: str, allowed: FrozenSet[Origin]) -> bool:
    """Whether a request to ``url`` (as prepared by ``requests``, exactly what
    goes on the wire) may carry credentials meant for the ``allowed`` origins.

    The origin is read by every parser that takes part in opening the
    connection: urllib3's (which ``requests`` normalizes URLs with, and which
    older ``requests`` connect by) and the standard library's (which
    ``requests`` 2.32+ picks the connection pool by). All must agree on an
    allowed origin, and the URL must carry no user information: an authority
    that two parsers could read differently gets no credentials.
    """
    if not allowed:
        return False
    ours = origin_of(url)
    if ours is None or ours not in allowed:
        return False
    try:
        parsed = urllib3.util.parse_url(url)
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except (urllib3.exceptions.LocationParseError, ValueError):
        return False
    if parsed.auth is not None or "@" in parts.netloc or "\\" in parts.netloc:
        return False
    return (parts.scheme.lower(), (parts.hostname or "").lower(), port) == ours
