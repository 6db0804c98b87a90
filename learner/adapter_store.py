"""The learner's local store of adapters: ``<home>/adapters/<version>/``, which were published, what comes next.

A version is saved (fsynced) before its update is sent, and marked ``PUBLISHED`` once the broker
acknowledged it; a restart resumes only from published versions and moves the others aside.

Version numbers run across lineages: a learner on a new base model in the same home numbers its first
version after every adapter stored there, whatever base it was trained on (serving workers follow
publication order, not numbers, but a number never names two adapters of one home). Versions another
home published reach this store only when the learner adopts them (a rollback on the same base).
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from learner import artifacts

log = logging.getLogger(__name__)

_SEQUENCE = re.compile(r"^v(\d+)")
#: Written into an adapter directory once the broker acknowledged its ``AdapterUpdate``.
PUBLISHED_MARKER = "PUBLISHED"
#: Prefix of an adapter directory that was saved but never published (moved aside on restart).
UNPUBLISHED_PREFIX = ".unpublished-"
#: What a rollback's version id carries: ``v<next>-rollback-<old>`` (see :mod:`ops.adapters`).
ROLLBACK_MARK = "-rollback-"


@dataclass(frozen=True)
class StoredAdapter:
    path: Path
    manifest: artifacts.Manifest

    @property
    def sequence(self) -> int:
        return version_sequence(self.manifest.version)

    @property
    def published(self) -> bool:
        """Whether the broker acknowledged this adapter's update (see :func:`mark_published`)."""
        return (self.path / PUBLISHED_MARKER).is_file()


def version_sequence(version: str) -> int:
    """The running number of a version id (``v000012`` and ``v000012-rollback-v000003`` are 12; others 0).

    >>> version_sequence("v000012"), version_sequence("v000012-rollback-v000003"), version_sequence("x")
    (12, 12, 0)
    """
    match = _SEQUENCE.match(version)
    return int(match.group(1)) if match else 0


def require_newer(version: str, current: str | None) -> None:
    """Refuse (:class:`~learner.artifacts.AdapterRejected`, reason ``not newer: …``) a version that does not come
    after ``current`` in its lineage: versions strictly increase, so a replayed old record never rolls a
    model back; a rollback is an explicit new version. ``current`` None (nothing adopted yet) accepts anything.

    >>> require_newer("v000012-rollback-v000003", "v000011")
    >>> try:
    ...     require_newer("v000005", "v000011")
    ... except artifacts.AdapterRejected as exc:
    ...     print(exc.reason.split(" (")[0])
    not newer: version v000005 does not come after v000011
    """
    if current is not None and version_sequence(version) <= version_sequence(current):
        raise artifacts.AdapterRejected(f"not newer: version {version} does not come after {current} "
                                        "(versions strictly increase; a rollback is a new version)")


def newest_published(root: str | Path, base_fingerprint: str, *, excluding: str | None = None) -> str | None:
    """The highest-numbered version of this base that reached the updates topic from here (its ``PUBLISHED``
    marker), ``excluding`` one version; ``None`` when there is none."""
    published = [a.manifest.version for a in stored_adapters(root)
                 if a.published and a.manifest.base_fingerprint == base_fingerprint and a.manifest.version != excluding]
    return max(published, key=version_sequence, default=None)


def is_rollback(version: str) -> bool:
    """Whether ``version`` is an operator's rollback (``recloop adapters rollback``), not a version a learner trained.

    >>> is_rollback("v000012-rollback-v000003"), is_rollback("v000012")
    (True, False)
    """
    return ROLLBACK_MARK in version


def stored_adapters(root: str | Path) -> list[StoredAdapter]:
    """Every complete adapter under ``<root>/adapters/``, oldest first (by running number, then time)."""
    directory = artifacts.adapters_dir(root)
    found = []
    for path in sorted(directory.iterdir()) if directory.is_dir() else ():
        if path.name.startswith(".") or not (path / artifacts.MANIFEST).is_file():
            continue  # a .tmp-* directory of an interrupted save, or something else
        try:
            found.append(StoredAdapter(path, artifacts.read_manifest(path)))
        except (OSError, ValueError, KeyError) as exc:
            log.warning("skipping unreadable adapter %s: %s", path, exc)
    return sorted(found, key=lambda a: (a.sequence, a.manifest.created_at, a.manifest.version))


def next_version(root: str | Path, suffix: str = "", *, after: str | None = None) -> str:
    """A new version id after every one ever saved here (published or not) and after ``after`` (the newest on the
    updates topic, which may not be here): ``v000001``, ``v000002``, …

    >>> import tempfile
    >>> next_version(tempfile.mkdtemp()), next_version(tempfile.mkdtemp(), "-rollback-v000003", after="v000009")
    ('v000001', 'v000010-rollback-v000003')
    """
    directory = artifacts.adapters_dir(root)
    names = [p.name.removeprefix(UNPUBLISHED_PREFIX) for p in directory.iterdir()] if directory.is_dir() else []
    if after is not None:
        names.append(after)
    sequence = max((version_sequence(name) for name in names), default=0) + 1
    return f"v{sequence:06d}{suffix}"


def mark_published(root: str | Path, version: str) -> None:
    """Record durably that ``version`` reached the updates topic; only such adapters are resumed from."""
    path = artifacts.adapters_dir(root) / version / PUBLISHED_MARKER
    with open(path, "w") as handle:
        handle.write(f"{time.time():.3f}\n")
        handle.flush()
        os.fsync(handle.fileno())
