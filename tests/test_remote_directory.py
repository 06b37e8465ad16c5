"""The shared tier in a directory (hubcache.remote.directory): real files, real
processes racing for leases (spawned, killed with kill -9), a real tmpfs filled
up, and the S3 client reading what was written after an ``aws s3 sync``-like copy."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from hubcache.errors import HubcacheError, IntegrityError, RemoteError
from hubcache.remote import MAX_BLOB_BYTES, MAX_RECORD_BYTES
from hubcache.remote import directory as directory_module
from hubcache.remote.directory import CHUNK, DirectoryRemote
from hubcache.remote.s3 import S3Remote

from helpers import child_env, s3
from helpers import index_record as record

KEY = hashlib.sha1(b"https://tfhub.dev/google/nnlm-en-dim128/2").hexdigest()
PREFIX = "team/models"


def tree(root):
    """Every file and directory under ``root``: relative path -> (bytes or None, mtime_ns)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            content = None
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    content = f.read()
            found[os.path.relpath(path, root)] = (content, os.lstat(path).st_mtime_ns)
    return found


def files(root):
    return sorted(p for p, (content, _) in tree(root).items() if content is not None)


def lease_path(root, key=KEY):
    return os.path.join(root, "v1", "leases", key + ".json")


def lease_of(root, key=KEY):
    with open(lease_path(root, key), "rb") as f:
        return json.loads(f.read())


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / "tier")


# -- the index -----------------------------------------------------------------


def test_index_round_trip(root):
    r = DirectoryRemote(root)
    assert r.get_index(KEY) is None  # nothing there yet, not even the directory
    r.put_index(KEY, record(extra_field="dropped"))
    assert r.get_index(KEY) == record()
    assert files(root) == [f"v1/index/{KEY}.json"]  # no temporary file left
    with open(os.path.join(root, "v1", "index", KEY + ".json"), "rb") as f:
        assert json.loads(f.read()) == record()  # plain JSON, as S3Remote writes it
    r.put_index(KEY, record(b"another"))  # replaced (a repair)
    assert r.get_index(KEY)["sha256"] == hashlib.sha256(b"another").hexdigest()
    assert files(root) == [f"v1/index/{KEY}.json"]
    assert DirectoryRemote(root).url == os.path.abspath(root)


@pytest.mark.parametrize(
    "key, sha256",
    [("../../etc/passwd", "../" * 21 + "a"), ("../" + KEY[3:], "00" * 31), (KEY.upper(), "zz" * 32), ("/" + KEY[1:], "")],
)
def test_an_invalid_record_is_not_written_and_keys_are_checked(root, key, sha256):
    r = DirectoryRemote(root)
    with pytest.raises(ValueError):
        r.put_index(KEY, record(size=-1))
    for call in (
        lambda: r.get_index(key),
        lambda: r.put_index(key, record()),
        lambda: r.try_lease(key, "node-a", 60),
        lambda: r.release_lease(key, "node-a"),
        lambda: r.open_blob(sha256),
        lambda: r.put_blob(sha256, [b"x"]),
    ):
        with pytest.raises(ValueError):
            call()
    assert not os.path.exists(root)


