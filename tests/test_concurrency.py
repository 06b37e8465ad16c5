"""Real processes racing for one cold handle: one download, one directory."""

import os
import subprocess
import sys
import time

from archives import fake_saved_model, fake_saved_model_files, read_tree
from helpers import child_env

RACER = """
import os, sys, time
ready, gate, handle = sys.argv[1:4]
open(ready, "w").close()
while not os.path.exists(gate):
    time.sleep(0.002)
import hubcache
print(hubcache.resolve(handle))
"""


def test_eight_processes_download_once(env, hub, tmp_path):
    archive = fake_saved_model(size=400_000)
    blob = hub.publish_tfhub("google/tiny/1", archive)
    # Slow enough that every racer arrives while the first is still downloading.
    hub.storage.fault(blob, bytes_per_second=len(archive) // 2)
    handle = "https://tfhub.dev/google/tiny/1"
    gate = tmp_path / "go"
    procs = []
    for i in range(8):
        ready = tmp_path / f"ready{i}"
        procs.append(
            (
                ready,
                subprocess.Popen(
                    [sys.executable, "-c", RACER, str(ready), str(gate), handle],
                    env=child_env(env),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                ),
            )
        )
    deadline = time.monotonic() + 60
    while not all(r.exists() for r, _ in procs):
        assert time.monotonic() < deadline, "racers did not start"
        time.sleep(0.01)
    gate.touch()
    outputs = []
    for _, p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outputs.append(out.strip())
    assert len(set(outputs)) == 1
    assert read_tree(outputs[0]) == fake_saved_model_files(size=400_000)
    assert hub.storage.count(blob) == 1
    assert hub.tfhub.count() == 1
    assert not [n for n in os.listdir(env["TFHUB_CACHE_DIR"]) if "tmp" in n]
