"""Validate stage: Great Expectations (GX Core 1.x) on a staged day, then accept or quarantine.

The suite lives in the repo (config/expectations/interactions_daily.json); its thresholds are
``$PARAMETER``s filled from ValidationConfig and the trailing history of accepted days. File-level
rules GX cannot see (a file that cannot be parsed, an empty file) are checked beside it and
reported the same way.

Pass: ``accepted/date=D`` is (re)written atomically: events.parquet deduplicated by event_id
(first by ts, file, row), duplicates.parquet holding every dropped redelivery, a deterministic
manifest. Re-running a day yields byte-identical files.
Fail: the raw files, all staged rows and the validation result go to
``quarantine/date=D/<attempt>`` with a readable report (an accepted partition the day may have had
is moved there too), and ``DataValidationError`` names each failed rule with counts, file and row.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import REPO_ROOT, PipelineConfig
from components.errors import PermanentStageFailure
from components.ingest import LINEAGE_COLUMNS, REQUIRED_COLUMNS
from components.storage import (
    MANIFEST,
    Layout,
    atomic_write_bytes,
    code_version,
    read_json,
    replace_dir,
    staging_dir,
    write_json,
)

log = logging.getLogger(__name__)

SUITE_FILE = REPO_ROOT / "config" / "expectations" / "interactions_daily.json"
MIN_HISTORY_DAYS = 3
SAMPLE_ROWS = 5


class DataValidationError(PermanentStageFailure):
    """A day failed validation; it is quarantined. The message names every failed rule."""

    def __init__(self, message: str, report_path: str):
        super().__init__(message)
        self.report_path = report_path


@dataclass(frozen=True)
class RuleResult:
    rule: str
    column: str | None
    success: bool
    observed: Any = None
    unexpected_count: int | None = None
    expected: str = ""
    samples: tuple[str, ...] = ()  # "file:row (value)"
    unit: str = "rows"

    def describe(self) -> str:
        target = f"({self.column})" if self.column else ""
        parts = [f"{self.rule}{target}"]
        if self.unexpected_count is not None:
            parts.append(f"{self.unexpected_count} {self.unit}")
        if self.observed is not None:
            parts.append(f"observed {self.observed}")
        if self.expected:
            parts.append(f"expected {self.expected}")
        if self.samples:
            parts.append("e.g. " + ", ".join(self.samples[:3]))
        return parts[0] + (": " + "; ".join(parts[1:]) if len(parts) > 1 else "")


@dataclass(frozen=True)
class ValidationResult:
    day: str
    success: bool
    rows: int
    accepted_rows: int
    duplicate_rows: int
    late_rows: int
    quarantined_rows: int
    rules: tuple[RuleResult, ...]
    parameters: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    accepted_path: str | None = None
    quarantine_path: str | None = None
    report_path: str | None = None

    @property
    def failed(self) -> tuple[RuleResult, ...]:
        return tuple(r for r in self.rules if not r.success)


# --- parameters from config and history ------------------------------------------------------


def _trailing_volume(layout: Layout, day: str, lookback: int) -> list[int]:
    prior = [d for d in layout.accepted_days() if d < day][-lookback:]
    return [read_json(layout.accepted(d) / MANIFEST)["rows_accepted"] for d in prior]


def _known_ids(layout: Layout, day: str) -> tuple[set[str], set[str]] | None:
    """Users and items known before ``day``: the newest graph's append-only ID maps."""
    ref = layout.latest_before("graphs", day)
    if ref is None:
        return None
    users = pd.read_parquet(Path(ref.path) / "users.parquet", columns=["user_id"])["user_id"]
    items = pd.read_parquet(Path(ref.path) / "items.parquet", columns=["item_id"])["item_id"]
    return set(users), set(items)


def suite_parameters(layout: Layout, day: str, cfg: PipelineConfig) -> tuple[dict[str, Any], list[str]]:
    v = cfg.validation
    notes: list[str] = []
    volumes = _trailing_volume(layout, day, v.volume_lookback_days)
    min_rows, max_rows = v.min_rows, None
    if len(volumes) >= MIN_HISTORY_DAYS:
        median = float(np.median(volumes))
        min_rows = max(v.min_rows, int(np.floor(v.volume_band[0] * median)))
        max_rows = int(np.ceil(v.volume_band[1] * median))
        notes.append(f"volume band {v.volume_band} x trailing median {median:.0f} of {len(volumes)} accepted days")
    else:
        notes.append(f"volume band not applied: {len(volumes)} accepted days of history (< {MIN_HISTORY_DAYS}); floor {v.min_rows} rows")
    tol = cfg.data.late_tolerance_hours
    params = {
        "event_types": sorted(cfg.data.event_weights),
        "ts_offset_min_hours": -tol,
        "ts_offset_max_hours": 24.0 + tol,
        "min_unique_event_share": 1.0 - v.max_duplicate_share,
        "min_rows": min_rows,
        "max_rows": max_rows,
        "max_new_user_share": v.max_new_user_share,
        "max_new_item_share": v.max_new_item_share,
    }
    return params, notes


