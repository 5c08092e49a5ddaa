"""The data contract that quarantines: the Great Expectations suite (config/expectations/
interactions_daily.json, its ``$PARAMETER``s from config only), run chunk by chunk and once on the day's
compact frame, plus what GX cannot see: unreadable, empty or skipped files, a changed column type, unknown
columns, and the value rules ingest judged."""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pandas as pd

from components.core.config import REPO_ROOT, PipelineConfig
from components.data.coercion import EXPECTED_KINDS, NOT_NULL_RULE, REQUIRED_COLUMNS
from components.data.ingest import LINEAGE_COLUMNS
from components.data.landed import SUPPORTED_SUFFIXES
from components.data.streaming import DayKeys
from components.data.validation_result import OFF, SAMPLE_ROWS, RuleResult, plain, severity_of

SUITE_FILE = REPO_ROOT / "config" / "expectations" / "interactions_daily.json"
# Value rules judged at ingest (components/data/ingest.py records each finding with file, row, raw value
# and cause); the not-null rule shows the raw value of what coercion turned into null.
VALUE_RULES = ("ts_consistent_form", "id_type", "id_float_form", "id_unicode_form")
# Judged on the whole day at once (a share or count of the day, not a property of each row): run once on
# the day's compact frame (row count, an exact integer code per event id) instead of per chunk.
WHOLE_DAY_EXPECTATIONS = ("expect_column_proportion_of_unique_values_to_be_between", "expect_table_row_count_to_be_between")


def suite_parameters(cfg: PipelineConfig) -> dict[str, Any]:
    """The contract suite's $PARAMETERs: fixed by config, never by history."""
    tol = cfg.data.late_tolerance_hours
    return {
        "event_types": sorted(cfg.data.event_weights),
        "ts_offset_min_hours": -tol,
        "ts_offset_max_hours": 24.0 + tol,
        "min_unique_event_share": 1.0 - cfg.validation.max_duplicate_share,
        "min_rows": cfg.validation.min_rows,
    }


def file_rules(files: list[dict[str, Any]], skipped: list[dict[str, Any]]) -> list[RuleResult]:
    unreadable = [f for f in files if f["error"]]
    empty = [f for f in files if not f["error"] and f["rows"] == 0]
    # Skipped entries that look like data (a supported suffix, not a job marker) may hold rows the
    # producer meant to deliver: said loudly; markers and other files are only listed.
    data_like = [s for s in skipped if s["reason"] != "marker" and s["name"].lower().endswith(SUPPORTED_SUFFIXES)]
    return [
        RuleResult("source_file_readable", None, not unreadable,
                   unexpected_count=len(unreadable), expected="every landing file and folder can be read and parses",
                   unit="files", samples=tuple(f"{f['name']} ({f['error'][:160]})" for f in unreadable)),
        RuleResult("source_file_not_empty", None, not empty,
                   unexpected_count=len(empty), expected="every landing file has rows", unit="files",
                   samples=tuple(f"{f['name']} (0 rows, {f['bytes']} bytes)" for f in empty)),
        RuleResult("landing_files_skipped", None, not data_like, unit="files",
                   unexpected_count=len(data_like) if data_like else None,
                   expected="no data file skipped (symlinks, hidden and underscore-prefixed files are not read)",
                   samples=tuple(f"{s['name']} ({s['reason'].split(' (')[0]})" for s in data_like)),
    ]


def schema_rules(files: list[dict[str, Any]], cfg: PipelineConfig) -> list[RuleResult]:
    """Schema drift: a changed type quarantines; unknown columns are kept and reported."""
    rules = []
    for column, allowed in EXPECTED_KINDS.items():
        seen = [(f["name"], (f.get("column_kinds") or {}).get(column)) for f in files if not f["error"]]
        wrong = [(name, kind) for name, kind in seen if kind is not None and kind not in allowed]
        severity = severity_of(cfg, "expect_column_type", column)
        if severity == OFF:
            continue
        rules.append(RuleResult(
            "expect_column_type", column, not wrong, severity=severity, unit="files",
            unexpected_count=len(wrong) if wrong else None,
            observed=", ".join(sorted({kind for _, kind in wrong})) or None,
            expected=" or ".join(allowed),
            samples=tuple(f"{name} ({column}: expected {' or '.join(allowed)}, seen {kind})" for name, kind in wrong),
        ))
    extra = sorted({c for f in files for c in (f.get("extra_columns") or ())})
    severity = severity_of(cfg, "unknown_columns", None)
    if severity != OFF:
        rules.append(RuleResult(
            "unknown_columns", None, not extra, severity=severity, unit="columns",
            unexpected_count=len(extra) if extra else None, observed=", ".join(extra) or None,
            expected=f"only the contract's columns ({', '.join(REQUIRED_COLUMNS)}); extras are kept in extra_columns.parquet",
            samples=tuple(f"{f['name']} ({', '.join(f['extra_columns'])})" for f in files if f.get("extra_columns")),
        ))
    return rules


