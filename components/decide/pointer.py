"""Where the champion record (champion.json) and the registry history live: the two backends of the
registry's compare-and-swap. The registry decides; a backend only reads, swaps and appends.

- ``FilePointer``: a folder (the registry under a local root). Decisions are serialized by a file
  lock; champion.json is moved by write-temp, fsync, rename; the history is one JSON Lines file whose
  torn tail (a kill mid-append) is cut before the next append and whose failed append is truncated back.
- ``ObjectPointer``: an S3-compatible store with conditional writes. No lock: champion.json is read with
  its ETag and replaced with ``If-Match`` (a lost race raises ``LostRace``: the registry re-reads and
  decides again); the history is one create-only object per entry, so nothing is ever torn or rewritten.

Both call ``fault_hook`` at the same points (``before_pointer_write``, ``after_pointer_write``,
``history_appended``), so one crash suite runs against both (tests/unit/decide/test_registry.py).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, ContextManager, Protocol

from components.core.catalog import CHAMPION_FILE, HISTORY_FILE, HISTORY_OBJECTS, Layout, atomic_write_bytes
from components.core.champion import (LEGACY_POINTER_EVENTS, ChampionRef, champion_in, history_in, pointer_record,
                                       pointer_store, stored_history, stored_record)

log = logging.getLogger(__name__)

FaultHook = Callable[[str], None]


class LostRace(Exception):
    """Another writer moved the champion since it was read: re-read and decide again."""


class ChampionPointer(Protocol):
    where: str  # for messages: the folder or s3:// location

    def exclusive(self) -> ContextManager[None]:
        """Held around one decision (read, decide, move): a lock, or nothing where the move is a CAS."""

    def read(self) -> tuple[dict[str, Any] | None, Any]:
        """The pointer record (None before the first promotion) and the token ``move`` must be given."""

    def move(self, record: dict[str, Any], token: Any, fault_hook: FaultHook | None) -> None:
        """Replace the record read with ``token`` by ``record``, whole or not at all; LostRace if it changed."""

    def append(self, entry: dict[str, Any], seq: int, fault_hook: FaultHook | None) -> None:
        """Append a history entry, decided when the pointer was at move ``seq``."""

    def entries(self) -> list[dict[str, Any]]:
        """The history, oldest first."""

    def move_logged(self, seq: int) -> bool:
        """Whether the history holds the entry of pointer move ``seq``."""


def pointer_of(layout: Layout) -> ChampionPointer:
    """The layout's champion pointer: its object store when it names one, else its registry folder."""
    if layout.champion_store:
        return ObjectPointer(pointer_store(layout.champion_store))
    return FilePointer(layout.registry())


def champion(layout: Layout) -> ChampionRef | None:
    """The serving champion of a layout, wherever its pointer lives (the readers' helper, in core)."""
    return champion_in(layout)


def _call(hook: FaultHook | None, point: str) -> None:
    if hook:
        hook(point)


# --- a folder ---------------------------------------------------------------------------------


