"""Writing files so that a crash leaves the old version or the new one, never a torn one.

One implementation for every durable artifact: adapters (:mod:`learner.artifacts`, :mod:`ops.adapters`),
the learner's checkpoint (:mod:`learner.checkpoint`) and the monitor's (:mod:`streams.monitor_state`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def fsync_dir(directory: str | Path) -> None:
    """Make a rename or a new entry in ``directory`` durable."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def replace_file(path: str | Path, write: Callable[[BinaryIO], object]) -> int:
    """Write ``path`` through ``write(handle)`` into a temporary file beside it, fsync it, rename it over ``path``
    and fsync the directory. Returns the size in bytes.

    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "state.bin"
    >>> replace_file(target, lambda handle: handle.write(b"v1")), target.read_bytes()
    (2, b'v1')
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
            size = handle.tell()
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return size
