"""Speed and memory of hubcache against tensorflow_hub, kagglehub and `curl | tar`,
measured side by side in one run on loopback.

Workloads (built once into --work, default /tmp/hubcache-bench):
  incompressible  1 GiB of random data in 8 files, tar.gz
  compressible    1 GiB at a gzip ratio of about 2.45, tar.gz
  small-files     20,000 files of ~5.4 KiB (108 MiB), tar.gz
  tiny            a SavedModel-shaped archive of 200 KiB
  incompressible-256m  256 MiB of random data in 8 files, tar.gz (the single-stream table)

A separate server process serves them with sendfile. Each tool runs in a fresh
process per run, extracting into a fresh directory on the same filesystem
(--target, default tmpfs at /dev/shm: this machine's disk slows down for
minutes after gigabytes are written, which would measure the VM, not the tools;
the tools' order rotates from run to run; "temp disk" is the peak use of
that filesystem beyond what is left at the end, sampled every 10 ms);
times are wall-clock medians of --runs runs (tools in Python: measured around
the fetch itself, after imports). Peak RSS growth is measured in the child
(VmHWM), from after the tool's imports to the end of the fetch (hubcache
imports its download stack lazily; that one-time cost is reported apart).

    python benchmarks/speed.py [--runs 3] [--work DIR] [--target DIR] [--only incompressible,tiny]

Prints Markdown tables: fetches (with ratios to tensorflow_hub and to
`curl | tar xzf -`), warm resolve per call, import time, cold start (a fresh
process downloading a 4 KiB model, against `python -c "import requests"`),
the first resolve of a cached 20,000-file entry in a process, one stream in a
fresh process against `curl | python -m isal.igzip -dc | tar xf -` (256 MiB and
1 GiB incompressible, interpreter start and imports included), and parallel
prefetch. --skip leaves parts out; only the workloads the rest needs are built.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
GIB = 1 << 30

# --------------------------------------------------------------------- workloads


def _gzip_tar(path, members, level=6):
    """Write a tar.gz of (name, bytes-or-generator-of-bytes, size) members, streaming."""
    comp = zlib.compressobj(level, zlib.DEFLATED, 31)
    with open(path, "wb") as out:

        class Sink(io.RawIOBase):
            def writable(self):
                return True

            def write(self, b):
                out.write(comp.compress(bytes(b)))
                return len(b)

        with tarfile.open(fileobj=Sink(), mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for name, content, size in members:
                info = tarfile.TarInfo(name)
                info.size = size
                info.mtime = 1_700_000_000
                if content is None:  # a directory, listed as tfhub.dev archives list them
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                elif callable(content):
                    tar.addfile(info, _GenReader(content()))
                else:
                    tar.addfile(info, io.BytesIO(content))
        out.write(comp.flush())


class _GenReader(io.RawIOBase):
    def __init__(self, gen):
        self.gen, self.buf = gen, b""

    def readable(self):
        return True

    def read(self, n=-1):
        while len(self.buf) < n:
            more = next(self.gen, b"")
            if not more:
                break
            self.buf += more
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def _random_blocks(total, seed, compressible):
    rng = random.Random(seed)
    block = 1 << 20
    for _ in range(total // block):
        if compressible:  # about 40 % random bytes, the rest runs: gzip ratio ~2.45
            noise = rng.randbytes(block * 2 // 5)
            yield noise + bytes(block - len(noise))
        else:
            yield rng.randbytes(block)


def _weights(path, total, seed, compressible, level):
    """A SavedModel-shaped tar.gz: ``total`` bytes of variables in 8 shards."""
    shard = total // 8
    members = [
        (
            f"variables/variables.data-{i:05d}-of-00008",
            (lambda i=i: _random_blocks(shard, seed + i, compressible)),
            shard,
        )
        for i in range(8)
    ]
    _gzip_tar(path, [("saved_model.pb", b"x" * 1000, 1000), ("variables", None, 0)] + members, level=level)


def build(work, wanted):
    """The workloads named in ``wanted`` (built once), as {name: path}."""
    os.makedirs(work, exist_ok=True)
    specs = {
        "incompressible": lambda p: _weights(p, GIB, 0, False, level=1),
        "incompressible-256m": lambda p: _weights(p, GIB // 4, 0, False, level=1),
        "compressible": lambda p: _weights(p, GIB, 100, True, level=6),
        "small-files": lambda p: _gzip_tar(
            p,
            [("saved_model.pb", b"x" * 1000, 1000), ("assets", None, 0)]
            + [(f"assets/d{i:03d}", None, 0) for i in range(200)]
            + [(f"assets/d{i // 100:03d}/f{i:05d}.txt", _text(i), len(_text(i))) for i in range(20_000)],
        ),
        "tiny": lambda p: _gzip_tar(
            p,
            [
                ("saved_model.pb", random.Random(1).randbytes(2000), 2000),
                ("variables", None, 0),
                ("variables/variables.index", b"i" * 300, 300),
                ("variables/variables.data-00000-of-00001", random.Random(2).randbytes(200_000), 200_000),
            ],
        ),
    }
    paths = {}
    for name, make in specs.items():
        if name not in wanted:
            continue
        path = os.path.join(work, f"{name}.tar.gz")
        if not os.path.exists(path):
            print(f"building {path} ...", file=sys.stderr, flush=True)
            make(path + ".part")
            os.replace(path + ".part", path)
        paths[name] = path
    return paths


def _text(i):
    rng = random.Random(i)
    return (" ".join(f"token{rng.randrange(50000)}" for _ in range(540))).encode()[:5400]


# ------------------------------------------------------------------------ server

SERVER = r"""
import os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
root = sys.argv[1]
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        path = os.path.join(root, self.path.split("?")[0].lstrip("/"))
        if not os.path.isfile(path):
            self.send_response(404); self.send_header("Content-Length", "0"); self.end_headers(); return
        size = os.path.getsize(path)
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        with open(path, "rb") as f:
            self.wfile.flush()
            self.connection.sendfile(f)
s = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"""

# ------------------------------------------------------------------------- tools

CHILD = r"""
import json, os, sys, time
tool, url, out = sys.argv[1:4]
if tool == "hubcache-zlib":
    sys.modules["isal"] = None  # the fallback path: no accelerated inflate
if tool.startswith("hubcache"):
    import hubcache
    # What the first download imports (requests, ...), as tensorflow_hub imports
    # everything up front; its one-time cost is measured apart (cold start).
    import hubcache.archive, hubcache.cache, hubcache.config, hubcache.download, hubcache.entries
    fetch = lambda: hubcache.resolve(url)
elif tool == "tensorflow_hub":
    import tensorflow_hub
    fetch = lambda: tensorflow_hub.resolve(url)
def peak_kib():  # VmHWM: ru_maxrss would carry the forking parent's peak
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
rss = peak_kib()
t = time.perf_counter()
fetch()
print(json.dumps({"seconds": time.perf_counter() - t, "rss_growth_mib": (peak_kib() - rss) / 1024}))
"""


class DiskPeak:
    """Samples the target filesystem's usage while a tool runs: the peak above
    what is left at the end is what the tool held on disk besides its result
    (an archive copy, say)."""

    def __init__(self, path):
        self.path, self.peak, self._stop = path, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, shutil.disk_usage(self.path).used)
            time.sleep(0.01)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.extra = max(0, self.peak - shutil.disk_usage(self.path).used)


def run_tool(tool, url, cache):
    with DiskPeak(os.path.dirname(cache)) as disk:
        result = _run_tool(tool, url, cache)
    result["temp_disk_mib"] = disk.extra / (1 << 20)
    return result


def _run_tool(tool, url, cache):
    env = dict(
        os.environ,
        TFHUB_CACHE_DIR=cache,
        HUBCACHE_DISABLE_PROGRESS="1",
        NO_PROXY="*",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=REPO,
    )
    if tool.startswith("curl"):
        os.makedirs(cache, exist_ok=True)
        inflate = "tar xzf - " if tool == "curl | tar xzf -" else "igzip -dc | tar xf - "
        cmd = f"curl -sf '{url}' | {inflate} -C '{cache}'"
        t = time.perf_counter()
        subprocess.run(cmd, shell=True, check=True)
        return {"seconds": time.perf_counter() - t, "rss_growth_mib": None}
    r = subprocess.run([sys.executable, "-c", CHILD, tool, url, cache], env=env, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{tool} failed: {r.stderr[-800:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def available_tools():
    tools = ["hubcache", "hubcache-zlib", "curl | tar xzf -"]
    if shutil.which("igzip"):
        tools.append("curl | igzip -dc | tar x")
    if importlib.util.find_spec("tensorflow_hub"):
        tools.append("tensorflow_hub")
    else:
        print("tensorflow_hub is not installed: not measured", file=sys.stderr)
    print(
        "kagglehub is not measured: it downloads through Kaggle's own API, which the loopback server does not emulate",
        file=sys.stderr,
    )
    if importlib.util.find_spec("isal") is None:
        tools.remove("hubcache")  # hubcache-zlib is what runs
        print("isal is not installed (pip install 'hubcache[fast]'): hubcache runs on zlib only", file=sys.stderr)
    return tools


# ----------------------------------------------------------------------- measure


def fetch_table(paths, port, runs, scratch, only):
    tools = available_tools()
    rows = []
    for workload, path in paths.items():
        if only and workload not in only:
            continue
        url = f"http://127.0.0.1:{port}/{os.path.basename(path)}"
        times = {tool: [] for tool in tools}
        rss = {tool: [] for tool in tools}
        temp = {tool: [] for tool in tools}
        for i in range(runs):
            for tool in tools[i % len(tools) :] + tools[: i % len(tools)]:  # rotate the order
                cache = os.path.join(scratch, f"{tool.replace(' ', '').replace('|', '_')}-{workload}-{i}")
                r = run_tool(tool, url, cache)
                shutil.rmtree(cache, ignore_errors=True)
                times[tool].append(r["seconds"])
                temp[tool].append(r["temp_disk_mib"])
                if r["rss_growth_mib"] is not None:
                    rss[tool].append(r["rss_growth_mib"])
        results = {t: (statistics.median(times[t]), max(rss[t]) if rss[t] else None, max(temp[t])) for t in tools}
        for tool in tools:
            print(f"  {workload:15} {tool:26} {results[tool][0]:.2f} s", file=sys.stderr, flush=True)
        base_tf = results.get("tensorflow_hub", (None,))[0]
        base_tar = results["curl | tar xzf -"][0]
        for tool, (seconds, rss, extra) in results.items():
            rows.append(
                (
                    workload,
                    tool,
                    f"{seconds:.2f}",
                    f"{seconds / base_tf:.2f}x" if base_tf else "-",
                    f"{seconds / base_tar:.2f}x",
                    f"{rss:.0f} MiB" if rss is not None else "-",
                    f"{extra:.0f} MiB",
                )
            )
    _print_table(
        ("workload", "tool", "median s", "vs tensorflow_hub", "vs curl|tar", "peak RSS growth", "temp disk"), rows
    )


def warm_resolve(port, scratch, paths):
    url = f"http://127.0.0.1:{port}/{os.path.basename(paths['tiny'])}"
    code = r"""
