"""Ingest stage: a day's landing files -> one normalized staging table awaiting validation.

Every input row is kept with its lineage (``source_file``, ``source_row``: 1-based data row in that
file), so a validation failure can name the file and row, and every row ends in accepted or in
quarantine. Columns are coerced to the contract's types (README "Interaction-log contract";
components/data/coercion.py); a value that cannot be coerced becomes null, and every value the
coercion judged (a null token, an unparsable or inconsistent timestamp, an id that does not fit its
declared type) is recorded in ``issues.parquet`` with its file, row, raw value and cause, for the
validate stage's rules.

Every entry under the partition is accounted for in ``files.json``: read (with rows, hash, or the
error that stopped it, permission denied included) or skipped with its reason. A file or folder
that cannot be read is recorded rather than raised, so validate quarantines the day with a report.

Each file is read in chunks of ``validation.landing_chunk_rows`` rows (components/data/landed.py),
never whole: what a rule decides on the whole file (a column's kind, the file's timestamp form) is
gathered chunk by chunk and decided at the end, so the staged bytes do not depend on the chunk size.

Idempotent: staging for a day is rebuilt from the landing files and replaced atomically.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from components.core.config import PipelineConfig, ValidationConfig
from components.core.errors import LandingMissing
from components.core.catalog import Layout, replace_dir, staging_dir, write_json
from components.data import landed
from components.data.coercion import (
    ID_COLUMNS,
    ISSUE_COLUMNS,
    NOT_NULL_RULE,
    NULL_TOKEN_CAUSE,
    REQUIRED_COLUMNS,
    KindFacts,
    ValueIssues,
    judge_forms,
    normalize_ids,
    timestamp_forms,
    ts_text,
)

log = logging.getLogger(__name__)

LINEAGE_COLUMNS = ("source_file", "source_row")
# Unknown columns (schema drift) are kept in staging under this prefix, as text, so they can never
# collide with the contract's or the validator's own columns; acceptance keeps them in a sidecar.
EXTRA_PREFIX = "extra."
# Hadoop/Spark job markers: expected beside the data, skipped without a warning.
MARKER_NAMES = re.compile(r"_(SUCCESS|FAILURE|SUCCESS\.crc|committed_.*|started_.*|temporary|metadata|common_metadata)")


@dataclass(frozen=True)
class SourceFile:
    name: str  # path relative to the partition (subfolders included)
    bytes: int
    sha256: str | None  # None when the bytes could not be read
    rows: int | None  # None when unreadable
    error: str | None
    missing_columns: tuple[str, ...] = ()
    extra_columns: tuple[str, ...] = ()
    column_kinds: dict[str, str] | None = None  # contract column -> kind seen in this file
    ts_form: str | None = None  # how this file writes time: epoch-<unit>, iso-offset, iso-naive, timestamp


@dataclass(frozen=True)
class SkippedEntry:
    name: str  # path relative to the partition
    reason: str  # symlink, hidden, marker, underscore-prefixed, not a regular file
    bytes: int | None = None


@dataclass(frozen=True)
class IngestResult:
    """The staged day (a ``DayRef``: day, version, path) and what ingest read to stage it."""

    day: str
    version: str  # content hash of the staging partition (Layout.partition_version)
    path: str  # staging/date=<day>/
    rows: int
    files: tuple[SourceFile, ...]
    skipped: tuple[SkippedEntry, ...] = ()
    issues: int = 0

    @property
    def unreadable(self) -> tuple[SourceFile, ...]:
        return tuple(f for f in self.files if f.error)


# --- a file's rows in the contract's types -----------------------------------------------------


def convert(frame: pd.DataFrame, source_file: str, v: ValidationConfig, first_row: int = 0
            ) -> tuple[pd.DataFrame, np.ndarray | None, ValueIssues]:
    """One chunk of a file (its data rows ``first_row`` + 1 on) -> the contract's types with lineage
    columns. Unknown columns are kept as text under ``EXTRA_PREFIX`` (schema drift is reported by the
    validator, never dropped). Returns (rows, each row's ``ts`` form code or None, value issues but
    the file-level ``ts_consistent_form``, which ``judge_forms`` decides on the whole file)."""
    frame = frame.reset_index(drop=True)
    issues = ValueIssues(first_row=first_row)
    out = pd.DataFrame(index=frame.index)
    for column in (*ID_COLUMNS, "event_type"):
        if column in frame.columns:
            out[column] = normalize_ids(frame[column], column, v.id_types.get(column), tuple(v.null_tokens), issues)
    codes = None
    if "ts" in frame.columns:
        ts = frame["ts"]
        if ts.dtype == object:  # null tokens in a text column are missing values, said so
            token = ts.astype("string").str.strip().isin(v.null_tokens).fillna(False).astype(bool)
            if token.any():
                idx = np.flatnonzero(token.to_numpy())
                issues.add(NOT_NULL_RULE, "ts", idx, ts.iloc[idx], NULL_TOKEN_CAUSE)
                ts = ts.mask(token)
        out["ts"], codes = timestamp_forms(ts, v.epoch_unit, issues)
    for column in frame.columns:
        if column not in REQUIRED_COLUMNS:
            values = frame[column]
            out[f"{EXTRA_PREFIX}{column}"] = values.where(values.notna(), None).astype("string")
    out["source_file"] = source_file
    out["source_row"] = pd.RangeIndex(first_row + 1, first_row + len(frame) + 1, dtype="int64")
    return out, codes, issues


def normalize(frame: pd.DataFrame, source_file: str, cfg: PipelineConfig | None = None) -> tuple[pd.DataFrame, str | None, pd.DataFrame]:
    """A whole file in one frame: ``convert`` and ``judge_forms``.

    Returns (rows, the file's timestamp form, the file's value issues)."""
    rows, codes, issues = convert(frame, source_file, (cfg or PipelineConfig()).validation)
    ts_form = None if "ts" not in frame.columns else "timestamp" if codes is None else \
        judge_forms(codes, lambda idx: ts_text(frame["ts"]).iloc[idx], issues)
    return rows, ts_form, issues.table(source_file)


# --- the partition's entries -------------------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    files: tuple[str, ...]  # full paths of the files to read, sorted
    skipped: tuple[SkippedEntry, ...]
    errors: tuple[tuple[str, str], ...]  # (relative folder, error) of folders that could not be listed


def _skip_reason(entry: dict, base: str) -> str | None:
    if entry.get("islink"):
        return "symlink (its target may lie outside the partition and change under a hashed day)"
    if base.startswith("."):
        return "hidden"
    if MARKER_NAMES.fullmatch(base):
        return "marker"
    if base.startswith("_"):
        return "underscore-prefixed (Hadoop/Spark metadata convention)"
    if entry["type"] not in ("file", "directory"):
        return f"not a regular file ({entry['type']})"
    return None


def list_landing(landing: str) -> Listing:
    """Every entry under a partition (local path or fsspec URI): files to read, in subfolders too,
    and what is skipped with its reason (README "Interaction-log contract")."""
    fs, root = fsspec.core.url_to_fs(landing)
    root = root.rstrip("/")
    if not fs.exists(root):
        return Listing((), (), ())
    files, skipped, errors, folders = [], [], [], [root]
    while folders:  # one iteration per folder
        folder = folders.pop()
        relative_folder = folder[len(root):].lstrip("/")
        try:
            entries = fs.ls(folder, detail=True)
        except OSError as exc:  # permission denied: the day is quarantined with this error
            errors.append((relative_folder + "/" if relative_folder else "./", f"{type(exc).__name__}: {exc}"))
            continue
        for entry in entries:
            name = entry["name"].rstrip("/")
            relative = name[len(root):].lstrip("/")
            reason = _skip_reason(entry, PurePosixPath(name).name)
            if reason:
                skipped.append(SkippedEntry(relative + ("/" if entry["type"] == "directory" else ""), reason,
                                            entry.get("size") if entry["type"] == "file" else None))
            elif entry["type"] == "directory":
                folders.append(name)
            else:
                files.append(name)
    return Listing(tuple(sorted(files)), tuple(sorted(skipped, key=lambda s: s.name)), tuple(sorted(errors)))


def run_ingest(layout: Layout, day: str, cfg: PipelineConfig, landing: str | None = None) -> IngestResult:
    """Read every landing file of ``day`` into ``staging/date=day`` (rows.parquet, issues.parquet, files.json)."""
    landing = landing or str(layout.landing(day))
    listing = list_landing(landing)
    if not listing.files and not listing.errors:
        skipped = "; ".join(f"{s.name} ({s.reason})" for s in listing.skipped)
        raise LandingMissing(f"no landing files for {day} under {landing}" + (f"; skipped: {skipped}" if skipped else "")
                             + f": the day has not landed. Land it, then clear this run's ingest task (airflow tasks "
                             f"clear gnn_recsys_nightly -t ingest -s {day} -e {day}) or run `graphdistill run ingest "
                             f"--day {day}`")
    fs, root = fsspec.core.url_to_fs(landing)
    root = root.rstrip("/")
    with staging_dir(layout.root / "staging") as tmp:
        files, issues, staged = _stage_files(fs, root, listing, cfg, tmp)
        issues.to_parquet(tmp / "issues.parquet", index=False)
        write_json(tmp / "files.json", {"day": day, "landing": landing, "files": [f.__dict__ for f in files],
                                        "skipped": [s.__dict__ for s in listing.skipped]})
        replace_dir(tmp, layout.staging(day))
    log.info("ingest %s: %d entries seen, %d files read (%d unreadable), %d skipped; %d rows staged, %d value issues",
             day, len(files) + len(listing.skipped), len(files), sum(1 for f in files if f.error),
             len(listing.skipped), staged, len(issues))
    return IngestResult(day, layout.partition_version("staging", day), str(layout.staging(day)), staged,
                        tuple(files), listing.skipped, len(issues))


def _stage_files(fs: Any, root: str, listing: Listing, cfg: PipelineConfig, tmp: Path
                 ) -> tuple[list[SourceFile], pd.DataFrame, int]:
    """Read and normalize each file, a chunk at a time, into ``tmp/rows.parquet`` (memory: a chunk of
    ``validation.landing_chunk_rows`` rows, never a whole file). Returns (files, value issues, rows staged)."""
    parts = tmp / "parts"
    parts.mkdir()
    found, files = [], [SourceFile(name, 0, None, None, error) for name, error in listing.errors]
    for path in listing.files:  # one iteration per file, not per row
        short = path[len(root):].lstrip("/")
        try:
            read = landed.digest(fs, path)
        except OSError as exc:  # permission denied and the like: recorded, the day goes to quarantine
            files.append(SourceFile(short, int(fs.size(path) or 0), None, None, f"{type(exc).__name__}: {exc}"))
            log.warning("landing file %s unreadable: %s", path, exc)
            continue
        part = parts / f"{len(found):06d}.parquet"
        try:
            source, issues = _stage_file(fs, path, short, read, cfg, part)
        except Exception as exc:  # any parser failure: record it, the day goes to quarantine
            part.unlink(missing_ok=True)
            files.append(SourceFile(short, read.bytes, read.sha256, None, f"{type(exc).__name__}: {exc}"))
            log.warning("landing file %s unreadable: %s", path, exc)
            continue
        files.append(source)
        found.append(issues)
    staged = merge_parts(sorted(parts.iterdir()), tmp / "rows.parquet", cfg.validation.chunk_rows)
    shutil.rmtree(parts)
    issues = pd.concat(found, ignore_index=True) if found else pd.DataFrame(columns=list(ISSUE_COLUMNS))
    issues = issues.astype({"source_row": "int64", **{c: "string" for c in ISSUE_COLUMNS if c != "source_row"}})
    return files, issues, staged


def _stage_file(fs: Any, path: str, short: str, read: landed.Digest, cfg: PipelineConfig, part: Path
                ) -> tuple[SourceFile, pd.DataFrame]:
    """One landed file in chunks of ``validation.landing_chunk_rows`` rows: ``landed.survey`` finds the
    whole file's dtypes, then each chunk is converted and appended to ``part``; what is decided on the
    whole file (column kinds, the timestamp form) is gathered chunk by chunk and decided at the end.
    Same file, same bytes in ``part`` and the same issues, whatever the chunk size."""
    v = cfg.validation
    surveyed = landed.survey(fs, path, short, v.landing_chunk_rows, read.blank)

    def chunks() -> Iterator[pd.DataFrame]:
        return landed.chunks(fs, path, short, v.landing_chunk_rows, surveyed, read.blank)

    facts: dict[str, KindFacts] = {}  # per contract column, over the chunks read so far
    issues, codes, columns, rows = ValueIssues(), [], None, 0
    writer = None
    try:
        for chunk in chunks():
            columns = list(chunk.columns) if columns is None else columns
            for column in REQUIRED_COLUMNS:
                if column in chunk.columns:
                    found = KindFacts.of(chunk[column])
                    facts[column] = facts[column].merge(found) if column in facts else found
            converted, chunk_codes, chunk_issues = convert(chunk, short, v, first_row=rows)
            issues.frames += chunk_issues.frames
            codes += [] if chunk_codes is None else [chunk_codes]
            table = pa.Table.from_pandas(converted, preserve_index=False)
            writer = writer or pq.ParquetWriter(part, table.schema)
            if len(table):
                writer.write_table(table.cast(writer.schema))
            rows += len(converted)
    finally:
        if writer is not None:
            writer.close()
    columns = columns or []
    ts_form = None
    if "ts" in columns:  # a column typed as timestamps has no per-value forms
        ts_form = judge_forms(np.concatenate(codes), lambda idx: _ts_texts(chunks(), idx), issues) if codes else "timestamp"
    kinds = {c: facts[c].kind for c in REQUIRED_COLUMNS if c in columns}
    source = SourceFile(short, read.bytes, read.sha256, rows, None, tuple(c for c in REQUIRED_COLUMNS if c not in columns),
                        tuple(str(c) for c in columns if c not in REQUIRED_COLUMNS), kinds, ts_form)
    return source, issues.table(short)


def _ts_texts(chunks: Iterator[pd.DataFrame], rows: np.ndarray) -> pd.Series:
    """``ts_text`` of the given rows (positions in the file, sorted), read again a chunk at a time: only
    a file with timestamps in more than one form needs it."""
    texts, start = [], 0
    for chunk in chunks:
        wanted = rows[(rows >= start) & (rows < start + len(chunk))] - start
        if wanted.size:
            texts.append(ts_text(chunk["ts"].reset_index(drop=True)).iloc[wanted])
        start += len(chunk)
    return pd.concat(texts)


def merge_parts(parts: list[Path], target: Path, chunk_rows: int) -> int:
    """Concatenate per-file parquet parts into one file, a chunk at a time: columns are the union in
    order of first appearance (a column a file lacks is null there, as pandas' concat makes it);
    pandas' dtypes are kept from the part that has the most columns. Returns the rows written."""
    if not parts:
        pd.DataFrame(columns=list(LINEAGE_COLUMNS)).to_parquet(target, index=False)
        return 0
    schemas = [pq.read_schema(p) for p in parts]
    widest = max(schemas, key=lambda schema: len(schema.names))
    schema = pa.unify_schemas([s.remove_metadata() for s in schemas]).with_metadata(widest.metadata)
    rows = 0
    with pq.ParquetWriter(target, schema) as writer:
        for part in parts:
            for batch in pq.ParquetFile(part).iter_batches(batch_size=chunk_rows):
                table = pa.Table.from_batches([batch])
                columns = [table.column(f.name) if f.name in table.column_names else pa.nulls(len(table), f.type)
                           for f in schema]
                writer.write_table(pa.Table.from_arrays(columns, schema=schema), row_group_size=chunk_rows)
                rows += len(table)
    return rows
