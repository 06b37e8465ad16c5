"""A cluster of machines loading one model at once, with and without the shared tier
(HUBCACHE_REMOTE, issue 12), on loopback.

N nodes (--nodes, default 8), each a separate Python process with its own fresh
cache (TFHUB_CACHE_DIR), resolve the same tfhub.dev handle at the same moment:
each imports hubcache and its download stack, says it is ready, and calls
hubcache.resolve once every node is ready. Upstream is tests/hubserver.py's
FakeHub (tfhub.dev -> Kaggle -> storage), whose four servers share one throttled
pipe (--rate, default 32 MiB/s in total, however many connections) serving one
archive (--size, default 64 MiB of random bytes as a tar.gz, built once into
--work, default /tmp/hubcache-cluster). The shared tier is moto's S3 server
(ThreadedMotoServer, 127.0.0.1, port 0), run in its own process so that its
Python threads and the hub's do not share one interpreter lock, with PutObject
requests serialized as in tests/conftest.py (moto checks a conditional PUT and
stores without a lock between; AWS S3 and MinIO decide atomically).

Three scenarios per run, their order rotating from run to run (--runs, default 2):
  no remote        every node downloads upstream through the shared pipe;
  S3 tier          HUBCACHE_REMOTE=s3://<bucket>/<fresh prefix per run>: one node
                   should take the lease and download upstream, the others wait
                   for the index and stream the blob from the bucket;
  S3 tier, pinned  the same, each node passing the archive's sha256 to resolve
                   (the holder can then upload while it downloads).

Measured: upstream archive bodies served completely (hubserver's counter; must be
1 with the tier) and upstream body bytes as a multiple of the archive; which
nodes went upstream (a node's own DEBUG log shows a GET of the storage URL);
each node's time around hubcache.resolve (measured in the child, after the
download stack is imported: boto3, which only the tier imports, is inside the
call), and each process's wall time from spawn to exit; the cluster's wall time,
from the moment all nodes are released to the last node's exit, and its ratio to
the no-remote run of the same round (medians over runs: to the median).

Node 1 is the node that downloaded the archive from upstream: with the tier the
lease holder, the one node whose log shows the storage GET; without the tier
every node does, and node 1 is the fastest of them. If several nodes went
upstream under the tier, node 1 is the fastest of those and the row says how
many. Nodes 2..N are the others; the goal is the slowest of them within 1.5x of
node 1 (slowest / node 1 <= 1.5).

The nodes import a copy of hubcache taken at the start from the working tree
(or --source, another version's package directory, to compare): with the tree
edited meanwhile, every run still measures the same code. The header gives the
copy's digest and whether its fetch path uses the tier.

Every node's tree is checked against the archive (names, sizes, SHA-256 of
every file); any difference, a failed node, or more than one upstream body
with the tier is reported and makes the exit status 1. The bucket is listed
after each tier run: one blob, one index and no lease left behind is expected.

    python benchmarks/cluster.py [--nodes 8] [--rate 32] [--size 64] [--runs 2]
                                 [--work DIR] [--target DIR] [--timeout 900]
                                 [--only 'no remote' --only 'S3 tier' ...] [--source DIR]

Prints Markdown tables: one row per scenario and run (and medians when
--runs > 1), then each tier run's nodes. Each node's hubcache log (DEBUG,
timed from the release) and stderr are kept in --work/logs, from the last
invocation. Caches go to --target (default tmpfs at /dev/shm) and are removed,
with every process started, at the end, on failure and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [HERE, os.path.join(REPO, "tests")]

from speed import _gzip_tar, _print_table, _random_blocks  # noqa: E402

from hubserver import FakeHub  # noqa: E402

MIB = 1 << 20
MODEL = "bench/cluster-model/1"
HANDLE = f"https://tfhub.dev/{MODEL}"
SCENARIOS = ("no remote", "S3 tier", "S3 tier, pinned")
GOAL = 1.5  # slowest of nodes 2..N against node 1

# ----------------------------------------------------------------------- workload


def build(work, size_mib):
    """A SavedModel-shaped tar.gz of ``size_mib`` MiB of random bytes (in files of
    at most 16 MiB), built once; returns its path."""
    path = os.path.join(work, f"cluster-{size_mib}mib.tar.gz")
    if not os.path.exists(path):
        print(f"building {path} ...", file=sys.stderr, flush=True)
        sizes = [16] * (size_mib // 16) + ([size_mib % 16] if size_mib % 16 else [])
        members = [("saved_model.pb", b"x" * 1000, 1000), ("variables", None, 0)]
        members += [
            (
                f"variables/variables.data-{i:05d}-of-{len(sizes):05d}",
                (lambda i=i, n=n: _random_blocks(n * MIB, 300 + i, False)),
                n * MIB,
            )
            for i, n in enumerate(sizes)
        ]
        _gzip_tar(path + ".part", members, level=1)
        os.replace(path + ".part", path)
    return path


def archive_tree(path):
    """What the archive holds: relative path -> (size, sha256) for files, None for directories."""
    tree = {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            if member.isdir():
                tree[member.name] = None
            else:
                digest = hashlib.sha256()
                with tar.extractfile(member) as f:
                    for chunk in iter(lambda f=f: f.read(MIB), b""):
                        digest.update(chunk)
                tree[member.name] = (member.size, digest.hexdigest())
    return tree


def disk_tree(root):
    """The same for a directory on disk."""
    tree = {}
    for parent, dirs, files in os.walk(root):
        for name in dirs:
            tree[os.path.relpath(os.path.join(parent, name), root)] = None
        for name in files:
            full = os.path.join(parent, name)
            digest = hashlib.sha256()
            with open(full, "rb") as f:
                for chunk in iter(lambda f=f: f.read(MIB), b""):
                    digest.update(chunk)
            tree[os.path.relpath(full, root)] = (os.path.getsize(full), digest.hexdigest())
    return tree


# -------------------------------------------------------------------- processes

IMPORTS_ALL = r"""
import importlib, pkgutil, hubcache
for m in pkgutil.walk_packages(hubcache.__path__, "hubcache."):
    if not m.name.endswith("__main__"):
        importlib.import_module(m.name)
