"""Validate stage: a contract that quarantines and anomaly checks that warn, then accept or quarantine.

Two severities (``validation.severity`` overrides any rule):
- Contract rules quarantine the day: the Great Expectations (GX Core 1.x) suite in
  config/expectations/interactions_daily.json (columns, nulls, event types, timestamps in the
  window, duplicates beyond tolerance, not empty; its ``$PARAMETER``s come from config only), plus
  what GX cannot see: unreadable or empty files and folders, a changed column type per file, the
  value rules ingest judged (ts_consistent_form, id_type, id_float_form; id_unicode_form warns),
  an event id reused with another payload, and content duplicates beyond tolerance.
- Anomaly checks warn: the day's profile (volume, new-user/item shares, top-user and top-item
  shares, events per user, event-type mix) against a robust band (median +- k MAD) of the trailing
  accepted days, same weekday when there are enough; an obviously automated (one-user) day; unknown
  columns (kept in ``extra_columns.parquet``); data files in the partition that were skipped. Warnings are recorded in the result, the manifest and
  the report, logged first, and gateable (``validation_warnings``); they never stop the day.

No cascade: a quarantined day's users/items still count as seen, and its metrics that were normal
stay in the history (those that warned do not), so one bad day makes no later day look new or odd.

Pass: ``accepted/date=D`` is (re)written atomically: events.parquet deduplicated by event_id
(first by ts, file, row), then by content (user, item, ts, type), duplicates.parquet holding every
dropped row with its reason, the unknown columns' sidecar, a deterministic manifest with the day's profile. Re-running a day yields identical files.
Fail: the raw files, all staged rows and the validation result go to
``quarantine/date=D/<attempt>`` with a readable report (an accepted partition the day may have had
is moved there too), and ``DataValidationError`` names each failed rule with counts, file and row.

This module is the stage (scan, judge, accept or quarantine); its parts: contract.py (the GX suite and
file, schema and value rules), duplicates.py, anomalies.py, earlier_days.py (what it reads of the
history it is given), validation_result.py (rule and day results, severities), validation_report.py.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from components.core.catalog import (
    MANIFEST,
    Layout,
    atomic_write_bytes,
    code_version,
    read_json,
    replace_dir,
    staging_dir,
    write_json,
)
from components.core.config import PipelineConfig
from components.core.refs import DayRef, ValidationHistory
from components.data.anomalies import anomaly_rules, bot_rule, day_profile
from components.data.contract import (
    SUITE_FILE,
    ContractSuite,
    compact_day,
    file_rules,
    schema_rules,
    suite_parameters,
    value_rules,
    with_derived_columns,
)
from components.data.duplicates import deduplicate, duplicate_rules, gather
from components.data.earlier_days import EarlierDays, earlier_event_ids, profile_history, seen_before
from components.data.coercion import NOT_NULL_RULE, REQUIRED_COLUMNS
from components.data.ingest import EXTRA_PREFIX, LINEAGE_COLUMNS
from components.data.streaming import NAT_LAST, DayKeys, repeated, staged_chunks, tally, write_in_order
from components.data.validation_report import render_report
from components.data.validation_result import DataValidationError, RuleResult, ValidationResult, with_severity

log = logging.getLogger(__name__)

EXTRA_FILE = "extra_columns.parquet"  # unknown columns of the accepted events (schema drift)


def _accept(layout: Layout, day: str, cfg: PipelineConfig, staged: Path, keys: DayKeys, repeats: pd.DataFrame,
            summary: dict[str, Any], earlier: tuple[np.ndarray, pd.Series]) -> tuple[Path, int, int, int, int]:
    """Deduplicate and publish the day, chunk by chunk. Only rows whose id or content repeats (or
    whose id an earlier day accepted) can be dropped: those are judged exactly, together; every
    other row is kept. Events are written in (ts, file, row) order, one row group per chunk."""
    chunk_rows = cfg.validation.chunk_rows
    # Redeliveries across days too: an event accepted on an earlier day of the window is dropped here.
    earlier, earlier_ids = earlier
    known = np.zeros(keys.rows, dtype=bool)
    known[repeats.index.to_numpy()] = True
    more = gather(staged, earlier & ~known, chunk_rows) if (earlier & ~known).any() else repeats.iloc[:0]
    _, duplicates = deduplicate(pd.concat([repeats, more]).sort_index(), earlier_ids)
    kept = np.ones(keys.rows, dtype=bool)
    kept[duplicates.index.to_numpy()] = False
    rows = np.flatnonzero(kept)
    order = rows[np.lexsort((rows, keys.ts[rows]))]  # by ts (null last), then file and row: day order
    rank = np.full(keys.rows, -1, dtype=np.int64)
    rank[order] = np.arange(order.size)
    start = pd.Timestamp(day, tz="UTC")
    span = (int(start.value // 1000), int((start + pd.Timedelta(days=1)).value // 1000))
    times = keys.ts[rows]
    late = int(((times != NAT_LAST) & ((times < span[0]) | (times >= span[1]))).sum())

    def events_of(chunk: pd.DataFrame) -> pd.DataFrame:
        events = chunk[kept[chunk.index.start:chunk.index.stop]] if len(chunk) else chunk
        return events.assign(weight=events["event_type"].map(cfg.data.event_weights).astype("float64"),
                             late=(events["ts"] < start) | (events["ts"] >= start + pd.Timedelta(days=1)))

    columns = [*REQUIRED_COLUMNS, "weight", "late", *LINEAGE_COLUMNS]
    extras = [c for c in pq.read_schema(staged).names if c.startswith(EXTRA_PREFIX)]
    with staging_dir(layout.root / "accepted") as tmp:
        outputs = {tmp / "events.parquet": lambda events: events[columns]}
        if extras:  # schema drift: unknown columns travel beside the events, row for row
            outputs[tmp / EXTRA_FILE] = lambda events: events[["event_id", *LINEAGE_COLUMNS, *extras]].rename(
                columns=lambda c: c.removeprefix(EXTRA_PREFIX))
        write_in_order((events_of(c) for c in staged_chunks(staged, chunk_rows)), rank, chunk_rows, tmp / "spill", outputs)
        duplicates.reset_index(drop=True).to_parquet(tmp / "duplicates.parquet", index=False)
        content = int((duplicates["duplicate_of"] == "content").sum())
        write_json(tmp / MANIFEST, {
            "day": day,
            "rows_in": int(keys.rows),
            "rows_accepted": int(order.size),
            "rows_duplicate_dropped": int(len(duplicates)),
            "rows_duplicate_of_earlier_days": int((duplicates["duplicate_of"] == "event_id of an earlier day").sum()),
            "rows_content_duplicate_dropped": content,
            "rows_late": late,
            "unknown_columns": [c.removeprefix(EXTRA_PREFIX) for c in extras],
            "config_hash": cfg.config_hash("validate"),
            "code_version": code_version(),
            **summary,
        })
        replace_dir(tmp, layout.accepted(day))
    return layout.accepted(day), int(order.size), len(duplicates), late, content


def _quarantine(layout: Layout, day: str, landing: str, files: list[dict[str, Any]], skipped: list[dict[str, Any]],
                staged: Path, gx_json: dict[str, Any] | None, result: ValidationResult) -> Path:
    import fsspec

    attempt = hashlib.sha256("".join(sorted(f["sha256"] or f"{f['name']}:{f['error']}" for f in files)).encode()).hexdigest()[:12]
    target = layout.quarantine(day) / attempt
    with staging_dir(layout.quarantine(day)) as tmp:
        fs, base = fsspec.core.url_to_fs(landing)
        (tmp / "raw").mkdir()
        for source in files:  # exactly the files that were ingested (and hashed), nothing listed later
            if source["sha256"] is None:  # could not be read at ingest (permission): named in the report
                continue
            copy = tmp / "raw" / source["name"]
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(fs.cat_file(f"{base.rstrip('/')}/{source['name']}"))
        shutil.copyfile(staged, tmp / "rows.parquet")  # every staged row, as staged (no frame in memory)
        if layout.accepted(day).exists():  # a previously accepted version of the day is superseded, not lost
            shutil.copytree(layout.accepted(day), tmp / "superseded_accepted")
        write_json(tmp / "validation.json", {"result": asdict(result), "great_expectations": gx_json})
        markdown, page = render_report(result, files, skipped)
        (tmp / "report.md").write_text(markdown)
        (tmp / "report.html").write_text(page)
        replace_dir(tmp, target)
    if layout.accepted(day).exists():
        shutil.rmtree(layout.accepted(day))
    return target


def accept_day(layout: Layout, day: str, cfg: PipelineConfig, staged: Path, keys: DayKeys, repeats: pd.DataFrame,
               files: list[dict], skipped: list[dict], rules: list[RuleResult], profile: dict, gx_json: Any,
               base: dict[str, Any], earlier: tuple[np.ndarray, pd.Series]) -> ValidationResult:
    """Publish a day that passed: its accepted partition, the validation record and reports, the log lines.
    ``earlier``: the rows whose event id an earlier day accepted, and those ids (``earlier_event_ids``)."""
    reports = layout.reports(day) / "validation"
    summary = {"files": files, "skipped": skipped, "rules_checked": len(rules), "suite": SUITE_FILE.name, "profile": profile,
               "warnings": [r.describe() for r in rules if r.verdict == "WARN"]}
    path, accepted, dups, late, content = _accept(layout, day, cfg, staged, keys, repeats, summary, earlier)
    result = ValidationResult(**base, accepted_rows=accepted, duplicate_rows=dups, late_rows=late,
                              quarantined_rows=0, version=layout.partition_version("accepted", day), path=str(path),
                              report_path=str(reports / "report.html"), content_duplicate_rows=content)
    markdown, page = render_report(result, files, skipped)
    write_json(reports / "validation.json", {"result": asdict(result), "great_expectations": gx_json})
    atomic_write_bytes(reports / "report.md", markdown.encode())
    atomic_write_bytes(reports / "report.html", page.encode())
    if result.warnings:
        log.warning("validate %s: PASSED with %d WARNING(S); report %s\n%s", day, len(result.warnings),
                    result.report_path, "\n".join(f"  - {line}" for line in result.summary_lines()))
    log.info("validate %s: PASSED %d rules; %d rows in = %d accepted + %d duplicates dropped (%d by content); "
             "%d late; %d files read, %d skipped", day, len(rules), keys.rows, accepted, dups,
             result.content_duplicate_rows, late, len(files), len(skipped))
    return result


def scan_day(staged: Path, day: str, cfg: PipelineConfig, suite: ContractSuite | None) -> DayKeys:
    """One pass over the staged day, a chunk (``validation.chunk_rows``) at a time: the GX suite's
    row-level expectations on each chunk, and the compact keys every cross-chunk rule needs."""
    keys = DayKeys(pq.ParquetFile(staged).metadata.num_rows)
    for number, chunk in enumerate(staged_chunks(staged, cfg.validation.chunk_rows), start=1):
        keys.add(chunk)
        if suite is not None:
            suite.check_rows(with_derived_columns(chunk, day))
        if number % 5 == 0:
            log.info("validate %s: %d of %d rows checked", day, chunk.index.stop, keys.rows)
    return keys


def read_repeats(staged: Path, keys: DayKeys, columns: list[str], chunk_rows: int
                 ) -> tuple[pd.DataFrame, np.ndarray, dict[int, dict[str, str]]]:
    """Every row whose event id or content repeats, read back whole (the exact judges of duplicates);
    which rows repeat an event id; the ids of the rows where the day's top user and item first occur."""
    id_repeats = repeated(keys.event_id, keys.event_id_present)
    repeated_rows = id_repeats | (repeated(keys.content) if set(REQUIRED_COLUMNS) <= set(columns) else False)
    users, items = tally(keys.user, keys.user_present), tally(keys.item, keys.item_present)
    tops = np.zeros(keys.rows, dtype=bool)
    tops[[p for p in (users.top_position, items.top_position) if p >= 0]] = True
    gathered = gather(staged, repeated_rows | tops, chunk_rows)
    top_names = {p: {c: str(gathered.at[p, c]) for c in ("user_id", "item_id") if c in columns}
                 for p in gathered.index[tops[gathered.index.to_numpy()]]}
    return gathered[repeated_rows[gathered.index.to_numpy()]], id_repeats, top_names


