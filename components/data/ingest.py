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

Each file is read in chunks of ``validation.landing_chunk_rows`` rows (components/data/landed.py),
never whole: what a rule decides on the whole file (a column's kind, the file's timestamp form) is
gathered chunk by chunk and decided at the end, so the staged bytes do not depend on the chunk size.

Idempotent: staging for a day is rebuilt from the landing files and replaced atomically.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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
from components.data.landed import SUPPORTED_SUFFIXES  # noqa: F401 (the contract's formats, read by validate)

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("event_id", "user_id", "item_id", "event_type", "ts")
ID_COLUMNS = ("event_id", "user_id", "item_id")
LINEAGE_COLUMNS = ("source_file", "source_row")
ISSUE_COLUMNS = ("rule", "column", "source_file", "source_row", "raw", "cause")
# A value that became null during coercion is judged by the not-null rule, which shows its raw value.
NOT_NULL_RULE = "expect_column_values_to_not_be_null"
NULL_TOKEN_CAUSE = "null token (validation.null_tokens)"
# The order ``convert`` judges in (columns, then rules within a column): a file's issues are listed
# in it, whatever chunks they were found in.
COLUMN_ORDER = (*ID_COLUMNS, "event_type", "ts")
RULE_ORDER = (NOT_NULL_RULE, "id_unicode_form", "id_float_form", "id_type", "ts_consistent_form")
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
# Hadoop/Spark job markers: expected beside the data, skipped without a warning.
MARKER_NAMES = re.compile(r"_(SUCCESS|FAILURE|SUCCESS\.crc|committed_.*|started_.*|temporary|metadata|common_metadata)")
# Epoch unit by magnitude when not declared (validation.epoch_unit "auto"): below 1e11 seconds
# (1e11 s is the year 5138), below 1e14 milliseconds, below 1e17 microseconds, else nanoseconds.
EPOCH_UNIT_LIMITS = (("s", 1e11), ("ms", 1e14), ("us", 1e17), ("ns", float("inf")))
_EPOCH_TEXT = r"[+-]?\d+(\.\d+)?"
_OFFSET_SUFFIX = r".*\d[T ]?.*(Z|z|[+-]\d{2}(:?\d{2})?)$"  # an ISO time ending in Z or +hh[:mm]
_WHOLE_FLOAT = r"[+-]?\d+\.0+"
_INTEGER = r"[+-]?\d+"
TS_FORMS = ("epoch-s", "epoch-ms", "epoch-us", "epoch-ns", "iso-offset", "iso-naive")  # forms of a text/number ts


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
    """Value-level findings of one file (or of a chunk starting at data row ``first_row`` + 1),
    gathered column by column (vectorized)."""

    frames: list[pd.DataFrame] = field(default_factory=list)
    first_row: int = 0

    def add(self, rule: str, column: str, rows: np.ndarray, raw: pd.Series, cause: str | np.ndarray) -> None:
        if len(rows):
            self.frames.append(pd.DataFrame({"rule": rule, "column": column, "source_row": rows + 1 + self.first_row,
                                             "raw": raw.astype("string").to_numpy(), "cause": cause}))

    def table(self, source_file: str) -> pd.DataFrame:
        """The file's issues in the order one pass over the whole file finds them: column by column,
        each rule in the order it is judged, then by row, whatever chunks they were found in."""
        found = pd.concat(self.frames, ignore_index=True) if self.frames else pd.DataFrame(columns=list(ISSUE_COLUMNS))
        found["source_file"] = source_file
        order = np.lexsort((found["source_row"].to_numpy(), (found["cause"] != NULL_TOKEN_CAUSE).to_numpy(),
                            found["rule"].map(RULE_ORDER.index).to_numpy(), found["column"].map(COLUMN_ORDER.index).to_numpy()))
        return found.iloc[order][list(ISSUE_COLUMNS)].reset_index(drop=True)


# --- what a file's columns hold --------------------------------------------------------------


