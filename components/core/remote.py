"""The artifact root on S3-compatible object storage (``GRAPHDISTILL_ROOT=s3://bucket/prefix``).

The store is the system of record; each process works in a local copy of the prefix (the catalog's
``ObjectRoot.cache``), so stage code reads and writes files exactly as on a local root. The boundary
is ``session(root)``: the pipeline's ``run_stage`` (the DAG's tasks and ``graphdistill run``), the
CLI's other commands and the Airflow plugin's pages run inside one:

- **hydrate** (on entry): one listing of the prefix; every object new or changed since this copy last
  saw it (its ETag) is downloaded and checked against that ETag (MD5). An immutable artifact
  (``<kind>/<day>/<version>/``, ``registry/versions/<version>/``) whose manifest is not in the store
  is half-published (a writer died mid-upload) and is not downloaded: readers never see it.
- **publish** (on exit, after a failed stage too: a quarantine report is a result): every file the
  session wrote, in this order: immutable artifacts' files create-only (``If-None-Match: *``) with
  each manifest LAST; then mutable records (outcomes, reports, accepted partitions), each
  directory's manifest and the ``CURRENT``/``latest.json`` pointers last.

The champion pointer and the registry history are not in the copy: ``Layout.at`` of an ``s3://`` root
points the registry's pointer backend at the store's ``registry/`` (components/decide/pointer.py's
``ObjectPointer``: an If-Match swap of ``registry/champion.json``, re-decided from a fresh read on a lost
race, and create-only ``registry/history/`` objects), and readers read it there (components/core/
champion.py). Hydrate and publish leave those keys alone. A pointer must never name a version the store
lacks, so the registry calls ``publish_artifacts`` before every decision: the session's complete
immutable artifacts (a version registered in this session) are in the store before the swap; and
``fetch_versions`` when the pointer names a version this copy was hydrated without. A reader outside a
decision meets the same race (its copy hydrated, then another process promoted): ``champion_in``
resolves the pointer through ``fetch_version``, which downloads the named version on a miss.

One session at a time per working copy (an exclusive lock on it): two workers on one host take turns;
give them separate ``GRAPHDISTILL_CACHE`` folders to run side by side. Sessions nest within a process
(the CLI's command around ``run_stage``): only the outermost hydrates and publishes. Landing partitions
are hydrated one day at a time, for the ingest of that day (``landing_day``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.core.catalog import (CHAMPION_FILE, CURRENT, HISTORY_FILE, HISTORY_OBJECTS, LATEST_FILE, MANIFEST, Layout,
                                     ObjectRoot, atomic_write_bytes, object_root)
from components.core.objectstore import ObjectExists, ObjectStore, ObjectStoreError

log = logging.getLogger(__name__)

SYNC_DIR = ".sync"  # the copy's own bookkeeping: the ETag index, the lock
INDEX_FILE = "index.json"
# The champion pointer's keys: read and written on the store only (module doc), never copied.
POINTER_KEYS = (f"registry/{CHAMPION_FILE}", f"registry/{HISTORY_OBJECTS}", f"registry/{HISTORY_FILE}")
LANDING_PREFIX = "landing/"
VERSIONS_PREFIX = "registry/versions/"
# A published, immutable artifact: Layout.publish's <kind>/<day>/<version>/ and the registry's versions.
_IMMUTABLE = re.compile(r"^(?P<artifact>(?:graphs|models/[^/]+|exports|engines)/\d{4}-\d{2}-\d{2}/[^/]+"
                        r"|registry/versions/[^/]+)/(?P<file>.+)$")
_POINTERS = (CURRENT, LATEST_FILE)
FaultHook = Callable[[str], None]


class RootUnavailable(ValueError):
    """The object-store root cannot be used (no credentials, store down, bucket missing): names the
    root, the endpoint and what to do. A ValueError: the CLI exits 2 with this one line."""


def _artifact(name: str) -> str | None:
    match = _IMMUTABLE.match(name)
    return match.group("artifact") if match else None


def _pointer(name: str) -> bool:
    return name.startswith(POINTER_KEYS)


def _md5_etag(body: bytes) -> str:
    return f'"{hashlib.md5(body).hexdigest()}"'


def connect(root: ObjectRoot) -> ObjectStore:
    """The store behind ``root`` (boto3's standard environment: AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID,
    ...), checked once: raises RootUnavailable naming the problem instead of a boto3 traceback."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, NoCredentialsError, PartialCredentialsError

    # A new boto3 session each time: the default one caches the credentials it resolved first, so a
    # long-lived worker would never see rotated (or removed) credentials.
    client = boto3.session.Session().client("s3", config=Config(retries={"max_attempts": 2}, connect_timeout=3,
                                                                read_timeout=60))
    endpoint = client.meta.endpoint_url
    try:
        return ObjectStore(root.bucket, root.prefix, client)
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise RootUnavailable(f"artifact root {root.uri}: no credentials for the object store at {endpoint} "
                              f"({exc}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)") from exc
    except BotoCoreError as exc:  # connection refused, DNS, timeouts
        raise RootUnavailable(f"artifact root {root.uri}: the object store at {endpoint} is not reachable "
                              f"({type(exc).__name__}: {exc}); start it or fix AWS_ENDPOINT_URL_S3") from exc
    except ObjectStoreError as exc:  # head_bucket: 404 (no such bucket), 403 (credentials refused)
        hint = {"(HTTP 404)": f"bucket {root.bucket!r} does not exist at {endpoint} (HTTP 404): create it or fix "
                              f"the URI",
                "(HTTP 403)": f"the object store at {endpoint} refused the credentials (HTTP 403): check "
                              f"AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"}
        found = next((text for status, text in hint.items() if status in str(exc)), str(exc))
        raise RootUnavailable(f"artifact root {root.uri}: {found}") from exc


