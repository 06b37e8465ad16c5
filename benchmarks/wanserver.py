"""The two processes benchmarks/wan.py starts: an origin that paces each connection,
and a user-space delay line for machines whose kernel has no netem.

    python benchmarks/wanserver.py serve FILE [--host H] [--per-connection MB/s] [--log F] [--cc cubic]
    python benchmarks/wanserver.py link NAME_A NAME_B [--delay-ms 20] [--loss 0.1] [--limit 1000] [--python]

``serve`` answers GET and HEAD of any path with FILE over HTTP/1.1: Content-Length,
Accept-Ranges, ETag, one ``Range: bytes=`` range (206 with Content-Range, 416 when
unsatisfiable; If-Range honoured). Each connection gets its own token bucket of
--per-connection MB/s (0: unthrottled), holding no more than one 128 KiB piece, as
a CDN shapes each flow; bodies go out with sendfile. It prints its port, then appends
one JSON line per request to --log: connection number, peer, range, status, bytes
sent (a body cut by the client counts what was sent), start and end times.

``link`` opens two TUN devices (no packet information, MTU 1500: the kernel hands them
packets already segmented) and copies every packet from one to the other after
--delay-ms, dropping each with probability --loss percent, in both directions: what
``tc qdisc ... netem delay D loss L`` on both ends of a veth pair does. Like netem, a
direction holds at most --limit packets (netem's default is 1000) and drops beyond it.
It prints ``ready (C)`` or ``ready (Python)`` once both devices exist, and its counts
(passed, lost, overflow) as JSON on stderr when it ends; the devices disappear with it.
The caller moves one device into its namespace and gives both their addresses. The loop
is C (LINK_C, compiled once into the temporary directory) when a C compiler is there,
else Python, which tops out at 50-90 MB/s on a busy 2-core machine.
"""

from __future__ import annotations

import argparse
import collections
import fcntl
import hashlib
import itertools
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PIECE = 128 << 10  # paced sendfile unit: 5 ms at 25 MB/s


def serve(args):
    size = os.path.getsize(args.file)
    st = os.stat(args.file)
    etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
    rate = args.per_connection * 1e6
    log = open(args.log, "a", buffering=1) if args.log else None  # noqa: SIM115 - open while serving
    log_lock = threading.Lock()
    numbers = itertools.count(1)
    fd = os.open(args.file, os.O_RDONLY)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "wanserver/1"

        def log_message(self, *a):
            pass

        def setup(self):
            super().setup()
            self.number = next(numbers)
            self.free_at = 0.0  # the bucket: when this connection may next send a piece
            if args.cc:
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, args.cc.encode())

        def do_HEAD(self):
            self.reply(head=True)

        def do_GET(self):
            self.reply(head=False)

        def reply(self, head):
            start, end, status = 0, size - 1, 200
            asked = self.headers.get("Range")
            if_range = self.headers.get("If-Range")
            m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", asked or "")
            if m and (m[1] or m[2]) and (if_range is None or if_range == etag):
                if m[1]:
                    start, end = int(m[1]), min(int(m[2]), size - 1) if m[2] else size - 1
                else:
                    start = max(0, size - int(m[2]))
                status = 206
                if start >= size or start > end:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return self.record(asked, 416, 0, time.time())
            self.send_response(status)
            self.send_header("Content-Type", "application/gzip")
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", etag)
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            self.wfile.flush()
            began, self.sent = time.time(), 0
            try:
                if not head:
                    self.body(start, end - start + 1)
            finally:  # a body cut by the client too: what went out
                self.record(asked, status, self.sent, began)

        def body(self, offset, length):
            sock = self.connection.fileno()
            while self.sent < length:
                n = min(length - self.sent, PIECE if rate else 8 << 20)
                if rate:
                    now = time.monotonic()
                    at = max(now, self.free_at)  # an idle connection saves up no burst
                    self.free_at = at + n / rate
                    if at > now:
                        time.sleep(at - now)
                done = os.sendfile(sock, fd, offset + self.sent, n)
                if not done:
                    break
                self.sent += done

        def record(self, asked, status, sent, began):
            if log:
                line = {
                    "conn": self.number,
                    "peer": self.client_address[0],
                    "method": self.command,
                    "range": asked,
                    "status": status,
                    "bytes": sent,
                    "start": began,
                    "end": time.time(),
                }
                with log_lock:
                    log.write(json.dumps(line) + "\n")

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 64

        def handle_error(self, request, client_address):
            pass  # a client that hangs up mid-body: recorded with the bytes it got

    httpd = Server((args.host, args.port), Handler)
    print(httpd.server_address[1], flush=True)
    httpd.serve_forever()


TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000


def open_tun(name):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def _interrupt(*_):
    raise KeyboardInterrupt


