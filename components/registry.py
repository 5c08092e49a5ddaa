"""Model registry: immutable candidate versions, an atomic champion pointer, an audit history.

Layout under ``layout.registry()``::

    versions/<version>/      one complete, never-modified candidate (exists only once complete)
        embeddings.npz model.pt model.onnx [model.plan]    the model in every served form
        users.parquet items.parquet                          ID maps (string id -> index)
        seen.npz popularity.npy                              serving: seen items (CSR), fallback
        metrics.json blessing.json lineage.json manifest.json
    candidates/<day>.json    which version the day's run registered
    champion.json            THE pointer: version + the stack of champions it replaced
    history.jsonl            audit log of promotions and rollbacks (one JSON object a line)

Crash safety: a version directory is staged and renamed into place (complete or absent); the
champion moves by one atomic write-temp-and-rename of champion.json, which names only complete
versions, so a crash at any point leaves the old or the new champion, complete. champion.json
carries its own rollback stack, so the pointer never depends on the history file; the history is
appended after the rename, and a missing entry (crash in between) is repaired on the next write.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.config import PipelineConfig
from components.storage import MANIFEST, Layout, code_version, read_json, staging_dir, write_json

log = logging.getLogger(__name__)

CHAMPION_FILE = "champion.json"
HISTORY_FILE = "history.jsonl"
STATUS_BLESSED = "blessed"
STATUS_REJECTED = "rejected"
# Files copied from artifacts into a version: (artifact, file, required).
MODEL_FILES = ("embeddings.npz", "model.pt")

FaultHook = Callable[[str], None]


def _versions(layout: Layout) -> Path:
    return layout.registry() / "versions"


def version_dir(layout: Layout, version: str) -> Path:
    return _versions(layout) / version


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ChampionRef:
    """The serving champion: its version and where its complete version directory lives."""

    version: str
    path: str
    promoted_at: str
    reason: str
    previous: tuple[str, ...]  # champions it replaced, oldest first (the rollback stack)


@dataclass(frozen=True)
class RegistryResult:
    day: str
    version: str
    path: str
    status: str  # "blessed" | "rejected"
    blessed: bool
    newly_registered: bool
    champion_version: str | None  # champion at registration time (unchanged by registering)


@dataclass(frozen=True)
class PromotionResult:
    day: str
    version: str
    promoted: bool  # the pointer moved in this call
    champion_version: str | None  # champion after the call
    previous_champion: str | None
    reason: str


# --- reading --------------------------------------------------------------------------------


def champion(layout: Layout) -> ChampionRef | None:
    return champion_in(layout.registry())


def champion_in(registry_root: str | Path) -> ChampionRef | None:
    """The champion of a registry folder (serving reads a registry without a pipeline layout)."""
    path = Path(registry_root) / CHAMPION_FILE
    if not path.exists():
        return None
    data = read_json(path)
    return ChampionRef(
        version=data["version"],
        path=str(Path(registry_root) / "versions" / data["version"]),
        promoted_at=data["promoted_at"],
        reason=data["reason"],
        previous=tuple(data.get("previous", ())),
    )


def version_manifest(layout: Layout, version: str) -> dict[str, Any]:
    path = version_dir(layout, version) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"registry version {version!r} not found (no {path})")
    return read_json(path)


def list_versions(layout: Layout) -> list[str]:
    base = _versions(layout)
    if not base.exists():
        return []
    return sorted(p.name for p in base.iterdir() if (p / MANIFEST).exists())


def history(layout: Layout) -> list[dict[str, Any]]:
    """History entries; a torn last line (crash mid-append) is ignored."""
    path = layout.registry() / HISTORY_FILE
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("registry history: ignoring torn line %r", line[:80])
    return entries


# --- registering ----------------------------------------------------------------------------


def registry_version(day: str, lineage: dict[str, Any]) -> str:
    """``<day>-<hash>`` of the candidate's lineage: the same candidate always gets the same version."""
    blob = json.dumps(lineage, sort_keys=True).encode()
    return f"{day}-{hashlib.sha256(blob).hexdigest()[:10]}"