HOSTILE = {
    "empty": b"",
    "not json": b"<html>hello</html>",
    "not utf-8": b'{"format": 1, "sha256": "\xff\xfe"}',
    "a list": b"[1, 2, 3]",
    "deep nesting": b"[" * 50_000 + b"]" * 50_000,
    "a 5000-digit size": json.dumps(record()).replace('"size": 7', '"size": ' + "9" * 5000).encode(),
    "a true size": json.dumps(record(size=True)).encode(),
    "a short sha256": json.dumps(record(sha256="ab" * 16)).encode(),
    "a later format": json.dumps(record(format=2)).encode(),
    "a huge object": json.dumps(record(padding="x" * (MAX_RECORD_BYTES + 10))).encode(),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_index_is_ignored(root, name, caplog):
    path = os.path.join(root, "v1", "index", KEY + ".json")
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(HOSTILE[name])
    with caplog.at_level(logging.WARNING, logger="hubcache"):
        assert DirectoryRemote(root).get_index(KEY) is None
    assert "damaged index record" in caplog.text


@pytest.mark.parametrize("kind", ["a FIFO", "/dev/zero", "a directory", "a 1 TiB sparse file"])
def test_an_index_that_is_not_a_small_file_is_ignored_without_reading_it_all(root, kind, caplog):
    path = os.path.join(root, "v1", "index", KEY + ".json")
    os.makedirs(os.path.dirname(path))
    if kind == "a FIFO":
        os.mkfifo(path)  # opening it for reading would wait for a writer forever
    elif kind == "/dev/zero":
        os.symlink("/dev/zero", path)  # endless
    elif kind == "a directory":
        os.mkdir(path)
    else:
        with open(path, "wb") as f:
            f.truncate(1 << 40)  # read whole, it would never fit in memory
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="hubcache"):
        assert DirectoryRemote(root).get_index(KEY) is None
    assert time.monotonic() - started < 5
    assert "damaged index record" in caplog.text


# -- blobs ---------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 3 * CHUNK + 12345])
@pytest.mark.parametrize("given_as", ["file", "chunks"])
def test_blob_round_trip(root, size, given_as):
    data = os.urandom(size)
    digest = hashlib.sha256(data).hexdigest()
    r = DirectoryRemote(root)
    if given_as == "file":
        source = io.BytesIO(b"skipped" + data)
        source.seek(7)  # read from its position
    else:
        source = (data[i : i + 300_000] for i in range(0, size, 300_000))
    assert r.put_blob(digest, source) == size
    assert files(root) == [f"v1/blobs/sha256/{digest}"]
    with r.open_blob(digest.upper()) as blob:
        assert blob.size == size
        chunks = list(blob)
    assert all(0 < len(c) <= CHUNK for c in chunks)
    assert b"".join(chunks) == data


def test_a_missing_blob_is_none(root):
    assert DirectoryRemote(root).open_blob("ab" * 32) is None


@pytest.mark.parametrize("size", [0, 1000, 3 * CHUNK + 1])
def test_bytes_that_do_not_match_the_hash_are_not_stored(root, size):
    with pytest.raises(IntegrityError) as e:
        DirectoryRemote(root).put_blob("ab" * 32, io.BytesIO(os.urandom(size)))
    assert "ab" * 32 in str(e.value) and "nothing was stored" in str(e.value)
    assert files(root) == []


def test_a_failing_source_leaves_nothing(root):
    def chunks():
        yield b"x" * CHUNK
        raise RuntimeError("the source broke")

    with pytest.raises(RuntimeError, match="the source broke"):
        DirectoryRemote(root).put_blob("ab" * 32, chunks())
    assert files(root) == []


def test_a_blob_replaced_while_read_reads_whole_and_one_cut_short_fails(root):
    data = os.urandom(3 * CHUNK)
    digest = hashlib.sha256(data).hexdigest()
    r = DirectoryRemote(root)
    r.put_blob(digest, [data])
    with r.open_blob(digest) as blob:
        chunks = iter(blob)
        first = next(chunks)
        r.put_blob(digest, [data])  # a new file renamed over it: this one is still read
        assert first + b"".join(chunks) == data
    with r.open_blob(digest) as blob:
        chunks = iter(blob)
        next(chunks)
        os.truncate(os.path.join(root, "v1", "blobs", "sha256", digest), CHUNK + 10)  # edited in place
        with pytest.raises(RemoteError, match="changed while read"):
            list(chunks)


