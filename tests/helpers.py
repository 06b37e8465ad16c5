"""Helpers shared by the tests: child processes with this checkout importable,
the CLI in a child, racing resolvers, and what a cache has left over."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Dict

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def child_env(extra: Dict[str, str]) -> Dict[str, str]:
    """os.environ plus ``extra``, with this checkout importable."""
    out = dict(os.environ)
    out.update(extra)
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, HERE, out.get("PYTHONPATH", "")]))
    return out


def run_cli(
    *args: str, env: Dict[str, str], input: str = None, timeout: float = 120, cwd: str = None
) -> subprocess.CompletedProcess:
    """Run ``python -m hubcache ARGS`` in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "hubcache", *args],
        env=child_env(env),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


RESOLVER = """
import json, os, sys, time
handle = sys.argv[1]
gate = sys.argv[2] if len(sys.argv) > 2 else None
if gate:
    open(gate + ".ready." + str(os.getpid()), "w").close()
    while not os.path.exists(gate):
        time.sleep(0.002)
import hubcache
started = time.monotonic()
try:
    path = hubcache.resolve(handle)
    print(json.dumps({"ok": True, "path": path, "seconds": time.monotonic() - started}))
except hubcache.HubcacheError as e:
    print(json.dumps({"ok": False, "error": type(e).__name__, "message": str(e)}))
"""


def spawn_resolver(handle: str, env: Dict[str, str], gate: str = None, **popen) -> subprocess.Popen:
    """A child process that resolves ``handle`` (after ``gate`` appears, if given)
    and prints a JSON line: {"ok", "path", "seconds"} or {"ok", "error", "message"}."""
    args = [sys.executable, "-c", RESOLVER, handle] + ([gate] if gate else [])
    return subprocess.Popen(
        args, env=child_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen
    )


def result_of(proc: subprocess.Popen, timeout: float = 120) -> Dict:
    import json

    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def leftovers(cache_dir: str):
    """Temporary or trash directories left in a cache."""
    if not os.path.isdir(cache_dir):
        return []
    return [n for n in os.listdir(cache_dir) if ".hubcache-tmp." in n or ".hubcache-trash." in n]


def s3(endpoint):
    """A plain boto3 client, to set the stage and look behind hubcache's back."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint)


def index_record(data=b"archive", **extra):
    """A valid index record of the shared tier for an archive of bytes ``data``."""
    import hashlib

    return {
        "format": 1,
        "handle": "https://tfhub.dev/google/nnlm-en-dim128/2",
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "source": "https://storage.googleapis.com/tfhub-modules/google/nnlm-en-dim128/2.tar.gz",
        "time": "2026-11-24T20:00:00Z",
        "uploader": "node-1:4242",
        **extra,
    }
