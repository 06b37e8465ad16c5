"""gs:// directories: listed through the storage JSON API (paged), fetched object
by object into a cache entry, offline afterwards; hostile listings refused."""

from __future__ import annotations

import json
import os

import pytest

import hubcache
from hubcache.handles import GCS_DIR, cache_key, parse

from archives import fake_saved_model_files, read_tree
from helpers import leftovers, run_cli
from hubserver import Reply

HANDLE = "gs://tfhub-modules/google/tiny/1/uncompressed"


def test_a_directory_is_fetched_whole_into_one_entry_and_works_offline(env, hub, cache_dir, monkeypatch):
    files = fake_saved_model_files(4)
    hub.publish_gcs_dir("tfhub-modules", "google/tiny/1/uncompressed", files)
    assert parse(HANDLE).kind == GCS_DIR
    path = hubcache.resolve(HANDLE)
    assert os.path.basename(path) == cache_key(HANDLE) and read_tree(path) == files
    listings = hub.storage.requests_to("/storage/v1/b/tfhub-modules/o")
    assert len(listings) == (len(files) + 1) // 2  # two objects a page, every page read
    assert all(r.query["prefix"] == "google/tiny/1/uncompressed/" for r in listings)
    meta = json.load(open(path + ".hubcache.json"))
    assert meta["source_url"] == "gs://tfhub-modules/google/tiny/1/uncompressed" and meta["bytes"] == sum(map(len, files.values()))
    monkeypatch.setenv("HUBCACHE_OFFLINE", "1")
    before = hub.total_requests()
    assert hubcache.resolve(HANDLE) == path and hub.total_requests() == before


def test_prefetch_through_the_cli(env, hub):
    hub.publish_gcs_dir("b", "m/2", {"saved_model.pb": b"pb", "variables/variables.index": b"ix"})
    r = run_cli("prefetch", "gs://b/m/2/", env=env)
    assert r.returncode == 0, r.stderr
    assert read_tree(r.stdout.split(" -> ")[-1].strip()) == {"saved_model.pb": b"pb", "variables/variables.index": b"ix"}


def test_an_empty_or_private_directory_says_so(env, hub, cache_dir):
    hub.publish_gcs_dir("b", "other", {"x": b"1"})
    with pytest.raises(hubcache.DownloadError, match="names no objects"):
        hubcache.resolve("gs://b/nothing/here")
    assert leftovers(cache_dir) == []


def _hostile(hub, answer):
    hub.storage.route("/storage/v1/b/evil/o", lambda req: Reply(200, json.dumps(answer).encode()))


@pytest.mark.parametrize(
    "answer, match",
    [
        ({"items": [{"name": "d/../../escape", "size": "1"}]}, r"'\.\.'"),
        ({"items": [{"name": "elsewhere/x", "size": "1"}]}, "outside the directory"),
        ({"items": [{"name": "d/x", "size": "-1"}]}, "not a number"),
        ({"items": [{"name": "d/x", "size": "١"}]}, "not a number"),
        ({"items": "nope"}, "not a list"),
        ({"items": [{"name": "d/x", "size": "1"}], "nextPageToken": 7}, "page token"),
        ({"items": [{"name": "d/x", "size": "1"}], "nextPageToken": "same"}, "repeats"),
        ({"items": [{"name": "d/" + "x" * 2000, "size": "1"}]}, "outside the directory"),
        ({"items": [{"name": "d/x", "size": str(1 << 50)}]}, "HUBCACHE_MAX_SIZE"),
        ([1, 2], "JSON listing"),
    ],
)
def test_hostile_listings_are_refused_and_leave_nothing(env, hub, cache_dir, tmp_path, answer, match):
    _hostile(hub, answer)
    with pytest.raises(hubcache.HubcacheError, match=match):
        hubcache.resolve("gs://evil/d")
    assert leftovers(cache_dir) == [] and not os.path.exists(os.path.join(cache_dir, cache_key("gs://evil/d")))


def test_an_endless_listing_stops_at_the_file_limit(env, hub, cache_dir, monkeypatch):
    monkeypatch.setenv("HUBCACHE_MAX_FILES", "50")
    counter = {"n": 0}

    def endless(req):
        counter["n"] += 1
        return Reply(200, json.dumps({"items": [{"name": f"d/f{counter['n']}", "size": "1"}], "nextPageToken": f"p{counter['n']}"}).encode())

    hub.storage.route("/storage/v1/b/evil/o", endless)
    with pytest.raises(hubcache.ArchiveError, match="HUBCACHE_MAX_FILES"):
        hubcache.resolve("gs://evil/d")
    assert counter["n"] == 51


def test_an_object_of_another_size_than_listed_is_refused(env, hub, cache_dir):
    hub.publish_gcs_dir("b", "m", {"saved_model.pb": b"12345"})
    hub.gcs_objects["b"]["m/saved_model.pb"] = 3  # the listing now lies
    with pytest.raises(hubcache.IntegrityError, match="more bytes than the listing gave"):
        hubcache.resolve("gs://b/m")
    assert leftovers(cache_dir) == []


def test_load_passes_an_uncached_directory_to_tensorflow(env, hub, monkeypatch, tmp_path):
    pytest.importorskip("tensorflow")
    with pytest.raises(Exception) as e:  # TensorFlow's own error: it tried to read gs:// itself
        hubcache.load("gs://hubcache-test-no-such-bucket/model")
    assert not isinstance(e.value, hubcache.HubcacheError) and "gs://hubcache-test-no-such-bucket/model" in str(e.value)
    assert hub.storage.count("/storage/v1/b/hubcache-test-no-such-bucket/o") == 0
