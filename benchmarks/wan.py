"""One big archive over a shaped network: hubcache against tensorflow_hub, `curl | tar`
and `aria2c -x 8`, for issue 13 (several ranged connections on real networks).

Workload (built once into --work, default /tmp/hubcache-wan): --size MiB (default
1024) of random data in 8 files, tar.gz at level 1: incompressible, as model weights are.

A separate server process (benchmarks/wanserver.py) serves it over HTTP/1.1 with
Range, ETag and a token bucket per connection (--per-connection MB/s, default 25),
as a CDN shapes each flow, and logs every request: the tables count the connections,
requests and bytes each tool used. Conditions, each a table:
  unthrottled  loopback, no cap: hubcache alone, the bound "within 1.3x" refers to
  cap          loopback, every connection capped
  netem        with --netem: the clients run in a network namespace (`ip netns exec`)
               behind a link of --rtt ms (half each way) and --loss percent (each
               way), the server in the root namespace, every connection capped.
               The link is `tc qdisc ... netem` on a veth pair; a kernel without
               netem gets the same delay, loss and 1000-packet limit from a user-space
               delay line between two TUN devices (wanserver.py link), said in the output.
Namespaces and links are named hcb-*; they are removed on exit, on an exception,
SIGINT or SIGTERM, and leftovers of dead runs are removed at start.

Each tool runs in a fresh process per run, extracting into a fresh directory on
tmpfs (--target, default /dev/shm), timed end to end from the parent (Python
imports included; the fetch alone, after imports, is shown apart); aria2c's
archive copy is in its time (downloaded, then `tar xzf`, then deleted). The
tools' order rotates from run to run; times are medians of --runs runs.

    .venv/bin/python benchmarks/wan.py [--size 256] [--runs 1] [--netem] [--rtt 40] [--loss 0.1]
        [--per-connection 25] [--cc cubic] [--link auto|netem|tun] [--limit 1000]
        [--skip unthrottled,cap] [--tools hubcache,curl] [--log FILE]

as root (--netem makes namespaces and links). --cc sets the server's TCP congestion
control: this machine's default is BBR, which loss hardly slows; CUBIC, which many
servers still use, is what 0.1% loss cuts to about 1.4 MB/s a connection at 40 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MIB = 1 << 20
sys.path.insert(0, HERE)

from speed import _gzip_tar, _print_table, _random_blocks  # noqa: E402

PREFIX = "hcb"  # every namespace and link this benchmark makes: hcb-<pid>, hcb<pid>a, hcb<pid>b

# --------------------------------------------------------------------- workload


def build(work, size_mib):
    """A tar.gz of size_mib MiB of random data in 8 files; returns (path, payload bytes)."""
    os.makedirs(work, exist_ok=True)
    path = os.path.join(work, f"incompressible-{size_mib}m.tar.gz")
    each = size_mib * MIB // 8
    if not os.path.exists(path):
        print(f"building {path} ...", file=sys.stderr, flush=True)
        members = [("saved_model.pb", b"x" * 1000, 1000), ("variables", None, 0)]
        members += [
            (f"variables/variables.data-{i:05d}-of-00008", (lambda i=i: _random_blocks(each, i, False)), each)
            for i in range(8)
        ]
        _gzip_tar(path + ".part", members, level=1)
        os.replace(path + ".part", path)
    return path, 1000 + 8 * each


# ---------------------------------------------------------------------- network


def _die_with_parent():
    """In a child before exec: SIGTERM when wan.py dies, even by SIGKILL (Linux prctl)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _ip(*args, check=True):
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and r.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


def _ours_alive(name):
    """Whether an hcb-* name belongs to a wan.py that is still running (another user's run)."""
    digits = "".join(c for c in name[len(PREFIX) :] if c.isdigit())
    try:
        with open(f"/proc/{int(digits)}/cmdline", "rb") as f:
            return b"wan.py" in f.read() and int(digits) != os.getpid()
    except (ValueError, OSError):
        return False


def remove_leftovers():
    """Namespaces and links named hcb* whose run is gone (killed with SIGKILL, say)."""
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(PREFIX + "-") and not _ours_alive(name):
            print(f"removing leftover namespace {name}", file=sys.stderr)
            _ip("netns", "del", name, check=False)
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(PREFIX) and name[len(PREFIX) : len(PREFIX) + 1].isdigit() and not _ours_alive(name):
            print(f"removing leftover link {name}", file=sys.stderr)
            _ip("link", "del", name, check=False)