def seen_csr(train_user: np.ndarray, train_item: np.ndarray, num_users: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((train_item, train_user))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(train_user, minlength=num_users))]).astype(np.int64)
    return indptr, train_item[order].astype(np.int64)


def register_candidate(
    layout: Layout,
    version: str,
    day: str,
    files: dict[str, Path],
    arrays: dict[str, dict[str, np.ndarray]],
    documents: dict[str, Any],
    status: str,
    *,
    fault_hook: FaultHook | None = None,
) -> tuple[Path, bool]:
    """Create immutable version ``version`` from files to copy, arrays and JSON documents.

    Idempotent: if the version exists (complete), nothing is written. Returns (path, created).
    """
    if status not in (STATUS_BLESSED, STATUS_REJECTED):
        raise ValueError(f"status must be {STATUS_BLESSED!r} or {STATUS_REJECTED!r}, got {status!r}")
    final = version_dir(layout, version)
    if (final / MANIFEST).exists():
        existing = read_json(final / MANIFEST)["status"]
        if existing != status:
            raise ValueError(f"registry version {version} exists with status {existing!r}, not {status!r}")
        return final, False
    with staging_dir(_versions(layout)) as tmp:
        for name, src in files.items():
            if not Path(src).exists():
                raise FileNotFoundError(f"registry version {version}: {name} source {src} missing")
            shutil.copy2(src, tmp / name)
        for name, data in arrays.items():
            if name.endswith(".npy"):
                np.save(tmp / name, data["array"])
            else:
                np.savez(tmp / name, **data)
        for name, payload in documents.items():
            write_json(tmp / name, payload)
        if fault_hook:
            fault_hook("version_staged")
        # The manifest goes in last: a version without one is incomplete and never read.
        write_json(tmp / MANIFEST, {"version": version, "day": day, "status": status, "registered_at": _now(),
                                    "files": sorted(p.name for p in tmp.iterdir())})
        if final.exists():  # leftover of a crashed rename-less attempt
            shutil.rmtree(final)
        os.replace(tmp, final)
    return final, True


def _day_pointer(layout: Layout, day: str) -> Path:
    return layout.registry() / "candidates" / f"{day}.json"