@dataclass
class WorkingCopy:
    """A local copy of an object-store root: ``hydrate`` brings it up to the store, ``publish`` sends
    what was written since. ``index``: object name -> the ETag, size and mtime it was last synced at."""

    root: ObjectRoot
    store: ObjectStore
    path: Path
    index: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def _meta(self) -> Path:
        return self.path / SYNC_DIR

    def _load_index(self) -> None:
        path = self._meta / INDEX_FILE
        doc = json.loads(path.read_text()) if path.exists() else {}
        self.index = {name: known for name, known in doc.get("objects", {}).items() if not _pointer(name)}

    def _save_index(self) -> None:
        atomic_write_bytes(self._meta / INDEX_FILE, json.dumps(
            {"root": self.root.uri, "objects": self.index}).encode())

    def _remember(self, name: str, local: Path, etag: str) -> None:
        stat = local.stat()
        self.index[name] = {"etag": etag, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    def _local(self, name: str) -> Path:
        return self.path / name

    def hydrate(self, prefix: str = "") -> dict[str, int]:
        """Download what changed in the store under ``prefix`` (landing excluded unless asked for)."""
        self._load_index()
        listed = self.store.entries(prefix)
        complete = {a for name in listed if (a := _artifact(name)) and name == f"{a}/{MANIFEST}"}
        done = {"downloaded": 0, "bytes": 0, "half_published": 0}
        wanted = []
        for name, entry in listed.items():
            if (name.startswith(LANDING_PREFIX) and not prefix.startswith(LANDING_PREFIX)) or _pointer(name):
                continue
            artifact = _artifact(name)
            if artifact and artifact not in complete:
                done["half_published"] += 1
                continue
            known = self.index.get(name)
            if known and known["etag"] == entry.etag and self._local(name).exists():
                continue
            wanted.append(name)
        # Manifests last: a local reader in another session never sees a manifest before its files.
        for name in sorted(wanted, key=lambda n: n.endswith(MANIFEST)):
            got = self.store.read(name)
            if got is None:  # deleted between the listing and the read
                continue
            if "-" not in got.etag and _md5_etag(got.body) != got.etag:
                raise ObjectStoreError(f"{self.root.uri}/{name}: downloaded bytes do not match the store's ETag "
                                       f"{got.etag} (got {_md5_etag(got.body)})")
            local = self._local(name)
            atomic_write_bytes(local, got.body)
            self._remember(name, local, got.etag)
            done["downloaded"] += 1
            done["bytes"] += len(got.body)
        if not prefix:
            # A copy made before the pointer lived on the store only: its champion.json and history
            # would be a stale second answer to "who is champion".
            for name in (f"registry/{CHAMPION_FILE}", f"registry/{HISTORY_FILE}"):
                self._local(name).unlink(missing_ok=True)
        self._save_index()
        if done["downloaded"] or done["half_published"]:
            log.info("hydrate %s -> %s: %s", self.root.uri, self.path, done)
        return done

    def _changed(self) -> list[str]:
        out = []
        for local in self.path.rglob("*"):
            rel = local.relative_to(self.path)
            if any(part.startswith(".") for part in rel.parts) or not local.is_file():
                continue  # temporary files, staging dirs, locks, this copy's bookkeeping
            name = rel.as_posix()
            if _pointer(name):
                continue
            stat, known = local.stat(), self.index.get(name)
            if not known or (known["size"], known["mtime_ns"]) != (stat.st_size, stat.st_mtime_ns):
                out.append(name)
        return sorted(out)

    def publish(self, fault_hook: FaultHook | None = None) -> dict[str, int]:
        """Upload what this copy wrote since it was last synced (order and conditions: module doc)."""
        changed = self._changed()
        done = {"created": 0, "existed": 0, "put": 0, "bytes": 0}
        self._create_artifacts([n for n in changed if _artifact(n)], done, fault_hook)
        mutable = [n for n in changed if not _artifact(n)]
        # Within mutable records: each folder's manifest, then the pointers, last.
        for name in sorted(mutable, key=lambda n: (n.rsplit("/", 1)[-1] in _POINTERS, n.endswith(MANIFEST))):
            if fault_hook:
                fault_hook(name)
            body = self._local(name).read_bytes()
            self._remember(name, self._local(name), self.store.put(name, body))
            done["put"] += 1
            done["bytes"] += len(body)
        self._save_index()
        if any(done.values()):
            log.info("publish %s -> %s: %s", self.path, self.root.uri, done)
        return done

    def publish_artifacts(self, fault_hook: FaultHook | None = None) -> dict[str, int]:
        """Upload the complete immutable artifacts written since the last sync, now (create-only,
        manifests last): what the registry needs in the store before its pointer may name a version."""
        done = {"created": 0, "existed": 0, "bytes": 0}
        self._create_artifacts([n for n in self._changed() if _artifact(n)], done, fault_hook)
        self._save_index()
        if any(done.values()):
            log.info("publish artifacts %s -> %s: %s", self.path, self.root.uri, done)
        return done

    def _create_artifacts(self, names: list[str], done: dict[str, int], fault_hook: FaultHook | None) -> None:
        # Each artifact's manifest after all artifacts' files: a reader that finds a manifest finds its files.
        for name in sorted(names, key=lambda n: n.endswith(f"/{MANIFEST}")):
            if fault_hook:
                fault_hook(name)
            body = self._local(name).read_bytes()
            try:
                etag = self.store.create(name, body)
                done["created"] += 1
                done["bytes"] += len(body)
            except ObjectExists:  # same version published by another process: versions are content hashes
                etag = self.store.read(name).etag
                done["existed"] += 1
            self._remember(name, self._local(name), etag)

    @contextmanager
    def locked(self) -> Iterator[None]:
        self._meta.mkdir(parents=True, exist_ok=True)
        with (self._meta / "lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield


# Per thread: the plugin's pages run in threads of one process, each with its own session (the
# copy's lock serializes them).
_ACTIVE = threading.local()

@contextmanager
def session(root: str | Path, *, landing_day: str | None = None, publish: bool = True,
            fault_hook: FaultHook | None = None) -> Iterator[Layout]:
    """The layout of ``root`` for the duration of one unit of work: a local folder as is; an ``s3://``
    root hydrated on entry and published on exit (``publish=False``: a reader, e.g. a UI page).
    ``landing_day``: also hydrate that day's landing partition (the ingest stage)."""
    remote = object_root(root)
    if remote is None:
        yield Layout.at(root)
        return
    sessions = _ACTIVE.__dict__.setdefault("by_uri", {})
    active = sessions.get(remote.uri)
    if active is not None:  # nested: the outer session hydrated and will publish
        if landing_day:
            active.hydrate(f"{LANDING_PREFIX}date={landing_day}/")
        yield Layout(active.path, remote.champion_store)
        return
    copy = WorkingCopy(remote, connect(remote), remote.cache())
    with copy.locked():
        sessions[remote.uri] = copy
        try:
            copy.hydrate()
            if landing_day:
                copy.hydrate(f"{LANDING_PREFIX}date={landing_day}/")
            try:
                yield Layout(copy.path, remote.champion_store)
            finally:
                if publish:
                    copy.publish(fault_hook)
        finally:
            del sessions[remote.uri]


def publish_artifacts(layout: Layout) -> dict[str, int]:
    """Publish now the complete immutable artifacts this thread's session on ``layout`` wrote (the
    registry calls it before each decision, so a pointer never names a version the store lacks);
    nothing for a local root or outside a session."""
    copy = _session_copy(layout)
    return copy.publish_artifacts() if copy is not None else {}


def _session_copy(layout: Layout) -> WorkingCopy | None:
    return next((c for c in _ACTIVE.__dict__.get("by_uri", {}).values() if c.path == layout.root), None)


def fetch_versions(layout: Layout) -> dict[str, int]:
    """Bring the store's registry versions into this thread's session copy of ``layout`` now (the
    registry, when the store's pointer names a version the copy was hydrated without); nothing for a
    local root or outside a session."""
    copy = _session_copy(layout)
    return copy.hydrate(VERSIONS_PREFIX) if copy is not None else {}


def fetch_version(layout: Layout, version: str) -> bool:
    """Make registry version ``version`` complete in the working copy behind ``layout``: a reader (serving,
    the CLI, the plugin) whose copy was hydrated before another process promoted it downloads it from
    the store now, as ``hydrate`` does (published versions only: manifest in the store; ETag-checked;
    manifest last). Inside this thread's session on the copy it uses that session; outside, it takes
    the copy's lock. True when the copy holds the version complete afterwards; a layout that is not an
    ``s3://`` root's copy is only looked at."""
    local = layout.registry() / "versions" / version
    if (local / MANIFEST).exists():
        return True
    copy = _session_copy(layout)
    if copy is not None:
        copy.hydrate(f"{VERSIONS_PREFIX}{version}/")
    elif (remote := _copy_of(layout)) is not None:
        copy = WorkingCopy(remote, connect(remote), layout.root)
        with copy.locked():
            copy.hydrate(f"{VERSIONS_PREFIX}{version}/")
    if (local / MANIFEST).exists():
        log.info("fetched registry version %s into %s (promoted after this copy was hydrated)", version, layout.root)
        return True
    if copy is not None:
        log.warning("the champion pointer %s names version %s, which is not published in %s (no %s%s/%s)",
                    layout.champion_store, version, copy.root.uri, VERSIONS_PREFIX, version, MANIFEST)
    return False


def _copy_of(layout: Layout) -> ObjectRoot | None:
    """The ``s3://`` root whose working copy ``layout.root`` is (its index names the root it was
    hydrated from, whatever $GRAPHDISTILL_CACHE says now), None for any other layout."""
    index = layout.root / SYNC_DIR / INDEX_FILE
    if not (layout.champion_store and index.exists()):
        return None
    uri = json.loads(index.read_text()).get("root")
    remote = object_root(uri) if uri else None
    return remote if remote is not None and remote.champion_store == layout.champion_store else None


def hydrated(root: str | Path) -> Layout:
    """The layout of ``root`` brought up to date with the store, for a reader that writes nothing
    (the Airflow plugin's pages, the outcome task): a session that publishes nothing."""
    with session(root, publish=False) as layout:
        return layout