def run_validate(layout: Layout, day: str, cfg: PipelineConfig, staged: DayRef,
                 history: ValidationHistory) -> ValidationResult:
    """Validate the staged day ``staged`` (what ingest returned) against the earlier days ``history``
    (every accepted and quarantined day before it); accept it (warnings recorded; the result is an
    AcceptedRef) or quarantine it (raising DataValidationError). Streams in chunks of ``validation.chunk_rows``
    (compact keys cross chunks: streaming.py); verdict, counts and accepted rows do not depend on the chunk size."""
    if staged.day != day:
        raise ValueError(f"validate {day}: given the staged day {staged.day} (v{staged.version})")
    staging = layout.partition(staged)
    earlier_days = EarlierDays.located(layout, day, history)
    manifest = read_json(staging / "files.json")
    files, skipped = manifest["files"], manifest.get("skipped", [])
    rows_file = staging / "rows.parquet"
    columns = pq.read_schema(rows_file).names
    issues = pd.read_parquet(staging / "issues.parquet")
    params = suite_parameters(cfg)
    chunk_rows = cfg.validation.chunk_rows
    suite = ContractSuite(params) if any(c in columns for c in REQUIRED_COLUMNS) else None
    keys = scan_day(rows_file, day, cfg, suite)
    complete = set(REQUIRED_COLUMNS) <= set(columns)
    repeats, id_repeats, top_names = read_repeats(rows_file, keys, columns, chunk_rows)
    seen = seen_before(earlier_days, keys, chunk_rows)
    profile = day_profile(keys, columns, seen, judged_new=bool(earlier_days), top_names=top_names)
    profiles, held = profile_history(earlier_days, day, cfg)
    notes = [f"anomaly history: {len(profiles)} days in the {cfg.validation.anomaly_lookback_days}-day lookback, "
             f"{held} of them quarantined (only their metrics judged normal count); judged from {cfg.validation.min_history_days}"]
    rules = file_rules(files, skipped) + schema_rules(files, cfg) + value_rules(issues, cfg)
    gx_json = None
    if suite is not None:
        suite.check_day(compact_day(keys, columns, repeats[id_repeats[repeats.index.to_numpy()]]))
        rules += suite.rules(columns, issues[issues["rule"] == NOT_NULL_RULE])
        gx_json = suite.record()
    else:
        rules.append(RuleResult("expect_table_row_count_to_be_between", None, False, observed=0,
                                expected=f"min_value={params['min_rows']}"))
    earlier = earlier_event_ids(earlier_days, day, keys, cfg) if complete else None
    rules += duplicate_rules(earlier_days, day, cfg, rows_file, keys, repeats, earlier[0]) if complete else []
    rules = with_severity(rules, cfg)
    rules += anomaly_rules(profile, profiles, day, cfg) + [r for r in (bot_rule(profile, cfg),) if r is not None]
    success = not any(r.verdict == "FAIL" for r in rules)
    unknown = tuple(sorted({c for f in files for c in (f.get("extra_columns") or ())}))
    base = dict(day=day, success=success, rows=keys.rows, rules=tuple(rules), parameters=params, notes=tuple(notes),
                profile=profile, unknown_columns=unknown, files_read=len(files), files_skipped=len(skipped))
    if success:
        return accept_day(layout, day, cfg, rows_file, keys, repeats, files, skipped, rules, profile, gx_json, base,
                          earlier)
    pending = ValidationResult(**base, accepted_rows=0, duplicate_rows=0, late_rows=0, quarantined_rows=keys.rows)
    target = _quarantine(layout, day, manifest["landing"], files, skipped, rows_file, gx_json, pending)
    result = replace(pending, quarantine_path=str(target), report_path=str(target / "report.html"))
    file_names = ", ".join(f["name"] for f in files)
    # Summary first, one line per failed rule: the Airflow log view clips long lines and long logs.
    message = "\n".join([
        f"validation FAILED for {day}: {len(result.failed)} rule(s) failed, {keys.rows} rows quarantined "
        f"({len(files)} files read, {len(skipped)} skipped)",
        *(f"  - {line}" for line in result.summary_lines()),
        f"landing files: {file_names}",
        f"report: {target / 'report.html'}",
    ])
    # Not logged here: the exception is the one record of it (Airflow's task log, the CLI's stderr).
    raise DataValidationError(message, str(target / "report.html"))
