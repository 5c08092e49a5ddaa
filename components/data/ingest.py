"""Ingest stage: a day's landing files -> one normalized staging table awaiting validation.

Every input row is kept with its lineage (``source_file``, ``source_row``: 1-based data row in that
file), so a validation failure can name the file and row, and every row ends in accepted or in
quarantine. Columns are coerced to the contract's types (README "Interaction-log contract"); a
value that cannot be coerced becomes null, and every value the coercion judged (a null token, an
unparsable or inconsistent timestamp, an id that does not fit its declared type) is recorded in
``issues.parquet`` with its file, row, raw value and cause, for the validate stage's rules.

Every entry under the partition is accounted for in ``files.json``: read (with rows, hash, or the
error that stopped it, permission denied included) or skipped with its reason. A file or folder
that cannot be read is recorded rather than raised, so validate quarantines the day with a report.

Idempotent: staging for a day is rebuilt from the landing files and replaced atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from components.core.config import PipelineConfig
from components.core.errors import LandingMissing
from components.core.catalog import Layout, replace_dir, staging_dir, write_json

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("event_id", "user_id", "item_id", "event_type", "ts")
ID_COLUMNS = ("event_id", "user_id", "item_id")
LINEAGE_COLUMNS = ("source_file", "source_row")
ISSUE_COLUMNS = ("rule", "column", "source_file", "source_row", "raw", "cause")
# A value that became null during coercion is judged by the not-null rule, which shows its raw value.
NOT_NULL_RULE = "expect_column_values_to_not_be_null"
# Unknown columns (schema drift) are kept in staging under this prefix, as text, so they can never
# collide with the contract's or the validator's own columns; acceptance keeps them in a sidecar.
EXTRA_PREFIX = "extra."
# What each contract column may arrive as (kinds from ``value_kind``); anything else is a changed
# type, a contract violation naming the column, the expected kinds and the kind seen.
EXPECTED_KINDS: dict[str, tuple[str, ...]] = {
    "event_id": ("string", "integer"),
    "user_id": ("string", "integer"),
    "item_id": ("string", "integer"),
    "event_type": ("string",),
    "ts": ("timestamp", "integer", "float", "string"),
}
SUPPORTED_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")
# Hadoop/Spark job markers: expected beside the data, skipped without a warning.
MARKER_NAMES = re.compile(r"_(SUCCESS|FAILURE|SUCCESS\.crc|committed_.*|started_.*|temporary|metadata|common_metadata)")
# Epoch unit by magnitude when not declared (validation.epoch_unit "auto"): below 1e11 seconds
# (1e11 s is the year 5138), below 1e14 milliseconds, below 1e17 microseconds, else nanoseconds.
EPOCH_UNIT_LIMITS = (("s", 1e11), ("ms", 1e14), ("us", 1e17), ("ns", float("inf")))
_EPOCH_TEXT = r"[+-]?\d+(\.\d+)?"
_OFFSET_SUFFIX = r".*\d[T ]?.*(Z|z|[+-]\d{2}(:?\d{2})?)$"  # an ISO time ending in Z or +hh[:mm]
_WHOLE_FLOAT = r"[+-]?\d+\.0+"
_INTEGER = r"[+-]?\d+"


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


@dataclass
class ValueIssues:
    """Value-level findings of one file, gathered column by column (vectorized)."""

    frames: list[pd.DataFrame] = field(default_factory=list)

    def add(self, rule: str, column: str, rows: np.ndarray, raw: pd.Series, cause: str | np.ndarray) -> None:
        if len(rows):
            self.frames.append(pd.DataFrame({"rule": rule, "column": column, "source_row": rows + 1,
                                             "raw": raw.astype("string").to_numpy(), "cause": cause}))


# --- reading -----------------------------------------------------------------------------------


def _json_lines(raw: bytes) -> pd.DataFrame:
    """JSON Lines; a JSON array or a malformed line is named as such, with its line number."""
    head = raw.lstrip()[:1]
    if head == b"[":
        raise ValueError("the file is a JSON array; the contract expects JSON Lines (one JSON object per line)")
    try:
        return pd.read_json(io.BytesIO(raw), lines=True, dtype=False)
    except ValueError:
        # Only on failure: find the first bad line (pandas' message has no line number).
        for number, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"line {number}: malformed JSON ({exc.msg} at column {exc.colno}): {line[:80]!r}") from None
            if not isinstance(value, dict):
                raise ValueError(f"line {number}: a JSON {type(value).__name__}, expected one object per line: {line[:80]!r}") from None
        raise


def _read_bytes(raw: bytes, name: str) -> pd.DataFrame:
    suffix = PurePosixPath(name).suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(io.BytesIO(raw))
    if suffix == ".csv":
        # Empty file: zero rows, no columns (the validator reports it), not a parse error.
        return pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False, na_values=[""]) if raw.strip() else pd.DataFrame()
    if suffix in (".jsonl", ".json"):
        return _json_lines(raw) if raw.strip() else pd.DataFrame()
    raise ValueError(f"unsupported format {suffix!r}; accepted: {', '.join(SUPPORTED_SUFFIXES)}")


def value_kind(values: pd.Series) -> str:
    """The kind of a raw column as delivered: timestamp, integer, float, boolean, string or mixed.

    Floats that are all whole numbers count as integer (JSON/Parquet turn an integer column with
    nulls into floats); CSV is read as text, so its columns are strings.
    """
    present = values.dropna()
    if pd.api.types.is_bool_dtype(values):
        return "boolean"
    if pd.api.types.is_datetime64_any_dtype(values):
        return "timestamp"
    if pd.api.types.is_integer_dtype(values):
        return "integer"
    if pd.api.types.is_float_dtype(values):
        return "integer" if bool((present == present.round()).all()) else "float"
    kinds = {type(v).__name__ for v in present}
    names = {"str": "string", "int": "integer", "float": "float", "bool": "boolean", "Timestamp": "timestamp",
             "datetime": "timestamp"}
    seen = sorted({names.get(k, k) for k in kinds})
    if seen == ["float", "integer"] and all(float(v).is_integer() for v in present if isinstance(v, float)):
        return "integer"  # JSON 13 beside 13.0: the float form is judged per row (id_float_form)
    return seen[0] if len(seen) == 1 else ("string" if not seen else "mixed(" + ",".join(seen) + ")")


# --- coercion: timestamps ----------------------------------------------------------------------


def epoch_unit_of(magnitude: np.ndarray) -> np.ndarray:
    """The epoch unit each absolute value implies (EPOCH_UNIT_LIMITS)."""
    units = np.array([u for u, _ in EPOCH_UNIT_LIMITS], dtype=object)
    return units[np.searchsorted([limit for _, limit in EPOCH_UNIT_LIMITS], magnitude, side="right")]


def epoch_to_utc(numbers: pd.Series, unit: str) -> pd.Series:
    """Epoch numbers in ``unit`` -> UTC timestamps (NaT where out of range)."""
    scale = {"s": 10**6, "ms": 10**3, "us": 1, "ns": 10**-3}[unit]
    micros = (numbers.astype("float64") * scale).round()
    in_range = micros.abs() < 9.2e18 / 1e3  # datetime64[us] holds +-292,000 years; pandas' bounds in ns
    out = pd.Series(pd.NaT, index=numbers.index, dtype="datetime64[us, UTC]")
    ok = in_range & micros.notna()
    out[ok] = pd.to_datetime(micros[ok].astype("int64"), unit="us", utc=True, errors="coerce")
    return out


def parse_timestamps(ts: pd.Series, epoch_unit: str, issues: ValueIssues) -> tuple[pd.Series, str]:
    """One file's ``ts`` -> UTC, and the form the file writes time in.

    Policy (README): a file writes every timestamp in one form: epoch numbers in one unit (declared
    by ``validation.epoch_unit`` or detected by magnitude), ISO 8601 with an offset, or naive ISO
    8601, taken as UTC only because every value in the file is naive. A value in another form than
    the file's majority is a ``ts_consistent_form`` issue (the file is judged, its values still
    parsed each by its own form); a value that cannot be parsed becomes null, with its cause."""
    if pd.api.types.is_datetime64_any_dtype(ts):
        parsed = ts.dt.tz_localize("UTC") if ts.dt.tz is None else ts.dt.tz_convert("UTC")
        return parsed.astype("datetime64[us, UTC]"), "timestamp"
    present = ts.notna()
    text = ts.astype("string[pyarrow]").str.strip()
    numeric = pd.to_numeric(ts, errors="coerce") if pd.api.types.is_numeric_dtype(ts) else pd.Series(np.nan, index=ts.index)
    is_epoch = present & (numeric.notna() | text.str.fullmatch(_EPOCH_TEXT).fillna(False).astype(bool))
    numeric = numeric.where(numeric.notna(), pd.to_numeric(text.where(is_epoch), errors="coerce"))
    has_offset = present & ~is_epoch & text.str.fullmatch(_OFFSET_SUFFIX).fillna(False).astype(bool)
    form = pd.Series(np.where(is_epoch, "epoch", np.where(has_offset, "iso-offset", "iso-naive")), index=ts.index)
    detected = pd.Series(epoch_unit_of(numeric.abs().fillna(0).to_numpy()), index=ts.index)
    units = detected if epoch_unit == "auto" else pd.Series(epoch_unit, index=ts.index)
    form = form.where(~is_epoch, "epoch-" + units.astype(str))
    parsed = pd.Series(pd.NaT, index=ts.index, dtype="datetime64[us, UTC]")
    for unit in units[is_epoch].unique():  # one pass per unit present, not per row
        rows = is_epoch & (units == unit)
        parsed[rows] = epoch_to_utc(numeric[rows], unit)
    iso = present & ~is_epoch
    if iso.any():
        parsed[iso] = pd.to_datetime(text[iso], utc=True, errors="coerce", format="ISO8601").astype("datetime64[us, UTC]")
    failed = present & parsed.isna()
    if failed.any():
        idx = np.flatnonzero(failed.to_numpy())
        cause = pd.Series(np.where(is_epoch.iloc[idx], "epoch value out of range as " + units.iloc[idx].astype(str),
                                   "neither ISO 8601 nor an epoch number"), index=ts.index[idx])
        issues.add(NOT_NULL_RULE, "ts", idx, text.iloc[idx], cause.to_numpy())
    form = form.where(present & parsed.notna())  # an unparsable value has no form: it is null, said so
    counts = form.value_counts()
    majority = str(counts.index[0]) if len(counts) else "empty"
    odd = form.notna() & (form != majority)
    if odd.any():
        idx = np.flatnonzero(odd.to_numpy())
        issues.add("ts_consistent_form", "ts", idx, text.iloc[idx],
                   (form.iloc[idx] + f" value in a file whose other {int(counts.iloc[0])} timestamps are "
                    f"{majority} (one form per file)").to_numpy())
    return parsed, majority


# --- coercion: ids and event types -------------------------------------------------------------


def normalize_ids(values: pd.Series, column: str, id_type: str | None, null_tokens: tuple[str, ...],
                  issues: ValueIssues) -> pd.Series:
    """One file's id (or event-type) column -> canonical text.

    Null tokens become null (cause recorded); text is NFC-normalized (an NFD spelling of an id is the
    same id: ``id_unicode_form``); an id written as a whole float (``13.0``) is ``id_float_form``
    and, under a declared integer type, read as ``13``; a value that does not fit a declared integer
    type is ``id_type`` and kept as it came. ``id_type`` None: no id rules (event types)."""
    if pd.api.types.is_float_dtype(values):
        # A numeric float column (JSON/Parquet integers with nulls): whole values are integers.
        whole = values.notna() & (values == values.round())
        values = values.astype("object").where(~whole, values.where(whole).astype("Int64").astype("object"))
    # JSON 13 beside 13.0 arrives as Python int and float objects; text (CSV) never holds floats.
    mixed = values.dtype == object and pd.api.types.infer_dtype(values, skipna=True) != "string"
    floats = (values.notna() & (values.map(type) == float)) if mixed else pd.Series(False, index=values.index)
    # Arrow-backed strings: strip, match and normalize run in Arrow's kernels, not per row in Python.
    text = values.where(values.notna(), None).astype("string[pyarrow]").str.strip()
    token = text.isin(null_tokens)
    if token.any():
        idx = np.flatnonzero(token.to_numpy())
        issues.add(NOT_NULL_RULE, column, idx, text.iloc[idx], "null token (validation.null_tokens)")
    text = text.mask(token | (text == ""))
    if id_type is None:
        return text.astype("string")
    wide = text.str.contains(r"[^\x00-\x7f]", regex=True).fillna(False).astype(bool)  # ASCII is always NFC
    nfc = text[wide].str.normalize("NFC")
    changed = (nfc != text[wide]).fillna(False).astype(bool)
    if changed.any():
        idx = np.flatnonzero(text.index.isin(changed.index[changed.to_numpy()]))
        issues.add("id_unicode_form", column, idx, text.iloc[idx], "not in Unicode NFC form; read as its NFC form")
        text = text.where(~text.index.isin(nfc.index), nfc)
    float_form = (floats | text.str.fullmatch(_WHOLE_FLOAT).fillna(False).astype(bool)) & text.notna()
    if float_form.any():
        idx = np.flatnonzero(float_form.to_numpy())
        integer = text.str.replace(r"\.0*$", "", regex=True)
        cause = ("whole float for an integer id; read as " + integer.iloc[idx]) if id_type == "integer" else \
            pd.Series(f"whole float among string ids (validation.id_types.{column}: integer reads it as an integer)",
                      index=text.index[idx])
        issues.add("id_float_form", column, idx, text.iloc[idx], cause.to_numpy())
        if id_type == "integer":
            text = text.where(~float_form, integer)
    if id_type == "integer":
        wrong = text.notna() & ~text.str.fullmatch(_INTEGER).fillna(False).astype(bool)
        if wrong.any():
            idx = np.flatnonzero(wrong.to_numpy())
            issues.add("id_type", column, idx, text.iloc[idx], f"not an integer (validation.id_types.{column}: integer)")
    return text.astype("string")


def normalize(frame: pd.DataFrame, source_file: str, cfg: PipelineConfig | None = None) -> tuple[pd.DataFrame, str | None, pd.DataFrame]:
    """Coerce to the contract's types; add lineage columns. Unknown columns are kept as text
    under ``EXTRA_PREFIX`` (schema drift is reported by the validator, never dropped).

    Returns (rows, the file's timestamp form, the file's value issues)."""
    v = (cfg or PipelineConfig()).validation
    issues = ValueIssues()
    out = pd.DataFrame(index=frame.index)
    for column in (*ID_COLUMNS, "event_type"):
        if column in frame.columns:
            out[column] = normalize_ids(frame[column], column, v.id_types.get(column), tuple(v.null_tokens), issues)
    ts_form = None
    if "ts" in frame.columns:
        ts = frame["ts"]
        if ts.dtype == object:  # null tokens in a text column are missing values, said so
            token = ts.astype("string").str.strip().isin(v.null_tokens).fillna(False).astype(bool)
            if token.any():
                idx = np.flatnonzero(token.to_numpy())
                issues.add(NOT_NULL_RULE, "ts", idx, ts.iloc[idx], "null token (validation.null_tokens)")
                ts = ts.mask(token)
        out["ts"], ts_form = parse_timestamps(ts, v.epoch_unit, issues)
    for column in frame.columns:
        if column not in REQUIRED_COLUMNS:
            values = frame[column]
            out[f"{EXTRA_PREFIX}{column}"] = values.where(values.notna(), None).astype("string")
    out["source_file"] = source_file
    out["source_row"] = pd.RangeIndex(1, len(frame) + 1, dtype="int64")
    found = pd.concat(issues.frames, ignore_index=True) if issues.frames else pd.DataFrame(columns=list(ISSUE_COLUMNS))
    found["source_file"] = source_file
    return out.reset_index(drop=True), ts_form, found[list(ISSUE_COLUMNS)]


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
    """Read and normalize each file, one at a time, into ``tmp/rows.parquet`` (memory: the largest
    file, never the whole day). Returns (files, value issues, rows staged)."""
    parts = tmp / "parts"
    parts.mkdir()
    found, files = [], [SourceFile(name, 0, None, None, error) for name, error in listing.errors]
    for path in listing.files:  # one iteration per file, not per row
        short = path[len(root):].lstrip("/")
        try:
            raw = fs.cat_file(path)
        except OSError as exc:  # permission denied and the like: recorded, the day goes to quarantine
            files.append(SourceFile(short, int(fs.size(path) or 0), None, None, f"{type(exc).__name__}: {exc}"))
            log.warning("landing file %s unreadable: %s", path, exc)
            continue
        digest = hashlib.sha256(raw).hexdigest()
        try:
            frame = _read_bytes(raw, short)
        except Exception as exc:  # any parser failure: record it, the day goes to quarantine
            files.append(SourceFile(short, len(raw), digest, None, f"{type(exc).__name__}: {exc}"))
            log.warning("landing file %s unreadable: %s", path, exc)
            continue
        missing = tuple(c for c in REQUIRED_COLUMNS if c not in frame.columns)
        extra = tuple(str(c) for c in frame.columns if c not in REQUIRED_COLUMNS)
        kinds = {c: value_kind(frame[c]) for c in REQUIRED_COLUMNS if c in frame.columns}
        rows, ts_form, issues = normalize(frame, short, cfg)
        files.append(SourceFile(short, len(raw), digest, len(frame), None, missing, extra, kinds, ts_form))
        del raw, frame
        rows.to_parquet(parts / f"{len(found):06d}.parquet", index=False)
        found.append(issues)
    staged = merge_parts(sorted(parts.iterdir()), tmp / "rows.parquet", cfg.validation.chunk_rows)
    shutil.rmtree(parts)
    issues = pd.concat(found, ignore_index=True) if found else pd.DataFrame(columns=list(ISSUE_COLUMNS))
    issues = issues.astype({"source_row": "int64", **{c: "string" for c in ISSUE_COLUMNS if c != "source_row"}})
    return files, issues, staged


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