def _sample(source_file: Any, source_row: Any, raw: Any, cause: str, rule: str = "") -> str:
    # NFC and NFD spellings print alike: the escaped form shows which code points arrived.
    shown = ascii(raw) if rule == "id_unicode_form" else repr(raw)
    return f"{source_file}:{source_row} ({shown}: {cause})"


def value_rules(issues: pd.DataFrame, cfg: PipelineConfig) -> list[RuleResult]:
    """The value rules ingest judged, one per (rule, column), passing ones included (so the report
    lists what was checked); each failure names file, row, raw value and cause."""
    checked = [("ts_consistent_form", "ts")] + [
        (rule, column) for column, kind in cfg.validation.id_types.items()
        for rule in ("id_float_form", "id_unicode_form", *(("id_type",) if kind == "integer" else ()))]
    found = issues[issues["rule"].isin(VALUE_RULES)]
    groups = {key: group for key, group in found.groupby(["rule", "column"], sort=False)}
    rules = []
    for rule, column in checked:
        group = groups.get((rule, column))
        count = 0 if group is None else len(group)
        expected = {
            "ts_consistent_form": "one timestamp form per file: epoch in one unit, ISO 8601 with offset, or naive ISO (read as UTC)",
            "id_type": f"{cfg.validation.id_types.get(column)} ids (validation.id_types)",
            "id_float_form": "ids never written as floats (13.0)",
            "id_unicode_form": "ids in Unicode NFC form",
        }[rule]
        rules.append(RuleResult(
            rule, column, count == 0, unexpected_count=count or None, expected=expected,
            observed=None if group is None else f"{group['source_file'].nunique()} file(s)",
            samples=() if group is None else tuple(
                _sample(f, r, raw, cause, rule) for f, r, raw, cause in
                group[["source_file", "source_row", "raw", "cause"]].head(SAMPLE_ROWS).itertuples(index=False)),
        ))
    return rules


def with_derived_columns(rows: pd.DataFrame, day: str) -> pd.DataFrame:
    derived = rows.copy()
    start = pd.Timestamp(day, tz="UTC")
    if "ts" in derived.columns:
        derived["ts_offset_hours"] = (derived["ts"] - start) / pd.Timedelta(hours=1)
    else:
        derived["ts_offset_hours"] = np.nan
    return derived