"""


def snapshot(package, dest, env):
    """Copy the hubcache ``package`` directory to ``dest``, which every node imports:
    the working tree may be edited while the benchmark runs, and all runs must
    measure the same code. A copy taken mid-edit (it does not import) is taken
    again. Returns a short digest of the copied sources."""
    for _ in range(12):
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(package, os.path.join(dest, "hubcache"), ignore=shutil.ignore_patterns("__pycache__"))
        check = subprocess.run(
            [sys.executable, "-c", IMPORTS_ALL],
            cwd=dest,
            env=dict(env, PYTHONPATH=dest),
            capture_output=True,
            text=True,
        )
        if check.returncode == 0:
            break
        print(f"{package} does not import; again in 5 s: {check.stderr[-300:]}", file=sys.stderr)
        time.sleep(5)
    else:
        raise RuntimeError(f"{package} did not import for a minute")
    # Byte-compiled once, as an installation is (see benchmarks/speed.py).
    subprocess.run([sys.executable, "-m", "compileall", "-q", dest], check=True)
    digest = hashlib.sha256()
    for parent, dirs, files in sorted(os.walk(os.path.join(dest, "hubcache"))):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                digest.update(name.encode())
                with open(os.path.join(parent, name), "rb") as f:
                    digest.update(f.read())
    return digest.hexdigest()[:12]


MOTO = r"""
import logging, sys, threading
logging.getLogger("werkzeug").setLevel(logging.ERROR)
from moto.s3.responses import S3Response
from moto.server import ThreadedMotoServer
put, lock = S3Response.put_object, threading.Lock()
def atomic_put(self):
    with lock:
        return put(self)