import os, sys, time
tool, url, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if tool == "hubcache":
    import hubcache as m
else:
    import tensorflow_hub as m
m.resolve(url)
t = time.perf_counter()
for _ in range(n):
    m.resolve(url)
print((time.perf_counter() - t) / n * 1e6)
"""
    rows = []
    for tool, n in (("hubcache", 100_000), ("tensorflow_hub", 2_000)):
        if tool == "tensorflow_hub" and "tensorflow_hub" not in available_tools():
            continue
        cache = os.path.join(scratch, f"warm-{tool}")
        env = dict(os.environ, TFHUB_CACHE_DIR=cache, NO_PROXY="*", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
        r = subprocess.run(
            [sys.executable, "-c", code, tool, url, str(n)], env=env, capture_output=True, text=True, check=True
        )
        rows.append((tool, f"{float(r.stdout.strip().splitlines()[-1]):.1f} us"))
        shutil.rmtree(cache, ignore_errors=True)
    _print_table(("warm resolve, in process", "per call"), rows)


def startup(port, scratch, paths, runs=15):
    url = f"http://127.0.0.1:{port}/{os.path.basename(paths['tiny'])}"
    cache = os.path.join(scratch, "startup")
    env = dict(os.environ, TFHUB_CACHE_DIR=cache, NO_PROXY="*", PYTHONPATH=REPO)
    subprocess.run([sys.executable, "-c", f"import hubcache; hubcache.resolve({url!r})"], env=env, check=True)
    commands = {
        "python -c pass": "pass",
        "python -c 'import platformdirs'": "import platformdirs",
        "python -c 'import hubcache'": "import hubcache",
        "python -c 'import hubcache; hubcache.resolve(h)' (cached)": f"import hubcache; hubcache.resolve({url!r})",
    }
    medians = {}
    for label, code in commands.items():
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], env=env, check=True)
            times.append(time.perf_counter() - t)
        medians[label] = statistics.median(times)
    base = medians["python -c 'import platformdirs'"]
    rows = [(label, f"{s * 1000:.0f} ms", f"{s / base:.2f}x") for label, s in medians.items()]
    _print_table(("fresh process", "median", "vs import platformdirs"), rows)
    own = []
    for _ in range(runs):
        r = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "import hubcache"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        line = [x for x in r.stderr.splitlines() if x.rstrip().endswith("| hubcache")][-1]
        own.append(int(line.split("|")[1]) / 1000)
    print(f"\nimport hubcache: {statistics.median(own):.1f} ms of its own (python -X importtime, cumulative).")
    code = (
        "import hubcache\n"
        "def hwm(): return int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])\n"
        "import time\n"
        "a, t = hwm(), time.perf_counter()\n"
        "import hubcache.archive, hubcache.cache, hubcache.config, hubcache.download, hubcache.entries\n"
        "print((hwm() - a) / 1024, time.perf_counter() - t)"
    )
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    mib, seconds = map(float, r.stdout.split())
    print(
        f"The first download in a process also imports requests and the download path: "
        f"{seconds * 1000:.0f} ms and +{mib:.0f} MiB RSS, once.\n"
    )
    shutil.rmtree(cache, ignore_errors=True)


def cold_start(port, scratch, work, runs=21):
    """A fresh process that downloads a 4 KiB model, against one that only
    imports requests (which hubcache needs) and against curl | tar: run
    interleaved, so that the machine's drift hits all alike."""
    path = os.path.join(work, "cold-4k.tar.gz")
    if not os.path.exists(path):
        rng = random.Random(4)
        members = [("saved_model.pb", rng.randbytes(2000)), ("variables/variables.index", rng.randbytes(100))]
        members.append(("variables/variables.data-00000-of-00001", rng.randbytes(1900)))
        _gzip_tar(path, [("variables", None, 0)] + [(n, d, len(d)) for n, d in members])
    url = f"http://127.0.0.1:{port}/{os.path.basename(path)}"
    env = dict(os.environ, HUBCACHE_DISABLE_PROGRESS="1", NO_PROXY="*", PYTHONPATH=REPO)
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -c 'import requests'": [sys.executable, "-c", "import requests"],
        "python -c 'import hubcache; hubcache.resolve(h)' (downloads)": [
            sys.executable,
            "-c",
            f"import hubcache; hubcache.resolve({url!r})",
        ],
        "curl \\| tar xzf -": ["sh", "-c", f"curl -sf '{url}' | tar xzf - -C \"$TFHUB_CACHE_DIR\""],
    }
    times = {label: [] for label in commands}
    for i in range(runs):
        for label, command in commands.items():
            cache = os.path.join(scratch, f"cold-{i}-{len(times[label])}-{abs(hash(label))}")
            os.makedirs(cache)
            t = time.perf_counter()
            subprocess.run(command, env=dict(env, TFHUB_CACHE_DIR=cache), check=True)
            times[label].append(time.perf_counter() - t)
            shutil.rmtree(cache, ignore_errors=True)
    medians = {label: statistics.median(t) for label, t in times.items()}
    base = medians["python -c 'import requests'"]
    rows = [(label, f"{s * 1000:.0f} ms", f"{(s - base) * 1000:+.0f} ms") for label, s in medians.items()]
    print(f"Cold start, a {os.path.getsize(path)}-byte model; medians of {runs} interleaved runs:\n")
    _print_table(("fresh process", "median", "vs import requests"), rows)


