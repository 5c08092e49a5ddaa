"""Model registry: immutable candidate versions, an atomic champion pointer, an audit history.

Layout under ``layout.registry()``::

    versions/<version>/      one complete, never-modified candidate (exists only once complete)
        embeddings.npz model.pt model.onnx [model.plan]    the model in every served form
        users.parquet items.parquet                          ID maps (string id -> index)
        seen.npz popularity.npy                              serving: seen items (CSR), fallback
        metrics.json blessing.json lineage.json manifest.json
    candidates/<day>.json    index: which version the day's newest run registered (stages never read it)
    champion.json            THE pointer and decision state: version, the stack of champions it replaced,
                             the deny-list of rolled-back versions, what moved it, a move number (seq)
    history.jsonl            audit log: promotions (automatic / manual), rollbacks, and candidates
                             blessed but not promoted, each with its reason (one JSON object a line)

Deciding (``decide_promotion``, under the lock) is compare-and-swap: a blessed candidate of day D
judged against baseline B is promoted only if B is still the champion, D is newer than the
champion's day, and the candidate (or its day) was not rolled back; otherwise it is recorded as
blessed-but-not-promoted with the reason. An operator's ``promote`` of a blessed version skips those
checks (recorded as manual; it lifts a rollback). The baseline of day D (``champion_as_of``) is the
champion that served before D: the newest promotion of a version of an earlier day (so trained on a
window that ends before D), ignoring versions rolled back since (unless re-promoted by hand).

Crash safety: a version directory is staged and renamed into place (complete or absent). Every
decision that later decisions depend on lives in champion.json, moved by one atomic
write-temp-and-rename: the champion, the stack of champions it replaced, the deny-list of
rolled-back versions, what moved it (promote / rollback, by which run) and a sequence number that
grows by one per move. A crash at any point therefore leaves the old or the new record, whole, and
a rollback cannot be lost. The history is the audit copy: each move appends the entry derived from
the record (same ``seq``); a crash between the rename and the append is repaired on the next write
by appending that same entry (marked recovered), so a repaired rollback is still a rollback. An
append that fails midway (disk full) is truncated back, and a torn tail left by a kill is cut off
before the next append, so a torn line never swallows the entry after it.
"""

from __future__ import annotations

import datetime as dt
import fcntl
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

from components.core.champion import (CHAMPION_FILE, HISTORY_FILE, LEGACY_POINTER_EVENTS, ChampionRef, champion_in,
                                       history_in, pointer_record)
from components.core.config import PipelineConfig
from components.core.refs import BLESSING_FILE, Blessing, read_upstream
from components.core.errors import StorageFault, storage_fault
from components.core.catalog import (MANIFEST, Layout, code_version, read_json, read_outcome, record_outcome, run_dir,
                                staging_dir, write_json)

log = logging.getLogger(__name__)

STATUS_BLESSED = "blessed"
STATUS_REJECTED = "rejected"
STATUS_INCONCLUSIVE = "inconclusive"
STATUSES = (STATUS_BLESSED, STATUS_REJECTED, STATUS_INCONCLUSIVE)
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
class RegistryResult:
    day: str
    run_key: str
    version: str  # = the blessing's candidate id
    path: str
    status: str  # "blessed" | "rejected" | "inconclusive"
    blessed: bool
    newly_registered: bool
    judged_against: str | None  # the baseline the blessing was judged against
    champion_version: str | None  # champion at registration time (unchanged by registering)


@dataclass(frozen=True)
class PromotionResult:
    day: str
    version: str
    promoted: bool  # the pointer moved in this call
    champion_version: str | None  # champion after the call
    previous_champion: str | None  # champion before the call
    reason: str
    outcome: str = ""  # "promoted" | "not_promoted" (automatic decisions)


# --- reading --------------------------------------------------------------------------------


def champion(layout: Layout) -> ChampionRef | None:
    return champion_in(layout.registry())


def version_manifest(layout: Layout, version: str) -> dict[str, Any]:
    path = version_dir(layout, version) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"registry version {version!r} not found (no {path})")
    return read_json(path)


def version_day(layout: Layout, version: str) -> str:
    return version_manifest(layout, version)["day"]