class Network:
    """A namespace for the clients, behind a link of rtt_ms and loss_pct each way.
    netem on a veth pair if the kernel has it (kind "auto" or "netem"), else a
    user-space delay line between two TUN devices (kind "auto" or "tun")."""

    def __init__(self, rtt_ms, loss_pct, kind="auto", limit=1000):
        pid = os.getpid()
        self.ns = f"{PREFIX}-{pid}"
        self.a, self.b = f"{PREFIX}{pid}a", f"{PREFIX}{pid}b"
        n = pid % 16384  # a /30 of 10.213.0.0/16 per run
        self.server_ip, self.client_ip = f"10.213.{n // 64}.{n % 64 * 4 + 1}", f"10.213.{n // 64}.{n % 64 * 4 + 2}"
        self.rtt_ms, self.loss_pct, self.kind, self.limit = rtt_ms, loss_pct, kind, limit
        self.prefix = ["ip", "netns", "exec", self.ns]
        self.link = None  # the delay line's process
        self.note = ""
        self.counts = None

    def __enter__(self):
        remove_leftovers()
        try:
            _ip("netns", "add", self.ns)
            self._netem() if self.kind in ("auto", "netem") else self._tun()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def _netem(self):
        _ip("link", "add", self.a, "type", "veth", "peer", "name", self.b)
        self._addresses()
        delay, loss = f"{self.rtt_ms / 2:g}ms", f"{self.loss_pct:g}%"
        netem = ["netem", "delay", delay, "loss", loss, "limit", str(self.limit)]
        r = subprocess.run(["tc", "qdisc", "add", "dev", self.a, "root", *netem], capture_output=True, text=True)
        if r.returncode:
            error = f"`tc qdisc add dev {self.a} root {' '.join(netem)}` failed: {r.stderr.strip()}"
            if self.kind == "netem":
                raise RuntimeError(error)
            _ip("link", "del", self.a, check=False)
            self.note = f"{error} (this kernel has no sch_netem); using the user-space delay line instead. "
            return self._tun()
        subprocess.run([*self.prefix, "tc", "qdisc", "add", "dev", self.b, "root", *netem], check=True)
        self.note = f"tc netem delay {delay} loss {loss} limit {self.limit} on both ends of a veth pair. "

    def _tun(self):
        cmd = [sys.executable, os.path.join(HERE, "wanserver.py"), "link", self.a, self.b]
        cmd += ["--delay-ms", str(self.rtt_ms / 2), "--loss", str(self.loss_pct), "--limit", str(self.limit)]
        self.link = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_die_with_parent
        )
        ready = self.link.stdout.readline().strip()
        if not ready.startswith("ready"):
            raise RuntimeError(f"the delay line did not start: {self.link.stderr.read()[-500:]}")
        self._addresses()
        self.note += (
            f"User-space delay line {ready[6:]} (wanserver.py link) between two TUN devices, MTU 1500: "
            f"{self.rtt_ms / 2:g} ms and {self.loss_pct:g}% loss each way, {self.limit} packets at most. "
        )

    def _addresses(self):
        _ip("link", "set", self.b, "netns", self.ns)
        _ip("addr", "add", f"{self.server_ip}/30", "dev", self.a)
        _ip("link", "set", self.a, "up")
        _ip("-n", self.ns, "addr", "add", f"{self.client_ip}/30", "dev", self.b)
        _ip("-n", self.ns, "link", "set", self.b, "up")
        _ip("-n", self.ns, "link", "set", "lo", "up")

    def close(self):
        if self.link is not None and self.link.poll() is None:
            self.link.terminate()
            try:
                _, err = self.link.communicate(timeout=5)
                self.counts = json.loads(err.strip().splitlines()[-1])
            except (subprocess.TimeoutExpired, ValueError, IndexError):
                self.link.kill()
                self.link.wait()
        _ip("link", "del", self.a, check=False)
        _ip("netns", "del", self.ns, check=False)


# ----------------------------------------------------------------------- server


class Server:
    def __init__(self, path, host, per_connection, log, cc):
        cmd = [sys.executable, os.path.join(HERE, "wanserver.py"), "serve", path, "--host", host]
        cmd += ["--per-connection", str(per_connection), "--log", log]
        if cc:
            cmd += ["--cc", cc]
        self.log, self.host = log, host
        open(log, "w").close()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, preexec_fn=_die_with_parent)
        self.port = int(self.proc.stdout.readline())

    def url(self, name):
        return f"http://{self.host}:{self.port}/{name}"

    def offset(self):
        return os.path.getsize(self.log)

    def requests_since(self, offset, settle=0.3):
        time.sleep(settle)  # the server logs a body once its last byte is out
        with open(self.log) as f:
            f.seek(offset)
            return [json.loads(line) for line in f if line.strip()]

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


# ------------------------------------------------------------------------ tools