FIRST_USE = r"""
import sys, time
t = time.perf_counter()
import hubcache
hubcache.resolve(sys.argv[1])
print(time.perf_counter() - t)
"""


def first_use(port, scratch, paths, runs=15):
    """The first resolve in a new process of a cached 20,000-file entry: with
    its stamp, and without (an entry cached before stamps: every file statted)."""
    url = f"http://127.0.0.1:{port}/{os.path.basename(paths['small-files'])}"
    cache = os.path.join(scratch, "first-use")
    env = dict(os.environ, TFHUB_CACHE_DIR=cache, NO_PROXY="*", HUBCACHE_DISABLE_PROGRESS="1", PYTHONPATH=REPO)
    r = subprocess.run(
        [sys.executable, "-c", f"import hubcache; print(hubcache.resolve({url!r}))"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    stamp = r.stdout.strip() + ".hubcache.stamp"
    # A stamp written in the clock tick its directories last changed is not
    # trusted (see hubcache.layout.lookup): verify, a moment later, writes one that is.
    time.sleep(0.05)
    subprocess.run([sys.executable, "-m", "hubcache", "verify", "-q"], env=env, check=True, stdout=subprocess.DEVNULL)
    times = {"with its stamp": [], "without (every file statted, as before)": []}
    for _ in range(runs):
        for label in times:
            if label.startswith("without"):
                os.rename(stamp, stamp + ".aside")
            r = subprocess.run(
                [sys.executable, "-c", FIRST_USE, url], env=env, capture_output=True, text=True, check=True
            )
            if label.startswith("without"):
                os.rename(stamp + ".aside", stamp)
            times[label].append(float(r.stdout))
    medians = {label: statistics.median(t) for label, t in times.items()}
    base = medians["without (every file statted, as before)"]
    rows = [(label, f"{s * 1000:.1f} ms", f"{s / base:.2f}x") for label, s in medians.items()]
    _print_table(("new process: import hubcache + resolve of a cached 20,000-file entry", "median", "vs without"), rows)
    shutil.rmtree(cache, ignore_errors=True)


def parallel(port, scratch, work):
    """prefetch --jobs 4 of 8 mid-size archives, against each alone."""
    names = []
    for i in range(8):
        path = os.path.join(work, f"mid-{i}.tar.gz")
        if not os.path.exists(path):
            _gzip_tar(
                path,
                [
                    ("saved_model.pb", b"x", 1),
                    ("variables", None, 0),
                    (
                        "variables/variables.data-00000-of-00001",
                        (lambda i=i: _random_blocks(64 << 20, 200 + i, False)),
                        64 << 20,
                    ),
                ],
                level=1,
            )
        names.append(f"http://127.0.0.1:{port}/mid-{i}.tar.gz")
    env = dict(os.environ, NO_PROXY="*", HUBCACHE_DISABLE_PROGRESS="1", PYTHONPATH=REPO)
    singles = []
    for url in names:
        cache = os.path.join(scratch, "single")
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "hubcache", "prefetch", "-q", url],
            env=dict(env, TFHUB_CACHE_DIR=cache),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        singles.append(time.perf_counter() - t)
        shutil.rmtree(cache, ignore_errors=True)
    cache = os.path.join(scratch, "jobs")
    t = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "hubcache", "prefetch", "-q", "--jobs", "4", *names],
        env=dict(env, TFHUB_CACHE_DIR=cache),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - t
    shutil.rmtree(cache, ignore_errors=True)
    rows = [
        ("8 x 64 MiB, one after another (sum)", f"{sum(singles):.2f} s"),
        ("slowest single", f"{max(singles):.2f} s"),
        ("sum / 2 cores", f"{sum(singles) / 2:.2f} s"),
        ("prefetch --jobs 4", f"{wall:.2f} s"),
    ]
    _print_table(("parallel prefetch", "wall"), rows)