class ContractSuite:
    """The GX suite, run chunk by chunk for its row-level expectations and once on the day's compact
    frame for the whole-day ones; each expectation's outcome aggregated over the chunks (success if
    every chunk passed, unexpected rows summed, the first samples in day order)."""

    def __init__(self, params: dict[str, Any]):
        # GX logs ~200 INFO lines ("Skipping registering function ...") while importing its public API;
        # they buried the failure summary in the task log.
        logging.getLogger("great_expectations").setLevel(logging.WARNING)
        import great_expectations as gx
        from great_expectations.core.expectation_suite import ExpectationSuite
        from great_expectations.data_context.types.base import ProgressBarsConfig

        spec = json.loads(SUITE_FILE.read_text())
        self.name = spec["name"]
        self.params = params
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self._batches = context.data_sources.add_pandas("landing").add_dataframe_asset("day") \
            .add_batch_definition_whole_dataframe("whole_day")
        whole_day = [e["type"] in WHOLE_DAY_EXPECTATIONS for e in spec["expectations"]]
        self._order = {scope: [i for i, w in enumerate(whole_day) if w == scope] for scope in (False, True)}
        self._suites = {scope: ExpectationSuite(name=spec["name"], meta=spec.get("meta"),
                                                expectations=[spec["expectations"][i] for i in self._order[scope]])
                        for scope in (False, True)}
        self.outcomes: list[dict[str, Any] | None] = [None] * len(spec["expectations"])
        self.chunks = 0

    def _run(self, frame: pd.DataFrame, whole_day: bool) -> None:
        result_format = {"result_format": "SUMMARY", "partial_unexpected_count": SAMPLE_ROWS}
        if not whole_day:
            result_format["unexpected_index_column_names"] = list(LINEAGE_COLUMNS)
        result = self._batches.get_batch(batch_parameters={"dataframe": frame}).validate(
            self._suites[whole_day], result_format=result_format, expectation_parameters=self.params)
        for index, item in zip(self._order[whole_day], result.results):
            config, res = item.expectation_config, item.result or {}
            outcome = self.outcomes[index] or {
                "type": config.type, "kwargs": {k: v for k, v in config.kwargs.items() if k != "batch_id"},
                "success": True, "unexpected_count": None, "element_count": 0, "samples": [],
                "observed_value": res.get("observed_value"), "exception": None}
            outcome["success"] = outcome["success"] and bool(item.success)
            if res.get("unexpected_count") is not None:
                outcome["unexpected_count"] = (outcome["unexpected_count"] or 0) + int(res["unexpected_count"])
            outcome["element_count"] += int(res.get("element_count") or 0)
            outcome["samples"] += (res.get("partial_unexpected_index_list") or [])[:SAMPLE_ROWS - len(outcome["samples"])]
            if item.exception_info and item.exception_info.get("raised_exception") and not outcome["exception"]:
                outcome["exception"] = str(item.exception_info.get("exception_message"))
            self.outcomes[index] = outcome

    def check_rows(self, chunk: pd.DataFrame) -> None:
        """The row-level expectations on one chunk (with its derived columns)."""
        self._run(chunk, whole_day=False)
        self.chunks += 1

    def check_day(self, compact: pd.DataFrame) -> None:
        """The whole-day expectations on the day's compact frame (``compact_day``)."""
        self._run(compact, whole_day=True)

    def record(self) -> dict[str, Any]:
        """What validation.json keeps of GX's work: per expectation, the aggregated outcome."""
        return {"suite": self.name, "chunks": self.chunks, "success": all(o["success"] for o in self.outcomes if o),
                "results": self.outcomes}

    def rules(self, columns: list[str], coerced: pd.DataFrame) -> list[RuleResult]:
        """The suite's rules; a sample whose value coercion turned into null shows its raw value
        and cause (``coerced``: ingest's not-null findings)."""
        # Looked up only for the few sample rows: no per-row Python structure for a broken day's millions.
        raw = coerced.drop_duplicates(["column", "source_file", "source_row"]).set_index(
            ["column", "source_file", "source_row"])[["raw", "cause"]]
        rules = []
        for outcome in self.outcomes:
            kwargs = {k: v for k, v in outcome["kwargs"].items() if k != "column"}
            expected = ", ".join(f"{k}={v}" for k, v in sorted(kwargs.items()))
            column = outcome["kwargs"].get("column")
            samples = tuple(
                _sample(row.get("source_file"), row.get("source_row"), *raw.loc[(column, row.get("source_file"), row.get("source_row"))])
                if outcome["type"] == NOT_NULL_RULE and (column, row.get("source_file"), row.get("source_row")) in raw.index
                else f"{row.get('source_file')}:{row.get('source_row')} ({row.get(column)})"
                for row in outcome["samples"][:SAMPLE_ROWS]
            )
            observed = outcome["observed_value"]
            missing = bool(column) and column not in (*columns, "ts_offset_hours")  # derived: always there
            if missing and outcome["type"] != "expect_column_to_exist":
                # One failure per missing column (expect_column_to_exist); its other rules cannot be judged.
                rules.append(RuleResult(rule=outcome["type"], column=column, success=True, expected=expected,
                                        skipped=f"column {column} missing (see expect_column_to_exist)"))
                continue
            if missing:
                observed = "column missing"  # GX raises inside the expectation; say what happened
            elif outcome["exception"]:
                observed = f"error: {outcome['exception'][:160]}"
            rules.append(RuleResult(rule=outcome["type"], column=column, success=outcome["success"],
                                    observed=plain(observed), unexpected_count=outcome["unexpected_count"],
                                    expected=expected, samples=samples))
        return rules


def compact_day(keys: DayKeys, columns: list[str], repeats: pd.DataFrame) -> pd.DataFrame:
    """The frame GX judges whole-day expectations on: one row per staged row, its event id as an
    exact integer code (a unique id keeps its 63-bit hash; ids whose hash repeats, ``repeats``, are
    numbered from their text, above 2**63, so no hash collision can merge two ids)."""
    if "event_id" not in columns:
        return pd.DataFrame(index=pd.RangeIndex(keys.rows))
    codes = keys.event_id & np.uint64(2**63 - 1)
    codes[repeats.index.to_numpy()] = np.uint64(2**63) + pd.factorize(repeats["event_id"])[0].astype(np.uint64)
    return pd.DataFrame({"event_id": pd.arrays.IntegerArray(codes, ~keys.event_id_present)})
