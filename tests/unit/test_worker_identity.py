"""A worker keeps its id across restarts; workers running at the same time get different ids."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys

import pytest

from streams.settings import WorkerSettings
from streams.worker_identity import WorkerIdInUse, claim_worker_identity, release_worker_identity
from tests.conftest import REPO

HOLD = """
import sys, time
from pathlib import Path
from streams.worker_identity import claim_worker_identity
identity = claim_worker_identity(Path(sys.argv[1]), host="box")
print(identity.id, flush=True)
time.sleep(60)
"""


def test_a_restarted_worker_keeps_its_default_id_and_state_dir(tmp_path):
    first = claim_worker_identity(tmp_path, host="box")
    assert first.id == "box" and first.state_dir == (tmp_path / "workers" / "box").resolve()
    assert claim_worker_identity(tmp_path, host="box") == first  # a second claim in one process: the same
    assert (first.state_dir / "worker-id").read_text() == "box\n"
    release_worker_identity(first)  # the process ends …
    assert claim_worker_identity(tmp_path, host="box") == first  # … and its successor is the same worker


def test_a_second_live_worker_gets_the_next_id_and_a_killed_one_frees_its_id(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "box"
        second = claim_worker_identity(tmp_path, host="box")
        assert second.id == "box-2"
        release_worker_identity(second)
    finally:
        holder.kill()  # kill -9: the kernel drops its lock
        holder.wait()
    restarted = claim_worker_identity(tmp_path, host="box")
    assert restarted.id == "box"
    release_worker_identity(restarted)


def test_a_configured_id_is_used_and_refused_while_another_process_holds_it(tmp_path):
    lock = tmp_path / "workers" / "shop-7" / "lock"
    lock.parent.mkdir(parents=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another open file: another live worker
    try:
        with pytest.raises(WorkerIdInUse, match="shop-7"):
            claim_worker_identity(tmp_path, "shop-7")
    finally:
        os.close(fd)
    identity = claim_worker_identity(tmp_path, "shop-7")
    assert identity.id == "shop-7"
    release_worker_identity(identity)


def test_the_worker_id_setting_comes_from_recloop_worker_id(monkeypatch):
    assert WorkerSettings().id == ""
    monkeypatch.setenv("RECLOOP_WORKER_ID", "shop-7")
    assert WorkerSettings().id == "shop-7"


def test_an_id_is_a_safe_directory_name(tmp_path):
    identity = claim_worker_identity(tmp_path, "../escape me")
    assert identity.state_dir.parent == (tmp_path / "workers").resolve()
    assert (identity.state_dir / "worker-id").read_text() == "../escape me\n"
    release_worker_identity(identity)
