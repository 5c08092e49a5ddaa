"""Ingest stage: a day's landing files -> one normalized staging table awaiting validation.

Every input row is kept with its lineage (``source_file``, ``source_row``: 1-based data row in that
file), so a validation failure can name the file and row, and every row ends in accepted or in
quarantine. Columns are coerced to the contract's types; a value that cannot be coerced becomes
null (and the not-null expectation names it). A file that cannot be read at all is recorded with
its error rather than raised here, so the validate stage can quarantine the whole day with a report.

Idempotent: staging for a day is rebuilt from the landing files and replaced atomically.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import fsspec
import pandas as pd

from components.config import PipelineConfig
from components.errors import LandingMissing
from components.storage import Layout, replace_dir, staging_dir, write_json

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("event_id", "user_id", "item_id", "event_type", "ts")
LINEAGE_COLUMNS = ("source_file", "source_row")
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


@dataclass(frozen=True)
class SourceFile:
    name: str
    bytes: int
    sha256: str
    rows: int | None  # None when unreadable
    error: str | None
    missing_columns: tuple[str, ...] = ()
    extra_columns: tuple[str, ...] = ()
    column_kinds: dict[str, str] | None = None  # contract column -> kind seen in this file


@dataclass(frozen=True)
class IngestResult:
    day: str
    staging_path: str
    rows: int
    files: tuple[SourceFile, ...]

    @property
    def unreadable(self) -> tuple[SourceFile, ...]:
        return tuple(f for f in self.files if f.error)


def _read_bytes(raw: bytes, name: str) -> pd.DataFrame:
    import io

    suffix = Path(name).suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(io.BytesIO(raw))
    if suffix == ".csv":
        # Empty file: zero rows, no columns (the validator reports it), not a parse error.
        return pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False, na_values=[""]) if raw.strip() else pd.DataFrame()
    if suffix in (".jsonl", ".json"):
        return pd.read_json(io.BytesIO(raw), lines=True, dtype=False) if raw.strip() else pd.DataFrame()
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
    return seen[0] if len(seen) == 1 else ("string" if not seen else "mixed(" + ",".join(seen) + ")")


def normalize(frame: pd.DataFrame, source_file: str) -> pd.DataFrame:
    """Coerce to the contract's types; add lineage columns. Unknown columns are kept as text
    under ``EXTRA_PREFIX`` (schema drift is reported by the validator, never dropped)."""
    out = pd.DataFrame(index=frame.index)
    for column in ("event_id", "user_id", "item_id", "event_type"):
        if column in frame.columns:
            values = frame[column]
            out[column] = values.where(values.notna(), None).astype("string").str.strip()
            out.loc[out[column] == "", column] = pd.NA
    if "ts" in frame.columns:
        ts = frame["ts"]
        # Epoch seconds arrive as numbers (Parquet, JSONL) or as digit strings (CSV is read as text).
        epoch = pd.api.types.is_numeric_dtype(ts) or bool(ts.dropna().astype(str).str.fullmatch(r"\d+(\.\d+)?").all() and ts.notna().any())
        if epoch:
            out["ts"] = pd.to_datetime(pd.to_numeric(ts, errors="coerce"), unit="s", utc=True, errors="coerce")
        else:
            out["ts"] = pd.to_datetime(ts, utc=True, errors="coerce", format="ISO8601")
        out["ts"] = out["ts"].astype("datetime64[us, UTC]")
    for column in frame.columns:
        if column not in REQUIRED_COLUMNS:
            values = frame[column]
            out[f"{EXTRA_PREFIX}{column}"] = values.where(values.notna(), None).astype("string")
    out["source_file"] = source_file
    out["source_row"] = pd.RangeIndex(1, len(frame) + 1, dtype="int64")
    return out.reset_index(drop=True)


def list_landing(landing: str) -> list[str]:
    """Landing files of a partition (local path or fsspec URI), sorted, hidden files ignored."""
    fs, root = fsspec.core.url_to_fs(landing)
    if not fs.exists(root):
        return []
    entries = fs.ls(root, detail=True)
    names = [e["name"] for e in entries if e["type"] == "file" and not Path(e["name"]).name.startswith((".", "_"))]
    return sorted(names)


def run_ingest(layout: Layout, day: str, cfg: PipelineConfig, landing: str | None = None) -> IngestResult:
    """Read every landing file of ``day`` into ``staging/date=day`` (rows.parquet + files.json)."""
    landing = landing or str(layout.landing(day))
    names = list_landing(landing)
    if not names:
        raise LandingMissing(f"no landing files for {day} under {landing}: the day has not landed. Land it, "
                             f"then clear this run's ingest task (airflow tasks clear gnn_recsys_nightly -t ingest "
                             f"-s {day} -e {day}) or run `graphdistill run ingest --day {day}`")
    fs, _ = fsspec.core.url_to_fs(landing)
    frames, files = [], []
    for name in names:  # one iteration per file, not per row
        raw = fs.cat_file(name)
        digest = hashlib.sha256(raw).hexdigest()
        short = Path(name).name
        try:
            frame = _read_bytes(raw, short)
        except Exception as exc:  # any parser failure: record it, the day goes to quarantine
            files.append(SourceFile(short, len(raw), digest, None, f"{type(exc).__name__}: {exc}"))
            log.warning("landing file %s unreadable: %s", name, exc)
            continue
        missing = tuple(c for c in REQUIRED_COLUMNS if c not in frame.columns)
        extra = tuple(str(c) for c in frame.columns if c not in REQUIRED_COLUMNS)
        kinds = {c: value_kind(frame[c]) for c in REQUIRED_COLUMNS if c in frame.columns}
        files.append(SourceFile(short, len(raw), digest, len(frame), None, missing, extra, kinds))
        frames.append(normalize(frame, short))
    staged = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(LINEAGE_COLUMNS))
    with staging_dir(layout.root / "staging") as tmp:
        staged.to_parquet(tmp / "rows.parquet", index=False)
        write_json(tmp / "files.json", {"day": day, "landing": landing, "files": [f.__dict__ for f in files]})
        replace_dir(tmp, layout.staging(day))
    log.info("ingest %s: %d files, %d rows staged, %d unreadable", day, len(files), len(staged),
             sum(1 for f in files if f.error))
    return IngestResult(day, str(layout.staging(day)), len(staged), tuple(files))
