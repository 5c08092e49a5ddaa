"""The champion pointer, read side: which version serves (``champion_in``) and the registry's history
log. The registry (components/decide/registry.py) is its only writer, under its lock; serving reads
it here, so that shipping a model needs nothing from the plane that decides.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.core.catalog import read_json

log = logging.getLogger(__name__)

CHAMPION_FILE = "champion.json"
HISTORY_FILE = "history.jsonl"
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


def champion_in(registry_root: str | Path) -> ChampionRef | None:
    """The champion of a registry folder (serving reads a registry without a pipeline layout)."""
    return champion_ref(pointer_record(Path(registry_root)), registry_root)


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
