"""A worker's stable identity: the ``worker`` label of its metrics and the directory of its state.

A worker labels every metric snapshot with its id, so ``recloop monitor`` shows one row per worker,
and keeps its durable state (the monitor's checkpoint, :mod:`streams.monitor_state`) in
``<data dir>/workers/<id>/``. The id must therefore be the same after a restart:

* ``RECLOOP_WORKER_ID`` set (:attr:`streams.settings.WorkerSettings.id`): that id. A second live
  process claiming the same id in the same data directory is refused at start.
* not set: the host name; a second worker running at the same time on the same host and data
  directory gets ``<host>-2``, a third ``<host>-3``, and so on. A restarted worker takes the first id
  no live worker holds, so a lone worker always comes back as ``<host>``.

"Live" is an exclusive ``flock`` on ``<id dir>/lock``, held for the life of the process: the kernel
releases it when the process ends, ``kill -9`` included, so no stale lock survives a crash. The id
is also written to ``<id dir>/worker-id`` (the directory name is a file-system-safe form of it).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: Directory under the worker's data directory that holds one directory per worker id.
WORKERS_DIR = "workers"
#: How many concurrent default ids (``<host>``, ``<host>-2`` …) a data directory offers.
MAX_DEFAULT_SLOTS = 64


class WorkerIdInUse(RuntimeError):
    """Another live process holds the configured worker id in this data directory."""


@dataclass(frozen=True)
class WorkerIdentity:
    """A claimed id and the directory of that worker's durable state."""

    id: str
    state_dir: Path


#: Identities this process holds, by state directory (a second claim in one process returns the first).
_held: dict[Path, tuple[WorkerIdentity, int]] = {}


def safe_name(worker_id: str) -> str:
    """A file-system-safe directory name for ``worker_id`` (no separators, no leading dot).

    >>> safe_name("shop-7"), safe_name("host/a b"), safe_name("..")
    ('shop-7', 'host_a_b', '_')
    """
    return re.sub(r"^\.+", "_", re.sub(r"[^A-Za-z0-9._-]", "_", worker_id)) or "_"


def default_ids(host: str) -> list[str]:
    """The default ids of a host, in the order they are claimed.

    >>> default_ids("box")[:3]
    ['box', 'box-2', 'box-3']
    """
    return [host if n == 1 else f"{host}-{n}" for n in range(1, MAX_DEFAULT_SLOTS + 1)]


def claim_worker_identity(data_dir: Path, configured: str = "", *, host: str | None = None) -> WorkerIdentity:
    """Claim ``configured`` (or the first free default id) in ``data_dir`` for the life of this process."""
    if configured:
        identity = _try_claim(data_dir, configured)
        if identity is None:
            raise WorkerIdInUse(f"worker id {configured!r} is held by another live worker in {data_dir}")
        return identity
    host = host or socket.gethostname()
    for candidate in default_ids(host):
        identity = _try_claim(data_dir, candidate)
        if identity is not None:
            return identity
    raise WorkerIdInUse(f"all {MAX_DEFAULT_SLOTS} default worker ids of {host} are held in {data_dir}; "
                        "set RECLOOP_WORKER_ID")


def _try_claim(data_dir: Path, worker_id: str) -> WorkerIdentity | None:
    state_dir = (data_dir / WORKERS_DIR / safe_name(worker_id)).resolve()
    held = _held.get(state_dir)
    if held is not None:
        return held[0]
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    (state_dir / "worker-id").write_text(worker_id + "\n")
    identity = WorkerIdentity(worker_id, state_dir)
    _held[state_dir] = (identity, fd)
    log.info("worker id %s (state in %s)", worker_id, state_dir)
    return identity


def release_worker_identity(identity: WorkerIdentity) -> None:
    """Give the id back before the process ends (tests; a process that ends releases it anyway)."""
    held = _held.pop(identity.state_dir, None)
    if held is not None:
        os.close(held[1])
