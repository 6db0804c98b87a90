"""The learner's durable state: one checkpoint file, written atomically, that a restarted worker resumes from.

A restart must not forget: the worker's dedup table (rightly) keeps already-accepted events away from
a new process, so a learner that kept its behaviour features, held-out window and replay reservoir
in memory only would train on shoppers without history. :class:`~learner.service.LearnerService`
therefore writes everything it has learned — features, the model's trainable tensors and item
vectors, the ranker's window, reservoir, accepted weights, optimizer moments and random generators
— into ``<state dir>/learner.ckpt``, together with ``through``: the offset of the last record of the
learner's input topic whose effect is in it. The worker commits that offset only after the file is
fsynced and renamed into place, and a restarted learner skips records at or below it, so every
record is in the state exactly once: the restarted learner continues exactly where the checkpoint
left off, and after the same events its state equals an uninterrupted run's.

The file is a pickle: it is written and read by the same deployment on its own disk (like Faust's
table stores), never taken from the network. A checkpoint of another base model, or of a format this
code does not know, is ignored with one log line.
"""

from __future__ import annotations

import logging
import pickle
import time
from dataclasses import dataclass
from pathlib import Path

from learner.durable import replace_file

log = logging.getLogger(__name__)

#: Bumped whenever what a checkpoint holds changes incompatibly; older files are then ignored.
FORMAT = 2  # 2: features gained the "dismissed" column (explanation feedback)
FILENAME = "learner.ckpt"


@dataclass(frozen=True)
class Checkpoint:
    """The learner's state as of input offset ``through`` (``None``: not tied to an input topic)."""

    base_fingerprint: str
    through: int | None
    state: dict
    saved_at: float
    format: int = FORMAT


def checkpoint_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / FILENAME


def write_checkpoint(state_dir: str | Path, checkpoint: Checkpoint) -> tuple[Path, int]:
    """Write ``checkpoint`` durably (:func:`learner.durable.replace_file`); returns the path and its size in bytes."""
    final = checkpoint_path(state_dir)
    size = replace_file(final, lambda handle: pickle.dump(checkpoint, handle, protocol=pickle.HIGHEST_PROTOCOL))
    return final, size


def read_checkpoint(state_dir: str | Path, base_fingerprint: str) -> Checkpoint | None:
    """The checkpoint under ``state_dir`` if there is a usable one for this base, else ``None`` (logged)."""
    path = checkpoint_path(state_dir)
    if not path.is_file():
        return None
    started = time.perf_counter()
    try:
        with open(path, "rb") as handle:
            checkpoint = pickle.load(handle)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
        log.error("learner checkpoint %s is unreadable (%s): starting from the published adapters instead", path, exc)
        return None
    if not isinstance(checkpoint, Checkpoint) or checkpoint.format != FORMAT:
        log.warning("learner checkpoint %s has another format: ignored", path)
        return None
    if checkpoint.base_fingerprint != base_fingerprint:
        log.warning("learner checkpoint %s was trained on another base (%s…): ignored, a new lineage starts", path,
                    checkpoint.base_fingerprint[:12])
        return None
    log.info("learner checkpoint %s read in %.2fs (through input offset %s, saved %.0fs ago)", path,
             time.perf_counter() - started, checkpoint.through, time.time() - checkpoint.saved_at)
    return checkpoint