def run_register(layout: Layout, day: str, cfg: PipelineConfig) -> RegistryResult:
    """Register the day's candidate (blessed or rejected) with artifacts, metrics, report, lineage."""
    from components.engine import KIND as ENGINE_KIND, PLAN_FILE, load_engine_result
    from components.export import KIND as EXPORT_KIND, ONNX_FILE
    from components.gates import BLESSING_FILE, EVALUATION_FILE
    from components.graph import GraphArtifact

    refs = {kind: layout.current(kind, day) for kind in
            ("graphs", "models/teacher", "models/student", "models/pruned", EXPORT_KIND, ENGINE_KIND)}
    for kind in ("graphs", "models/pruned", EXPORT_KIND, ENGINE_KIND):
        if refs[kind] is None:
            raise FileNotFoundError(f"run_register {day}: no {kind} artifact under {layout.root}")
    blessing_path = layout.reports(day) / BLESSING_FILE
    evaluation_path = layout.reports(day) / EVALUATION_FILE
    for path in (blessing_path, evaluation_path):
        if not path.exists():
            raise FileNotFoundError(f"run_register {day}: {path} missing (run evaluate and gate first)")
    blessing = read_json(blessing_path)
    engine = load_engine_result(refs[ENGINE_KIND])
    graph = GraphArtifact.load(refs["graphs"])
    pruned, export = refs["models/pruned"], refs[EXPORT_KIND]

    lineage = {
        "day": day,
        "data": {"graph": refs["graphs"].as_lineage(), "graph_inputs": refs["graphs"].manifest.get("inputs", {})},
        "models": {k: (r.version if r else None) for k, r in refs.items()},
        "config_hash": cfg.config_hash(),
        "code_version": code_version(),
        "candidate_blessed": bool(blessing["blessed"]),
    }
    # Versions are keyed by what the candidate IS (its inputs + config), not by when it ran.
    version = registry_version(day, {k: v for k, v in lineage.items() if k != "code_version"})
    status = STATUS_BLESSED if blessing["blessed"] else STATUS_REJECTED

    train = graph.train_interactions()
    indptr, indices = seen_csr(train.user, train.item, graph.num_users)
    popularity = np.bincount(train.item, minlength=graph.num_items).astype(np.float32)
    files = {name: Path(pruned.path) / name for name in MODEL_FILES}
    files["model.onnx"] = Path(export.path) / ONNX_FILE
    if engine.tensorrt_status == "built":
        files["model.plan"] = Path(engine.path) / PLAN_FILE
    files["users.parquet"] = graph.path / "users.parquet"
    files["items.parquet"] = graph.path / "items.parquet"
    files["blessing.json"] = blessing_path
    export_manifest = export.manifest
    metrics = {
        "evaluation": read_json(evaluation_path),
        "engine": asdict(engine),
        "export": {k: export_manifest.get(k) for k in ("metrics", "io", "num_users", "num_items", "exclude_seen",
                                                       "opset")},
        "pruned": read_json(Path(pruned.path) / "metrics.json") if (Path(pruned.path) / "metrics.json").exists()
        else {},
    }
    path, created = register_candidate(
        layout,
        version,
        day,
        files,
        arrays={"seen.npz": {"indptr": indptr, "indices": indices}, "popularity.npy": {"array": popularity}},
        documents={"metrics.json": metrics, "lineage.json": lineage,
                   "serving.json": {"top_k": export_manifest["io"]["outputs"][0]["shape"][1],
                                    "max_batch": max(cfg.export.batch_sizes),
                                    "batch_sizes": list(cfg.export.batch_sizes),
                                    "io": export_manifest["io"], "runtime": engine.runtime,
                                    "tensorrt_status": engine.tensorrt_status}},
        status=status,
    )
    write_json(_day_pointer(layout, day), {"day": day, "version": version, "status": status})
    champ = champion(layout)
    log.info("register %s: version %s %s (%s); champion %s", day, version, status,
             "new" if created else "already registered", champ.version if champ else "none")
    return RegistryResult(day=day, version=version, path=str(path), status=status, blessed=status == STATUS_BLESSED,
                          newly_registered=created, champion_version=champ.version if champ else None)


# --- promotion ------------------------------------------------------------------------------