# The delay line in C: the Python loop below it tops out short of 8 x 25 MB/s.
LINK_C = r"""
#define _GNU_SOURCE /* ppoll: a timeout finer than poll's milliseconds */
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>
#define SLOT 2048 /* TUN MTU 1500, no GSO: no packet is larger */
typedef struct { uint64_t *due; uint16_t *len; char *buf; long head, n; } queue;
static volatile sig_atomic_t stop;
static void on_signal(int s) { (void)s; stop = 1; }
static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + t.tv_nsec;
}
static int open_tun(const char *name) {
    struct ifreq ifr;
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK);
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (fd < 0 || ioctl(fd, TUNSETIFF, &ifr) < 0) { perror(name); exit(1); }
    return fd;
}
int main(int argc, char **argv) {
    if (argc != 7) return 2;
    int fd[2] = {open_tun(argv[1]), open_tun(argv[2])};
    uint64_t delay = strtoull(argv[3], 0, 10), rng = strtoull(argv[6], 0, 10) * 2654435761u + 1;
    double loss = atof(argv[4]);
    long limit = atol(argv[5]), passed = 0, lost = 0, overflow = 0;
    static char scratch[SLOT];
    queue q[2];
    for (int i = 0; i < 2; i++) {
        q[i].due = calloc(limit, 8); q[i].len = calloc(limit, 2); q[i].buf = malloc((size_t)limit * SLOT);
        q[i].head = q[i].n = 0;
        if (!q[i].due || !q[i].len || !q[i].buf) return 3;
    }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    printf("ready (C)\n");
    fflush(stdout);
    while (!stop) {
        uint64_t t = now_ns(), next = UINT64_MAX;
        for (int i = 0; i < 2; i++) {
            queue *x = &q[i];
            while (x->n && x->due[x->head] <= t) {
                if (write(fd[1 - i], x->buf + x->head * SLOT, x->len[x->head]) < 0) overflow++;
                x->head = (x->head + 1) % limit;
                x->n--;
            }
            if (x->n && x->due[x->head] < next) next = x->due[x->head];
        }
        struct pollfd p[2] = {{fd[0], POLLIN, 0}, {fd[1], POLLIN, 0}};
        struct timespec ts, *tp = 0;
        if (next != UINT64_MAX) {
            uint64_t w = next > t ? next - t : 0;
            ts.tv_sec = w / 1000000000u; ts.tv_nsec = w % 1000000000u; tp = &ts;
        }
        if (ppoll(p, 2, tp, 0) < 0) continue;
        t = now_ns();
        for (int i = 0; i < 2; i++) {
            queue *x = &q[i];
            for (int k = 0; (p[i].revents & POLLIN) && k < 512; k++) {
                long slot = (x->head + x->n) % limit;
                char *into = x->n < limit ? x->buf + slot * SLOT : scratch;
                ssize_t r = read(fd[i], into, SLOT);
                if (r < 0) break;
                rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
                if ((rng >> 11) * 0x1.0p-53 < loss) lost++;
                else if (x->n >= limit) overflow++;
                else { x->due[slot] = t + delay; x->len[slot] = (uint16_t)r; x->n++; passed++; }
            }
        }
    }
    fprintf(stderr, "{\"passed\": %ld, \"lost\": %ld, \"overflow\": %ld}\n", passed, lost, overflow);
    return 0;
}
"""


def compiled_link():
    """The C delay line's executable, built once per source; None without a compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return None
    digest = hashlib.sha256(LINK_C.encode()).hexdigest()[:16]
    exe = os.path.join(tempfile.gettempdir(), f"hubcache-wanlink-{digest}")
    if not os.path.exists(exe):
        part = f"{exe}.{os.getpid()}"  # concurrent runs each build; one wins the rename
        with open(part + ".c", "w") as f:
            f.write(LINK_C)
        r = subprocess.run([cc, "-O2", "-o", part, part + ".c"], capture_output=True, text=True)
        os.unlink(part + ".c")
        if r.returncode:
            print(f"cc failed, using the Python delay line: {r.stderr[-300:]}", file=sys.stderr)
            return None
        os.replace(part, exe)
    return exe


def link(args):
    exe = None if args.python else compiled_link()
    if exe:
        delay_ns = str(int(args.delay_ms * 1e6))
        os.execv(exe, [exe, args.name_a, args.name_b, delay_ns, str(args.loss / 100), str(args.limit), str(args.seed)])
    fds = [open_tun(args.name_a), open_tun(args.name_b)]
    delay, loss, limit = args.delay_ms / 1000, args.loss / 100, args.limit
    queues = [collections.deque(), collections.deque()]  # packets from fds[i], due for fds[1 - i]
    counts = {"passed": 0, "lost": 0, "overflow": 0}
    rand = random.Random(args.seed).random
    poll = select.epoll()
    for fd in fds:
        poll.register(fd, select.EPOLLIN)
    signal.signal(signal.SIGTERM, _interrupt)
    print("ready (Python)", flush=True)
    try:
        while True:
            now = time.monotonic()
            for i, queue in enumerate(queues):
                out = fds[1 - i]
                while queue and queue[0][0] <= now:
                    try:
                        os.write(out, queue.popleft()[1])
                    except OSError:
                        counts["overflow"] += 1
            due = [q[0][0] for q in queues if q]
            events = poll.poll(max(0.0, min(due) - now) if due else -1)
            now = time.monotonic()
            for fd, _ in events:
                i = fds.index(fd)
                queue = queues[i]
                for _ in range(512):
                    try:
                        packet = os.read(fd, 65536)
                    except BlockingIOError:
                        break
                    if loss and rand() < loss:
                        counts["lost"] += 1
                    elif len(queue) >= limit:
                        counts["overflow"] += 1
                    else:
                        queue.append((now + delay, packet))
                        counts["passed"] += 1
    except KeyboardInterrupt:
        pass
    finally:
        print(json.dumps(counts), file=sys.stderr, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("file")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--per-connection", type=float, default=25.0, metavar="MB/s", help="0: unthrottled")
    s.add_argument("--log")
    s.add_argument("--cc", help="TCP congestion control of the sending side (default: the system's)")
    k = sub.add_parser("link")
    k.add_argument("name_a")
    k.add_argument("name_b")
    k.add_argument("--delay-ms", type=float, default=20.0)
    k.add_argument("--loss", type=float, default=0.1, help="percent, each direction")
    k.add_argument("--limit", type=int, default=1000, help="packets held per direction, as netem's limit")
    k.add_argument("--seed", type=int, default=13)
    k.add_argument("--python", action="store_true", help="the Python loop even if a C compiler is there")
    args = parser.parse_args()
    serve(args) if args.command == "serve" else link(args)


if __name__ == "__main__":
    main()