@pytest.mark.parametrize("kind", ["a FIFO", "a directory", "a sparse file over MAX_BLOB_BYTES"])
def test_a_blob_that_is_not_a_usable_file_is_refused(root, kind):
    digest = "ab" * 32
    path = os.path.join(root, "v1", "blobs", "sha256", digest)
    os.makedirs(os.path.dirname(path))
    if kind == "a FIFO":
        os.mkfifo(path)
    elif kind == "a directory":
        os.mkdir(path)
    else:
        with open(path, "wb") as f:
            f.truncate(MAX_BLOB_BYTES + 1)
    started = time.monotonic()
    with pytest.raises(RemoteError) as e:
        DirectoryRemote(root).open_blob(digest)
    assert time.monotonic() - started < 5
    assert os.path.abspath(root) in str(e.value) and "Check" in str(e.value)


def test_a_full_disk_is_a_remote_error_and_leaves_no_partial_file(tmp_path):
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI must be able to mount a tmpfs (it runs as root)")
        pytest.skip("mounting a tmpfs needs root")
    disk = str(tmp_path / "tmpfs")
    os.mkdir(disk)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", disk], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"mount failed: {r.stderr.strip()}")
    try:
        remote = DirectoryRemote(disk)
        data = os.urandom(2 << 20)
        with pytest.raises(RemoteError) as e:
            remote.put_blob(hashlib.sha256(data).hexdigest(), io.BytesIO(data))
        assert isinstance(e.value, HubcacheError) and isinstance(e.value, ConnectionError)
        assert disk in str(e.value) and "Free some space" in str(e.value)
        assert files(disk) == []
        small = b"fits"
        assert remote.put_blob(hashlib.sha256(small).hexdigest(), [small]) == 4  # the space came back
    finally:
        subprocess.run(["umount", "-l", disk], capture_output=True)


def test_a_root_that_is_not_a_directory_is_a_remote_error(tmp_path):
    root = tmp_path / "a-file"
    root.write_bytes(b"not a directory")
    r = DirectoryRemote(str(root))
    for call in (lambda: r.get_index(KEY), lambda: r.put_index(KEY, record()), lambda: r.try_lease(KEY, "a", 60)):
        with pytest.raises(RemoteError) as e:
            call()
        assert str(root) in str(e.value) and "choose another" in str(e.value) and e.value.reason
    assert root.read_bytes() == b"not a directory"


# -- read-only mode ------------------------------------------------------------


def test_read_only_mode_never_writes(root):
    data = b"archive bytes"
    digest = hashlib.sha256(data).hexdigest()
    DirectoryRemote(root).put_blob(digest, [data])
    DirectoryRemote(root).try_lease(KEY, "node-a", 60)
    r = DirectoryRemote(root, read_only=True)
    before = tree(root)
    for write in (
        lambda: r.put_index(KEY, record(data)),
        lambda: r.put_blob(digest, [data]),
        lambda: r.put_blob("cd" * 32, [data]),
        lambda: r.try_lease(KEY, "node-a", 60),
        lambda: r.try_lease("0" * 40, "node-a", 60),
        lambda: r.release_lease(KEY, "node-a"),
    ):
        with pytest.raises(RemoteError, match="read-only"):
            write()
    assert not r.probe_conditional_writes()
    assert tree(root) == before
    assert b"".join(r.open_blob(digest)) == data  # reading works
    assert DirectoryRemote(root).probe_conditional_writes()


# -- leases --------------------------------------------------------------------


def test_the_first_lease_wins_and_an_expired_one_is_taken_over(root):
    a, b = DirectoryRemote(root), DirectoryRemote(root)
    assert a.try_lease(KEY, "node-a", 1.5)
    assert not b.try_lease(KEY, "node-b", 60)
    assert a.try_lease(KEY, "node-a", 1.5)  # renewed by its owner
    assert lease_of(root)["owner"] == "node-a"
    time.sleep(1.7)
    assert b.try_lease(KEY, "node-b", 60)
    assert lease_of(root) == {"owner": "node-b", "seconds": 60, "time": lease_of(root)["time"]}
    assert not a.try_lease(KEY, "node-a", 60)
    b.release_lease(KEY, "node-a")  # not its owner: kept
    assert not a.try_lease(KEY, "node-a", 60)
    b.release_lease(KEY, "node-b")
    assert not os.path.exists(lease_path(root))
    assert a.try_lease(KEY, "node-a", 60)
    assert files(root) == [f"v1/leases/{KEY}.json"]  # no temporary file, no claim left


