"""The shared tier's S3 client (hubcache.remote) against a real S3 server: moto's,
on 127.0.0.1, over HTTP, with no mock of boto3. Troubled stores (cut connections,
a header ignored, silence, refusals) are TCP stand-ins in tests/s3proxy.py."""

from __future__ import annotations

import hashlib
import io
import json
import logging
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

from s3proxy import Failing, Relay, Silent, closed_port  # noqa: E402

from hubcache.config import load_settings  # noqa: E402
from hubcache.errors import ConfigError, HubcacheError, IntegrityError, RemoteError  # noqa: E402
from hubcache.remote import MAX_RECORD_BYTES, open_remote  # noqa: E402
from hubcache.remote.s3 import S3Remote  # noqa: E402
from hubcache.remote.s3blobs import CHUNK, PART_SIZE  # noqa: E402

from helpers import REPO, child_env, s3  # noqa: E402
from helpers import index_record as record  # noqa: E402

KEY = hashlib.sha1(b"https://tfhub.dev/google/nnlm-en-dim128/2").hexdigest()
PREFIX = "team/models"


def remote(endpoint, bucket, **kwargs):
    kwargs.setdefault("timeout", 5.0)
    return S3Remote(bucket, PREFIX, endpoint=endpoint, **kwargs)


def keys(endpoint, bucket):
    return sorted(o["Key"] for o in s3(endpoint).list_objects_v2(Bucket=bucket).get("Contents", []))


# -- settings ------------------------------------------------------------------


def test_settings_of_the_shared_tier():
    default = load_settings(environ={})
    assert (default.remote, default.remote_endpoint, default.remote_mode) == (None, None, "rw")
    assert (default.remote_timeout, default.remote_wait) == (5.0, 600.0)
    env = {
        "HUBCACHE_REMOTE": "s3://models-bucket/team/models/",
        "HUBCACHE_REMOTE_ENDPOINT": "http://minio.local:9000/",
        "HUBCACHE_REMOTE_MODE": "RO",
        "HUBCACHE_REMOTE_TIMEOUT": "1.5",
        "HUBCACHE_REMOTE_WAIT": "0",
    }
    s = load_settings(environ=env)
    assert (s.remote, s.remote_endpoint, s.remote_mode) == ("s3://models-bucket/team/models", "http://minio.local:9000", "ro")
    assert (s.remote_timeout, s.remote_wait) == (1.5, 0.0)
    assert load_settings(environ={"HUBCACHE_REMOTE": "s3://models-bucket"}).remote == "s3://models-bucket"


@pytest.mark.parametrize(
    "variable, value, words",
    [
        ("HUBCACHE_REMOTE", "gs://bucket/x", "only s3://"),
        ("HUBCACHE_REMOTE", "s3://", "bucket is missing"),
        ("HUBCACHE_REMOTE", "s3:///prefix", "bucket is missing"),
        ("HUBCACHE_REMOTE", "s3://user:secret@bucket/x", "not a bucket name"),
        ("HUBCACHE_REMOTE", "s3://bucket/a/../b", "'..'"),
        ("HUBCACHE_REMOTE", "/mnt/share", "only s3://"),
        ("HUBCACHE_REMOTE_ENDPOINT", "minio:9000", "not an endpoint"),
        ("HUBCACHE_REMOTE_MODE", "readwrite", "rw"),
        ("HUBCACHE_REMOTE_TIMEOUT", "0", "positive"),
        ("HUBCACHE_REMOTE_WAIT", "-1", ">= 0"),
        ("HUBCACHE_REMOTE_LEASE", "1e8", "1 to 86400"),
        ("HUBCACHE_REMOTE_LEASE", "0.001", "1 to 86400"),
    ],
)
def test_bad_shared_tier_settings_name_the_variable(variable, value, words):
    with pytest.raises(ConfigError) as e:
        load_settings(environ={variable: value})
    assert variable in str(e.value) and words in str(e.value)


def test_env_shows_the_shared_tier_settings():
    from hubcache.cli.environment import setting_rows

    rows = {r["variable"]: r for r in setting_rows({"HUBCACHE_REMOTE": "s3://bkt/p", "HUBCACHE_REMOTE_TIMEOUT": "2"}, None)}
    assert (rows["HUBCACHE_REMOTE"]["source"], rows["HUBCACHE_REMOTE"]["text"]) == ("environment", "s3://bkt/p")
    assert rows["HUBCACHE_REMOTE_TIMEOUT"]["text"] == "2 s"
    assert (rows["HUBCACHE_REMOTE_WAIT"]["source"], rows["HUBCACHE_REMOTE_WAIT"]["text"]) == ("default", "600 s")