def single_stream(port, scratch, paths, runs):
    """Fetch + extract in a fresh process, interpreter start and imports included,
    against the fastest shell pipeline: `curl | python -m isal.igzip -dc | tar xf -`."""
    if importlib.util.find_spec("isal") is None:
        print("isal is not installed (pip install 'hubcache[fast]'): single-stream table skipped\n")
        return
    env = dict(os.environ, HUBCACHE_DISABLE_PROGRESS="1", NO_PROXY="*", PYTHONPATH=REPO)
    pipeline = r"`curl \| python -m isal.igzip -dc \| tar xf -`"  # (as a Markdown cell)
    rows = []
    for workload in ("incompressible-256m", "incompressible"):
        url = f"http://127.0.0.1:{port}/{os.path.basename(paths[workload])}"
        times = {"hubcache": [], pipeline: []}
        for i in range(runs):
            for tool in list(times)[i % 2 :] + list(times)[: i % 2]:
                out = os.path.join(scratch, f"stream-{workload}-{len(times[tool])}-{tool == pipeline}")
                os.makedirs(out)
                if tool == "hubcache":
                    cmd = [sys.executable, "-c", "import hubcache, sys; hubcache.resolve(sys.argv[1])", url]
                    run = dict(args=cmd, env=dict(env, TFHUB_CACHE_DIR=out))
                else:
                    inflate = f"'{sys.executable}' -m isal.igzip -dc"
                    run = dict(args=f"curl -sf '{url}' | {inflate} | tar xf - -C '{out}'", shell=True)
                t = time.perf_counter()
                subprocess.run(check=True, **run)
                times[tool].append(time.perf_counter() - t)
                shutil.rmtree(out)
        base = statistics.median(times[pipeline])
        for tool, seconds in times.items():
            rows.append(
                (workload, tool, f"{statistics.median(seconds):.2f}", f"{statistics.median(seconds) / base:.2f}x")
            )
    _print_table(("one stream, fresh process", "tool", "median s", "vs pipeline"), rows)