def version_has_history(layout: Layout, version: str) -> np.ndarray:
    """Per user index of the version: True where it has a trained embedding (serving uses the model)."""
    with np.load(version_dir(layout, version) / "seen.npz") as seen:
        return np.diff(seen["indptr"]) > 0


def version_popularity(layout: Layout, version: str) -> np.ndarray:
    """The version's popularity counts: serving's answer for users it has no embedding for."""
    return np.load(version_dir(layout, version) / "popularity.npy")


def _version_ref(layout: Layout, version: str, reason: str) -> ChampionRef:
    return ChampionRef(version=version, path=str(version_dir(layout, version)), promoted_at="", reason=reason,
                       previous=())


def rolled_back(layout: Layout) -> dict[str, dict[str, Any]]:
    """Versions taken away by a rollback and not re-promoted by hand since: version -> {at, reason}."""
    record = pointer_record(layout.registry())
    return dict(record["rolled_back"]) if record else {}


def champion_as_of(layout: Layout, day: str) -> tuple[ChampionRef | None, str]:
    """The baseline of a run for ``day``: the champion that served before ``day``.

    The newest promotion (automatic or manual) of a version of an earlier day that was not rolled
    back since: the champion, then the champions it replaced newest first (every promotion pushes
    the champion it replaces; a rollback pops and deny-lists it). A version registered for day X
    trained on a window ending X-1 and was judged on X, so an earlier day's version never saw
    ``day``; later days' promotions do not change it, so re-running ``day`` reproduces its
    judgement. Read from champion.json alone, so a lost history line cannot change it. Returns (ref, why)."""
    record = pointer_record(layout.registry())
    if record is not None:
        for version in (record["version"], *reversed(record["previous"])):
            if version in record["rolled_back"]:
                continue
            try:
                vday = version_day(layout, version)
            except FileNotFoundError:  # a version removed by hand is nobody's baseline
                continue
            if vday < day:
                return (_version_ref(layout, version, "champion as of the day"),
                        f"champion as of {day}: newest promotion of an earlier day's version ({version} of {vday})")
    return None, f"no version of a day before {day} was ever promoted (bootstrap)"


def history(layout: Layout) -> list[dict[str, Any]]:
    return history_in(layout.registry())


# --- registering ----------------------------------------------------------------------------


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
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
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


