"""The artifact layout under one root, atomic writes, and immutable versioned artifacts.

Layout (``root`` is a local folder, a mounted volume, or ``s3://bucket/prefix``: then ``Layout.root`` is
the process's local working copy of that prefix, kept in step with the store by
components/core/remote.py; landing files may be any fsspec URI)::

    landing/date=YYYY-MM-DD/*.{csv,jsonl,parquet}     raw daily logs, never modified
    staging/date=YYYY-MM-DD/                          normalized rows awaiting validation
    accepted/date=YYYY-MM-DD/                         validated, deduplicated partition + manifest
    quarantine/date=YYYY-MM-DD/<attempt>/             raw files, rows, validation result, report
    features/repo/                                    the Feast repo copy, offline Parquet, online store
    graphs/<date>/<version>/                          DGL graph, ID maps, stats, manifest
    models/<kind>/<date>/<version>/                   teacher / student / pruned checkpoints
    registry/                                         candidate versions, champion pointer, history
    reports/<date>/runs/<run_key>/                    one run's reports (HTML, PNG, JSON, outcome.json)
    reports/<date>/latest.json                        the day's newest run: {run_key, dir, outcome, ...}

An artifact is a directory that exists only once complete: it is built under a temporary name
and renamed into place (atomic on one filesystem), its ``manifest.json`` carrying lineage.
Versions are content hashes, so a re-run with the same inputs lands on the same version.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from components.core.errors import StaleReference

log = logging.getLogger(__name__)

R = TypeVar("R")  # a typed reference (components/core/refs.py): the catalog never imports those

MANIFEST = "manifest.json"
CURRENT = "CURRENT"
OUTCOME_FILE = "outcome.json"
# The registry's champion pointer and its history (components/core/champion.py reads them; the pointer
# backends in components/decide/pointer.py write them; an s3:// root's copy never holds them).
CHAMPION_FILE = "champion.json"
HISTORY_FILE = "history.jsonl"
HISTORY_OBJECTS = "history/"  # on an object store: one create-only object per history entry
STAGING_PREFIX = ".staging-"
TMP_SUFFIX = ".tmp"
REPLACED_SUFFIX = ".replaced"
# Top-level folders the pipeline writes under the root (see the layout above).
PIPELINE_FOLDERS = ("staging", "accepted", "quarantine", "features", "graphs", "models", "exports", "engines",
                    "registry", "reports", "work")
TIMINGS = "timings.json"
# Keys that hold wall-clock measurements (train seconds, pairs/s, latency): they differ on every
# run, so they live in TIMINGS, outside an artifact's content hash (issue 20: a re-run of the
# teacher made a new version each time because metrics.json held its seconds).
_WALL_CLOCK = re.compile(r"seconds|_per_s$|^latency_ms$|^latency_p\d+_ms$")
LATEST_FILE = "latest.json"
# The file a day partition writes last: the partition is complete once it exists.
PARTITION_MARKERS = {"staging": "files.json", "accepted": MANIFEST}
# A quarantined day holds one folder per attempt (renamed into place complete; hidden names are
# attempts being written or set aside): complete once it has one.
QUARANTINE = "quarantine"
# What a run decided, as the CLI, the report and the Airflow UI show it.
OUTCOME_KINDS = ("promoted", "rejected", "inconclusive", "not_promoted", "skipped", "quarantined",
                 "fallback_popularity")
_UNSAFE_IN_RUN_KEY = re.compile(r"[^A-Za-z0-9._-]")
_CODE_DIR = Path(__file__).resolve().parents[1]  # the components package


def parse_day(day: str | dt.date) -> dt.date:
    if isinstance(day, dt.date):
        return day
    try:
        return dt.date.fromisoformat(day)
    except ValueError as exc:
        raise ValueError(f"expected a date as YYYY-MM-DD, got {day!r}") from exc


def code_version() -> str:
    """Hash of the library's source: identifies the code without needing git (e.g. in Docker)."""
    digest = hashlib.sha256()
    for path in sorted(_CODE_DIR.rglob("*.py")):
        digest.update(path.relative_to(_CODE_DIR).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def hash_dir(path: Path, exclude: tuple[str, ...] = (MANIFEST,)) -> str:
    """Content hash of a directory's files (names and bytes), manifest excluded."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        if rel in exclude:
            continue
        digest.update(rel.encode() + b"\0")
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:12]


def write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def split_timings(doc: Any) -> tuple[Any, Any]:
    """(``doc`` without its wall-clock keys, those keys in the same nesting or None)."""
    if isinstance(doc, dict):
        kept, timed = {}, {}
        for key, value in doc.items():
            if _WALL_CLOCK.search(key):
                timed[key] = value
            else:
                kept[key], inner = split_timings(value)
                if inner:
                    timed[key] = inner
        return kept, timed or None
    if isinstance(doc, list):
        pairs = [split_timings(value) for value in doc]
        timed = [t for _, t in pairs]
        return [k for k, _ in pairs], timed if any(timed) else None
    return doc, None


def _with_timings(doc: Any, timed: Any) -> Any:
    if timed is None:
        return doc
    if isinstance(doc, dict):
        return {**{k: _with_timings(v, timed.get(k)) for k, v in doc.items()},
                **{k: v for k, v in timed.items() if k not in doc}}
    if isinstance(doc, list):
        return [_with_timings(d, t) for d, t in zip(doc, timed)]
    return timed


def write_measured_json(directory: Path, name: str, payload: Any) -> None:
    """Write ``payload`` as ``directory/name`` and its wall-clock values into ``directory/TIMINGS``
    (under ``name``), which ``Layout.publish`` leaves out of the version hash."""
    kept, timed = split_timings(payload)
    write_json(directory / name, kept)
    if timed:
        path = directory / TIMINGS
        write_json(path, {**(read_json(path) if path.exists() else {}), name: timed})


def read_measured_json(directory: Path, name: str) -> Any:
    """``directory/name`` with its wall-clock values from TIMINGS put back."""
    doc = read_json(Path(directory) / name)
    timings = Path(directory) / TIMINGS
    return _with_timings(doc, read_json(timings).get(name)) if timings.exists() else doc


def atomic_write_bytes(path: Path, data: bytes, before_replace: Callable[[], None] | None = None) -> None:
    """Write to a temporary sibling, fsync, then rename: readers see old or new, never half. The
    temporary file is locked while written (``tidy`` removes only unlocked ones) and removed on failure.
    ``before_replace`` runs between the fsync and the rename (the crash tests' fault points)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}{TMP_SUFFIX}")
    try:
        with tmp.open("wb") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
            if before_replace:
                before_replace()
            os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename is None:
            # A failed write or fsync names no file: name the one being written (a full disk under
            # reports/ read "disk full: <root>", another filesystem than the full one).
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


@contextmanager
def staging_dir(parent: Path) -> Iterator[Path]:
    """A temporary directory on the same filesystem as ``parent`` (so a rename is atomic), locked
    while in use so that ``tidy`` in another process leaves it alone."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=parent))
    fd = os.open(tmp, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield tmp
    finally:
        os.close(fd)
        shutil.rmtree(tmp, ignore_errors=True)


def _set_aside(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}{REPLACED_SUFFIX}")


def restore_replaced(dest: Path) -> bool:
    """Finish a ``replace_dir`` a crash interrupted: put the old directory back where the new one
    never arrived (True), or drop the old one where it did. The day is never left missing."""
    aside = _set_aside(dest)
    if not aside.exists():
        return False
    if dest.exists():
        shutil.rmtree(aside, ignore_errors=True)
        return False
    os.replace(aside, dest)
    log.warning("%s: restored the previous version (a replacement was interrupted between its renames)", dest)
    return True


def replace_dir(src: Path, dest: Path, *, fault_hook: Callable[[str], None] | None = None) -> None:
    """Put directory ``src`` at ``dest``, replacing whatever was there.

    Two renames: the old directory is moved aside under a fixed name first; a crash between them
    leaves ``dest`` absent for a moment only: ``restore_replaced`` (run here, by ``tidy`` at every
    stage's start and by ``Layout.accepted_days``) puts the old one back, so readers find the
    complete old or the complete new directory."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    restore_replaced(dest)
    aside = _set_aside(dest)
    if dest.exists():
        os.replace(dest, aside)
    if fault_hook:
        fault_hook("old_set_aside")
    os.replace(src, dest)
    shutil.rmtree(aside, ignore_errors=True)


def _unused(path: Path) -> bool:
    """True when no process holds the lock of ``path`` (a staging dir or a temporary file)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def tidy(layout: "Layout", started_at: float) -> dict[str, int]:
    """At a task's start: put back directories an interrupted ``replace_dir`` set aside, and remove
    staging directories and temporary files that crashed writers left behind (older than
    ``started_at``, a time.time(), and not locked by a live writer). Returns what it did."""
    done = {"restored": 0, "staging_dirs": 0, "temp_files": 0}
    # The pipeline's own folders only: landing belongs to the producers, and the root may hold
    # other programs' files (the demo's Airflow home is <root>/airflow).
    folders = [layout.root / name for name in PIPELINE_FOLDERS if (layout.root / name).is_dir()]
    for aside in [a for folder in folders for a in folder.rglob(f".*{REPLACED_SUFFIX}")]:
        done["restored"] += restore_replaced(aside.with_name(aside.name[1:].removesuffix(REPLACED_SUFFIX)))
    for pattern, kind in ((f"{STAGING_PREFIX}*", "staging_dirs"), (f".*{TMP_SUFFIX}", "temp_files")):
        for leftover in [p for folder in folders for p in folder.rglob(pattern)]:
            try:
                stale = leftover.lstat().st_mtime < started_at
            except FileNotFoundError:  # inside a staging dir removed a moment ago
                continue
            if stale and _unused(leftover):
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
                done[kind] += 1
    if any(done.values()):
        log.warning("tidy %s: %s", layout.root, done)
    return done


def run_key_for(run_id: str) -> str:
    """A filesystem-safe run key from an Airflow run_id (or any run name)."""
    if not run_id:
        raise ValueError("run key: empty run id")
    return _UNSAFE_IN_RUN_KEY.sub("_", run_id)


def cli_run_key() -> str:
    """The run key of a CLI run: ``cli-<UTC timestamp>`` (microseconds: two runs never collide)."""
    return "cli-" + dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def run_dir(layout: "Layout", day: str, run_key: str) -> Path:
    """reports/<day>/runs/<run_key>/: everything one run of ``day`` reports; never shared by two runs."""
    if run_key != run_key_for(run_key) or run_key in (".", ".."):
        raise ValueError(f"run key {run_key!r} is not filesystem-safe (use run_key_for)")
    return layout.reports(day) / "runs" / run_key


def latest_run(layout: "Layout", day: str) -> dict[str, Any] | None:
    """The day's newest run: ``{"run_key", "dir", "outcome", "reason", "candidate", ...}`` or None."""
    path = layout.reports(day) / LATEST_FILE
    return read_json(path) if path.exists() else None


def read_outcome(layout: "Layout", day: str, run_key: str) -> dict[str, Any] | None:
    path = run_dir(layout, day, run_key) / OUTCOME_FILE
    return read_json(path) if path.exists() else None


def mark_latest(layout: "Layout", day: str, run_key: str) -> dict[str, Any]:
    """Point reports/<day>/latest.json at this run, carrying its outcome when it has one."""
    outcome = read_outcome(layout, day, run_key) or {}
    latest = {"run_key": run_key, "dir": str(run_dir(layout, day, run_key)), "day": day,
              "outcome": outcome.get("kind"), "reason": outcome.get("reason"),
              "candidate": outcome.get("candidate"), "champion_after": outcome.get("champion_after"),
              "updated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    write_json(layout.reports(day) / LATEST_FILE, latest)
    return latest


def record_outcome(layout: "Layout", day: str, run_key: str, kind: str, reason: str, *,
                   candidate: str | None = None, champion_before: str | None = None,
                   champion_after: str | None = None, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the run's decision to runs/<run_key>/outcome.json and point latest.json at the run."""
    if kind not in OUTCOME_KINDS:
        raise ValueError(f"outcome kind must be one of {OUTCOME_KINDS}, got {kind!r}")
    outcome = {"kind": kind, "reason": reason, "day": day, "run_key": run_key, "candidate": candidate,
               "champion_before": champion_before, "champion_after": champion_after, "metrics": metrics or {},
               "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    write_json(run_dir(layout, day, run_key) / OUTCOME_FILE, outcome)
    mark_latest(layout, day, run_key)
    return outcome


def quarantine_attempts(day_dir: Path) -> list[Path]:
    """The complete attempts of a quarantined day (quarantine/date=<day>/<attempt>/), by name."""
    return sorted(p for p in day_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) if day_dir.is_dir() else []


@dataclass(frozen=True)
class ArtifactRef:
    """A published artifact: kind, the date it is for, its content version, and where it lives."""

    kind: str
    day: str
    version: str
    path: str

    @property
    def manifest(self) -> dict[str, Any]:
        return read_json(Path(self.path) / MANIFEST)

    def as_lineage(self) -> dict[str, str]:
        return {"kind": self.kind, "day": self.day, "version": self.version, "path": self.path}

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> "ArtifactRef":
        ref = cls(kind=data["kind"], day=data["day"], version=data["version"], path=data["path"])
        if not (Path(ref.path) / MANIFEST).exists():
            raise FileNotFoundError(f"{ref.kind} artifact {ref.version} of {ref.day}: {ref.path} is not complete")
        return ref


# "scheme:" at the start of a root: a URI, never a relative folder (so "s3:/x" is refused, not created).
_URI_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
# S3's bucket naming rules (3-63 characters, lower case, digits, dots and hyphens).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class RootURIError(ValueError):
    """The artifact root is neither a local folder nor a well-formed ``s3://bucket[/prefix]``."""


@dataclass(frozen=True)
class ObjectRoot:
    """An artifact root on S3-compatible object storage: a bucket and a key prefix."""

    bucket: str
    prefix: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    @property
    def champion_store(self) -> str:
        """Where the registry's champion pointer and history live: the store's own ``registry/``."""
        return f"{self.uri}/registry"

    def cache(self) -> Path:
        """This process's working copy of the prefix: $GRAPHDISTILL_CACHE (else ~/.cache/graphdistill)
        /<bucket>/<prefix>. The same path in every process of a host, so that the paths stages hand on
        (a reference's ``path``) resolve in the next task too."""
        base = Path(os.environ.get("GRAPHDISTILL_CACHE") or Path.home() / ".cache" / "graphdistill")
        return (base.expanduser() / self.bucket / (self.prefix or "_")).resolve()


def object_root(root: str | Path) -> ObjectRoot | None:
    """The object-store root ``root`` names, None for a local folder; raises RootURIError naming what
    is wrong with a URI (an unsupported scheme, ``s3:/x`` missing a slash, a bad bucket name)."""
    text = str(root)
    match = _URI_SCHEME.match(text)
    if match is None:
        return None
    if match.group(1).lower() != "s3":
        raise RootURIError(f"artifact root {text!r}: scheme {match.group(1)!r} is not supported; "
                           f"use a local folder or s3://bucket/prefix")
    if not text.startswith("s3://"):
        raise RootURIError(f"artifact root {text!r} is malformed: expected s3://bucket/prefix")
    bucket, _, prefix = text[len("s3://"):].partition("/")
    if not _BUCKET.match(bucket):
        raise RootURIError(f"artifact root {text!r}: bucket {bucket!r} is not a valid S3 bucket name "
                           f"(3-63 characters: a-z, 0-9, '.', '-')")
    return ObjectRoot(bucket, prefix.strip("/"))


@dataclass(frozen=True)
class Layout:
    root: Path
    # Where the champion pointer and the registry history live: "" = registry/ under root (file lock and
    # rename), "s3://bucket/prefix" = an S3-compatible store (If-Match; components/decide/pointer.py).
    champion_store: str = ""

    @classmethod
    def at(cls, root: str | Path, champion_store: str = "") -> "Layout":
        """The layout of a local folder, or of an ``s3://`` root's local working copy (hydrated and
        published by ``components.core.remote.session``, the boundary every stage runs inside). An
        ``s3://`` root's champion pointer is the store's own ``registry/`` (never the copy's): every
        process decides and reads on the store, whatever its copy holds."""
        remote = object_root(root)
        if remote is not None:
            return cls(remote.cache(), champion_store or remote.champion_store)
        return cls(Path(root).expanduser().resolve(), champion_store)

    def landing(self, day: str) -> Path:
        return self.root / "landing" / f"date={day}"

    def staging(self, day: str) -> Path:
        return self.root / "staging" / f"date={day}"

    def accepted(self, day: str) -> Path:
        return self.root / "accepted" / f"date={day}"

    def quarantine(self, day: str) -> Path:
        return self.root / "quarantine" / f"date={day}"

    def features(self) -> Path:
        return self.root / "features"

    def registry(self) -> Path:
        return self.root / "registry"

    def reports(self, day: str) -> Path:
        return self.root / "reports" / day

    def artifacts(self, kind: str) -> Path:
        """Versioned artifact family, e.g. ``graphs`` or ``models/teacher``."""
        return self.root / kind

    def accepted_days(self) -> list[str]:
        """Days with a complete accepted partition; a day whose re-validation was interrupted
        between its two renames is put back first, so it never drops out of a training window."""
        base = self.root / "accepted"
        if not base.exists():
            return []
        for aside in base.glob(f".date=*{REPLACED_SUFFIX}"):
            restore_replaced(base / aside.name[1:].removesuffix(REPLACED_SUFFIX))
        return sorted(p.name.split("=", 1)[1] for p in base.glob("date=*") if (p / MANIFEST).exists())

    # --- versioned artifacts -------------------------------------------------------------

    def publish(
        self,
        kind: str,
        day: str,
        build_dir: Path,
        manifest: dict[str, Any],
        version: str | None = None,
    ) -> ArtifactRef:
        """Publish ``build_dir`` as an immutable version of ``kind`` for ``day``.

        The version is the content hash of the files (TIMINGS excluded: wall-clock values
        differ run to run); publishing identical content again is a no-op. The day's CURRENT pointer is then moved to this version atomically. Pass
        ``version`` when a file's bytes are not deterministic (e.g. DGL's graph.bin): it must then
        be a hash of the artifact's canonical content.
        """
        version = version or hash_dir(build_dir, exclude=(MANIFEST, TIMINGS))
        day_dir = self.artifacts(kind) / day
        final = day_dir / version
        full_manifest = {
            "kind": kind,
            "day": day,
            "version": version,
            "code_version": code_version(),
            **manifest,
        }
        if not (final / MANIFEST).exists():
            write_json(build_dir / MANIFEST, full_manifest)
            day_dir.mkdir(parents=True, exist_ok=True)
            if final.exists():  # a crashed publish left a partial dir without manifest
                shutil.rmtree(final)
            os.replace(build_dir, final)
        atomic_write_bytes(day_dir / CURRENT, version.encode())
        return ArtifactRef(kind=kind, day=day, version=version, path=str(final))

    def current(self, kind: str, day: str) -> ArtifactRef | None:
        pointer = self.artifacts(kind) / day / CURRENT
        if not pointer.exists():
            return None
        version = pointer.read_text().strip()
        path = self.artifacts(kind) / day / version
        if not (path / MANIFEST).exists():
            return None
        return ArtifactRef(kind=kind, day=day, version=version, path=str(path))

    def built_from(self, kind: str, day: str, inputs: Any, config_hash: str) -> ArtifactRef | None:
        """The day's current ``kind`` artifact if it was built from exactly ``inputs`` (its manifest's
        lineage) with ``config_hash``: an idempotent re-run reuses it instead of publishing a fork."""
        ref = self.current(kind, day)
        if ref is None:
            return None
        manifest = ref.manifest
        return ref if manifest.get("inputs") == inputs and manifest.get("config_hash") == config_hash else None

    def artifact(self, ref: Any) -> ArtifactRef:
        """The published artifact a typed reference (components/core/refs.py) names, located from its
        kind, day and version under this root: the one place where a reference becomes a location.
        Raises when it is missing or incomplete."""
        path = self.artifacts(ref.kind) / ref.day / ref.version
        if not (path / MANIFEST).exists():
            raise FileNotFoundError(f"{ref.kind} {ref.day} v{ref.version}: {path} is missing or incomplete "
                                    f"(no {MANIFEST})")
        return ArtifactRef(kind=ref.kind, day=ref.day, version=ref.version, path=str(path))

    def current_ref(self, ref_type: type[R], day: str) -> R | None:
        """The day's current version as a ``ref_type`` reference: what the CLI runs a stage on when no
        reference is named (and says so); stages take theirs as arguments."""
        found = self.current(ref_type.KIND, day)
        return None if found is None else ref_type(day=found.day, version=found.version, path=found.path)

    # --- day partitions (staging, accepted): replaced per day, versioned by their content -----------

    def partition_version(self, kind: str, day: str) -> str | None:
        """Content hash of the day's ``kind`` partition (``staging``, ``accepted`` or ``quarantine``), None
        while it is absent or incomplete (no PARTITION_MARKERS file; a quarantined day: no attempt)."""
        path = self.root / kind / f"date={day}"
        if kind == QUARANTINE:
            attempts = quarantine_attempts(path)
            digest = hashlib.sha256()
            for attempt in attempts:
                digest.update(f"{attempt.name}:{hash_dir(attempt, exclude=())}\0".encode())
            return digest.hexdigest()[:12] if attempts else None
        if kind == "accepted":
            restore_replaced(path)  # a re-validation interrupted between its renames
        return hash_dir(path) if (path / PARTITION_MARKERS[kind]).exists() else None

    def partition(self, ref: Any) -> Path:
        """The partition a data-plane reference (DayRef, AcceptedRef, QuarantinedRef) names; raises when it
        is missing or now holds other content (re-ingested, re-validated or quarantined again since the
        reference was made)."""
        path = self.root / ref.kind / f"date={ref.day}"
        found = self.partition_version(ref.kind, ref.day)
        if found != ref.version:
            raise StaleReference(f"{ref.kind} {ref.day} v{ref.version}: {path} "
                                 + ("is missing or incomplete" if found is None else f"now holds v{found}")
                                 + ": clear the task that made the reference (catalog_inputs or the upstream stage) "
                                   "with its downstream tasks, or re-run the stage from the CLI, to run on the "
                                   "days as they are now")
        return path

    def locate(self, ref: Any) -> str:
        """Where a typed reference's content lives under this root: its day partition (staging,
        accepted) or its versioned artifact; raises when missing, incomplete or changed."""
        return str(self.partition(ref)) if ref.kind in (*PARTITION_MARKERS, QUARANTINE) else self.artifact(ref).path

    def partition_refs(self, ref_type: type[R], first: str, last: str) -> list[R]:
        """References to the complete ``ref_type`` partitions of the days ``first``..``last`` (inclusive),
        oldest first: a rolling window, resolved once by the caller and handed to the stage."""
        base = self.root / ref_type.KIND
        days = (self.accepted_days() if ref_type.KIND == "accepted"  # puts back a day set aside mid-replace
                else sorted(p.name.split("=", 1)[1] for p in base.glob("date=*")))
        found = [(d, self.partition_version(ref_type.KIND, d)) for d in days if first <= d <= last]
        return [ref_type(day=d, version=v, path=str(base / f"date={d}")) for d, v in found if v is not None]

    def latest_before(self, kind: str, day: str) -> ArtifactRef | None:
        """The current version of the newest day strictly before ``day`` (warm starts, ID maps)."""
        base = self.artifacts(kind)
        if not base.exists():
            return None
        for candidate in sorted((p.name for p in base.iterdir() if p.is_dir()), reverse=True):
            if candidate < day:
                ref = self.current(kind, candidate)
                if ref is not None:
                    return ref
        return None