def logged_seq(entries: list[dict[str, Any]]) -> int:
    seq = 0
    for entry in entries:
        if entry.get("event") in LEGACY_POINTER_EVENTS:
            seq = entry.get("seq", seq + 1)  # entries logged before moves carried seq count one each
    return seq


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FilePointer:
    def __init__(self, registry: Path):
        self.registry, self.where = registry, str(registry)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Serialize read-modify-write of the champion pointer (the DAG and an operator's CLI call)."""
        self.registry.mkdir(parents=True, exist_ok=True)
        with (self.registry / ".lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def read(self) -> tuple[dict[str, Any] | None, Any]:
        record = pointer_record(self.registry)
        return record, record["seq"] if record else 0

    def move(self, record: dict[str, Any], token: Any, fault_hook: FaultHook | None) -> None:
        """Write-temp, fsync, rename: champion.json is the old or the new record, never a mix. The
        token check is a guard only: every caller holds ``exclusive``."""
        current, seq = self.read()
        if seq != token:
            raise LostRace(f"{self.registry / CHAMPION_FILE} moved to seq {seq} since seq {token} was read")
        # The catalog's atomic write: a full disk mid-write left the temporary file behind (until a
        # stage's tidy) and named no file (found on a real tmpfs by a manual promote).
        body = (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
        atomic_write_bytes(self.registry / CHAMPION_FILE, body,
                           before_replace=lambda: _call(fault_hook, "before_pointer_write"))
        _fsync_dir(self.registry)
        _call(fault_hook, "after_pointer_write")

    def append(self, entry: dict[str, Any], seq: int, fault_hook: FaultHook | None) -> None:
        """Append one JSON line. A torn tail (a kill mid-append) is cut off first and a failed append
        (disk full) is truncated back, so a partial line never prefixes, and swallows, the next entry."""
        path = self.registry / HISTORY_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            end = self._cut_torn_tail(fd, path)
            try:
                _write_all(fd, (json.dumps(entry, sort_keys=True) + "\n").encode())
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, end)
                raise
        finally:
            os.close(fd)
        _call(fault_hook, "history_appended")

    @staticmethod
    def _cut_torn_tail(fd: int, path: Path) -> int:
        """Make the history end with a whole line; returns its size. A complete entry that lost only
        its newline keeps its content; anything else after the last newline is a torn entry."""
        size = os.fstat(fd).st_size
        content = os.pread(fd, size, 0)
        if not content or content.endswith(b"\n"):
            return size
        cut = content.rfind(b"\n") + 1
        tail = content[cut:]
        try:
            json.loads(tail)
        except ValueError:
            log.warning("registry history %s: cutting a torn last line (%d bytes) %r", path, len(tail), tail[:80])
            os.ftruncate(fd, cut)
            os.fsync(fd)
            return cut
        _write_all(fd, b"\n")
        return size + 1

    def entries(self) -> list[dict[str, Any]]:
        return history_in(self.registry)

    def move_logged(self, seq: int) -> bool:
        return logged_seq(self.entries()) >= seq


# --- an object store --------------------------------------------------------------------------


class ObjectPointer:
    """champion.json swapped with If-Match; the history as ``history/<seq>-...json`` objects, one per
    entry, written create-only. A move's entry has a key of its own seq (``<seq>-0-move``), so the entry
    written after the move and the one a repair writes after a crash are one object: whichever writer
    comes second finds it there. Other entries sort after the move the pointer was at when decided."""

    HISTORY = HISTORY_OBJECTS

    def __init__(self, store: Any):
        self.store = store
        self.where = f"s3://{store.bucket}/{store.key('')}"

    def exclusive(self) -> ContextManager[None]:
        return nullcontext()

    def read(self) -> tuple[dict[str, Any] | None, Any]:
        return stored_record(self.store)

    def move(self, record: dict[str, Any], token: Any, fault_hook: FaultHook | None) -> None:
        from components.core.objectstore import StaleETag

        _call(fault_hook, "before_pointer_write")
        try:
            self.store.swap(CHAMPION_FILE, json.dumps(record, indent=2, sort_keys=True).encode(), token)
        except StaleETag as exc:
            raise LostRace(str(exc)) from exc
        _call(fault_hook, "after_pointer_write")

    def _move_key(self, seq: int) -> str:
        return f"{self.HISTORY}{seq:08d}-0-move.json"

    def append(self, entry: dict[str, Any], seq: int, fault_hook: FaultHook | None) -> None:
        from components.core.objectstore import ObjectExists, ObjectStoreError

        is_move = entry["event"] in LEGACY_POINTER_EVENTS and entry.get("seq") == seq
        key = (self._move_key(seq) if is_move
               else f"{self.HISTORY}{seq:08d}-1-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json")
        try:
            self.store.create(key, json.dumps(entry, sort_keys=True).encode())
        except ObjectExists:
            if not is_move:
                raise
            log.info("registry history %s: move %d already logged by another writer", self.where, seq)
        except ObjectStoreError as exc:  # a failed write, as the file backend's disk full: the caller decides
            raise OSError(errno.EIO, str(exc)) from exc
        _call(fault_hook, "history_appended")

    def entries(self) -> list[dict[str, Any]]:
        return stored_history(self.store)

    def move_logged(self, seq: int) -> bool:
        return self.store.read(self._move_key(seq)) is not None
