"""Local archives (a path or a file:// URL): extracted once into the cache by the
same safe extractor, extracted again when the file changes, never left twice."""

from __future__ import annotations

import json
import os

import pytest

import hubcache

from archives import Member, fake_saved_model, fake_saved_model_files, make_tar, read_tree, tar_directory
from helpers import leftovers, run_cli


def entries(cache_dir: str):
    return sorted(n for n in os.listdir(cache_dir) if len(n) == 40)


def test_a_local_tar_gz_is_extracted_once_and_found_by_path_or_file_url(env, hub, cache_dir, tmp_path):
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(fake_saved_model(1))
    path = hubcache.resolve(str(archive))
    assert os.path.dirname(path) == cache_dir and read_tree(path) == fake_saved_model_files(1)
    meta = json.load(open(path + ".hubcache.json"))
    assert meta["source_url"] == f"file://{archive}" and meta["handle"] == str(archive)
    marker = os.stat(path + ".hubcache.json")
    assert hubcache.resolve(f"file://{archive}") == path and os.stat(path + ".hubcache.json") == marker
    assert hub.total_requests() == 0


@pytest.mark.parametrize("compression", ["", "gz", "bz2", "xz"])
def test_every_tar_compression_is_recognised_by_its_bytes_not_its_name(env, cache_dir, tmp_path, compression):
    archive = tmp_path / "model.bin"  # the name says nothing
    archive.write_bytes(fake_saved_model(2, compression=compression))
    assert read_tree(hubcache.resolve(str(archive))) == fake_saved_model_files(2)


def test_a_changed_file_is_extracted_again_and_the_old_entry_goes(env, cache_dir, tmp_path):
    archive = tmp_path / "model.tgz"
    archive.write_bytes(fake_saved_model(1))
    first = hubcache.resolve(str(archive))
    archive.write_bytes(fake_saved_model(2))
    os.utime(archive, ns=(os.stat(archive).st_atime_ns, os.stat(archive).st_mtime_ns + 10**9))
    second = hubcache.resolve(str(archive))
    assert second != first and read_tree(second) == fake_saved_model_files(2)
    assert entries(cache_dir) == [os.path.basename(second)] and leftovers(cache_dir) == []


def test_a_hostile_local_archive_is_refused_and_leaves_nothing(env, cache_dir, tmp_path):
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(make_tar([Member("../escape.txt", b"x")]))
    with pytest.raises(hubcache.ArchiveError, match=r"'\.\.'") as e:
        hubcache.resolve(str(archive))
    assert str(archive) in str(e.value)
    assert not (tmp_path / "escape.txt").exists() and entries(cache_dir) == [] and leftovers(cache_dir) == []


def test_a_local_directory_and_a_plain_file_stay_where_they_are(env, cache_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("not an archive")
    assert hubcache.resolve(str(tmp_path / "notes.txt")) == str(tmp_path / "notes.txt")
    assert hubcache.resolve(str(tmp_path)) == str(tmp_path)
    assert not os.path.exists(cache_dir) or entries(cache_dir) == []


def test_local_archives_work_offline_and_through_prefetch(env, cache_dir, tmp_path):
    archive = tmp_path / "model.tar"
    archive.write_bytes(fake_saved_model(3, compression=""))
    offline = dict(env, HUBCACHE_OFFLINE="1")
    r = run_cli("prefetch", str(archive), env=offline)
    assert r.returncode == 0, r.stderr
    assert read_tree(r.stdout.split(" -> ")[-1].strip()) == fake_saved_model_files(3)
    r = run_cli("prefetch", str(tmp_path), env=offline)  # a directory: nothing to extract
    assert r.returncode == 2 and "is a local path" in r.stderr


def test_load_of_a_local_saved_model_archive(env, tmp_path, saved_model_dir, tf):
    archive = tmp_path / "affine.tar.gz"
    archive.write_bytes(tar_directory(saved_model_dir))
    model = hubcache.load(str(archive))
    assert model(tf.constant([1.0, 2.0])).numpy().tolist() == [4.0, 7.0]


def test_a_local_zip_is_extracted_like_a_tar(env, cache_dir, tmp_path):
    from archives import make_zip

    archive = tmp_path / "model.zip"
    archive.write_bytes(make_zip(fake_saved_model_files(5)))
    path = hubcache.resolve(f"file://{archive}")
    assert read_tree(path) == fake_saved_model_files(5) and os.path.dirname(path) == cache_dir
