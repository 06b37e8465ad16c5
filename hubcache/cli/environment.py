"""``env``: every setting, its value and where it came from, for bug reports.

It must work when a setting is invalid, which is when a report is needed
most: each variable is read on its own (``load_settings`` with only that
variable in its environment), so one bad value costs only its own row.
"""

from __future__ import annotations

import argparse
import os
import platform
from typing import Any, Dict, List, Mapping, Optional

from .._version import __version__
from ..config import SETTING_VARIABLES, kaggle_credentials, load_settings
from ..errors import ConfigError
from ..inventory import format_size
from ..redaction import redact
from .arguments import Command
from .output import EXIT_FAILED, Result, table

ENV_EPILOG = """\
examples:
  hubcache env
  hubcache env --json > hubcache-env.json

One row per environment variable (and one for --cache-dir when given).
FROM is "environment" (in effect), "environment, overridden by X", "default",
"not set" (the setting comes from another row), or "command line".
An invalid value is shown with its error instead of a value: then env still
shows everything, and exits 1. Kaggle credentials are named by where they
come from, never shown.

--json prints {"versions": {...}, "settings": [...], "kaggle_credentials": {...}}:
  versions            {"hubcache", "python", "platform", and the versions of
                      requests, urllib3, filelock, tqdm, tensorflow, keras,
                      tf-keras, and the extras' boto3, isal, google-crc32c
                      (null: not installed)}
  settings            one record per row: variable, setting (hubcache's name
                      for it), source (the FROM column), value (as used, or
                      null), text (as shown), error (the message, or null)
  kaggle_credentials  source (where they come from, or null), error (or null)"""

_PACKAGES = (
    "requests",
    "urllib3",
    "filelock",
    "tqdm",
    "tensorflow",
    "keras",
    "tf-keras",
    "boto3",
    "isal",
    "google-crc32c",
)
_SECONDS = {
    "timeout",
    "lock_timeout",
    "backoff",
    "min_rate_window",
    "latest_interval",
    "remote_timeout",
    "remote_wait",
    "remote_lease",
}


def add_commands(command: Command) -> None:
    command(
        "env",
        run,
        "show every setting, its value and where it came from",
        "Show the versions and every setting, for bug reports. Works even when a setting is invalid.",
        ENV_EPILOG,
        needs_settings=False,
    )


def run(args: argparse.Namespace, settings: None = None) -> Result:
    rows = setting_rows(os.environ, args.cache_dir)
    kaggle = _kaggle(os.environ)
    versions = _versions()
    bad = sum(r["error"] is not None for r in rows) + (kaggle["error"] is not None)
    width = max(map(len, versions))
    lines = [f"{name:{width}}  {version or 'not installed'}" for name, version in versions.items()]
    cells = [(r["variable"], r["source"], r["text"] if r["error"] is None else f"INVALID: {r['error']}") for r in rows]
    lines += ["", table(("VARIABLE", "FROM", "VALUE"), cells)]
    if kaggle["error"]:
        lines.append(f"Kaggle credentials: INVALID: {kaggle['error']}")
    elif kaggle["source"]:
        lines.append(f"Kaggle credentials: from {kaggle['source']} (not shown)")
    else:
        lines.append(f"Kaggle credentials: none (looked in {_kaggle_places(os.environ)})")
    data = {"versions": versions, "settings": rows, "kaggle_credentials": kaggle}
    if not bad:
        return Result(data, "\n".join(lines))
    them = "them" if bad > 1 else "it"
    notes = [f"{bad} invalid setting{'s' if bad > 1 else ''} (shown above): fix or unset {them}"]
    return Result(data, "\n".join(lines), EXIT_FAILED, notes)


