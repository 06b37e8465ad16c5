"""Fault 7: hostile archives, served over HTTP and resolved end to end.

Each is refused with ArchiveError naming the handle and the member; nothing is
written outside the temporary directory and nothing is published.
"""

import os
import tarfile
import zlib

import pytest

import hubcache
from hubcache.handles import cache_key

from archives import Member, make_tar
from helpers import leftovers
from test_archive import HOSTILE


def snapshot(root):
    """Every path under ``root`` (files, dirs, links), relative."""
    out = set()
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            out.add(os.path.relpath(os.path.join(dirpath, name), root))
    return out


@pytest.fixture
def serve(hub, tmp_path):
    def serve(name, data):
        hub.storage.put(f"/evil/{name}.tar.gz", data)
        return f"{hub.storage.url}/evil/{name}.tar.gz"

    return serve


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_archive_refused_end_to_end(env, serve, cache_dir, tmp_path, name):
    handle = serve(name.replace(" ", "-"), make_tar([("ok.txt", b"fine")] + HOSTILE[name]))
    before = snapshot(tmp_path)
    with pytest.raises(hubcache.ArchiveError) as e:
        hubcache.resolve(handle)
    assert handle in str(e.value) and e.value.member
    assert not os.path.exists(os.path.join(cache_dir, cache_key(handle)))
    assert leftovers(cache_dir) == []
    # Nothing anywhere else under the test's directory: only the cache root, its tag and the lock.
    assert snapshot(tmp_path) - before <= {
        os.path.relpath(os.path.join(cache_dir, name), tmp_path)
        for name in (".", "CACHEDIR.TAG", cache_key(handle) + ".hubcache.lock")
    } | {os.path.relpath(cache_dir, tmp_path)}


def test_member_over_the_size_bound_is_refused_before_it_is_written(env, serve, cache_dir, monkeypatch):
    monkeypatch.setenv("HUBCACHE_MAX_SIZE", "1M")
    handle = serve("big", make_tar([("small", b"x" * 1000), ("big", os.urandom(2 << 20))]))
    with pytest.raises(hubcache.ArchiveError, match="'big' .*HUBCACHE_MAX_SIZE") as e:
        hubcache.resolve(handle)
    assert e.value.member == "big"
    assert leftovers(cache_dir) == []


def test_too_many_members(env, serve, cache_dir, monkeypatch):
    monkeypatch.setenv("HUBCACHE_MAX_FILES", "100")
    handle = serve("many", make_tar([(f"f{i}", b"") for i in range(101)]))
    with pytest.raises(hubcache.ArchiveError, match="beyond the 100 members allowed"):
        hubcache.resolve(handle)
    assert leftovers(cache_dir) == []


def test_decompression_bomb_is_refused(env, hub, cache_dir):
    # 1 GiB of zeros in ~1 MiB of gzip: ratio ~1000, over the default bound of 250.
    info = tarfile.TarInfo("zeros")
    info.size = 1 << 30
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [c.compress(info.tobuf(format=tarfile.PAX_FORMAT))]
    block = bytes(1 << 20)
    parts += [c.compress(block) for _ in range(1 << 10)]
    parts.append(c.compress(bytes(1024)) + c.flush())
    bomb = b"".join(parts)
    assert len(bomb) < 2 << 20
    hub.storage.put("/evil/bomb.tar.gz", bomb)
    handle = f"{hub.storage.url}/evil/bomb.tar.gz"
    with pytest.raises(hubcache.ArchiveError, match="expands more than 250 times.*HUBCACHE_MAX_RATIO"):
        hubcache.resolve(handle)
    assert leftovers(cache_dir) == []


def test_ratio_bound_can_be_lifted(env, hub, cache_dir, monkeypatch):
    monkeypatch.setenv("HUBCACHE_MAX_RATIO", "0")
    data = make_tar([Member("zeros", bytes(300 << 20))])
    hub.storage.put("/ok/zeros.tar.gz", data)
    path = hubcache.resolve(f"{hub.storage.url}/ok/zeros.tar.gz")
    assert os.path.getsize(os.path.join(path, "zeros")) == 300 << 20