@dataclass(frozen=True)
class KindFacts:
    """What ``value_kind`` decides from, gathered per chunk and merged over a file's chunks (which
    share the file's dtype: ``landed.chunks``)."""

    family: str  # boolean, timestamp, integer, float, object (from the dtype)
    types: frozenset[str] = frozenset()  # Python types of an object column's values
    whole: bool = True  # every float is a whole number

    @classmethod
    def of(cls, values: pd.Series) -> KindFacts:
        present = values.dropna()
        if pd.api.types.is_bool_dtype(values):
            return cls("boolean")
        if pd.api.types.is_datetime64_any_dtype(values):
            return cls("timestamp")
        if pd.api.types.is_integer_dtype(values):
            return cls("integer")
        if pd.api.types.is_float_dtype(values):
            return cls("float", whole=bool((present == present.round()).all()))
        types = frozenset(type(v).__name__ for v in present)
        return cls("object", types, "float" not in types or all(float(v).is_integer() for v in present if isinstance(v, float)))

    def merge(self, other: KindFacts) -> KindFacts:
        return KindFacts(self.family, self.types | other.types, self.whole and other.whole)

    @property
    def kind(self) -> str:
        if self.family == "float":
            return "integer" if self.whole else "float"
        if self.family != "object":
            return self.family
        names = {"str": "string", "int": "integer", "float": "float", "bool": "boolean", "Timestamp": "timestamp",
                 "datetime": "timestamp"}
        seen = sorted({names.get(k, k) for k in self.types})
        if seen == ["float", "integer"] and self.whole:
            return "integer"  # JSON 13 beside 13.0: the float form is judged per row (id_float_form)
        return seen[0] if len(seen) == 1 else ("string" if not seen else "mixed(" + ",".join(seen) + ")")


def value_kind(values: pd.Series) -> str:
    """The kind of a raw column as delivered: timestamp, integer, float, boolean, string or mixed.

    Floats that are all whole numbers count as integer (JSON/Parquet turn an integer column with
    nulls into floats); CSV is read as text, so its columns are strings.
    """
    return KindFacts.of(values).kind


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


def ts_text(ts: pd.Series) -> pd.Series:
    """A ``ts`` column as the text its forms are judged on (and issues show)."""
    return ts.astype("string[pyarrow]").str.strip()


def timestamp_forms(ts: pd.Series, epoch_unit: str, issues: ValueIssues) -> tuple[pd.Series, np.ndarray | None]:
    """``ts`` values -> UTC, and each value's form as a code into ``TS_FORMS`` (-1: null, no form);
    None for a column typed as timestamps (form "timestamp"). Each value is parsed by its own form;
    a value that cannot be parsed becomes null, with its cause."""
    if pd.api.types.is_datetime64_any_dtype(ts):
        parsed = ts.dt.tz_localize("UTC") if ts.dt.tz is None else ts.dt.tz_convert("UTC")
        return parsed.astype("datetime64[us, UTC]"), None
    present = ts.notna()
    text = ts_text(ts)
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
    return parsed, pd.Categorical(form, categories=TS_FORMS).codes.astype(np.int8)


def majority_form(codes: np.ndarray) -> tuple[str, int]:
    """A file's form (the most frequent; a tie goes to the first to occur, as ``value_counts``
    ranks them) and how many values have it; "empty" when no value has a form."""
    counts = np.bincount(codes[codes >= 0], minlength=len(TS_FORMS))
    seen = np.flatnonzero(counts)
    if not seen.size:
        return "empty", 0
    seen = seen[np.argsort([np.argmax(codes == code) for code in seen])]
    ranked = pd.Series(counts[seen], index=[TS_FORMS[code] for code in seen]).sort_values(ascending=False)
    return str(ranked.index[0]), int(ranked.iloc[0])


def judge_forms(codes: np.ndarray, text_of: Callable[[np.ndarray], pd.Series], issues: ValueIssues) -> str:
    """Policy (README): a file writes every timestamp in one form: epoch numbers in one unit (declared
    by ``validation.epoch_unit`` or detected by magnitude), ISO 8601 with an offset, or naive ISO
    8601, taken as UTC only because every value in the file is naive. A value in another form than
    the file's majority is a ``ts_consistent_form`` issue. ``text_of(rows)``: those rows' ``ts_text``.
    Returns the file's form."""
    majority, count = majority_form(codes)
    odd = (codes >= 0) & (codes != (TS_FORMS.index(majority) if majority in TS_FORMS else -1))
    if odd.any():
        idx = np.flatnonzero(odd)
        forms = pd.Series(np.asarray(TS_FORMS, dtype=object)[codes[idx]])
        issues.add("ts_consistent_form", "ts", idx, text_of(idx).reset_index(drop=True),
                   (forms + f" value in a file whose other {count} timestamps are {majority} (one form per file)").to_numpy())
    return majority


def parse_timestamps(ts: pd.Series, epoch_unit: str, issues: ValueIssues) -> tuple[pd.Series, str]:
    """One whole ``ts`` column -> UTC, and the form the file writes time in (``judge_forms``)."""
    parsed, codes = timestamp_forms(ts, epoch_unit, issues)
    if codes is None:
        return parsed, "timestamp"
    return parsed, judge_forms(codes, lambda rows: ts_text(ts).iloc[rows], issues)


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
        issues.add(NOT_NULL_RULE, column, idx, text.iloc[idx], NULL_TOKEN_CAUSE)
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