def _append_history(layout: Layout, entry: dict[str, Any]) -> None:
    path = layout.registry() / HISTORY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(entry, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _repair_history(layout: Layout) -> None:
    """A crash after the pointer rename but before the history append leaves the log one entry
    short; record the pointer's move as recovered so the audit log matches the pointer."""
    champ = champion(layout)
    if champ is None:
        return
    entries = history(layout)
    if not entries or entries[-1].get("version") != champ.version:
        _append_history(layout, {"event": "recovered", "version": champ.version, "at": _now(),
                                 "previous": champ.previous[-1] if champ.previous else None,
                                 "reason": f"pointer moved before a crash: {champ.reason}"})
        log.warning("registry: history repaired, champion %s was not logged", champ.version)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _move_pointer(layout: Layout, payload: dict[str, Any], fault_hook: FaultHook | None) -> None:
    """write-temp, fsync, rename: champion.json is the old or the new pointer, never a mix."""
    registry = layout.registry()
    registry.mkdir(parents=True, exist_ok=True)
    target = registry / CHAMPION_FILE
    tmp = registry / f".{CHAMPION_FILE}.{os.getpid()}.tmp"
    with tmp.open("w") as handle:
        handle.write(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    if fault_hook:
        fault_hook("before_pointer_rename")
    os.replace(tmp, target)
    _fsync_dir(registry)
    if fault_hook:
        fault_hook("after_pointer_rename")


@contextmanager
def _pointer_lock(layout: Layout) -> Iterator[None]:
    """Serialize read-modify-write of the champion pointer (the DAG and an operator's CLI call)."""
    layout.registry().mkdir(parents=True, exist_ok=True)
    with (layout.registry() / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def promote(layout: Layout, version: str, reason: str, *, fault_hook: FaultHook | None = None) -> PromotionResult:
    with _pointer_lock(layout):
        return _promote(layout, version, reason, fault_hook=fault_hook)


def rollback(layout: Layout, reason: str = "rollback", *, fault_hook: FaultHook | None = None) -> str:
    with _pointer_lock(layout):
        return _rollback(layout, reason, fault_hook=fault_hook)


def _promote(layout: Layout, version: str, reason: str, *, fault_hook: FaultHook | None = None) -> PromotionResult:
    """Make ``version`` the champion. Refuses unblessed or incomplete versions; promoting the
    current champion is a no-op. ``fault_hook(step)`` is called at each step (crash tests)."""
    manifest = version_manifest(layout, version)
    blessing_path = version_dir(layout, version) / "blessing.json"
    blessing = read_json(blessing_path) if blessing_path.exists() else {"blessed": False}
    if manifest["status"] != STATUS_BLESSED or not blessing.get("blessed"):
        raise PermissionError(
            f"refusing to promote {version}: status {manifest['status']!r}, blessed={blessing.get('blessed')} "
            f"(failed gates: {', '.join(blessing.get('failed', [])) or 'n/a'})"
        )
    day = manifest["day"]
    _repair_history(layout)
    current = champion(layout)
    if current is not None and current.version == version:
        log.info("promote: %s is already the champion; nothing to do", version)
        return PromotionResult(day=day, version=version, promoted=False, champion_version=version,
                               previous_champion=current.previous[-1] if current.previous else None,
                               reason="already champion")
    if fault_hook:
        fault_hook("validated")
    previous = list(current.previous) + [current.version] if current else []
    at = _now()
    _move_pointer(layout, {"version": version, "promoted_at": at, "reason": reason, "event": "promote",
                           "previous": previous}, fault_hook)
    _append_history(layout, {"event": "promote", "version": version, "previous": current.version if current else None,
                             "at": at, "reason": reason})
    log.info("promote: champion %s -> %s (%s)", current.version if current else "none", version, reason)
    return PromotionResult(day=day, version=version, promoted=True, champion_version=version,
                           previous_champion=current.version if current else None, reason=reason)


def _rollback(layout: Layout, reason: str = "rollback", *, fault_hook: FaultHook | None = None) -> str:
    """Restore the champion the current one replaced; returns the restored version."""
    _repair_history(layout)
    current = champion(layout)
    if current is None or not current.previous:
        raise LookupError(f"nothing to roll back to under {layout.registry()}: "
                          f"{'no champion' if current is None else 'the champion has no predecessor'}")
    target = current.previous[-1]
    version_manifest(layout, target)  # must still be complete
    at = _now()
    _move_pointer(layout, {"version": target, "promoted_at": at, "reason": reason, "event": "rollback",
                           "previous": list(current.previous[:-1])}, fault_hook)
    _append_history(layout, {"event": "rollback", "version": target, "previous": current.version, "at": at,
                             "reason": reason})
    log.info("rollback: champion %s -> %s (%s)", current.version, target, reason)
    return target


def run_promote(layout: Layout, day: str, cfg: PipelineConfig) -> PromotionResult:
    """Promote the day's registered candidate if blessed; a rejected one leaves the champion alone."""
    pointer = _day_pointer(layout, day)
    if not pointer.exists():
        raise FileNotFoundError(f"run_promote {day}: {pointer} missing (run the register stage first)")
    registered = read_json(pointer)
    version = registered["version"]
    current = champion(layout)
    if registered["status"] != STATUS_BLESSED:
        log.info("promote %s: candidate %s was rejected by the gates; champion stays %s", day, version,
                 current.version if current else "none")
        return PromotionResult(day=day, version=version, promoted=False,
                               champion_version=current.version if current else None,
                               previous_champion=current.version if current else None,
                               reason="candidate rejected by the gates")
    reason = f"blessed on {day}" + (" (bootstrap: first champion)" if current is None else "")
    result = promote(layout, version, reason)
    return PromotionResult(**{**asdict(result), "day": day})