# --- checks ----------------------------------------------------------------------------------


def _with_derived_columns(rows: pd.DataFrame, day: str, known: tuple[set[str], set[str]] | None) -> pd.DataFrame:
    derived = rows.copy()
    start = pd.Timestamp(day, tz="UTC")
    if "ts" in derived.columns:
        derived["ts_offset_hours"] = (derived["ts"] - start) / pd.Timedelta(hours=1)
    else:
        derived["ts_offset_hours"] = np.nan
    for column, flag, ids in (("user_id", "is_new_user", 0), ("item_id", "is_new_item", 1)):
        if known is None or column not in derived.columns:
            derived[flag] = 0.0  # no history yet: nothing can be judged new
        else:
            derived[flag] = (~derived[column].isin(known[ids])).astype(float)
    return derived


def _file_rules(files: list[dict[str, Any]]) -> list[RuleResult]:
    unreadable = [f for f in files if f["error"]]
    empty = [f for f in files if not f["error"] and f["rows"] == 0]
    return [
        RuleResult("source_file_readable", None, not unreadable,
                   unexpected_count=len(unreadable), expected="every landing file parses", unit="files",
                   samples=tuple(f"{f['name']} ({f['error'][:120]})" for f in unreadable)),
        RuleResult("source_file_not_empty", None, not empty,
                   unexpected_count=len(empty), expected="every landing file has rows", unit="files",
                   samples=tuple(f"{f['name']} (0 rows, {f['bytes']} bytes)" for f in empty)),
    ]


def _gx_rules(frame: pd.DataFrame, params: dict[str, Any]) -> tuple[list[RuleResult], dict[str, Any]]:
    import great_expectations as gx
    from great_expectations.core.expectation_suite import ExpectationSuite
    from great_expectations.data_context.types.base import ProgressBarsConfig

    spec = json.loads(SUITE_FILE.read_text())
    suite = ExpectationSuite(name=spec["name"], expectations=spec["expectations"], meta=spec.get("meta"))
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas("landing")
        .add_dataframe_asset("day")
        .add_batch_definition_whole_dataframe("whole_day")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    result = batch.validate(
        suite,
        result_format={
            "result_format": "COMPLETE",
            "unexpected_index_column_names": list(LINEAGE_COLUMNS),
            "partial_unexpected_count": SAMPLE_ROWS,
        },
        expectation_parameters=params,
    )
    rules = []
    for item in result.results:
        config = item.expectation_config
        kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "column")}
        expected = ", ".join(f"{k}={v}" for k, v in sorted(kwargs.items()))
        res = item.result or {}
        samples = tuple(
            f"{row.get('source_file')}:{row.get('source_row')} ({row.get(config.kwargs.get('column'))})"
            for row in (res.get("partial_unexpected_index_list") or [])[:SAMPLE_ROWS]
        )
        observed = res.get("observed_value")
        if item.exception_info and item.exception_info.get("raised_exception"):
            observed = f"error: {str(item.exception_info.get('exception_message'))[:160]}"
        rules.append(
            RuleResult(
                rule=config.type,
                column=config.kwargs.get("column"),
                success=bool(item.success),
                observed=_plain(observed),
                unexpected_count=res.get("unexpected_count"),
                expected=expected,
                samples=samples,
            )
        )
    return rules, result.to_json_dict()


def _plain(value: Any) -> Any:
    if isinstance(value, (np.floating, float)):
        return round(float(value), 6)
    if isinstance(value, np.integer):
        return int(value)
    return value


# --- outcomes --------------------------------------------------------------------------------