@pytest.mark.parametrize("body", [b"\x00garbage", b'{"owner": "x", "seconds": "60"}', b'{"owner": "x", "seconds": 1e99}'])
def test_a_damaged_lease_is_taken_over(root, body):
    os.makedirs(os.path.dirname(lease_path(root)))
    with open(lease_path(root), "wb") as f:
        f.write(body)
    assert DirectoryRemote(root).try_lease(KEY, "node-a", 60)
    assert lease_of(root)["owner"] == "node-a" and lease_of(root)["seconds"] == 60


def test_a_lease_changed_since_it_was_read_is_not_claimed(root):
    """A racer slow between reading the lease and claiming it claims nothing."""
    r = DirectoryRemote(root)
    assert r.try_lease(KEY, "node-a", 0)
    seen = directory_module._read_lease(lease_path(root))
    assert r.try_lease(KEY, "node-b", 60)  # taken over meanwhile
    assert directory_module._claim(lease_path(root), seen) is None
    assert lease_of(root)["owner"] == "node-b"
    assert files(root) == [f"v1/leases/{KEY}.json"]


def test_a_claim_left_by_a_dead_process_blocks_for_claim_seconds_only(root, monkeypatch):
    monkeypatch.setattr(directory_module, "CLAIM_SECONDS", 2.0)
    r = DirectoryRemote(root)
    assert r.try_lease(KEY, "dead-node", 0)
    # A process that claimed the expired lease to take it over, and was killed then.
    assert directory_module._claim(lease_path(root), directory_module._read_lease(lease_path(root)))
    assert not r.try_lease(KEY, "node-a", 60)  # someone is taking it over
    time.sleep(2.2)
    assert r.try_lease(KEY, "node-a", 60)
    assert not r.try_lease(KEY, "node-b", 60)
    assert lease_of(root)["owner"] == "node-a"
    assert files(root) == [f"v1/leases/{KEY}.json"]  # the dead claim is gone too


def test_bad_lease_seconds_are_refused(root):
    for seconds in (-1, float("nan"), 1e8):
        with pytest.raises(ValueError):
            DirectoryRemote(root).try_lease(KEY, "node-a", seconds)
    assert not os.path.exists(root)


RACER = """
import os, sys, time
from hubcache.remote.directory import DirectoryRemote
root, gate, keys = sys.argv[1], sys.argv[2], sys.argv[3:]
r = DirectoryRemote(root)
me = "racer-" + str(os.getpid())
for i, key in enumerate(keys):
    open(gate + "." + str(i) + ".ready." + str(os.getpid()), "w").close()
    while not os.path.exists(gate + "." + str(i)):
        time.sleep(0.001)
    with open(gate + "." + str(i)) as f:
        start = float(f.read())
    time.sleep(max(0.0, start - time.time() - 0.005))
    while time.time() < start:  # all start within microseconds, as far as the cores allow
        pass
    print(i, me, r.try_lease(key, me, 60), flush=True)
"""


