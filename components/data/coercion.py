"""Coercion of landed values to the contract's types (README "Interaction-log contract"), one column at a time.

What ingest judges on each value and on each file's columns: the kind a column arrives as
(``KindFacts``, gathered chunk by chunk), timestamps parsed by their own form (epoch by unit,
ISO 8601 with or without an offset; one form per file: ``judge_forms``), ids normalized to
canonical text (null tokens, NFC, whole floats, declared integer types). A value that cannot be
coerced becomes null, and every finding is a ``ValueIssues`` row naming the row, raw value and
cause. Pure functions on columns: the ingest stage (ingest.py) assembles a file's staged rows from them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

REQUIRED_COLUMNS = ("event_id", "user_id", "item_id", "event_type", "ts")
ID_COLUMNS = ("event_id", "user_id", "item_id")
ISSUE_COLUMNS = ("rule", "column", "source_file", "source_row", "raw", "cause")
# A value that became null during coercion is judged by the not-null rule, which shows its raw value.
NOT_NULL_RULE = "expect_column_values_to_not_be_null"
NULL_TOKEN_CAUSE = "null token (validation.null_tokens)"
# The order ingest's ``convert`` judges in (columns, then rules within a column): a file's issues are listed
# in it, whatever chunks they were found in.
COLUMN_ORDER = (*ID_COLUMNS, "event_type", "ts")
RULE_ORDER = (NOT_NULL_RULE, "id_unicode_form", "id_float_form", "id_type", "ts_consistent_form")
# What each contract column may arrive as (kinds from ``value_kind``); anything else is a changed
# type, a contract violation naming the column, the expected kinds and the kind seen.
EXPECTED_KINDS: dict[str, tuple[str, ...]] = {
    "event_id": ("string", "integer"),
    "user_id": ("string", "integer"),
    "item_id": ("string", "integer"),
    "event_type": ("string",),
    "ts": ("timestamp", "integer", "float", "string"),
}
# Epoch unit by magnitude when not declared (validation.epoch_unit "auto"): below 1e11 seconds
# (1e11 s is the year 5138), below 1e14 milliseconds, below 1e17 microseconds, else nanoseconds.
EPOCH_UNIT_LIMITS = (("s", 1e11), ("ms", 1e14), ("us", 1e17), ("ns", float("inf")))
_EPOCH_TEXT = r"[+-]?\d+(\.\d+)?"
_OFFSET_SUFFIX = r".*\d[T ]?.*(Z|z|[+-]\d{2}(:?\d{2})?)$"  # an ISO time ending in Z or +hh[:mm]
_WHOLE_FLOAT = r"[+-]?\d+\.0+"
_INTEGER = r"[+-]?\d+"
TS_FORMS = ("epoch-s", "epoch-ms", "epoch-us", "epoch-ns", "iso-offset", "iso-naive")  # forms of a text/number ts


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
        if pd.api.types.is_bool_dtype(values):
            return cls("boolean")
        if pd.api.types.is_datetime64_any_dtype(values):
            return cls("timestamp")
        if pd.api.types.is_integer_dtype(values):
            return cls("integer")
        if pd.api.types.is_float_dtype(values):
            present = values.dropna()
            return cls("float", whole=bool((present == present.round()).all()))
        if pd.api.types.infer_dtype(values, skipna=True) == "string":
            # Every present value is a str (the same nulls skipped as dropna), found in one pass in C:
            # the per-value loop below was ingest's main CPU cost on text (CSV) files. A str subclass
            # (numpy.str_) would count as str here; the readers of landed.py make plain str only.
            return cls("object", frozenset({"str"}))
        present = values.dropna()
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
