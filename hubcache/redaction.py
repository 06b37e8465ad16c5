"""Secrets in handles and URLs, hidden wherever they are stored or shown.

A URL's user information and the values of query and fragment parameters whose
names look like secrets (signatures, tokens, keys, passwords) become ``***``.
The cache key stays the SHA-1 of the handle itself (tensorflow_hub's name);
the redacted form is what goes into metadata, descriptors, logs, messages and
output.
"""

from __future__ import annotations

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
