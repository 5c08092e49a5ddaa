"""The champion pointer, read side: which version serves (``champion_in``) and the registry's history
log. The registry (components/decide/registry.py, through components/decide/pointer.py) is its only
writer; serving, the CLI, the plugin and the outcome read it here, so that shipping a model needs
nothing from the plane that decides.

Where it lives is the layout's ``champion_store``: "" = champion.json and history.jsonl in the registry
folder; "s3://bucket/prefix" = the objects ``champion.json`` and ``history/*.json`` under that prefix
(an ``s3://`` artifact root's is its ``registry/``). Readers given a Layout read where the registry
writes, so every process sees the store's pointer, never a stale local copy.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.core.catalog import CHAMPION_FILE, HISTORY_FILE, HISTORY_OBJECTS, Layout, read_json
from components.core.remote import fetch_version

if TYPE_CHECKING:
    from components.core.objectstore import ObjectStore

log = logging.getLogger(__name__)

POINTER_EVENTS = ("promote", "rollback")
# Pointer moves logged before champion.json carried its sequence number ("recovered": a repaired move).
LEGACY_POINTER_EVENTS = (*POINTER_EVENTS, "recovered")


@dataclass(frozen=True)
class ChampionRef:
    """The serving champion: its version and where its complete version directory lives."""

    version: str
    path: str
    promoted_at: str
    reason: str
    previous: tuple[str, ...]  # champions it replaced, oldest first (the rollback stack)
    seq: int = 0  # pointer moves so far (the history's entry for this move carries the same number)
    event: str = "promote"  # what moved the pointer here: "promote" | "rollback"
    rolled_back: tuple[str, ...] = ()  # versions a rollback took away and no hand promotion restored


def champion_in(source: Layout | str | Path) -> ChampionRef | None:
    """The serving champion of a layout (read where its registry decides: folder or object store), or
    of a registry folder given as a path (serving reads a registry without a pipeline layout)."""
    if isinstance(source, Layout):
        champion = champion_ref(record_of(source), source.registry())
        if champion is not None and source.champion_store:
            # An s3:// root's copy may predate the promotion the store's pointer names: fetch that version
            # (the one place a reader turns the pointer into local files).
            fetch_version(source, champion.version)
        return champion
    return champion_ref(pointer_record(Path(source)), source)


def record_of(layout: Layout) -> dict[str, Any] | None:
    """The layout's champion.json record (None before the first promotion), from its pointer backend."""
    if layout.champion_store:
        return stored_record(pointer_store(layout.champion_store))[0]
    return pointer_record(layout.registry())


def history_of(layout: Layout) -> list[dict[str, Any]]:
    """The layout's registry history, oldest first, from its pointer backend."""
    if layout.champion_store:
        return stored_history(pointer_store(layout.champion_store))
    return history_in(layout.registry())


@functools.cache
def pointer_store(uri: str) -> "ObjectStore":
    """The object store holding a champion pointer (``s3://bucket/prefix``): one client per location."""
    from components.core.objectstore import ObjectStore

    return ObjectStore.at(uri)


def stored_record(store: "ObjectStore") -> tuple[dict[str, Any] | None, str | None]:
    """champion.json on an object store and its ETag (what an If-Match swap must name)."""
    got = store.read(CHAMPION_FILE)
    return (json.loads(got.body), got.etag) if got else (None, None)


def stored_history(store: "ObjectStore") -> list[dict[str, Any]]:
    """The history objects on a store, in key order (move number first: oldest first)."""
    return [json.loads(store.read(name).body) for name in store.list(HISTORY_OBJECTS)]


def champion_ref(record: dict[str, Any] | None, registry_root: str | Path) -> ChampionRef | None:
    """The champion a pointer record names, its version directory under ``registry_root``."""
    if record is None:
        return None
    return ChampionRef(
        version=record["version"],
        path=str(Path(registry_root) / "versions" / record["version"]),
        promoted_at=record["promoted_at"],
        reason=record["reason"],
        previous=tuple(record["previous"]),
        seq=record["seq"],
        event=record["event"],
        rolled_back=tuple(sorted(record["rolled_back"])),
    )


def pointer_record(registry_root: Path) -> dict[str, Any] | None:
    """champion.json of a registry folder (components/decide/pointer.py writes it): the source of
    truth of every decision."""
    path = registry_root / CHAMPION_FILE
    if not path.exists():
        return None
    record = read_json(path)
    if "seq" not in record:  # written before the pointer carried its deny-list: rebuild it from the history once
        entries = history_in(registry_root)
        record = {**record, "seq": sum(e.get("event") in LEGACY_POINTER_EVENTS for e in entries),
                  "rolled_back": _legacy_deny_list(entries), "run_key": None, "replaced": None}
    return record


def _legacy_deny_list(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if entry.get("event") == "rollback" and entry.get("previous"):
            out[entry["previous"]] = {"at": entry["at"], "reason": entry["reason"]}
        elif entry.get("event") == "promote" and entry.get("manual"):
            out.pop(entry["version"], None)
    return out


def history_in(registry_root: Path) -> list[dict[str, Any]]:
    """History entries; a torn line (a kill mid-append, cut off before the next append) is ignored."""
    path = registry_root / HISTORY_FILE
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("registry history: ignoring torn line %r", line[:80])
    return entries