def test_import_hubcache_does_not_import_boto3():
    code = "import sys, hubcache, hubcache.config, hubcache.remote; print(sorted(m for m in sys.modules if 'boto' in m))"
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
    assert "boto" not in r.stderr


def test_no_remote_when_unset_or_offline(server, bucket):
    assert open_remote(load_settings(environ={})) is None
    offline = {"HUBCACHE_REMOTE": f"s3://{bucket}", "HUBCACHE_REMOTE_ENDPOINT": server, "HUBCACHE_OFFLINE": "1"}
    assert open_remote(load_settings(environ=offline)) is None
    online = open_remote(load_settings(environ={**offline, "HUBCACHE_OFFLINE": "0", "HUBCACHE_REMOTE_MODE": "ro"}))
    assert isinstance(online, S3Remote) and online.read_only and online.bucket == bucket and online.prefix == ""


# -- the index -----------------------------------------------------------------


def test_index_round_trip(server, bucket):
    r = remote(server, bucket)
    assert r.get_index(KEY) is None
    r.put_index(KEY, record(extra_field="dropped"))
    assert r.get_index(KEY) == record()
    assert keys(server, bucket) == [f"{PREFIX}/v1/index/{KEY}.json"]
    r.put_index(KEY, record(b"another"))  # replaced (a repair)
    assert r.get_index(KEY)["sha256"] == hashlib.sha256(b"another").hexdigest()


def test_an_invalid_record_is_not_written_and_keys_are_checked(server, bucket):
    r = remote(server, bucket)
    with pytest.raises(ValueError):
        r.put_index(KEY, record(size=-1))
    for bad in ("../../etc", KEY.upper(), KEY + "0"):
        with pytest.raises(ValueError):
            r.get_index(bad)
    with pytest.raises(ValueError):
        r.open_blob("00" * 31)
    assert keys(server, bucket) == []


