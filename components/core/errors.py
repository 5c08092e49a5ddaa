"""Outcomes a stage signals to whatever runs it (Airflow, the CLI, a test), without importing it."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path


class StageSkipped(Exception):
    """The stage has nothing to do for this day (e.g. not enough history); downstream is skipped."""


class PermanentStageFailure(Exception):
    """Retrying cannot help (e.g. the day's data failed validation); fail now, no retries."""


class LandingMissing(PermanentStageFailure, FileNotFoundError):
    """The day's landing partition has no files: a retry minutes later rarely helps; land it, then clear."""


class StaleReference(PermanentStageFailure, FileNotFoundError):
    """A reference a task was handed names content its partition no longer holds (the day was re-ingested,
    re-validated or quarantined again since): every retry reads the same, so fail at once."""


class StorageFault(PermanentStageFailure):
    """The filesystem under the root refused (disk full, read-only, permission denied): a retry
    fails the same way until someone acts, so the task fails at once with what to do."""


_REWRITE = "then re-run the task (nothing half-written was published)"
_FAULTS = {
    errno.ENOSPC: ("disk full", f"free space on that filesystem or move the root to a larger volume, {_REWRITE}"),
    errno.EDQUOT: ("disk quota exceeded", f"raise the quota or free space, {_REWRITE}"),
    errno.EROFS: ("read-only filesystem", "remount it read-write or point the root (--root, the DAG's root "
                                          f"param) at a writable folder, {_REWRITE}"),
    errno.EACCES: ("permission denied", "give the user running the pipeline (uid {uid}) read and write access "
                                        f"to it (chown/chmod), {_REWRITE}"),
}
_FAULTS[errno.EPERM] = _FAULTS[errno.EACCES]
# Libraries that wrap the OS error in their own (sqlite3 for Feast's online store, DGL's C++
# errors) keep only its text.
_FAULT_TEXT = {"no space left on device": errno.ENOSPC, "database or disk is full": errno.ENOSPC,
               "disk quota exceeded": errno.EDQUOT, "read-only file system": errno.EROFS,
               "readonly database": errno.EROFS, "permission denied": errno.EACCES}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def storage_fault(exc: BaseException, where: str | Path) -> StorageFault | None:
    """The StorageFault ``exc`` (or an error it was raised from) amounts to, naming the path
    (the OS error's, else ``where``) and what to do; None for any other error."""
    for link in _chain(exc):
        code = link.errno if isinstance(link, OSError) else None
        if code is None:
            text = str(link).lower()
            code = next((c for t, c in _FAULT_TEXT.items() if t in text), None)
        if code in _FAULTS:
            what, todo = _FAULTS[code]
            path = getattr(link, "filename", None) or where
            return StorageFault(f"{what}: {path}: {todo.format(uid=os.getuid())} "
                                f"[{type(link).__name__}: {link}]")
    return None