def version_contents(refs, engine, graph, blessing_path: Path, evaluation_path: Path, cfg: PipelineConfig
                     ) -> tuple[dict[str, Path], dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """(files copied, arrays written, documents written) of a registry version: the model, its ONNX
    model (and TensorRT plan), the graph's ID maps, the blessing it was judged with, what serving needs."""
    from components.ship.convert import PLAN_FILE
    from components.ship.export import ONNX_FILE

    train = graph.train_interactions()
    indptr, indices = seen_csr(train.user, train.item, graph.num_users)
    popularity = np.bincount(train.item, minlength=graph.num_items).astype(np.float32)
    files = {name: Path(refs.pruned.path) / name for name in MODEL_FILES}
    files["model.onnx"] = Path(refs.export.path) / ONNX_FILE
    if engine.tensorrt_status == "built":
        files["model.plan"] = Path(engine.path) / PLAN_FILE
    files["users.parquet"] = Path(refs.graph.path) / "users.parquet"
    files["items.parquet"] = Path(refs.graph.path) / "items.parquet"
    files[BLESSING_FILE] = blessing_path  # the version keeps the blessing it was registered with
    export_manifest = refs.export.manifest
    pruned_metrics = Path(refs.pruned.path) / "metrics.json"
    metrics = {
        "evaluation": read_json(evaluation_path),
        "engine": asdict(engine),
        "export": {k: export_manifest.get(k) for k in ("metrics", "io", "num_users", "num_items", "exclude_seen",
                                                       "opset")},
        "pruned": read_json(pruned_metrics) if pruned_metrics.exists() else {},
    }
    serving = {"top_k": export_manifest["io"]["outputs"][0]["shape"][1], "max_batch": max(cfg.export.batch_sizes),
               "batch_sizes": list(cfg.export.batch_sizes), "io": export_manifest["io"], "runtime": engine.runtime,
               "tensorrt_status": engine.tensorrt_status}
    arrays = {"seen.npz": {"indptr": indptr, "indices": indices}, "popularity.npy": {"array": popularity}}
    return files, arrays, {"metrics.json": metrics, "serving.json": serving}


def run_register(layout: Layout, day: str, cfg: PipelineConfig, *, run_key: str,
                 blessing: dict[str, Any] | str | Path | None = None) -> RegistryResult:
    """Register the candidate the run's blessing judged (blessed, rejected or inconclusive) as the
    version named by its candidate id, with its artifacts, metrics, blessing copy and lineage.

    ``blessing``: the gate stage's result (or the path of its blessing.json); default the run
    folder's blessing.json. The candidate's artifacts come from the blessing, never from the day's
    current pointers, so a partial re-run cannot register another candidate than the one judged."""
    from components.decide.candidate import CandidateRefs
    from components.ship.convert import load_engine_result
    from components.data.graph import GraphArtifact

    blessing_path, judged = read_upstream(Blessing, blessing, run_dir(layout, day, run_key) / BLESSING_FILE,
                                          stage="run_register", day=day, missing="run evaluate and gate first",
                                          relation="judges day")
    refs = CandidateRefs.from_dict(layout, judged.candidate_refs)
    version = judged.candidate_version
    evaluation_path = Path(judged.evaluation_path)
    engine = load_engine_result(refs.engine)
    graph = GraphArtifact.load(refs.graph)
    lineage = {
        "day": day,
        "candidate_id": version,
        "judged_against": judged.champion_version,
        "data": {"graph": refs.graph.as_lineage(), "graph_inputs": refs.graph.manifest.get("inputs", {})},
        "models": refs.versions(),
        "config_hash": cfg.config_hash(),
        "code_version": code_version(),
        "registered_by_run": run_key,
    }
    status = {"blessed": STATUS_BLESSED, "rejected": STATUS_REJECTED,
              "inconclusive": STATUS_INCONCLUSIVE}[judged.verdict]

    files, arrays, documents = version_contents(refs, engine, graph, blessing_path, evaluation_path, cfg)
    path, created = register_candidate(layout, version, day, files, arrays=arrays,
                                       documents={"metrics.json": documents["metrics.json"], "lineage.json": lineage,
                                                  "serving.json": documents["serving.json"]}, status=status)
    write_json(_day_pointer(layout, day), {"day": day, "version": version, "status": status})
    champ = champion(layout)
    log.info("register %s run %s: candidate %s %s (%s), judged against %s; champion %s", day, run_key, version,
             status, "new" if created else "already registered", judged.champion_version or "none (bootstrap)",
             champ.version if champ else "none")
    return RegistryResult(day=day, run_key=run_key, version=version, path=str(path), status=status,
                          blessed=status == STATUS_BLESSED, newly_registered=created,
                          judged_against=judged.champion_version, champion_version=champ.version if champ else None)


# --- promotion ------------------------------------------------------------------------------


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _append_history(layout: Layout, entry: dict[str, Any], fault_hook: FaultHook | None = None) -> None:
    """Append one JSON line. A torn tail (a kill mid-append) is cut off first and a failed append
    (disk full) is truncated back, so a partial line never prefixes, and swallows, the next entry."""
    path = layout.registry() / HISTORY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        end = _cut_torn_tail(fd, path)
        try:
            _write_all(fd, (json.dumps(entry, sort_keys=True) + "\n").encode())
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, end)
            raise
    finally:
        os.close(fd)
    if fault_hook:
        fault_hook("history_appended")


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


def _move_entry(record: dict[str, Any]) -> dict[str, Any]:
    """The history entry of a pointer move: a function of champion.json alone, so the entry
    written after the move and the one a repair writes after a crash are the same."""
    return {"event": record["event"], "version": record["version"], "previous": record["replaced"],
            "at": record["promoted_at"], "reason": record["reason"], "manual": record["manual"],
            "seq": record["seq"], "run_key": record["run_key"]}


