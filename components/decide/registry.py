"""Model registry: immutable candidate versions, an atomic champion pointer, an audit history.

Layout under ``layout.registry()``::

    versions/<version>/      one complete, never-modified candidate (exists only once complete)
        embeddings.npz model.pt model.onnx [model.plan]    the model in every served form
        users.parquet items.parquet                          ID maps (string id -> index)
        seen.npz popularity.npy                              serving: seen items (CSR), fallback
        metrics.json blessing.json lineage.json manifest.json
                             (a popularity fallback version, components/decide/fallback.py: the same
                             files but model.pt, and model.plan when TensorRT built one; lineage kind "popularity")
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

Where champion.json and the history live is the layout's pointer backend (components/decide/pointer.py):
the registry folder under a file lock, or an S3 store where the move is an If-Match swap and a decision
that lost a race is made again from a fresh read (an ``s3://`` artifact root's own ``registry/``: before
each decision the session's new versions are published, so the pointer never names a version the store
lacks, and versions another copy published are fetched when the pointer names them). The rest of this
text holds for both.

Crash safety: a version directory is staged and renamed into place (complete or absent). Every
decision that later decisions depend on lives in champion.json, moved by one atomic write
(temp and rename, or one conditional PUT): the champion, the stack of champions it replaced, the
deny-list of rolled-back versions, what moved it (promote / rollback, by which run) and a sequence number that
grows by one per move. A crash at any point therefore leaves the old or the new record, whole, and
a rollback cannot be lost. The history is the audit copy: each move appends the entry derived from
the record (same ``seq``); a crash between the rename and the append is repaired on the next write
by appending that same entry (marked recovered), so a repaired rollback is still a rollback. An
append that fails midway (disk full) is truncated back, and a torn tail left by a kill is cut off
before the next append, so a torn line never swallows the entry after it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from components.core.champion import ChampionRef
from components.core.config import PipelineConfig
from components.core.refs import BLESSING_FILE, Blessing, read_upstream
from components.core.remote import fetch_versions, publish_artifacts
from components.decide.outcome import FALLBACK_POPULARITY, PROMOTED
from components.core.errors import StorageFault, storage_fault
from components.core.catalog import (CHAMPION_FILE, MANIFEST, Layout, code_version, read_json, read_outcome,
                                     record_outcome, run_dir, staging_dir, write_json)
from components.decide.pointer import ChampionPointer, LostRace, champion, pointer_of

log = logging.getLogger(__name__)

STATUS_BLESSED = "blessed"
STATUS_REJECTED = "rejected"
STATUS_INCONCLUSIVE = "inconclusive"
STATUSES = (STATUS_BLESSED, STATUS_REJECTED, STATUS_INCONCLUSIVE)
# Files copied from artifacts into a version: (artifact, file, required).
MODEL_FILES = ("embeddings.npz", "model.pt")

FaultHook = Callable[[str], None]
# A guard, not a tuning knob: each lost race means another decision landed, so only a store that
# refuses every conditional write loses this often in a row.
MAX_LOST_RACES = 50


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
    # the popularity version registered for the night's fallback (blessing.fallback), to promote instead
    fallback_version: str | None = None


@dataclass(frozen=True)
class PromotionResult:
    day: str
    version: str
    promoted: bool  # the pointer moved in this call
    champion_version: str | None  # champion after the call
    previous_champion: str | None  # champion before the call
    reason: str
    outcome: str = ""  # "promoted" | "not_promoted" | "fallback_popularity" (automatic decisions)


# --- reading --------------------------------------------------------------------------------


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
    record = pointer_of(layout).read()[0]
    return dict(record["rolled_back"]) if record else {}


def champion_as_of(layout: Layout, day: str) -> tuple[ChampionRef | None, str]:
    """The baseline of a run for ``day``: the champion that served before ``day``.

    The newest promotion (automatic or manual) of a version of an earlier day that was not rolled
    back since: the champion, then the champions it replaced newest first (every promotion pushes
    the champion it replaces; a rollback pops and deny-lists it). A version registered for day X
    trained on a window ending X-1 and was judged on X, so an earlier day's version never saw
    ``day``; later days' promotions do not change it, so re-running ``day`` reproduces its
    judgement. Read from champion.json alone, so a lost history line cannot change it. Returns (ref, why)."""
    record = _read_pointer(layout, pointer_of(layout))[0]
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
    return pointer_of(layout).entries()


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
    arrays = serving_arrays(graph.train_interactions(), graph.num_users, graph.num_items)
    return files, arrays, {"metrics.json": metrics, "serving.json": serving}


def serving_arrays(train, num_users: int, num_items: int) -> dict[str, dict[str, np.ndarray]]:
    """What serving reads besides the model: seen items per user (CSR) and popularity counts (its
    cold-user answer and fold-in's item degrees), from a graph's training interactions."""
    indptr, indices = seen_csr(train.user, train.item, num_users)
    popularity = np.bincount(train.item, minlength=num_items).astype(np.float32)
    return {"seen.npz": {"indptr": indptr, "indices": indices}, "popularity.npy": {"array": popularity}}


def popularity_engine(scratch: Path, num_users: int, cfg: PipelineConfig, day: str) -> tuple[dict[str, Path], dict]:
    """(files, record) of the popularity version's engine: the runtime the convert stage would choose,
    so a TensorRT deployment can load the version too; a plan in fp32 (the scores are ranks up to
    num_items, which fp16 cannot tell apart above 2,048) whose top-K must equal ONNX Runtime's exactly."""
    from components.model.models.serving_graph import parity_users
    from components.ship.convert import PLAN_FILE, OnnxRuntimeRunner, build_engine, choose_runtime, runner_parity
    from components.ship.export import ONNX_FILE

    fp32 = cfg.model_copy(update={"engine": cfg.engine.model_copy(update={"fp16": False})})
    choice, status, runner, engine_bytes, build = build_engine(choose_runtime(cfg.engine), scratch / ONNX_FILE,
                                                               scratch, fp32, day)
    record = {"runtime": choice.runtime, "runtime_reason": choice.reason, "tensorrt_status": status,
              "engine_bytes": engine_bytes, "build": build}
    if status != "built":
        return {}, record
    users = parity_users(num_users, cfg.seed)
    max_abs_diff, overlap = runner_parity(runner, users, *OnnxRuntimeRunner(scratch / ONNX_FILE).run(users),
                                          max(cfg.export.batch_sizes))
    if overlap != 1.0:  # a ranking has no near-ties to forgive
        raise ValueError(f"popularity engine {day}: TensorRT top-K overlap {overlap:.4f} with ONNX Runtime over "
                         f"{users.size} users, expected 1.0")
    return {"model.plan": scratch / PLAN_FILE}, {**record, "parity_max_abs_diff": max_abs_diff,
                                                  "parity_topk_overlap": overlap}


def register_popularity_fallback(layout: Layout, day: str, cfg: PipelineConfig, blessing: Blessing, *,
                                 run_key: str) -> tuple[str, bool]:
    """Register the popularity version of a night that falls back (components/decide/fallback.py):
    status blessed, over the candidate's graph. Idempotent; returns (version, newly registered)."""
    from components.core.refs import GraphRef
    from components.data.graph import GraphArtifact
    from components.decide.fallback import fallback_reason, popularity_version_files, popularity_version_id

    version = popularity_version_id(blessing, cfg)
    if (version_dir(layout, version) / MANIFEST).exists():
        return version, False
    graph = GraphArtifact.load(layout.artifact(GraphRef.from_dict(blessing.candidate_refs["graph"])))
    train = graph.train_interactions()
    with staging_dir(layout.registry()) as scratch:  # the ONNX model is written here, copied into the version
        files, documents = popularity_version_files(graph, train, cfg, blessing, version, run_key, scratch)
        engine_files, engine = popularity_engine(scratch, graph.num_users, cfg, day)
        files.update(engine_files)
        documents["metrics.json"]["engine"] = engine
        documents["serving.json"].update(runtime=engine["runtime"], tensorrt_status=engine["tensorrt_status"])
        _, created = register_candidate(layout, version, day, files,
                                        serving_arrays(train, graph.num_users, graph.num_items), documents,
                                        STATUS_BLESSED)
    log.warning("register %s run %s: popularity fallback %s %s over graph %s (%s)", day, run_key, version,
                "registered" if created else "already registered", graph.ref.version, fallback_reason(blessing))
    return version, created


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
    fallback = None
    if judged.fallback is not None:
        fallback, _ = register_popularity_fallback(layout, day, cfg, judged, run_key=run_key)
    champ = champion(layout)
    log.info("register %s run %s: candidate %s %s (%s), judged against %s; champion %s", day, run_key, version,
             status, "new" if created else "already registered", judged.champion_version or "none (bootstrap)",
             champ.version if champ else "none")
    return RegistryResult(day=day, run_key=run_key, version=version, path=str(path), status=status,
                          blessed=status == STATUS_BLESSED, newly_registered=created,
                          judged_against=judged.champion_version, champion_version=champ.version if champ else None,
                          fallback_version=fallback)


# --- promotion ------------------------------------------------------------------------------


def _move_entry(record: dict[str, Any]) -> dict[str, Any]:
    """The history entry of a pointer move: a function of champion.json alone, so the entry
    written after the move and the one a repair writes after a crash are the same."""
    return {"event": record["event"], "version": record["version"], "previous": record["replaced"],
            "at": record["promoted_at"], "reason": record["reason"], "manual": record["manual"],
            "seq": record["seq"], "run_key": record["run_key"]}


def _read_pointer(layout: Layout, pointer: ChampionPointer) -> tuple[dict[str, Any] | None, Any]:
    """The pointer record and its token, with every version it names in this layout's root."""
    record, token = pointer.read()
    if record is not None and not all((version_dir(layout, v) / MANIFEST).exists()
                                      for v in (record["version"], *record["previous"], *record["rolled_back"])):
        # An s3:// root whose pointer another process moved since this copy was hydrated: the versions
        # it names were in the store before it could name them; bring them into this copy.
        fetch_versions(layout)
    return record, token


def _repair_history(layout: Layout, pointer: ChampionPointer,
                    fault_hook: FaultHook | None = None) -> tuple[dict[str, Any] | None, Any]:
    """A crash after the pointer moved but before the history append leaves the log one move
    short: append the move's own entry (a rollback stays a rollback). Returns the pointer record
    and its token (what the decision that follows must be made against)."""
    record, token = _read_pointer(layout, pointer)
    if record is None or pointer.move_logged(record["seq"]):
        return record, token
    pointer.append({**_move_entry(record), "recovered": True}, record["seq"], fault_hook)
    log.warning("registry: history repaired, the %s of %s (move %d) was not logged", record["event"],
                record["version"], record["seq"])
    return record, token


def _log_move(pointer: ChampionPointer, record: dict[str, Any], fault_hook: FaultHook | None) -> None:
    """Log a move that already happened: the pointer is the decision, so a failed append (disk
    full) is reported, not raised, and repaired from the pointer on the next registry write."""
    try:
        pointer.append(_move_entry(record), record["seq"], fault_hook)
    except OSError as exc:
        log.error("registry: %s of %s done, but its history entry was not written (%s); it is repaired from "
                  "%s on the next registry write", record["event"], record["version"], exc, CHAMPION_FILE)


def _move_pointer(pointer: ChampionPointer, current: dict[str, Any] | None, token: Any, move: dict[str, Any],
                  fault_hook: FaultHook | None) -> dict[str, Any]:
    """Replace the record read with ``token`` by the next one (``move``'s fields, seq + 1), whole or
    not at all; LostRace if another writer moved it first. Returns the new record."""
    record = {**move, "seq": (current["seq"] if current else 0) + 1}
    pointer.move(record, token, fault_hook)
    return record


def _decide(layout: Layout, decision: Callable[[ChampionPointer], Any]) -> Any:
    """Run one decision (read, decide, move) on the layout's champion pointer: under its lock, and
    from a fresh read again after each lost race (the object store's compare-and-swap)."""
    # An s3:// root: the versions this session registered reach the store before a pointer can name one.
    publish_artifacts(layout)
    pointer = pointer_of(layout)
    with pointer.exclusive():
        for _ in range(MAX_LOST_RACES):
            try:
                return decision(pointer)
            except LostRace as race:
                log.info("registry: lost a race on %s (%s); deciding again", pointer.where, race)
    raise RuntimeError(f"champion pointer {pointer.where}: {MAX_LOST_RACES} lost races in a row; is another "
                       f"writer looping, or does the store refuse every conditional write?")


def promote(layout: Layout, version: str, reason: str, *, fault_hook: FaultHook | None = None) -> PromotionResult:
    """An operator's promotion of any blessed version (recorded as manual; lifts a rollback)."""
    day = _check_blessed(layout, version)["day"]

    def decision(pointer: ChampionPointer) -> PromotionResult:
        current, token = _repair_history(layout, pointer, fault_hook)
        return _promote(pointer, current, token, version, day, reason, manual=True, fault_hook=fault_hook)

    return _decide(layout, decision)


def rollback(layout: Layout, reason: str = "rollback", *, fault_hook: FaultHook | None = None) -> str:
    return _decide(layout, lambda pointer: _rollback(layout, pointer, reason, fault_hook=fault_hook))


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


def _promote(pointer: ChampionPointer, current: dict[str, Any] | None, token: Any, version: str, day: str,
             reason: str, *, manual: bool, run_key: str | None = None,
             fault_hook: FaultHook | None = None) -> PromotionResult:
    """Make ``version`` (blessed, of ``day``) the champion in place of ``current`` (read with
    ``token``); promoting the current champion is a no-op. ``fault_hook(step)`` is called at each
    step (crash tests)."""
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
    record = _move_pointer(pointer, current, token, {
        "version": version, "promoted_at": _now(), "reason": reason, "event": "promote", "manual": manual,
        "previous": previous, "replaced": current["version"] if current else None, "rolled_back": denied,
        "run_key": run_key}, fault_hook)
    _log_move(pointer, record, fault_hook)
    log.info("promote: champion %s -> %s (%s%s)", record["replaced"] or "none", version, reason,
             ", by hand" if manual else "")
    return PromotionResult(day=day, version=version, promoted=True, champion_version=version,
                           previous_champion=record["replaced"], reason=reason, outcome="promoted")


def ineligibility(layout: Layout, record: dict[str, Any] | None, version: str, day: str,
                  judged_against: str | None) -> str | None:
    """Why an automatic promotion of ``version`` (of ``day``, judged against ``judged_against``)
    must not happen against the pointer ``record``, or None: compare-and-swap's compare (the swap
    then succeeds only if the pointer is still ``record``)."""
    current = record["version"] if record else None
    if current == version:
        return "already the champion"
    taken_back = dict(record["rolled_back"]) if record else {}
    if version in taken_back:
        entry = taken_back[version]
        return f"rolled back: {version} was rolled back at {entry['at']} ({entry['reason']}); promote it by hand to lift"
    days_back = {version_day(layout, v): (v, e) for v, e in taken_back.items()}
    if day in days_back:
        other, entry = days_back[day]
        return (f"rolled back: {day}'s version {other} was rolled back at {entry['at']} ({entry['reason']}); "
                f"promote by hand to lift")
    if current is not None:
        current_day = version_day(layout, current)
        if day <= current_day:
            return f"historical day: not newer than the champion ({current} of {current_day})"
    if current != judged_against:
        return (f"stale: champion changed since judged (judged against {judged_against or 'no champion'}, "
                f"serving {current or 'none'})")
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
    return not (mover and mover["kind"] in (PROMOTED, FALLBACK_POPULARITY) and mover["champion_after"] == version)


def decide_promotion(layout: Layout, version: str, judged_against: str | None, *, run_key: str | None = None,
                     reason: str | None = None, fault_hook: FaultHook | None = None) -> PromotionResult:
    """Compare-and-swap promotion of a blessed candidate: promoted only if the champion is still
    ``judged_against``, the candidate's day is newer than the champion's and it was not rolled back
    (decided under the registry lock, or re-decided after a lost race on the object store).
    Otherwise the champion is untouched and the decision is logged in the history as not_promoted
    with its reason. A promotion already made by ``run_key`` (or by a run that crashed before
    recording it) is reported as promoted again, without a second move.
    ``reason``: what the promotion is recorded with (default: blessed on the day against the baseline)."""
    day = _check_blessed(layout, version)["day"]

    def decision(pointer: ChampionPointer) -> PromotionResult:
        record, token = _repair_history(layout, pointer, fault_hook)
        if _unreported_promotion(layout, record, version, day, run_key):
            log.warning("promote: %s became the champion in run %s before a crash; reporting that promotion",
                        version, record["run_key"])
            return PromotionResult(day=day, version=version, promoted=True, champion_version=version,
                                   previous_champion=record["replaced"], reason=record["reason"],
                                   outcome="promoted")
        why_not = ineligibility(layout, record, version, day, judged_against)
        if why_not is None:
            why = reason or f"blessed on {day} against {judged_against or 'no champion (bootstrap: first champion)'}"
            return _promote(pointer, record, token, version, day, why, manual=False, run_key=run_key,
                            fault_hook=fault_hook)
        current = record["version"] if record else None
        pointer.append({"event": "not_promoted", "version": version, "at": _now(), "reason": why_not,
                        "judged_against": judged_against, "champion": current, "run_key": run_key},
                       record["seq"] if record else 0, fault_hook)
        log.warning("promote: candidate %s blessed but NOT promoted: %s; champion stays %s", version, why_not,
                    current or "none")
        return PromotionResult(day=day, version=version, promoted=False, champion_version=current,
                               previous_champion=current, reason=why_not, outcome="not_promoted")

    return _decide(layout, decision)


def _rollback(layout: Layout, pointer: ChampionPointer, reason: str = "rollback", *,
              fault_hook: FaultHook | None = None) -> str:
    """Restore the champion the current one replaced and deny-list the current one, in one pointer
    move; returns the restored version."""
    current, token = _repair_history(layout, pointer, fault_hook)
    if current is None or not current["previous"]:
        raise LookupError(f"nothing to roll back to under {pointer.where}: "
                          f"{'no champion' if current is None else 'the champion has no predecessor'}")
    target = current["previous"][-1]
    version_manifest(layout, target)  # must still be complete
    at = _now()
    denied = {**current["rolled_back"], current["version"]: {"at": at, "reason": reason}}
    denied.pop(target, None)  # the operator restores the target: it serves, so it must not stay denied
    record = _move_pointer(pointer, current, token, {
        "version": target, "promoted_at": at, "reason": reason, "event": "rollback", "manual": True,
        "previous": current["previous"][:-1], "replaced": current["version"], "rolled_back": denied,
        "run_key": None}, fault_hook)
    _log_move(pointer, record, fault_hook)
    log.info("rollback: champion %s -> %s (%s)", current["version"], target, reason)
    return target


def _promote_fallback(layout: Layout, blessing: Blessing, status: str, cfg: PipelineConfig, run_key: str,
                      fault_hook: FaultHook | None) -> PromotionResult:
    """The night's popularity version (registered with the candidate) promoted by the same
    compare-and-swap against the champion the blessing judged: outcome fallback_popularity; when the
    swap is refused, the candidate's own outcome with why popularity does not serve either."""
    from components.decide.fallback import fallback_reason, popularity_version_id

    fallback = popularity_version_id(blessing, cfg)
    version_manifest(layout, fallback)  # registered by run_register; raises naming it when missing
    decision = decide_promotion(layout, fallback, blessing.champion_version, run_key=run_key,
                                reason=fallback_reason(blessing), fault_hook=fault_hook)
    if decision.promoted:
        return replace(decision, outcome=FALLBACK_POPULARITY)
    return replace(decision, reason=f"{blessing.reason}; popularity fallback {fallback} not promoted: {decision.reason}",
                   outcome=status)


def run_promote(layout: Layout, day: str, cfg: PipelineConfig, *, run_key: str,
                registration: RegistryResult | dict[str, Any] | None = None,
                fault_hook: FaultHook | None = None) -> PromotionResult:
    """Decide the run's registered candidate (``registration``: the register stage's result;
    default the candidate the run's own blessing judged, never the day's newest: two runs of a day
    at once each decide their own candidate) and record the run's outcome. A candidate not blessed
    on a night that falls back (``blessing.fallback``) decides the night's popularity version instead."""
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
    if manifest["status"] != STATUS_BLESSED and blessing.fallback is not None:
        result = _promote_fallback(layout, blessing, manifest["status"], cfg, run_key, fault_hook)
    elif manifest["status"] != STATUS_BLESSED:
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
        raise StorageFault(f"{fault}. The champion DID move to {result.version}; once fixed, re-run promote for {day} "
                           f"(run {run_key}): it records the outcome and announces the champion") from exc
    if fault_hook:
        fault_hook("outcome_recorded")
    return PromotionResult(**{**asdict(result), "day": day})