def setting_rows(environ: Mapping[str, str], cache_dir_argument: Optional[str]) -> List[Dict[str, Any]]:
    """The rows of the report, documented in :data:`ENV_EPILOG`."""
    rows = []
    if cache_dir_argument:
        value = load_settings(cache_dir=cache_dir_argument, environ={}).cache_dir
        rows.append(_row("--cache-dir", "cache_dir", "command line", value))
    for setting, variables in SETTING_VARIABLES:
        present = {v: environ[v] for v in variables if v in environ}
        winner = _in_effect(setting, present, "--cache-dir" if setting == "cache_dir" and cache_dir_argument else None)
        for variable in variables:
            if variable not in present:
                if winner is None and variable == variables[0]:
                    rows.append(_row(variable, setting, "default", _value(setting, {})))
                else:
                    rows.append(_row(variable, setting, "not set", None, text="-"))
                continue
            raw = present[variable]
            try:
                value = _value(setting, {variable: raw})
            except ConfigError as e:
                message = str(e).replace(raw, redact(raw)) if "://" in raw else str(e)
                rows.append(_row(variable, setting, "environment", None, text="", error=message))
                continue
            source = "environment" if winner in (None, variable) else f"environment, overridden by {winner}"
            rows.append(_row(variable, setting, source, value))
    return rows


def _in_effect(setting: str, present: Dict[str, str], override: Optional[str]) -> Optional[str]:
    """Which source decides ``setting``: ``override``, else the first variable
    whose value alone gives the setting's value (None: the default, or unknown
    because a variable of the setting is invalid)."""
    if override:
        return override
    if not present:
        return None
    try:
        effective = _value(setting, present)
    except ConfigError:
        return None
    for variable, raw in present.items():
        try:
            if _value(setting, {variable: raw}) == effective:
                return variable
        except ConfigError:  # not read when an earlier variable decides (e.g. progress)
            continue
    return None


def _value(setting: str, environ: Dict[str, str]) -> Any:
    return getattr(load_settings(environ=environ), setting, None)


def _row(
    variable: str, setting: str, source: str, value: Any, *, text: Optional[str] = None, error: Optional[str] = None
) -> Dict[str, Any]:
    if isinstance(value, str) and "://" in value:
        value = redact(value)  # an endpoint may carry user:password@
    if isinstance(value, tuple):
        value = list(value)
    return {
        "variable": variable,
        "setting": setting,
        "source": source,
        "value": value,
        "text": _text(setting, value) if text is None else text,
        "error": error,
    }


def _text(setting: str, value: Any) -> str:
    """``value`` of ``setting`` as a person reads it."""
    if setting == "progress":  # "off" alone, beside HUBCACHE_DISABLE_PROGRESS, would read backwards
        return "bars on a terminal only" if value is None else "bars on" if value else "bars off"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return os.pathsep.join(value) or "none"
    if setting == "max_size":
        return format_size(value)
    if setting == "min_rate":
        return f"{format_size(value)}/s" if value else "0 (no floor)"
    if setting in _SECONDS:
        return f"{value:g} s"
    if setting == "max_ratio":
        return f"{value:g}" + (" (no bound)" if not value else "")
    if value is None:  # the shared tier and its endpoint
        return "none" if setting == "remote" else "the AWS SDK's own (AWS_ENDPOINT_URL_S3, ...)"
    return str(value)


def _kaggle(environ: Mapping[str, str]) -> Dict[str, Optional[str]]:
    try:
        credentials = kaggle_credentials(environ)
    except ConfigError as e:
        return {"source": None, "error": str(e)}
    return {"source": credentials.source if credentials else None, "error": None}


def _kaggle_places(environ: Mapping[str, str]) -> str:
    config_dir = environ.get("KAGGLE_CONFIG_DIR") or os.path.join(os.path.expanduser("~"), ".kaggle")
    return f"KAGGLE_API_TOKEN, KAGGLE_USERNAME/KAGGLE_KEY, {os.path.join(config_dir, 'kaggle.json')}"


def _versions() -> Dict[str, Optional[str]]:
    from importlib import metadata

    out: Dict[str, Optional[str]] = {
        "hubcache": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
