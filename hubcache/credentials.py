"""Kaggle credentials, found where kagglehub looks for them.

Read when a download to Kaggle needs them, from the variables
:mod:`hubcache.config` captured at call time (or ``kaggle.json``).
"""

from __future__ import annotations

import base64
import json
import os
from typing import Mapping, Optional

from .errors import ConfigError

#: The variables Kaggle credentials are read from (kagglehub's).
CREDENTIAL_VARIABLES = ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR")


class KaggleCredentials:
    """An ``Authorization`` header value for Kaggle, and where it came from.

    The secret never appears in ``repr``/``str``, so it cannot leak into logs.
    """

    __slots__ = ("authorization", "source")

    def __init__(self, authorization: str, source: str) -> None:
        self.authorization = authorization
        self.source = source

    def __repr__(self) -> str:
        return f"KaggleCredentials(from {self.source})"

    __str__ = __repr__


def kaggle_credentials(environ: Optional[Mapping[str, str]] = None) -> Optional[KaggleCredentials]:
    """Find Kaggle credentials, in the order kagglehub looks for them.

    ``KAGGLE_API_TOKEN`` (Bearer), then ``KAGGLE_USERNAME`` + ``KAGGLE_KEY``
    (Basic), then ``kaggle.json`` in ``KAGGLE_CONFIG_DIR`` or ``~/.kaggle``.
    Returns None when there are none (public models need none).
    """
    env = os.environ if environ is None else environ
    token = env.get("KAGGLE_API_TOKEN", "").strip()
    if token:
        return KaggleCredentials(f"Bearer {token}", "KAGGLE_API_TOKEN")
    user, key = env.get("KAGGLE_USERNAME", "").strip(), env.get("KAGGLE_KEY", "").strip()
    if user and key:
        return KaggleCredentials(_basic(user, key), "KAGGLE_USERNAME/KAGGLE_KEY")
    config_dir = env.get("KAGGLE_CONFIG_DIR") or os.path.join(os.path.expanduser("~"), ".kaggle")
    path = os.path.join(config_dir, "kaggle.json")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"Kaggle credentials file {path} could not be read ({type(e).__name__}): "
            'fix it to hold {"username": ..., "key": ...} or remove it.'
        ) from None
    if not (isinstance(data, dict) and data.get("username") and data.get("key")):
        raise ConfigError(
            f'Kaggle credentials file {path} lacks "username" and "key": '
            "download a fresh one from your Kaggle account settings."
        )
    return KaggleCredentials(_basic(str(data["username"]), str(data["key"])), path)


def _basic(user: str, key: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode("ascii")