@pytest.mark.parametrize("lease", ["none", "expired", "expired and damaged"])
def test_racing_processes_take_a_lease_once(root, tmp_path, lease):
    racers, rounds = 8, 30
    keys = [hashlib.sha1(b"handle %d" % i).hexdigest() for i in range(rounds)]
    r = DirectoryRemote(root)
    for key in keys:
        if lease == "expired":
            assert r.try_lease(key, "dead-node", 0)
        elif lease == "expired and damaged":
            os.makedirs(os.path.dirname(lease_path(root, key)), exist_ok=True)
            with open(lease_path(root, key), "wb") as f:
                f.write(b"{not json")
    gates = tmp_path / "gates"
    gates.mkdir()
    gate = str(gates / "gate")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, root, gate, *keys],
            env=child_env({}),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(racers)
    ]
    try:
        for i in range(rounds):
            deadline = time.monotonic() + 60
            while sum(n.startswith(f"gate.{i}.ready.") for n in os.listdir(gates)) < racers:
                assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "a racer died"
                time.sleep(0.005)
            with open(f"{gate}.{i}.tmp", "w") as f:
                f.write(repr(time.time() + 0.05))
            os.rename(f"{gate}.{i}.tmp", f"{gate}.{i}")
        answers = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), [err for _, err in answers]
    lines = [line.split() for out, _ in answers for line in out.splitlines()]
    for i, key in enumerate(keys):
        winners = [me for n, me, won in lines if n == str(i) and won == "True"]
        assert len([n for n, _, _ in lines if n == str(i)]) == racers
        assert len(winners) == 1, (i, winners)
        assert lease_of(root, key)["owner"] == winners[0]
    assert sorted(os.listdir(os.path.join(root, "v1", "leases"))) == sorted(k + ".json" for k in keys)


HOLDER = """
import sys, time
from hubcache.remote.directory import DirectoryRemote
print(DirectoryRemote(sys.argv[1]).try_lease(sys.argv[2], "holder", float(sys.argv[3])), flush=True)
time.sleep(600)
"""


def test_the_lease_of_a_killed_process_is_taken_over_after_it_expires(root):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, root, KEY, "3"], env=child_env({}), stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "True"
        taken = time.time()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        holder.stdout.close()
    assert holder.returncode == -signal.SIGKILL
    r = DirectoryRemote(root)
    assert not r.try_lease(KEY, "node-b", 60)  # dead, but its lease runs on
    time.sleep(max(0.0, taken + 3.2 - time.time()))
    assert r.try_lease(KEY, "node-b", 60)
    assert lease_of(root)["owner"] == "node-b"


def test_the_probe_finds_hard_links_and_their_absence(root, monkeypatch, caplog):
    assert DirectoryRemote(root).probe_conditional_writes()
    assert files(root) == []  # the probe's files are removed

    # No FAT filesystem to mount here: a filesystem without hard links, as link() answers on one.
    def no_links(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    with caplog.at_level(logging.WARNING, logger="hubcache"):
        assert not DirectoryRemote(root).probe_conditional_writes()
    assert "running without leases" in caplog.text
    assert files(root) == []


# -- the contract: a directory synced to S3 is the tier S3Remote reads ----------


def test_a_directory_copied_to_s3_is_read_by_the_s3_client(root, server, bucket, tmp_path):
    data = os.urandom(3 * CHUNK + 5)
    digest = hashlib.sha256(data).hexdigest()
    d = DirectoryRemote(root)
    d.put_blob(digest, io.BytesIO(data))
    d.put_index(KEY, record(data))
    client = s3(server)
    for rel in files(root):  # what `aws s3 sync DIR s3://bucket/prefix` does
        client.upload_file(os.path.join(root, rel), bucket, PREFIX + "/" + rel)
    listed = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert listed == [f"{PREFIX}/v1/blobs/sha256/{digest}", f"{PREFIX}/v1/index/{KEY}.json"]

    remote = S3Remote(bucket, PREFIX, endpoint=server)
    assert remote.get_index(KEY) == record(data) == d.get_index(KEY)
    with remote.open_blob(digest) as blob:
        assert blob.size == len(data) and b"".join(blob) == data

    # And back: what S3Remote wrote, copied down (`aws s3 sync s3://bucket/prefix DIR`), is read here.
    other = b"another archive"
    remote.put_blob(hashlib.sha256(other).hexdigest(), [other])
    remote.put_index("1" * 40, record(other))
    down = str(tmp_path / "down")
    for key in [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]:
        target = os.path.join(down, *key[len(PREFIX) + 1 :].split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        client.download_file(bucket, key, target)
    copy = DirectoryRemote(down, read_only=True)
    assert copy.get_index("1" * 40) == record(other) and copy.get_index(KEY) == record(data)
    assert b"".join(copy.open_blob(hashlib.sha256(other).hexdigest())) == other