S3Response.put_object = atomic_put
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
host, port = server.get_host_and_port()
print(f"http://{host}:{port}", flush=True)
sys.stdin.read()  # until the benchmark closes it, or dies
server.stop()
"""

NODE = r"""
import json, logging, os, sys, time
handle, gate, storage, log_path, pin = sys.argv[1:6]
import hubcache
import hubcache.archive, hubcache.cache, hubcache.config, hubcache.download, filelock, tqdm  # noqa

class Keep(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []
    def emit(self, record):
        self.records.append(record)

keep = Keep()
logger = logging.getLogger("hubcache")
logger.setLevel(logging.DEBUG)
logger.addHandler(keep)
loud = logging.StreamHandler(sys.stderr)  # warnings and errors, as evidence
loud.setLevel(logging.WARNING)
logger.addHandler(loud)
open(f"{gate}.ready.{os.getpid()}", "w").close()
while not os.path.exists(gate):
    time.sleep(0.002)
start, t = time.time(), time.perf_counter()
result = {"pid": os.getpid(), "start": start}
try:
    result["path"] = hubcache.resolve(handle, sha256=pin or None)
    result["ok"] = True
except BaseException as e:  # reported, then the exit status says it
    result.update(ok=False, error=f"{type(e).__name__}: {e}")
result["seconds"] = time.perf_counter() - t
result["end"] = time.time()
timed = [(r.created - start, r.levelno, r.getMessage()) for r in keep.records]
with open(log_path, "w") as f:
    f.writelines(f"{at:9.3f} {logging.getLevelName(level):7} {m}\n" for at, level, m in timed)
result["upstream_gets"] = sum(1 for _, _, m in timed if f"GET {storage}/" in m)
# For tuning the tier, from its log lines (a changed wording shows as None/0):
result["first_log"] = timed[0][0] if timed else None  # the first request or poll
polls = [at for at, _, m in timed if m.startswith("Waiting for another machine")]
result["polls"], result["last_poll"] = len(polls), (polls[-1] if polls else None)
result["cached"] = next((at for at, _, m in timed if m.startswith("Cached ")), None)
result["uploaded"] = next((at for at, _, m in timed if m.startswith("Uploaded ")), None)
result["warnings"] = [m[:300] for _, level, m in timed if level >= logging.WARNING]
print(json.dumps(result), flush=True)
sys.exit(0 if result["ok"] else 1)
"""


class Cluster:
    """What a benchmark started (node processes, moto, the hub, the caches), to
    stop and remove, and the archive upstream serves (``blob``: its storage path)."""

    def __init__(self):
        self.procs = []
        self.moto = None
        self.hub = None
        self.scratch = None
        self.src = None  # the copy of hubcache the nodes import
        self.blob = None
        self.size = 0
        self.sha256 = None

    def close(self):
        """Stop and remove everything; safe to call again."""
        started = self.procs + ([self.moto] if self.moto else [])
        self.procs, self.moto = [], None
        for p in started:
            if p.poll() is None:
                p.kill()
        for p in started:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                print(f"process {p.pid} did not exit after SIGKILL", file=sys.stderr)
        if self.hub:
            self.hub.stop()
            self.hub = None
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None


def clean_env():
    """This environment without settings that would change what is measured."""
    drop = ("HUBCACHE_", "TFHUB_", "AWS_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    for k in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env.pop(k, None)
    return env


def aws_env(work):
    """Dummy credentials, nothing read from ~/.aws, no instance metadata."""
    home = os.path.join(work, "aws")
    os.makedirs(home, exist_ok=True)
    for name in ("config", "credentials"):
        open(os.path.join(home, name), "w").close()
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.path.join(home, "config"),
        "AWS_SHARED_CREDENTIALS_FILE": os.path.join(home, "credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "NO_PROXY": "*",
    }


def start_moto(cluster, env):
    cluster.moto = subprocess.Popen(
        [sys.executable, "-c", MOTO], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    endpoint = cluster.moto.stdout.readline().strip()
    if not endpoint.startswith("http://"):
        raise RuntimeError("moto's S3 server did not start (pip install -e '.[test]')")
    return endpoint


def s3_client(endpoint, env):
    import boto3

    return boto3.session.Session(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    ).client("s3", endpoint_url=endpoint)


def list_prefix(s3, bucket, prefix):
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            found[obj["Key"][len(prefix) + 1 :]] = obj["Size"]
    return found


class StoreProbe:
    """Asks the store what a waiting node asks (a conditional create that fails, an
    index GET that finds nothing) every 0.1 s while the nodes run, and keeps each
    round's latency: a stalled store shows here, not as a slow tier."""

    def __init__(self, s3, bucket, prefix):
        self.s3, self.bucket, self.key = s3, bucket, f"benchmark-probe/{prefix}"
        self.s3.put_object(Bucket=bucket, Key=self.key, Body=b"taken")
        self.rounds = []  # (time.time() at the start, seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        from botocore.exceptions import ClientError

        while not self._stop.wait(0.1):
            began = time.time()
            for ask in (
                lambda: self.s3.put_object(Bucket=self.bucket, Key=self.key, Body=b"x", IfNoneMatch="*"),
                lambda: self.s3.get_object(Bucket=self.bucket, Key=self.key + ".missing"),
            ):
                with contextlib.suppress(ClientError):  # 412 and 404: the answers expected
                    ask()
            self.rounds.append((began, time.time() - began))

    def stop(self):
        self._stop.set()
        self._thread.join()
        self.s3.delete_object(Bucket=self.bucket, Key=self.key)


def run_cluster(cluster, args, env, label, logs, pin):
    """Start the nodes, release them together, wait; returns (gate time, per-node results)."""
    root = os.path.join(cluster.scratch, label)
    os.makedirs(root)
    gate = os.path.join(root, "go")
    cluster.procs = []
    spawned = []
    for k in range(args.nodes):
        node_env = dict(env, TFHUB_CACHE_DIR=os.path.join(root, f"node{k + 1}"))
        stderr = open(os.path.join(logs, f"{label}-node{k + 1}.stderr"), "w")  # noqa: SIM115 - closed below
        log_path = os.path.join(logs, f"{label}-node{k + 1}.log")
        argv = [sys.executable, "-c", NODE, HANDLE, gate, cluster.hub.storage.url, log_path, pin or ""]
        spawned.append(time.time())
        cluster.procs.append(
            subprocess.Popen(argv, env=node_env, cwd=cluster.src, stdout=subprocess.PIPE, stderr=stderr, text=True)
        )
        stderr.close()
    deadline = time.monotonic() + 120
    while sum(n.startswith("go.ready.") for n in os.listdir(root)) < args.nodes:
        dead = [p for p in cluster.procs if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            raise RuntimeError(f"{label}: nodes did not start (see {logs}/{label}-node*.stderr)")
        time.sleep(0.01)
    released = time.time()
    open(gate, "w").close()
    results = [None] * args.nodes

    def wait(k, proc):
        try:
            out, _ = proc.communicate(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            results[k] = {"ok": False, "error": f"no answer in {args.timeout} s: killed"}
        else:
            try:
                results[k] = json.loads(out.strip().splitlines()[-1])
            except (IndexError, ValueError):
                results[k] = {"ok": False, "error": f"no result printed: {out[-300:]!r}"}
        results[k]["exit"] = time.time()
        results[k]["process_seconds"] = results[k]["exit"] - spawned[k]
        results[k]["returncode"] = proc.returncode

    waiters = [threading.Thread(target=wait, args=(k, p), daemon=True) for k, p in enumerate(cluster.procs)]
    for t in waiters:
        t.start()
    for t in waiters:
        t.join()
    cluster.procs = []
    return released, results


def measure(cluster, args, scenario, run, env, expected, logs, s3, bucket, problems):
    """One scenario once; returns a row of numbers and the nodes' results."""
    hub, blob = cluster.hub, cluster.blob
    before = (hub.storage.completed(blob), hub.storage.sent_bytes(blob), hub.total_requests())
    tier, pin = scenario.startswith("S3 tier"), cluster.sha256 if scenario.endswith("pinned") else None
    label = f"run{run + 1}-{'pinned' if pin else 'tier' if tier else 'none'}"
    prefix = None
    if tier:
        prefix = f"cluster-{run + 1}-{uuid.uuid4().hex[:8]}"
        env = dict(env, HUBCACHE_REMOTE=f"s3://{bucket}/{prefix}", HUBCACHE_REMOTE_ENDPOINT=args.endpoint)
        probe = StoreProbe(s3, bucket, prefix)
    try:
        released, nodes = run_cluster(cluster, args, env, label, logs, pin)
    finally:
        if prefix:
            probe.stop()
    hub.storage.wait_idle()
    store = None
    if prefix and probe.rounds:
        began, slowest = max(probe.rounds, key=lambda r: r[1])
        store = (slowest, began - released, statistics.median(r[1] for r in probe.rounds))
    bodies = hub.storage.completed(blob) - before[0]
    upstream_bytes = hub.storage.sent_bytes(blob) - before[1]
    requests = hub.total_requests() - before[2]
    wall = max(n["exit"] for n in nodes) - released
    for k, n in enumerate(nodes):
        n["node"] = k + 1
        n["exited"] = n["exit"] - released
        if not n["ok"] or n["returncode"]:
            problems.append(f"{label}: node {k + 1} failed ({n.get('error') or 'exit ' + str(n['returncode'])})")
            continue
        got = disk_tree(n["path"])
        if got != expected:
            diff = sorted(set(got.items()) ^ set(expected.items()))[:6]
            problems.append(f"{label}: node {k + 1}'s tree {n['path']} differs from the archive: {diff}")
        shutil.rmtree(os.path.dirname(n["path"]), ignore_errors=True)  # the node's cache, now checked
    ok = [n for n in nodes if n["ok"] and not n["returncode"]]
    upstream = [n for n in ok if n.get("upstream_gets")]
    leaders = upstream or ok
    first = min(leaders, key=lambda n: n["seconds"]) if leaders else None
    others = [n["seconds"] for n in ok if n is not first]
    if scenario == "no remote" and bodies != args.nodes:
        problems.append(f"{label}: upstream served {bodies} whole archive bodies, not one per node ({args.nodes})")
    if tier:
        if bodies != 1 or len(upstream) != 1:
            problems.append(
                f"{label}: upstream served {bodies} whole archive bodies, not 1 ({len(upstream)} nodes went upstream)"
            )
        stored = list_prefix(s3, bucket, prefix)
        blobs = [k for k in stored if k.startswith("v1/blobs/")]
        leases = [k for k in stored if k.startswith("v1/leases/")]
        index = [k for k in stored if k.startswith("v1/index/")]
        if (len(blobs), len(index), len(leases)) != (1, 1, 0):
            problems.append(
                f"{label}: the bucket holds {len(blobs)} blobs, {len(index)} index records, leases {leases}: {stored}"
            )
        for key in stored:  # free moto's memory for the next run
            s3.delete_object(Bucket=bucket, Key=f"{prefix}/{key}")
    for n in ok:
        for w in n["warnings"]:
            print(f"  {label} node {n['node']}: warning: {w}", file=sys.stderr)
    return {
        "label": label,
        "scenario": scenario,
        "run": run + 1,
        "bodies": bodies,
        "upstream_x": upstream_bytes / cluster.size,
        "requests": requests,
        "went_upstream": len(upstream),
        "node1": first["seconds"] if first else float("nan"),
        "node1_id": first["node"] if first else None,
        "median": statistics.median(others) if others else float("nan"),
        "slowest": max(others) if others else float("nan"),
        "wall": wall,
        "nodes": nodes,
        "store": store,
    }


# ------------------------------------------------------------------------ report


def report(rows, nodes):
    baseline = {r["run"]: r["wall"] for r in rows if r["scenario"] == "no remote"}

    def line(r, base):
        ratio = r["slowest"] / r["node1"]
        return (
            r["scenario"],
            r["run"],
            f"{r['bodies']:g}",
            f"{r['upstream_x']:.2f}x",
            f"{r['requests']:g}",
            f"{r['went_upstream']:g}/{nodes}",
            f"{r['node1']:.2f} (node {r['node1_id']})" if r["node1_id"] else f"{r['node1']:.2f}",
            f"{r['median']:.2f}",
            f"{r['slowest']:.2f}",
            f"{ratio:.2f}x {'ok' if ratio <= GOAL else 'over'}",
            f"{r['wall']:.2f}",
            f"{r['wall'] / base:.2f}x" if base else "-",
        )

    table = [line(r, baseline.get(r["run"])) for r in rows]
    if len({r["run"] for r in rows}) > 1:  # medians of each column over the runs
        numbers = ("bodies", "upstream_x", "requests", "went_upstream", "node1", "median", "slowest", "wall")
        for scenario in SCENARIOS:
            mine = [r for r in rows if r["scenario"] == scenario]
            if not mine:
                continue
            med = {k: statistics.median(r[k] for r in mine) for k in numbers}
            table.append(
                line(
                    dict(med, scenario=scenario, run="median", node1_id=None),
                    statistics.median(baseline.values()) if baseline else None,
                )
            )
    _print_table(
        (
            "scenario",
            "run",
            "upstream bodies",
            "upstream bytes",
            "upstream requests",
            "nodes upstream",
            "node 1 s",
            "nodes 2..N median s",
            "slowest s",
            f"slowest / node 1 (goal <= {GOAL}x)",
            "cluster wall s",
            "wall vs no remote",
        ),
        table,
    )
    for r in rows:
        if r["scenario"] == "no remote":
            continue
        print(
            f"Nodes of {r['label']}: seconds from the release (first log: the first request or poll; cached: "
            "the entry published; uploaded: blob and index written; exited: the process); call: around resolve; "
            "process: spawn to exit."
        )
        if r["store"]:
            print(
                "The store, asked as a waiting node asks it every 0.1 s: median %.3f s, slowest %.2f s at %.2f s."
                % (r["store"][2], r["store"][0], r["store"][1])
            )
        indexed = [n["uploaded"] for n in r["nodes"] if n.get("uploaded") is not None]
        after = sorted(n["cached"] - indexed[0] for n in r["nodes"] if indexed and n.get("polls") and n.get("cached"))
        if after:
            print(
                "The waiters published their entries %.2f to %.2f s (median %.2f) after the index was written "
                "(the rest of a poll's wait, the poll, and the read)." % (after[0], after[-1], statistics.median(after))
            )
        print()

        def at(n, key):
            return f"{n[key]:.2f}" if n.get(key) is not None else "-"

        _print_table(
            (
                "node",
                "upstream GETs",
                "first log",
                "polls",
                "last poll",
                "cached",
                "uploaded",
                "exited",
                "call s",
                "process s",
                "warnings",
            ),
            [
                (
                    n["node"],
                    n.get("upstream_gets", "-"),
                    at(n, "first_log"),
                    n.get("polls", "-"),
                    at(n, "last_poll"),
                    at(n, "cached"),
                    at(n, "uploaded"),
                    at(n, "exited"),
                    at(n, "seconds"),
                    at(n, "process_seconds"),
                    len(n.get("warnings", [])) if n.get("ok") else n.get("error", "failed"),
                )
                for n in r["nodes"]
            ],
        )


# -------------------------------------------------------------------------- main


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--rate", type=float, default=32, help="upstream MiB/s, all connections together")
    parser.add_argument("--size", type=int, default=64, help="archive MiB")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "hubcache-cluster"))
    parser.add_argument(
        "--target",
        default="/dev/shm" if os.path.isdir("/dev/shm") else None,
        help="where the nodes' caches go (default: tmpfs at /dev/shm, else --work)",
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds a node may take")
    parser.add_argument(
        "--source",
        default=os.path.join(REPO, "hubcache"),
        help="the hubcache package the nodes run (default: this checkout's; e.g. a variant to compare)",
    )
    parser.add_argument(
        "--only", choices=SCENARIOS, action="append", help="run this scenario (repeatable; default: all)"
    )
    args = parser.parse_args()
    if args.nodes < 2 or args.size < 1 or args.rate <= 0 or args.runs < 1:
        parser.error("needs --nodes >= 2, --size >= 1, --rate > 0, --runs >= 1")
    for signum in (signal.SIGINT, signal.SIGTERM):  # also when started with SIGINT ignored (a background job)
        signal.signal(signum, _interrupt)
    os.makedirs(args.work, exist_ok=True)
    logs = os.path.join(args.work, "logs")
    shutil.rmtree(logs, ignore_errors=True)
    os.makedirs(logs)
    path = build(args.work, args.size)
    expected = archive_tree(path)
    cluster = Cluster()
    problems = []
    rows = []
    try:
        cluster.scratch = tempfile.mkdtemp(prefix="hubcache-cluster-", dir=args.target or args.work)
        aws = aws_env(args.work)
        base = dict(clean_env(), **aws)
        cluster.src = os.path.join(cluster.scratch, "src")
        source = snapshot(args.source, cluster.src, base)
        with open(os.path.join(cluster.src, "hubcache", "entries.py")) as f:
            has_tier = os.path.exists(os.path.join(cluster.src, "hubcache", "tier.py")) and "tier" in f.read()
        args.endpoint = start_moto(cluster, base)
        s3 = s3_client(args.endpoint, aws)
        bucket = f"cluster-{uuid.uuid4().hex[:12]}"
        s3.create_bucket(Bucket=bucket)
        cluster.hub = FakeHub()
        with open(path, "rb") as f:
            archive = f.read()
        cluster.blob, cluster.size = cluster.hub.publish_tfhub(MODEL, archive), len(archive)
        cluster.sha256 = hashlib.sha256(archive).hexdigest()
        del archive  # the hub holds it
        cluster.hub.share_pipe(args.rate * MIB)
        env = dict(
            base,
            **cluster.hub.env(),
            HUBCACHE_DISABLE_PROGRESS="1",
            PYTHONPATH=cluster.src,
            TF_CPP_MIN_LOG_LEVEL="3",
        )
        print(
            f"machine: {os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f} before the runs: other "
            f"work on it makes the timings noisy), Python {sys.version.split()[0]}; {args.nodes} nodes, "
            f"{cluster.size / MIB:.1f} MiB archive, upstream {args.rate:g} MiB/s shared; "
            f"caches in {cluster.scratch}; moto at {args.endpoint}, bucket {bucket}; "
            f"hubcache sources {source} (sha256 of the copy), tier {'wired' if has_tier else 'NOT wired'}\n",
            flush=True,
        )
        for run in range(args.runs):
            rotated = SCENARIOS[run % len(SCENARIOS) :] + SCENARIOS[: run % len(SCENARIOS)]
            order = [s for s in rotated if not args.only or s in args.only]
            for scenario in order:
                row = measure(cluster, args, scenario, run, env, expected, logs, s3, bucket, problems)
                print(
                    f"  {row['label']}: node 1 {row['node1']:.2f} s, slowest other {row['slowest']:.2f} s, "
                    f"wall {row['wall']:.2f} s, {row['bodies']} upstream bodies",
                    file=sys.stderr,
                    flush=True,
                )
                rows.append(row)
        rows.sort(key=lambda r: (SCENARIOS.index(r["scenario"]), r["run"]))
        report(rows, args.nodes)
        print(f"Load average at the end: {os.getloadavg()[0]:.1f} (1 min), {os.getloadavg()[1]:.1f} (5 min).\n")
    except KeyboardInterrupt:
        print("interrupted: stopping every node", file=sys.stderr)
        sys.exit(130)
    finally:
        cluster.close()
    print(f"Logs: {logs}", file=sys.stderr)
    if problems:
        print("PROBLEMS:", *problems, sep="\n  ", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