def render_report(result: ValidationResult, files: list[dict[str, Any]]) -> tuple[str, str]:
    """A readable report as (markdown, html)."""
    status = "PASSED" if result.success else "FAILED: day quarantined"
    md = [f"# Validation {result.day}: {status}", "",
          f"rows {result.rows}, accepted {result.accepted_rows}, duplicates dropped {result.duplicate_rows}, "
          f"late {result.late_rows}, quarantined {result.quarantined_rows}", "",
          "| rule | column | verdict | observed | unexpected rows | expected | examples (file:row) |",
          "|---|---|---|---|---|---|---|"]
    for r in result.rules:
        md.append(f"| {r.rule} | {r.column or ''} | {'pass' if r.success else '**FAIL**'} | {r.observed if r.observed is not None else ''} "
                  f"| {'' if r.unexpected_count is None else r.unexpected_count} | {r.expected} | {'; '.join(r.samples)} |")
    md += ["", "## Files", "", "| file | bytes | rows | sha256 | error |", "|---|---|---|---|---|"]
    md += [f"| {f['name']} | {f['bytes']} | {f['rows']} | {f['sha256'][:12]} | {f['error'] or ''} |" for f in files]
    md += ["", "## Notes", ""] + [f"- {n}" for n in result.notes]
    rows_html = "".join(
        f"<tr class={'ok' if r.success else 'bad'}><td>{html.escape(r.rule)}</td><td>{html.escape(r.column or '')}</td>"
        f"<td>{'pass' if r.success else 'FAIL'}</td><td>{html.escape(str(r.observed if r.observed is not None else ''))}</td>"
        f"<td>{'' if r.unexpected_count is None else r.unexpected_count}</td><td>{html.escape(r.expected)}</td>"
        f"<td>{html.escape('; '.join(r.samples))}</td></tr>"
        for r in result.rules
    )
    files_html = "".join(
        f"<tr><td>{html.escape(f['name'])}</td><td>{f['bytes']}</td><td>{f['rows']}</td><td>{html.escape(f['error'] or '')}</td></tr>"
        for f in files
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Validation {result.day}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px}}
tr.bad{{background:#fdd}}tr.ok{{background:#efe}}</style></head><body>
<h1>Validation {result.day}: {html.escape(status)}</h1>
<p>rows {result.rows}, accepted {result.accepted_rows}, duplicates dropped {result.duplicate_rows}, late {result.late_rows}, quarantined {result.quarantined_rows}</p>
<table><tr><th>rule</th><th>column</th><th>verdict</th><th>observed</th><th>unexpected rows</th><th>expected</th><th>examples (file:row)</th></tr>{rows_html}</table>
<h2>Files</h2><table><tr><th>file</th><th>bytes</th><th>rows</th><th>error</th></tr>{files_html}</table>
<h2>Notes</h2><ul>{''.join(f'<li>{html.escape(n)}</li>' for n in result.notes)}</ul></body></html>"""
    return "\n".join(md) + "\n", page


def _earlier_event_ids(layout: Layout, day: str, window_days: int) -> pd.Series:
    start = (dt.date.fromisoformat(day) - dt.timedelta(days=window_days)).isoformat()
    days = [d for d in layout.accepted_days() if start <= d < day]
    if not days:
        return pd.Series([], dtype="string")
    return pd.concat([pd.read_parquet(layout.accepted(d) / "events.parquet", columns=["event_id"])["event_id"]
                      for d in days], ignore_index=True)


def _accept(layout: Layout, day: str, rows: pd.DataFrame, cfg: PipelineConfig, summary: dict[str, Any]) -> tuple[Path, int, int, int]:
    ordered = rows.sort_values(["ts", "source_file", "source_row"], kind="stable")
    # Redeliveries across days too: an event accepted on an earlier day of the window is dropped here.
    earlier = _earlier_event_ids(layout, day, cfg.graph.window_days)
    seen_before = ordered["event_id"].isin(earlier)
    first = ~ordered["event_id"].duplicated(keep="first") & ~seen_before
    events = ordered[first].copy()
    duplicates = ordered[~first].copy()
    start = pd.Timestamp(day, tz="UTC")
    events["weight"] = events["event_type"].map(cfg.data.event_weights).astype("float64")
    events["late"] = (events["ts"] < start) | (events["ts"] >= start + pd.Timedelta(days=1))
    columns = [*REQUIRED_COLUMNS, "weight", "late", *LINEAGE_COLUMNS]
    with staging_dir(layout.root / "accepted") as tmp:
        events[columns].reset_index(drop=True).to_parquet(tmp / "events.parquet", index=False)
        duplicates.reset_index(drop=True).to_parquet(tmp / "duplicates.parquet", index=False)
        write_json(tmp / MANIFEST, {
            "day": day,
            "rows_in": int(len(rows)),
            "rows_accepted": int(len(events)),
            "rows_duplicate_dropped": int(len(duplicates)),
            "rows_duplicate_of_earlier_days": int(seen_before.sum()),
            "rows_late": int(events["late"].sum()),
            "config_hash": cfg.config_hash("validate"),
            "code_version": code_version(),
            **summary,
        })
        replace_dir(tmp, layout.accepted(day))
    return layout.accepted(day), len(events), len(duplicates), int(events["late"].sum())


def _quarantine(layout: Layout, day: str, landing: str, files: list[dict[str, Any]], rows: pd.DataFrame,
                gx_json: dict[str, Any] | None, result: ValidationResult) -> Path:
    import fsspec

    attempt = hashlib.sha256("".join(sorted(f["sha256"] for f in files)).encode()).hexdigest()[:12]
    target = layout.quarantine(day) / attempt
    with staging_dir(layout.quarantine(day)) as tmp:
        fs, base = fsspec.core.url_to_fs(landing)
        (tmp / "raw").mkdir()
        for source in files:  # exactly the files that were ingested (and hashed), nothing listed later
            (tmp / "raw" / source["name"]).write_bytes(fs.cat_file(f"{base.rstrip('/')}/{source['name']}"))
        rows.to_parquet(tmp / "rows.parquet", index=False)
        if layout.accepted(day).exists():  # a previously accepted version of the day is superseded, not lost
            shutil.copytree(layout.accepted(day), tmp / "superseded_accepted")
        write_json(tmp / "validation.json", {"result": asdict(result), "great_expectations": gx_json})
        markdown, page = render_report(result, files)
        (tmp / "report.md").write_text(markdown)
        (tmp / "report.html").write_text(page)
        replace_dir(tmp, target)
    if layout.accepted(day).exists():
        shutil.rmtree(layout.accepted(day))
    return target


def run_validate(layout: Layout, day: str, cfg: PipelineConfig) -> ValidationResult:
    """Validate the staged day; accept it or quarantine it (raising DataValidationError)."""
    staging = layout.staging(day)
    if not (staging / "files.json").exists():
        raise FileNotFoundError(f"{staging}: no staged data for {day}; run ingest first")
    manifest = read_json(staging / "files.json")
    files = manifest["files"]
    rows = pd.read_parquet(staging / "rows.parquet")
    params, notes = suite_parameters(layout, day, cfg)
    history = sum(1 for d in layout.accepted_days() if d < day)
    # With a short history almost everyone is "new": judge the shares only once it is meaningful.
    known = _known_ids(layout, day) if history >= MIN_HISTORY_DAYS else None
    if known is None:
        notes.append(f"new user/item shares not judged: {history} accepted days of history (< {MIN_HISTORY_DAYS}) or no earlier graph")
    rules = _file_rules(files)
    gx_json = None
    if len(rows.columns) > len(LINEAGE_COLUMNS):
        gx_rules, gx_json = _gx_rules(_with_derived_columns(rows, day, known), params)
        rules += gx_rules
    else:
        rules.append(RuleResult("expect_table_row_count_to_be_between", None, False, observed=0,
                                expected=f"min_value={params['min_rows']}"))
    success = all(r.success for r in rules)
    base = dict(day=day, success=success, rows=len(rows), rules=tuple(rules), parameters=params, notes=tuple(notes))
    reports = layout.reports(day) / "validation"
    if success:
        summary = {"files": files, "rules_checked": len(rules), "suite": SUITE_FILE.name}
        path, accepted, dups, late = _accept(layout, day, rows, cfg, summary)
        result = ValidationResult(**base, accepted_rows=accepted, duplicate_rows=dups, late_rows=late,
                                  quarantined_rows=0, accepted_path=str(path), report_path=str(reports / "report.html"))
        markdown, page = render_report(result, files)
        write_json(reports / "validation.json", {"result": asdict(result), "great_expectations": gx_json})
        atomic_write_bytes(reports / "report.md", markdown.encode())
        atomic_write_bytes(reports / "report.html", page.encode())
        log.info("validate %s: PASSED %d rules; accepted %d rows (%d duplicates dropped, %d late)",
                 day, len(rules), accepted, dups, late)
        return result
    pending = ValidationResult(**base, accepted_rows=0, duplicate_rows=0, late_rows=0, quarantined_rows=len(rows))
    target = _quarantine(layout, day, manifest["landing"], files, rows, gx_json, pending)
    result = replace(pending, quarantine_path=str(target), report_path=str(target / "report.html"))
    failed = "\n".join(f"  - {r.describe()}" for r in result.failed)
    file_names = ", ".join(f["name"] for f in files)
    message = (f"validation failed for {day} (landing files: {file_names}); {len(rows)} rows quarantined to "
               f"{target}; report {target / 'report.html'}; failed rules:\n{failed}")
    log.error(message)
    raise DataValidationError(message, str(target / "report.html"))
