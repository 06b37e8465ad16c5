"""The shared tier on the fetch path (hubcache.tier): real hubcache processes, each
with its own cache, against the loopback hub as upstream and moto's S3 server as
the tier. Nothing is mocked; troubled stores are the TCP stand-ins of s3proxy."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import pytest

try:
    import boto3  # noqa: F401
    import moto.server  # noqa: F401
except ImportError:
    if os.environ.get("CI"):  # on CI, a missing test dependency is a failure
        raise
    pytest.skip("needs boto3 and moto[server]: pip install -e '.[test]'", allow_module_level=True)

from s3proxy import Relay, Silent, closed_port  # noqa: E402

from archives import Member, fake_saved_model, make_tar, read_tree  # noqa: E402
from helpers import child_env, result_of, run_cli, s3, spawn_resolver  # noqa: E402

HANDLE_PATH = "google/tiny/1"
PREFIX = "team/models"


@pytest.fixture
def tier(env, server, bucket):
    """``env`` with the tier on: returns the variables, for children too."""
    values = dict(env)
    values.update(
        HUBCACHE_REMOTE=f"s3://{bucket}/{PREFIX}",
        HUBCACHE_REMOTE_ENDPOINT=server,
        HUBCACHE_REMOTE_TIMEOUT="3",
    )
    return values


def handle(hub) -> str:
    return f"{hub.tfhub.url}/{HANDLE_PATH}"


def key(hub) -> str:
    return hashlib.sha1(handle(hub).encode()).hexdigest()


def objects(server, bucket):
    """{key under the prefix: bytes} of the bucket."""
    client = s3(server)
    names = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return {n[len(PREFIX) + 1 :]: client.get_object(Bucket=bucket, Key=n)["Body"].read() for n in names}


def node(env, cache, **extra):
    """The environment of one machine: its own cache."""
    return {**env, "TFHUB_CACHE_DIR": str(cache), **extra}


def resolve(hub, env, timeout=120):
    return result_of(spawn_resolver(handle(hub), env), timeout)


def test_a_cold_cluster_downloads_once(hub, tier, server, bucket, tmp_path):
    """8 machines race on one cold handle: upstream serves one body, the tier the rest."""
    archive = fake_saved_model(size=3 << 20)
    blob = hub.publish_tfhub(HANDLE_PATH, archive)
    gate = str(tmp_path / "gate")
    nodes = [spawn_resolver(handle(hub), node(tier, tmp_path / f"node{i}"), gate) for i in range(8)]
    deadline = time.monotonic() + 60
    while sum(n.startswith("gate.ready.") for n in os.listdir(tmp_path)) < len(nodes):
        assert time.monotonic() < deadline and all(p.poll() is None for p in nodes), [p.communicate() for p in nodes]
        time.sleep(0.01)
    open(gate, "w").close()
    results = [result_of(p) for p in nodes]
    assert all(r["ok"] for r in results), results
    hub.storage.wait_idle()
    assert hub.storage.completed(blob) == 1
    trees = [read_tree(r["path"]) for r in results]
    assert all(t == trees[0] for t in trees) and trees[0]
    sha = hashlib.sha256(archive).hexdigest()
    stored = objects(server, bucket)
    assert stored[f"v1/blobs/sha256/{sha}"] == archive
    record = json.loads(stored[f"v1/index/{key(hub)}.json"])
    assert (record["sha256"], record["size"]) == (sha, len(archive))
    assert not [n for n in stored if n.startswith("v1/leases/")], "a lease was left behind"
    for i in range(8):
        left = [n for n in os.listdir(tmp_path / f"node{i}") if ".hubcache-tmp." in n]
        assert not left, left


def test_a_local_hit_makes_no_remote_call(hub, tier, tmp_path):
    hub.publish_tfhub(HANDLE_PATH, fake_saved_model())
    cache = tmp_path / "node"
    assert resolve(hub, node(tier, cache))["ok"]
    # The same cache with the tier pointing at a port nobody listens on: a hit never asks it.
    code = "import sys, hubcache; hubcache.resolve(sys.argv[1]); print('botocore' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code, handle(hub)],
        env=child_env(node(tier, cache, HUBCACHE_REMOTE_ENDPOINT=closed_port())),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False" and "shared tier" not in out.stderr


@pytest.mark.parametrize("bad", ["garbage", "another archive"])
def test_a_bad_blob_is_not_used_and_is_repaired(hub, tier, server, bucket, tmp_path, bad):
    archive = fake_saved_model(seed=1, compression="")  # plain tar: another model has the same size
    blob = hub.publish_tfhub(HANDLE_PATH, archive)
    assert resolve(hub, node(tier, tmp_path / "seeder"))["ok"]
    sha = hashlib.sha256(archive).hexdigest()
    wrong = os.urandom(len(archive)) if bad == "garbage" else fake_saved_model(seed=2, compression="")
    assert len(wrong) == len(archive)  # so that only the hash tells them apart
    s3(server).put_object(Bucket=bucket, Key=f"{PREFIX}/v1/blobs/sha256/{sha}", Body=wrong)
    result = resolve(hub, node(tier, tmp_path / "victim"))
    assert result["ok"], result
    assert read_tree(result["path"]) == read_tree(resolve(hub, node(tier, tmp_path / "seeder"))["path"])
    hub.storage.wait_idle()
    assert hub.storage.completed(blob) == 2, "the bad blob was used instead of going upstream"
    assert objects(server, bucket)[f"v1/blobs/sha256/{sha}"] == archive, "not repaired"
    assert resolve(hub, node(tier, tmp_path / "third"))["ok"]
    hub.storage.wait_idle()
    assert hub.storage.completed(blob) == 2


def test_a_pin_that_disagrees_with_the_index_is_an_integrity_error(hub, tier, tmp_path):
    archive = fake_saved_model(seed=3)
    hub.publish_tfhub(HANDLE_PATH, archive)
    assert resolve(hub, node(tier, tmp_path / "seeder"))["ok"]
    wrong_pin = "ab" * 32
    r = run_cli("resolve", handle(hub), "--sha256", wrong_pin, env=node(tier, tmp_path / "pinned"))
    assert r.returncode != 0
    assert "IntegrityError" in r.stderr or "SHA-256" in r.stderr, r.stderr
    assert hashlib.sha256(archive).hexdigest() in r.stderr


@pytest.mark.parametrize("store", ["closed port", "silent"])
def test_an_unusable_tier_falls_back_to_upstream_within_the_timeout(hub, env, tmp_path, store):
    hub.publish_tfhub(HANDLE_PATH, fake_saved_model())
    if store == "closed port":
        endpoint, stand_in = closed_port(), None
    else:
        stand_in = Silent()
        endpoint = stand_in.endpoint
    try:
        started = time.monotonic()
        proc = spawn_resolver(
            handle(hub),
            node(
                env,
                tmp_path / "node",
                HUBCACHE_REMOTE="s3://bucket/prefix",
                HUBCACHE_REMOTE_ENDPOINT=endpoint,
                HUBCACHE_REMOTE_TIMEOUT="1",
                AWS_ACCESS_KEY_ID="testing",
                AWS_SECRET_ACCESS_KEY="testing",
                AWS_DEFAULT_REGION="us-east-1",
            ),
        )
        out, err = proc.communicate(timeout=60)
        seconds = time.monotonic() - started
    finally:
        if stand_in is not None:
            stand_in.close()
    result = json.loads(out.strip().splitlines()[-1])
    assert result["ok"], (result, err)
    assert seconds < 15, seconds  # one 1 s timeout (the SDK may connect twice), plus start-up
    assert err.count("cannot be used") == 1, err  # one warning, then upstream


def test_offline_opens_no_socket(hub, tier, tmp_path):
    hub.publish_tfhub(HANDLE_PATH, fake_saved_model())
    code = (
        "import socket, sys\n"
        "def refuse(*a, **k): raise AssertionError('a socket was opened')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "import hubcache\n"
        "try:\n"
        "    hubcache.resolve(sys.argv[1])\n"
        "except hubcache.OfflineError as e:\n"
        "    print('offline', 'botocore' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, handle(hub)],
        env=child_env(node(tier, tmp_path / "node", HUBCACHE_OFFLINE="1")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == "offline False", out.stderr


def test_a_node_killed_holding_the_lease_is_taken_over(hub, tier, server, bucket, tmp_path):
    archive = fake_saved_model(size=1 << 20)
    blob = hub.publish_tfhub(HANDLE_PATH, archive)
    hub.storage.fault(blob, bytes_per_second=100_000, times=1)  # the first node is slow: killed mid-way
    short = {"HUBCACHE_REMOTE_LEASE": "2"}
    first = spawn_resolver(handle(hub), node(tier, tmp_path / "first", **short))
    lease = f"{PREFIX}/v1/leases/{key(hub)}.json"
    deadline = time.monotonic() + 60
    while not (
        hub.storage.in_flight
        and lease in [o["Key"] for o in s3(server).list_objects_v2(Bucket=bucket).get("Contents", [])]
    ):
        assert time.monotonic() < deadline and first.poll() is None, first.communicate()
        time.sleep(0.02)
    first.kill()  # kill -9, holding the lease
    first.wait()
    started = time.monotonic()
    result = resolve(hub, node(tier, tmp_path / "second", **short))
    waited = time.monotonic() - started
    assert result["ok"], result
    hub.storage.wait_idle()
    assert hub.storage.completed(blob) == 1  # the killed node's body was cut short
    assert waited > 0.5, "the lease of a killed node should be waited out, not ignored"
    assert objects(server, bucket)[f"v1/blobs/sha256/{hashlib.sha256(archive).hexdigest()}"] == archive


def test_a_read_only_node_never_writes(hub, tier, server, bucket, tmp_path):
    archive = fake_saved_model()
    blob = hub.publish_tfhub(HANDLE_PATH, archive)
    reader = {"HUBCACHE_REMOTE_MODE": "ro"}
    assert resolve(hub, node(tier, tmp_path / "reader1", **reader))["ok"]
    assert objects(server, bucket) == {}, "a read-only node wrote to the tier"
    assert resolve(hub, node(tier, tmp_path / "writer"))["ok"]
    before = objects(server, bucket)
    result = resolve(hub, node(tier, tmp_path / "reader2", **reader))
    assert result["ok"]
    assert objects(server, bucket) == before
    hub.storage.wait_idle()
    assert hub.storage.completed(blob) == 2, "the read-only node should have read the tier"


@pytest.mark.parametrize("target", ["s3", "directory"])
def test_prefetch_to_seeds_a_tier_that_serves_with_upstream_gone(hub, tier, server, bucket, tmp_path, target):
    archive = fake_saved_model(seed=5)
    sha = hashlib.sha256(archive).hexdigest()
    hub.publish_tfhub(HANDLE_PATH, archive)
    lock = tmp_path / "hubcache.lock"
    lock.write_text(f"{handle(hub)} sha256={sha}\n")
    seeder = node(tier, tmp_path / "seeder")
    to = tier["HUBCACHE_REMOTE"] if target == "s3" else str(tmp_path / "carry")
    r = run_cli("prefetch", "--to", to, "-f", str(lock), "--require-hashes", "--json", env=seeder)
    assert r.returncode == 0, r.stderr
    [line] = json.loads(r.stdout)
    assert (line["ok"], line["sha256"], line["to"]) == (True, sha, to)
    assert not os.path.exists(tmp_path / "seeder") or not os.listdir(tmp_path / "seeder"), "seeding filled the cache"
    if target == "directory":  # carried, then `aws s3 sync DIR s3://bucket/prefix`
        root = tmp_path / "carry"
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        assert files == [f"v1/blobs/sha256/{sha}", f"v1/index/{key(hub)}.json"]
        for name in files:
            s3(server).upload_file(str(root / name), bucket, f"{PREFIX}/{name}")
    hub.stop()  # upstream gone: the tier alone
    result = resolve(hub, node(tier, tmp_path / "node"))
    assert result["ok"], result
    assert read_tree(result["path"])


def test_a_pinned_download_is_uploaded_while_it_downloads(hub, tier, server, bucket, tmp_path):
    """With the SHA-256 known, the blob's name is too: its parts go up as the
    archive comes down, not after. Parts are 8 MiB, and the upload holds two before
    it starts (one part would be a single PUT): this archive has four."""
    archive = fake_saved_model(seed=6, size=28 << 20)
    sha = hashlib.sha256(archive).hexdigest()
    blob = hub.publish_tfhub(HANDLE_PATH, archive)
    hub.storage.fault(blob, bytes_per_second=7 << 20)  # about 4 s on the wire...
    env = child_env(node(tier, tmp_path / "node"))
    env["HUBCACHE_CONNECTIONS"] = "1"  # ...on one connection (more would end it before two parts)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubcache", "resolve", handle(hub), "--sha256", sha],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    client, seen = s3(server), []
    while proc.poll() is None:
        uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        seen.append((bool(uploads), hub.storage.in_flight))
        time.sleep(0.05)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert (True, 1) in seen, f"the upload started only after the download: {seen}"
    assert objects(server, bucket)[f"v1/blobs/sha256/{sha}"] == archive


def test_a_store_that_ignores_conditional_creates_runs_without_leases(hub, tier, server, bucket, tmp_path):
    """Some S3 look-alikes accept If-None-Match and overwrite anyway: no lease can
    work there, so the nodes race upstream; each entry is still right, and the tier
    still ends up filled."""
    archive = fake_saved_model(seed=7)
    blob = hub.publish_tfhub(HANDLE_PATH, archive)
    relay = Relay(int(server.rsplit(":", 1)[1]), hide=b"If-None-Match")
    try:
        lax = {"HUBCACHE_REMOTE_ENDPOINT": relay.endpoint}
        nodes = [spawn_resolver(handle(hub), node(tier, tmp_path / f"node{i}", **lax)) for i in range(3)]
        outs = [p.communicate(timeout=120) for p in nodes]
    finally:
        relay.close()
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert all(r["ok"] for r in results), outs
    assert any("without leases" in err for _, err in outs), [
        err for _, err in outs
    ]  # (a later node may find the index)
    assert len({json.dumps(read_tree(r["path"]), default=str, sort_keys=True) for r in results}) == 1
    hub.storage.wait_idle()
    assert 1 <= hub.storage.completed(blob) <= 3
    stored = objects(server, bucket)
    assert stored[f"v1/blobs/sha256/{hashlib.sha256(archive).hexdigest()}"] == archive
    assert not [n for n in stored if n.startswith("v1/leases/")], sorted(stored)
    assert json.loads(stored["v1/probe/result.json"])["conditional_writes"] is False  # for the next machines


def test_a_blob_read_that_the_store_cuts_goes_upstream_cleanly(hub, tier, server, bucket, tmp_path):
    """The store goes away in the middle of a blob: the read gives up after its
    resumes, and the half-extracted files must not spoil the download that follows."""
    archive = fake_saved_model(seed=8, size=1 << 20)
    blob = hub.publish_tfhub(HANDLE_PATH, archive)
    assert resolve(hub, node(tier, tmp_path / "seeder"))["ok"]
    relay = Relay(int(server.rsplit(":", 1)[1]), cut_after=256 << 10, cuts=1000)  # each connection: 256 KiB
    try:
        proc = spawn_resolver(handle(hub), node(tier, tmp_path / "node", HUBCACHE_REMOTE_ENDPOINT=relay.endpoint))
        deadline = time.monotonic() + 60
        while relay.connections < 2:  # the blob is being resumed
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.005)
    finally:
        relay.close()  # the store is gone: every resume is refused
    out, err = proc.communicate(timeout=120)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["ok"], (result, err[-2000:])
    assert read_tree(result["path"]) == read_tree(resolve(hub, node(tier, tmp_path / "seeder"))["path"])
    hub.storage.wait_idle()
    assert "cannot be used" in err, err[-2000:]
    assert hub.storage.completed(blob) == 2


def test_an_index_naming_an_archive_that_is_no_model_is_not_used(hub, tier, server, bucket, tmp_path):
    """The right bytes of the wrong archive (an index written by a bad hand), for a
    handle that must be a SavedModel: the node goes upstream instead of failing,
    and repairs the index."""
    from hubcache.handles import parse

    archive = fake_saved_model(seed=9)
    blob = hub.publish_tfhub(HANDLE_PATH, archive)
    slug = "google/tiny/tensorFlow2/tiny/1"
    slug_key = parse(slug).cache_key
    junk = make_tar([Member("readme.txt", b"not a model")])
    junk_sha = hashlib.sha256(junk).hexdigest()
    client = s3(server)
    client.put_object(Bucket=bucket, Key=f"{PREFIX}/v1/blobs/sha256/{junk_sha}", Body=junk)
    wrong = {
        "format": 1,
        "sha256": junk_sha,
        "size": len(junk),
        "handle": "h",
        "source": "s",
        "time": "t",
        "uploader": "u",
    }
    client.put_object(Bucket=bucket, Key=f"{PREFIX}/v1/index/{slug_key}.json", Body=json.dumps(wrong).encode())
    result = result_of(spawn_resolver(slug, node(tier, tmp_path / "node")))
    assert result["ok"], result
    assert "saved_model.pb" in read_tree(result["path"])
    hub.storage.wait_idle()
    assert hub.storage.completed(blob) == 1
    record = json.loads(objects(server, bucket)[f"v1/index/{slug_key}.json"])
    assert record["sha256"] == hashlib.sha256(archive).hexdigest()


def test_prefetch_to_stores_two_spellings_of_one_model_and_refuses_directories(hub, tier, server, bucket, tmp_path):
    archive = fake_saved_model(seed=10)
    hub.publish_tfhub(HANDLE_PATH, archive)  # also Kaggle's google/tiny/tensorFlow2/tiny/1
    slug = "google/tiny/tensorFlow2/tiny/1"
    seeder = node(tier, tmp_path / "seeder")
    to = tier["HUBCACHE_REMOTE"]
    r = run_cli("prefetch", "--to", to, "-j", "2", handle(hub), slug, "--json", env=seeder)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [line["ok"] for line in json.loads(r.stdout)] == [True, True]
    stored = objects(server, bucket)
    assert len([n for n in stored if n.startswith("v1/index/")]) == 2
    assert len([n for n in stored if n.startswith("v1/blobs/")]) == 1
    before = hub.storage.count()
    r = run_cli("prefetch", "--to", to, "gs://tfhub-modules/google/tiny/1/uncompressed", env=seeder)
    assert r.returncode == 1 and "not an archive" in r.stderr, r.stderr
    assert hub.storage.count() == before, "a directory was downloaded before being refused"
    r = run_cli("prefetch", "--to", to, handle(hub), env={**seeder, "TFHUB_MODEL_LOAD_FORMAT": "UNCOMPRESSED"})
    assert r.returncode == 2 and "UNCOMPRESSED" in r.stderr, r.stderr


def test_prefetch_to_stops_once_the_tier_fails(hub, tier, server, tmp_path):
    first = hub.publish_tfhub(HANDLE_PATH, fake_saved_model(seed=11))
    second = hub.publish_tfhub("google/other/1", fake_saved_model(seed=12))
    to = f"s3://no-such-bucket-{os.getpid()}/{PREFIX}"
    r = run_cli(
        "prefetch",
        "--to",
        to,
        handle(hub),
        f"{hub.tfhub.url}/google/other/1",
        "--json",
        env=node(tier, tmp_path / "seeder"),
    )
    assert r.returncode == 1
    lines = json.loads(r.stdout)
    assert [line["ok"] for line in lines] == [False, False]
    assert "not stored" in lines[0]["error"] and "not fetched" in lines[1]["error"], lines
    hub.storage.wait_idle()
    assert (hub.storage.completed(first), hub.storage.completed(second)) == (1, 0)
