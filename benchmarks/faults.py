"""Fault -> outcome -> time to recover, for hubcache and (if installed) tensorflow_hub.

Each fault is injected by the loopback hub server of the test suite; each tool
runs in its own fresh process, fetching the same plain archive URL (tensorflow_hub
cannot be pointed at another tfhub.dev, so both get a URL on the storage server).
Times are measured inside the child, after its imports (TensorFlow's import is
not counted against tensorflow_hub). Waits are capped (--cap, default 60 s).

    python benchmarks/faults.py [--cap 60] [--tools hubcache,tensorflow_hub]

Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [os.path.join(REPO, "tests"), REPO]

from archives import Member, fake_saved_model, make_tar  # noqa: E402
from hubserver import FakeHub  # noqa: E402

SIZE = 4_000_000  # bytes of variables in the model

CHILD = {
    "hubcache": "import hubcache as tool\nresolve = tool.resolve\n",
    "tensorflow_hub": "import tensorflow_hub as tool\nresolve = tool.resolve\n",
}
CHILD_TAIL = """
import json, os, sys, time
t = time.monotonic()
try:
    path = resolve(sys.argv[1])
    files = sum(len(f) for _, _, f in os.walk(path))
    print(json.dumps({"ok": True, "seconds": time.monotonic() - t, "files": files}))
except BaseException as e:
    failure = {"ok": False, "seconds": time.monotonic() - t, "error": type(e).__name__, "message": str(e)[:160]}
    print(json.dumps(failure))
"""


def child(tool, url, env, cap):
    """Run one resolve; returns its JSON result, or a timeout marker."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD[tool] + CHILD_TAIL, url],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=cap + 15)  # + import time
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"ok": False, "error": "still blocked", "seconds": cap}
    lines = out.strip().splitlines()
    return json.loads(lines[-1]) if lines else {"ok": False, "error": "crashed", "seconds": 0}


def describe(result, cap):
    if result.get("error") == "still blocked":
        return f"still blocked after {cap:.0f} s", f"> {cap:.0f} s"
    if result["ok"]:
        return f"model returned ({result['files']} files)", f"{result['seconds']:.2f} s"
    return f"{result['error']}: {result.get('message', '')[:70]}", f"{result['seconds']:.2f} s"


class Bench:
    def __init__(self, tool, cap):
        self.tool, self.cap = tool, cap
        self.hub = FakeHub()
        self.cache = tempfile.mkdtemp(prefix=f"faults-{tool}-")
        self.env = dict(
            os.environ,
            TFHUB_CACHE_DIR=self.cache,
            NO_PROXY="*",
            HUBCACHE_DISABLE_PROGRESS="1",
            TF_CPP_MIN_LOG_LEVEL="3",
            PYTHONPATH=REPO,
        )
        self.env.update(self.hub.env())

    def close(self):
        self.hub.stop()
        shutil.rmtree(self.cache, ignore_errors=True)

    def publish(self, name, data):
        return self.hub.storage.put(f"/models/{name}.tar.gz", data)

    def run(self, url, **env):
        return child(self.tool, url, dict(self.env, **env), self.cap)


def kill_mid_download(b):
    data = fake_saved_model(1, SIZE)
    url = b.publish("kill", data)
    b.hub.storage.fault("/models/kill.tar.gz", bytes_per_second=len(data) // 4, times=1)
    victim = subprocess.Popen(
        [sys.executable, "-c", CHILD[b.tool] + CHILD_TAIL, url],
        env=b.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while b.hub.storage.count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # well into the throttled body
    victim.kill()
    victim.wait()
    return b.run(url)


def dropped_connection(b):
    data = fake_saved_model(2, SIZE)
    url = b.publish("drop", data)
    b.hub.storage.fault("/models/drop.tar.gz", cut_after=len(data) * 2 // 5, times=1)
    return b.run(url)


def stalled_server(b):
    data = fake_saved_model(3, SIZE)
    url = b.publish("stall", data)
    b.hub.storage.fault("/models/stall.tar.gz", stall_after=len(data) // 2, stall_seconds=b.cap + 30, times=1)
    return b.run(url, HUBCACHE_TIMEOUT="5")


def busy_server(b):
    data = fake_saved_model(4, SIZE)
    url = b.publish("busy", data)
    b.hub.storage.fault("/models/busy.tar.gz", status=503, retry_after="1", times=1)
    return b.run(url)


def corrupt_archive(b):
    data = bytearray(fake_saved_model(5, SIZE))
    data[len(data) // 2] ^= 0xFF
    url = b.publish("corrupt", bytes(data))
    first = b.run(url)
    second = b.run(url)  # what does the next call see?
    first["message"] = (
        first.get("message") or ""
    ) + f" | next call: {'model returned' if second['ok'] else second['error']}"
    return first


def damaged_entry(b):
    data = fake_saved_model(6, SIZE)
    url = b.publish("damaged", data)
    b.run(url)
    for root, _, files in os.walk(b.cache):
        for f in files:
            if f.startswith("variables.data"):
                os.remove(os.path.join(root, f))
    result = b.run(url)
    if result["ok"]:
        result["message"] = "variables present" if result["files"] >= 5 else "BROKEN: variables missing"
    return result


def path_traversal(b):
    url = b.publish("evil", make_tar([("saved_model.pb", b"x"), Member("../../escaped", b"owned")]))
    result = b.run(url)
    escaped = any(os.path.exists(os.path.join(d, "escaped")) for d in (b.cache, os.path.dirname(b.cache)))
    result["message"] = (result.get("message") or "") + (" | FILE ESCAPED" if escaped else " | nothing escaped")
    return result


SCENARIOS = [
    ("kill -9 mid-download, then a new process", kill_mid_download),
    ("connection dropped at 40 % of the body", dropped_connection),
    ("server stalls mid-body", stalled_server),
    ("503 with Retry-After: 1, once", busy_server),
    ("corrupt gzip data", corrupt_archive),
    ("cached entry lost its variables (tmp cleaner)", damaged_entry),
    ("archive with ../ member", path_traversal),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cap", type=float, default=60.0, help="longest wait per run, in seconds")
    parser.add_argument("--tools", default="hubcache,tensorflow_hub")
    args = parser.parse_args()
    tools = [t for t in args.tools.split(",") if t]
    if "tensorflow_hub" in tools and importlib.util.find_spec("tensorflow_hub") is None:
        print("tensorflow_hub is not installed: measuring hubcache only", file=sys.stderr)
        tools.remove("tensorflow_hub")
    header = "| fault | " + " | ".join(f"{t}: outcome | {t}: time" for t in tools) + " |"
    print(header)
    print("|" + "---|" * (1 + 2 * len(tools)))
    for title, scenario in SCENARIOS:
        cells = []
        for tool in tools:
            bench = Bench(tool, args.cap)
            try:
                outcome, seconds = describe(scenario(bench), args.cap)
            finally:
                bench.close()
            cells += [outcome.replace("|", "/"), seconds]
        print(f"| {title} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