CHILD = r"""
import json, sys, time
tool, url = sys.argv[1:3]
t = time.perf_counter()
if tool == "hubcache":
    import hubcache, logging, os
    if os.environ.get("WAN_LOG"):  # --log: hubcache's own log, pieces and connections
        fmt = "%(relativeCreated)6d %(threadName)s %(message)s"
        logging.basicConfig(filename=os.environ["WAN_LOG"], level=logging.DEBUG, format=fmt)
        logging.getLogger("urllib3").setLevel(logging.INFO)
    fetch = hubcache.resolve
else:
    import tensorflow_hub
    fetch = tensorflow_hub.resolve
imported = time.perf_counter()
fetch(url)
print(json.dumps({"imports": imported - t, "fetch": time.perf_counter() - imported}))
"""

ARIA2 = "aria2c -x 8 -s 8 -k 1M"


def tools_available(wanted):
    tools = ["hubcache", "tensorflow_hub", "curl | tar xzf -", ARIA2]
    if not importlib.util.find_spec("tensorflow_hub"):
        print("tensorflow_hub is not installed in this Python: not measured", file=sys.stderr)
        tools.remove("tensorflow_hub")
    if not shutil.which("aria2c"):
        print("aria2c is not installed (apt-get install aria2): not measured", file=sys.stderr)
        tools.remove(ARIA2)
    return [t for t in tools if not wanted or t.split()[0] in wanted]


def run_tool(tool, url, dest, prefix, env):
    os.makedirs(dest)
    if tool in ("hubcache", "tensorflow_hub"):
        cmd = [sys.executable, "-c", CHILD, tool, url]
        env = dict(env, TFHUB_CACHE_DIR=dest)
    elif tool.startswith("curl"):
        cmd = ["bash", "-c", f"set -o pipefail; curl -sfS '{url}' | tar xzf - -C '{dest}'"]
    else:
        archive = os.path.join(dest, "archive.tar.gz")
        cmd = ["bash", "-c", f"set -e; {ARIA2} -q -d '{dest}' -o archive.tar.gz '{url}'"]
        cmd[-1] += f"; mkdir '{dest}/x'; tar xzf '{archive}' -C '{dest}/x'; rm '{archive}'"
    t = time.perf_counter()
    r = subprocess.run([*prefix, *cmd], env=env, capture_output=True, text=True, preexec_fn=_die_with_parent)
    seconds = time.perf_counter() - t
    if r.returncode:
        raise RuntimeError(f"{tool} failed ({r.returncode}): {(r.stderr or r.stdout)[-800:]}")
    result = {"seconds": seconds, "extracted": _tree_bytes(dest)}
    if r.stdout.strip().startswith("{"):
        result.update(json.loads(r.stdout.strip().splitlines()[-1]))
    return result


def _tree_bytes(top):
    total, stack = 0, [top]
    while stack:
        for entry in os.scandir(stack.pop()):
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
            elif entry.is_file(follow_symlinks=False):
                total += entry.stat().st_size
    return total


# ---------------------------------------------------------------------- measure


def measure(label, tools, server, name, prefix, runs, scratch, payload, env):
    """{tool: {seconds, fetch, conns, gets, bytes}} as medians (and maxima) over runs."""
    url = server.url(name)
    samples = {tool: [] for tool in tools}
    for i in range(runs):
        for tool in tools[i % len(tools) :] + tools[: i % len(tools)]:  # rotate the order
            dest = os.path.join(scratch, f"{label}-{tool.split()[0]}-{i}")
            offset = server.offset()
            r = run_tool(tool, url, dest, prefix, env)
            shutil.rmtree(dest, ignore_errors=True)
            if r["extracted"] < payload:
                raise RuntimeError(f"{tool} extracted {r['extracted']} bytes, not {payload}")
            log = server.requests_since(offset)
            gets = [x for x in log if x["method"] == "GET"]
            r.update(conns=len({x["conn"] for x in log}), gets=len(gets), bytes=sum(x["bytes"] for x in gets))
            samples[tool].append(r)
            print(f"  {label:12} {tool:22} {r['seconds']:7.2f} s  {r['conns']} conn", file=sys.stderr, flush=True)
    out = {}
    for tool, rs in samples.items():
        fetch = [r["fetch"] for r in rs if "fetch" in r]
        out[tool] = {
            "seconds": statistics.median(r["seconds"] for r in rs),
            "fetch": statistics.median(fetch) if fetch else None,
            "conns": max(r["conns"] for r in rs),
            "gets": max(r["gets"] for r in rs),
            "bytes": max(r["bytes"] for r in rs),
        }
    return out