def _print_table(headers, rows):
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    print(flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "hubcache-bench"))
    parser.add_argument(
        "--target",
        default="/dev/shm" if os.path.isdir("/dev/shm") else None,
        help="where the tools extract (default: tmpfs at /dev/shm, else --work)",
    )
    parser.add_argument("--only", default="", help="comma-separated workloads (default: all)")
    parser.add_argument(
        "--skip", default="", help="comma-separated parts to skip: fetch,warm,startup,cold,firstuse,stream,parallel"
    )
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    only = set(filter(None, args.only.split(",")))
    fetching = set() if "fetch" in skip else only or {"incompressible", "compressible", "small-files", "tiny"}
    wanted = set(fetching)
    wanted |= set() if {"warm", "startup"} <= skip else {"tiny"}
    wanted |= set() if "firstuse" in skip else {"small-files"}
    wanted |= set() if "stream" in skip else {"incompressible-256m", "incompressible"}
    paths = build(args.work, wanted)
    # Byte-compile hubcache as an installation does (this environment may set
    # PYTHONDONTWRITEBYTECODE, and an editable install then compiles on every import).
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(REPO, "hubcache")], check=True)
    server = subprocess.Popen([sys.executable, "-c", SERVER, args.work], stdout=subprocess.PIPE, text=True)
    port = int(server.stdout.readline())
    scratch = tempfile.mkdtemp(prefix="hubcache-bench-", dir=args.target or args.work)
    try:
        print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; extracting into {scratch}\n")
        if "fetch" not in skip:
            fetch_table({w: p for w, p in paths.items() if w in fetching}, port, args.runs, scratch, only)
        if "warm" not in skip:
            warm_resolve(port, scratch, paths)
        if "startup" not in skip:
            startup(port, scratch, paths)
        if "cold" not in skip:
            cold_start(port, scratch, args.work)
        if "firstuse" not in skip:
            first_use(port, scratch, paths)
        if "stream" not in skip:
            single_stream(port, scratch, paths, max(args.runs, 5))
        if "parallel" not in skip:
            parallel(port, scratch, args.work)
    finally:
        server.kill()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