def _logged_seq(entries: list[dict[str, Any]]) -> int:
    seq = 0
    for entry in entries:
        if entry.get("event") in LEGACY_POINTER_EVENTS:
            seq = entry.get("seq", seq + 1)  # entries logged before moves carried seq count one each
    return seq


def _repair_history(layout: Layout, fault_hook: FaultHook | None = None) -> dict[str, Any] | None:
    """A crash after the pointer rename but before the history append leaves the log one move
    short: append the move's own entry (a rollback stays a rollback). Returns the pointer record."""
    record = pointer_record(layout.registry())
    if record is None or _logged_seq(history(layout)) >= record["seq"]:
        return record
    _append_history(layout, {**_move_entry(record), "recovered": True}, fault_hook)
    log.warning("registry: history repaired, the %s of %s (move %d) was not logged", record["event"],
                record["version"], record["seq"])
    return record


def _log_move(layout: Layout, record: dict[str, Any], fault_hook: FaultHook | None) -> None:
    """Log a move that already happened: the pointer is the decision, so a failed append (disk
    full) is reported, not raised, and repaired from the pointer on the next registry write."""
    try:
        _append_history(layout, _move_entry(record), fault_hook)
    except OSError as exc:
        log.error("registry: %s of %s done, but its history entry was not written (%s); it is repaired from "
                  "%s on the next registry write", record["event"], record["version"], exc, CHAMPION_FILE)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _move_pointer(layout: Layout, previous_record: dict[str, Any] | None, move: dict[str, Any],
                  fault_hook: FaultHook | None) -> dict[str, Any]:
    """Write the next pointer record (``move``'s fields, seq + 1), fsync, rename: champion.json is
    the old or the new record, never a mix. Returns the new record."""
    registry = layout.registry()
    registry.mkdir(parents=True, exist_ok=True)
    record = {**move, "seq": (previous_record["seq"] if previous_record else 0) + 1}
    target = registry / CHAMPION_FILE
    tmp = registry / f".{CHAMPION_FILE}.{os.getpid()}.tmp"
    with tmp.open("w") as handle:
        handle.write(json.dumps(record, indent=2, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    if fault_hook:
        fault_hook("before_pointer_rename")
    os.replace(tmp, target)
    _fsync_dir(registry)
    if fault_hook:
        fault_hook("after_pointer_rename")
    return record


@contextmanager
def _pointer_lock(layout: Layout) -> Iterator[None]:
    """Serialize read-modify-write of the champion pointer (the DAG and an operator's CLI call)."""
    layout.registry().mkdir(parents=True, exist_ok=True)
    with (layout.registry() / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def promote(layout: Layout, version: str, reason: str, *, fault_hook: FaultHook | None = None) -> PromotionResult:
    """An operator's promotion of any blessed version (recorded as manual; lifts a rollback)."""
    with _pointer_lock(layout):
        return _promote(layout, version, reason, manual=True, fault_hook=fault_hook)


def rollback(layout: Layout, reason: str = "rollback", *, fault_hook: FaultHook | None = None) -> str:
    with _pointer_lock(layout):
        return _rollback(layout, reason, fault_hook=fault_hook)


def _check_blessed(layout: Layout, version: str) -> dict[str, Any]:
    manifest = version_manifest(layout, version)
    blessing_path = version_dir(layout, version) / "blessing.json"
    blessing = read_json(blessing_path) if blessing_path.exists() else {"blessed": False}
    if manifest["status"] != STATUS_BLESSED or not blessing.get("blessed"):
        raise PermissionError(
            f"refusing to promote {version}: status {manifest['status']!r}, blessed={blessing.get('blessed')} "
            f"(failed gates: {', '.join(blessing.get('failed', [])) or 'n/a'}; inconclusive: "
            f"{', '.join(blessing.get('inconclusive', [])) or 'n/a'})"
        )
    return manifest


def _promote(layout: Layout, version: str, reason: str, *, manual: bool, run_key: str | None = None,
             fault_hook: FaultHook | None = None) -> PromotionResult:
    """Make ``version`` the champion. Refuses unblessed or incomplete versions; promoting the
    current champion is a no-op. ``fault_hook(step)`` is called at each step (crash tests)."""
    day = _check_blessed(layout, version)["day"]
    current = _repair_history(layout, fault_hook)
    if current is not None and current["version"] == version:
        log.info("promote: %s is already the champion; nothing to do", version)
        return PromotionResult(day=day, version=version, promoted=False, champion_version=version,
                               previous_champion=version, reason="already champion", outcome="not_promoted")
    if fault_hook:
        fault_hook("validated")
    previous = [*current["previous"], current["version"]] if current else []
    denied = dict(current["rolled_back"]) if current else {}
    if manual:  # an operator's promotion lifts the version's rollback
        denied.pop(version, None)
    record = _move_pointer(layout, current, {
        "version": version, "promoted_at": _now(), "reason": reason, "event": "promote", "manual": manual,
        "previous": previous, "replaced": current["version"] if current else None, "rolled_back": denied,
        "run_key": run_key}, fault_hook)
    _log_move(layout, record, fault_hook)
    log.info("promote: champion %s -> %s (%s%s)", record["replaced"] or "none", version, reason,
             ", by hand" if manual else "")
    return PromotionResult(day=day, version=version, promoted=True, champion_version=version,
                           previous_champion=record["replaced"], reason=reason, outcome="promoted")


def ineligibility(layout: Layout, version: str, day: str, judged_against: str | None) -> str | None:
    """Why an automatic promotion of ``version`` (of ``day``, judged against ``judged_against``)
    must not happen now, or None. Read under the lock: compare-and-swap's compare."""
    current = champion(layout)
    if current is not None and current.version == version:
        return "already the champion"
    taken_back = rolled_back(layout)
    if version in taken_back:
        entry = taken_back[version]
        return f"rolled back: {version} was rolled back at {entry['at']} ({entry['reason']}); promote it by hand to lift"
    days_back = {version_day(layout, v): (v, e) for v, e in taken_back.items()}
    if day in days_back:
        other, entry = days_back[day]
        return (f"rolled back: {day}'s version {other} was rolled back at {entry['at']} ({entry['reason']}); "
                f"promote by hand to lift")
    if current is not None:
        current_day = version_day(layout, current.version)
        if day <= current_day:
            return f"historical day: not newer than the champion ({current.version} of {current_day})"
    if (current.version if current else None) != judged_against:
        return (f"stale: champion changed since judged (judged against {judged_against or 'no champion'}, "
                f"serving {current.version if current else 'none'})")
    return None


def _unreported_promotion(layout: Layout, record: dict[str, Any] | None, version: str, day: str,
                          run_key: str | None) -> bool:
    """True when the pointer's last move is the automatic promotion of ``version`` and either this
    run made it (a retry after a crash) or the run that made it never recorded it as promoted: the
    decision stands, and this call reports it, so the champion Asset event is not lost."""
    if record is None or record["version"] != version or record["event"] != "promote" or not record["run_key"]:
        return False
    if record["run_key"] == run_key:
        return True
    mover = read_outcome(layout, day, record["run_key"])
    return not (mover and mover["kind"] == "promoted" and mover["candidate"] == version)


def decide_promotion(layout: Layout, version: str, judged_against: str | None, *, run_key: str | None = None,
                     fault_hook: FaultHook | None = None) -> PromotionResult:
    """Compare-and-swap promotion of a blessed candidate, under the registry lock: promoted only if
    the champion is still ``judged_against``, the candidate's day is newer than the champion's and
    it was not rolled back. Otherwise the champion is untouched and the decision is logged in the
    history as not_promoted with its reason. A promotion already made by ``run_key`` (or by a run
    that crashed before recording it) is reported as promoted again, without a second move."""
    with _pointer_lock(layout):
        day = _check_blessed(layout, version)["day"]
        record = _repair_history(layout, fault_hook)
        if _unreported_promotion(layout, record, version, day, run_key):
            log.warning("promote: %s became the champion in run %s before a crash; reporting that promotion",
                        version, record["run_key"])
            return PromotionResult(day=day, version=version, promoted=True, champion_version=version,
                                   previous_champion=record["replaced"], reason=record["reason"],
                                   outcome="promoted")
        why_not = ineligibility(layout, version, day, judged_against)
        if why_not is None:
            reason = f"blessed on {day} against {judged_against or 'no champion (bootstrap: first champion)'}"
            return _promote(layout, version, reason, manual=False, run_key=run_key, fault_hook=fault_hook)
        current = record["version"] if record else None
        _append_history(layout, {"event": "not_promoted", "version": version, "at": _now(), "reason": why_not,
                                 "judged_against": judged_against, "champion": current, "run_key": run_key},
                        fault_hook)
        log.warning("promote: candidate %s blessed but NOT promoted: %s; champion stays %s", version, why_not,
                    current or "none")
        return PromotionResult(day=day, version=version, promoted=False, champion_version=current,
                               previous_champion=current, reason=why_not, outcome="not_promoted")


def _rollback(layout: Layout, reason: str = "rollback", *, fault_hook: FaultHook | None = None) -> str:
    """Restore the champion the current one replaced and deny-list the current one, in one pointer
    move; returns the restored version."""
    current = _repair_history(layout, fault_hook)
    if current is None or not current["previous"]:
        raise LookupError(f"nothing to roll back to under {layout.registry()}: "
                          f"{'no champion' if current is None else 'the champion has no predecessor'}")
    target = current["previous"][-1]
    version_manifest(layout, target)  # must still be complete
    at = _now()
    denied = {**current["rolled_back"], current["version"]: {"at": at, "reason": reason}}
    denied.pop(target, None)  # the operator restores the target: it serves, so it must not stay denied
    record = _move_pointer(layout, current, {
        "version": target, "promoted_at": at, "reason": reason, "event": "rollback", "manual": True,
        "previous": current["previous"][:-1], "replaced": current["version"], "rolled_back": denied,
        "run_key": None}, fault_hook)
    _log_move(layout, record, fault_hook)
    log.info("rollback: champion %s -> %s (%s)", current["version"], target, reason)
    return target


def run_promote(layout: Layout, day: str, cfg: PipelineConfig, *, run_key: str,
                registration: RegistryResult | dict[str, Any] | None = None,
                fault_hook: FaultHook | None = None) -> PromotionResult:
    """Decide the run's registered candidate (``registration``: the register stage's result;
    default the candidate the run's own blessing judged, never the day's newest: two runs of a day
    at once each decide their own candidate) and record the run's outcome."""
    if registration is None:
        blessing_path = run_dir(layout, day, run_key) / BLESSING_FILE
        if not blessing_path.exists():
            raise FileNotFoundError(f"run_promote {day}: {blessing_path} missing (run gate and register in run "
                                    f"{run_key} first)")
        registration = {"version": Blessing.load(blessing_path).candidate_version}
    elif not isinstance(registration, dict):
        registration = asdict(registration)
    version = registration["version"]
    manifest = version_manifest(layout, version)
    if manifest["day"] != day:
        raise ValueError(f"run_promote {day}: registered version {version} is of {manifest['day']}")
    blessing = Blessing.load(version_dir(layout, version) / BLESSING_FILE)
    metrics = {k: v for k, v in read_json(version_dir(layout, version) / "metrics.json")["evaluation"].items()
               if k in ("users_evaluated", "cold_users_evaluated")}
    if manifest["status"] != STATUS_BLESSED:
        current = champion(layout)
        result = PromotionResult(day=day, version=version, promoted=False,
                                 champion_version=current.version if current else None,
                                 previous_champion=current.version if current else None,
                                 reason=blessing.reason, outcome=manifest["status"])
    else:
        result = decide_promotion(layout, version, blessing.champion_version, run_key=run_key,
                                  fault_hook=fault_hook)
    try:
        record_outcome(layout, day, run_key, result.outcome, result.reason, candidate=version,
                       champion_before=result.previous_champion, champion_after=result.champion_version,
                       metrics=metrics)
    except OSError as exc:
        fault = storage_fault(exc, layout.root)
        if fault is None or not result.promoted:
            raise
        raise StorageFault(f"{fault}. The champion DID move to {version}; once fixed, re-run promote for {day} "
                           f"(run {run_key}): it records the outcome and announces the champion") from exc
    if fault_hook:
        fault_hook("outcome_recorded")
    return PromotionResult(**{**asdict(result), "day": day})