HOSTILE = {
    "not json": b"<html>hello</html>",
    "not utf-8": b'{"format": 1, "sha256": "\xff\xfe"}',
    "a list": b"[1, 2, 3]",
    "deep nesting": b"[" * 50_000 + b"]" * 50_000,
    "a 5000-digit size": json.dumps(record()).replace('"size": 7', '"size": ' + "9" * 5000).encode(),
    "a true size": json.dumps(record(size=True)).encode(),
    "a negative size": json.dumps(record(size=-7)).encode(),
    "a float size": json.dumps(record(size=7.0)).encode(),
    "a short sha256": json.dumps(record(sha256="ab" * 16)).encode(),
    "an uppercase sha256": json.dumps(record(sha256="AB" * 32)).encode(),
    "a later format": json.dumps(record(format=2)).encode(),
    "a non-text handle": json.dumps(record(handle={"a": 1})).encode(),
    "a huge handle": json.dumps(record(handle="h" * 10_000)).encode(),
    "a huge object": json.dumps(record(padding="x" * (4 << 20))).encode(),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_index_is_ignored(server, bucket, name, caplog):
    s3(server).put_object(Bucket=bucket, Key=f"{PREFIX}/v1/index/{KEY}.json", Body=HOSTILE[name])
    with caplog.at_level(logging.WARNING, logger="hubcache"):
        assert remote(server, bucket).get_index(KEY) is None
    assert "damaged index record" in caplog.text


def test_a_huge_record_is_not_read_whole(server, bucket, monkeypatch):
    body = json.dumps(record(padding="x" * (4 << 20))).encode()
    s3(server).put_object(Bucket=bucket, Key=f"{PREFIX}/v1/index/{KEY}.json", Body=body)
    import botocore.response

    reads = []
    real = botocore.response.StreamingBody.read
    monkeypatch.setattr(botocore.response.StreamingBody, "read", lambda self, amt=None: reads.append(amt) or real(self, amt))
    assert remote(server, bucket).get_index(KEY) is None
    assert all(amt is not None and amt <= MAX_RECORD_BYTES + 1 for amt in reads)  # never read(): never all 4 MiB


# -- blobs ---------------------------------------------------------------------


def blob_keys(endpoint, bucket):
    return [k for k in keys(endpoint, bucket) if "/blobs/" in k]


@pytest.mark.parametrize("size", [0, 1000, 2 * PART_SIZE + 12345])
@pytest.mark.parametrize("given_as", ["file", "chunks"])
def test_blob_round_trip(server, bucket, size, given_as):
    data = os.urandom(size)
    digest = hashlib.sha256(data).hexdigest()
    r = remote(server, bucket)
    source = io.BytesIO(data) if given_as == "file" else (data[i : i + 300_000] for i in range(0, size, 300_000))
    assert r.put_blob(digest, source) == size
    assert blob_keys(server, bucket) == [f"{PREFIX}/v1/blobs/sha256/{digest}"]
    etag = s3(server).head_object(Bucket=bucket, Key=blob_keys(server, bucket)[0])["ETag"]
    assert etag.endswith('-3"') == (size > PART_SIZE)  # a multipart upload, in 3 parts
    with r.open_blob(digest.upper()) as blob:
        assert blob.size == size
        chunks = list(blob)
    assert all(len(c) <= CHUNK for c in chunks)
    assert b"".join(chunks) == data


def test_a_missing_blob_is_none(server, bucket):
    assert remote(server, bucket).open_blob("ab" * 32) is None


@pytest.mark.parametrize("size", [1000, PART_SIZE + 1])
def test_bytes_that_do_not_match_the_hash_are_not_stored(server, bucket, size):
    with pytest.raises(IntegrityError):
        remote(server, bucket).put_blob("ab" * 32, io.BytesIO(os.urandom(size)))
    assert blob_keys(server, bucket) == []
    assert s3(server).list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []  # aborted


def test_a_cut_connection_is_resumed_with_range(server, bucket):
    data = os.urandom(5 << 20)
    digest = hashlib.sha256(data).hexdigest()
    remote(server, bucket).put_blob(digest, io.BytesIO(data))
    relay = Relay(int(server.rsplit(":", 1)[1]), cut_after=(3 << 20) // 2, cuts=2)
    try:
        with remote(relay.endpoint, bucket).open_blob(digest) as blob:
            got = b"".join(blob)
    finally:
        relay.close()
    assert relay.cut == 2 and relay.connections >= 3
    assert hashlib.sha256(got).hexdigest() == digest and got == data


def test_a_blob_replaced_while_read_is_not_spliced(server, bucket):
    data = os.urandom(3 << 20)
    digest = hashlib.sha256(data).hexdigest()
    remote(server, bucket).put_blob(digest, io.BytesIO(data))
    relay = Relay(int(server.rsplit(":", 1)[1]), cut_after=(3 << 20) // 2, cuts=1)
    try:
        blob = remote(relay.endpoint, bucket).open_blob(digest)
        chunks = iter(blob)
        first = next(chunks)
        s3(server).put_object(Bucket=bucket, Key=f"{PREFIX}/v1/blobs/sha256/{digest}", Body=os.urandom(3 << 20))
        with pytest.raises(RemoteError, match="changed or vanished"):
            for _ in chunks:
                pass
    finally:
        relay.close()
    assert first == data[: len(first)]


def test_a_blob_read_gives_up_when_resumes_bring_nothing(server, bucket):
    data = os.urandom(2 << 20)
    digest = hashlib.sha256(data).hexdigest()
    remote(server, bucket).put_blob(digest, io.BytesIO(data))
    relay = Relay(int(server.rsplit(":", 1)[1]), cut_after=(1 << 20) + 4096, cuts=100)
    try:
        blob = remote(relay.endpoint, bucket).open_blob(digest)
        relay.cut_after = 20  # every resume is cut inside its response head
        started = time.monotonic()
        with pytest.raises(RemoteError, match="gave up after 5 resumes"):
            b"".join(blob)
    finally:
        relay.close()
    assert relay.cut == 1 + 5 and time.monotonic() - started < 5


def test_an_answer_cut_inside_its_head_is_a_remote_error(server, bucket):
    """http.client takes "HTTP/1.1 200 OK" and then nothing for an answer with no headers."""
    data = b"archive bytes"
    r = remote(server, bucket)
    r.put_blob(hashlib.sha256(data).hexdigest(), [data])
    r.put_index(KEY, record(data))
    relay = Relay(int(server.rsplit(":", 1)[1]), cut_after=20, cuts=100)
    try:
        cut = remote(relay.endpoint, bucket)
        with pytest.raises(RemoteError):
            cut.open_blob(hashlib.sha256(data).hexdigest())
        with pytest.raises(RemoteError):
            cut.get_index(KEY)
    finally:
        relay.close()


# -- leases --------------------------------------------------------------------


def test_the_first_lease_wins_and_an_expired_one_is_taken_over(server, bucket):
    a, b = remote(server, bucket), remote(server, bucket)
    assert a.try_lease(KEY, "node-a", 1)
    assert not b.try_lease(KEY, "node-b", 60)
    assert a.try_lease(KEY, "node-a", 1)  # renewed by its owner
    time.sleep(2.2)  # by the store's clock (whole seconds)
    assert b.try_lease(KEY, "node-b", 60)
    assert not a.try_lease(KEY, "node-a", 60)
    b.release_lease(KEY, "node-a")  # not its owner: kept
    assert not a.try_lease(KEY, "node-a", 60)
    b.release_lease(KEY, "node-b")
    assert a.try_lease(KEY, "node-a", 60)


def test_a_damaged_lease_is_taken_over(server, bucket):
    s3(server).put_object(Bucket=bucket, Key=f"{PREFIX}/v1/leases/{KEY}.json", Body=b"\x00garbage")
    assert remote(server, bucket).try_lease(KEY, "node-a", 60)
    lease = json.loads(s3(server).get_object(Bucket=bucket, Key=f"{PREFIX}/v1/leases/{KEY}.json")["Body"].read())
    assert lease["owner"] == "node-a" and lease["seconds"] == 60


RACER = """
import os, sys, time
from hubcache.remote.s3 import S3Remote
endpoint, bucket, prefix, key, gate = sys.argv[1:]
r = S3Remote(bucket, prefix, endpoint=endpoint, timeout=10)
open(gate + ".ready." + str(os.getpid()), "w").close()
while not os.path.exists(gate):
    time.sleep(0.002)
print(r.try_lease(key, "racer-" + str(os.getpid()), 60))
"""


@pytest.mark.parametrize("lease", ["none", "expired"])
def test_racing_processes_take_a_lease_once(server, bucket, tmp_path, lease):
    if lease == "expired":
        assert remote(server, bucket).try_lease(KEY, "dead-node", 0)
    gate = str(tmp_path / "gate")
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, server, bucket, PREFIX, KEY, gate],
            env=child_env({}),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    deadline = time.monotonic() + 60
    while sum(n.startswith("gate.ready.") for n in os.listdir(tmp_path)) < len(racers):
        assert time.monotonic() < deadline and all(p.poll() is None for p in racers), [p.communicate() for p in racers]
        time.sleep(0.01)
    open(gate, "w").close()
    answers = [p.communicate(timeout=60) for p in racers]
    assert all(p.returncode == 0 for p in racers), answers
    assert sorted(out.strip() for out, _ in answers) == ["False"] * 5 + ["True"]


# -- the probe -----------------------------------------------------------------


def test_the_probe_finds_conditional_writes_once(server, bucket, monkeypatch):
    from hubcache.remote import s3 as s3_module

    monkeypatch.setattr(s3_module, "_probed", {})
    r = remote(server, bucket)
    assert r.probe_conditional_writes()
    again, calls = remote(server, bucket), []
    monkeypatch.setattr(again, "call", lambda *a, **k: calls.append(a))
    assert again.probe_conditional_writes() and calls == []  # once per bucket and process
    assert keys(server, bucket) == [f"{PREFIX}/v1/probe/result.json"]  # the probe object is removed
    monkeypatch.setattr(s3_module, "_probed", {})  # another process: reads the answer, probes nothing
    third = remote(server, bucket)
    real_call = third.call
    monkeypatch.setattr(third, "call", lambda op, *a, **k: calls.append(op) or real_call(op, *a, **k))
    assert third.probe_conditional_writes() and calls == ["GetObject"]


def test_a_store_that_ignores_if_none_match_is_found_out(server, bucket, monkeypatch, caplog):
    from hubcache.remote import s3 as s3_module

    monkeypatch.setattr(s3_module, "_probed", {})
    relay = Relay(int(server.rsplit(":", 1)[1]), hide=b"If-None-Match")
    try:
        r = remote(relay.endpoint, bucket)
        with caplog.at_level(logging.WARNING, logger="hubcache"):
            assert not r.probe_conditional_writes()
        assert "running without leases" in caplog.text
        assert r.try_lease(KEY, "node-a", 60) and r.try_lease(KEY, "node-b", 60)  # what the probe warns of
    finally:
        relay.close()
    assert keys(server, bucket) == [f"{PREFIX}/v1/leases/{KEY}.json", f"{PREFIX}/v1/probe/result.json"]


def test_a_recorded_probe_answer_is_used_until_it_is_a_day_old(server, bucket, monkeypatch):
    from hubcache.remote import s3 as s3_module

    monkeypatch.setattr(s3_module, "_probed", {})
    path = f"{PREFIX}/v1/probe/result.json"
    s3(server).put_object(Bucket=bucket, Key=path, Body=json.dumps({"conditional_writes": False}).encode())
    assert not remote(server, bucket).probe_conditional_writes()  # trusted: moto would have said yes
    monkeypatch.setattr(s3_module, "_probed", {})
    monkeypatch.setattr(s3_module, "PROBE_RECORD_SECONDS", 0.0)  # now stale: probed again, and recorded
    assert remote(server, bucket).probe_conditional_writes()
    assert json.loads(s3(server).get_object(Bucket=bucket, Key=path)["Body"].read())["conditional_writes"] is True


# -- read-only mode ------------------------------------------------------------


def test_read_only_mode_never_writes(server, bucket):
    data = b"archive bytes"
    digest = hashlib.sha256(data).hexdigest()
    remote(server, bucket).put_blob(digest, [data])
    r = remote(server, bucket, read_only=True)
    before = keys(server, bucket)
    for write in (
        lambda: r.put_index(KEY, record(data)),
        lambda: r.put_blob(digest, [data]),
        lambda: r.try_lease(KEY, "node-a", 60),
        lambda: r.release_lease(KEY, "node-a"),
    ):
        with pytest.raises(RemoteError, match="read-only"):
            write()
    assert not r.probe_conditional_writes()
    assert keys(server, bucket) == before
    assert b"".join(r.open_blob(digest)) == data  # reading works


# -- failures: one exception type, within the timeout --------------------------


@pytest.mark.parametrize("store", ["closed port", "silent listener"])
def test_an_unusable_store_fails_within_the_timeout(server, store):
    silent = Silent() if store == "silent listener" else None
    endpoint = silent.endpoint if silent else closed_port()
    try:
        r = remote(endpoint, "models-bucket", timeout=1.0)
        for call in (lambda: r.get_index(KEY), lambda: r.open_blob("ab" * 32), lambda: r.try_lease(KEY, "a", 60)):
            started = time.monotonic()
            with pytest.raises(RemoteError) as e:
                call()
            assert time.monotonic() - started < 3.0
            assert isinstance(e.value, ConnectionError) and isinstance(e.value, HubcacheError)
            assert e.value.status is None and "HUBCACHE_REMOTE" in str(e.value) and endpoint in str(e.value)
    finally:
        if silent:
            silent.close()


def test_wrong_credentials_are_a_remote_error(server, bucket, monkeypatch):
    import moto.settings

    remote(server, bucket).put_index(KEY, record())
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # moto checks credentials from now on
    with pytest.raises(RemoteError) as e:
        remote(server, bucket).get_index(KEY)
    assert e.value.status == 403 and e.value.operation == "GetObject"
    assert "credentials" in str(e.value)


def test_a_missing_bucket_is_a_remote_error(server):
    with pytest.raises(RemoteError, match="NoSuchBucket"):
        remote(server, "no-such-bucket-here").get_index(KEY)


def test_a_failing_store_is_tried_twice_then_a_remote_error():
    failing = Failing(503, "SlowDown")
    try:
        with pytest.raises(RemoteError) as e:
            remote(failing.endpoint, "models-bucket").get_index(KEY)
    finally:
        failing.close()
    assert e.value.status == 503 and failing.requests == 2


def test_no_credentials_is_a_remote_error(server, bucket, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(RemoteError, match="credentials"):
        remote(server, bucket).get_index(KEY)