def print_table(title, results, size, unthrottled):
    base = results.get("hubcache", {}).get("seconds")
    print(f"**{title}**\n")
    headers = ("tool", "median s", "MB/s", "vs hubcache", "vs unthrottled hubcache", "fetch s (after imports)")
    headers += ("connections", "GETs", "MiB served")
    rows = []
    for tool, r in results.items():
        s = r["seconds"]
        row = (
            f"`{tool}`" if " " in tool else tool,
            f"{s:.2f}",
            f"{size / 1e6 / s:.1f}",
            f"{s / base:.2f}x" if base else "-",
            f"{s / unthrottled:.2f}x" if unthrottled else "-",
            f"{r['fetch']:.2f}" if r["fetch"] is not None else "-",
            r["conns"],
            r["gets"],
            f"{r['bytes'] / MIB:.0f}",
        )
        rows.append(row)
    _print_table(headers, rows)


def _terminate(signum, _frame):
    raise SystemExit(128 + signum)  # unwinds through every finally: servers, namespace, scratch


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="archive size in MiB (default 1024)")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--per-connection", type=float, default=25.0, metavar="MB/s")
    parser.add_argument("--netem", action="store_true", help="add the condition behind an emulated WAN link")
    parser.add_argument("--rtt", type=float, default=40.0, help="ms, round trip (default 40)")
    parser.add_argument("--loss", type=float, default=0.1, help="percent, each way (default 0.1)")
    parser.add_argument("--link", choices=("auto", "netem", "tun"), default="auto")
    parser.add_argument("--limit", type=int, default=1000, help="packets queued per direction (netem's default 1000)")
    parser.add_argument("--cc", help="the server's TCP congestion control (default: the system's)")
    parser.add_argument("--skip", default="", help="comma-separated conditions: unthrottled,cap,netem")
    parser.add_argument("--tools", default="", help="comma-separated: hubcache,tensorflow_hub,curl,aria2c")
    parser.add_argument("--log", metavar="FILE", help="append hubcache's debug log of every run to FILE")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "hubcache-wan"))
    parser.add_argument("--target", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if not args.netem:
        skip.add("netem")
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    path, payload = build(args.work, args.size)
    size, name = os.path.getsize(path), os.path.basename(path)
    tools = tools_available(set(filter(None, args.tools.split(","))))
    cache = os.path.join(args.work, "pycache")  # hubcache's bytecode, compiled once, outside the tree
    env = dict(os.environ, HUBCACHE_DISABLE_PROGRESS="1", NO_PROXY="*", no_proxy="*", TF_CPP_MIN_LOG_LEVEL="3")
    if args.log:
        env["WAN_LOG"] = os.path.abspath(args.log)
    env.update(PYTHONPATH=REPO, PYTHONPYCACHEPREFIX=cache)
    subprocess.run([sys.executable, "-c", "import hubcache.download, hubcache.archive"], env=env, check=True)
    with open("/proc/sys/net/ipv4/tcp_congestion_control") as f:
        cc = args.cc or f.read().strip()
    scratch = tempfile.mkdtemp(prefix="hubcache-wan-", dir=args.target or args.work)
    os.makedirs(os.path.join(args.work, "logs"), exist_ok=True)

    def log(label):  # the server's request log of one condition
        return os.path.join(args.work, "logs", f"{os.getpid()}-{label}.jsonl")

    print(
        f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; archive {size / MIB:.0f} MiB "
        f"({size:,} bytes); {args.runs} run(s) per tool, medians; server congestion control {cc}; "
        f"extracting into {scratch}\n"
    )
    unthrottled = None
    cap = f"{args.per_connection:g} MB/s per connection" if args.per_connection else "no cap"
    try:
        with contextlib.ExitStack() as stack:
            if "unthrottled" not in skip and "hubcache" in tools:
                server = Server(path, "127.0.0.1", 0, log("unthrottled"), args.cc)
                stack.callback(server.close)
                r = measure("unthrottled", ["hubcache"], server, name, [], max(args.runs, 3), scratch, payload, env)
                unthrottled = r["hubcache"]["seconds"]
                print_table("Loopback, unthrottled (hubcache's bound; median of at least 3 runs)", r, size, unthrottled)
                server.close()
            if "cap" not in skip:
                server = Server(path, "127.0.0.1", args.per_connection, log("cap"), args.cc)
                stack.callback(server.close)
                r = measure("cap", tools, server, name, [], args.runs, scratch, payload, env)
                print_table(f"Loopback, {cap}", r, size, unthrottled)
                server.close()
            if "netem" not in skip:
                net = stack.enter_context(Network(args.rtt, args.loss, args.link, args.limit))
                server = Server(path, net.server_ip, args.per_connection, log("netem"), args.cc)
                stack.callback(server.close)
                r = measure("netem", tools, server, name, net.prefix, args.runs, scratch, payload, env)
                net.close()
                title = f"{args.rtt:g} ms RTT, {args.loss:g}% loss each way, {cap}, server TCP {cc}"
                print_table(title, r, size, unthrottled)
                counts = f" Link counts: {json.dumps(net.counts)}." if net.counts else ""
                print(f"{net.note}{counts}\n", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted; namespace, links and scratch removed")
