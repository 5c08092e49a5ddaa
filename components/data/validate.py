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
import pyarrow.parquet as pq

from components.core.config import ANOMALY_METRICS, REPO_ROOT, PipelineConfig
from components.core.errors import PermanentStageFailure
from components.core.refs import DayRef, ValidationHistory
from components.data.ingest import (
    EXPECTED_KINDS,
    EXTRA_PREFIX,
    LINEAGE_COLUMNS,
    NOT_NULL_RULE,
    REQUIRED_COLUMNS,
    SUPPORTED_SUFFIXES,
)
from components.data.streaming import (
    NAT_LAST,
    DayKeys,
    in_sorted,
    mark_seen,
    repeated,
    staged_chunks,
    tally,
    text_keys,
    write_in_order,
)
from components.core.catalog import (
    MANIFEST,
    Layout,
    atomic_write_bytes,
    code_version,
    quarantine_attempts,
    read_json,
    replace_dir,
    staging_dir,
    write_json,
)

log = logging.getLogger(__name__)

SUITE_FILE = REPO_ROOT / "config" / "expectations" / "interactions_daily.json"
SAMPLE_ROWS = 5
EXTRA_FILE = "extra_columns.parquet"  # unknown columns of the accepted events (schema drift)
QUARANTINE, WARN, OFF = "quarantine", "warn", "off"
# Rules that warn unless config says otherwise; every other rule (the GX contract suite, file and
# type rules) quarantines. validation.severity overrides either.
DEFAULT_SEVERITY: dict[str, str] = {"unknown_columns": WARN, "bot_suspect": WARN, "landing_files_skipped": WARN,
                                    "id_unicode_form": WARN, **{m: WARN for m in ANOMALY_METRICS}}
# Value rules judged at ingest (components/data/ingest.py records each finding with file, row, raw value
# and cause); the not-null rule shows the raw value of what coercion turned into null.
VALUE_RULES = ("ts_consistent_form", "id_type", "id_float_form", "id_unicode_form")
PAYLOAD = ("user_id", "item_id", "ts", "event_type")  # what an event says; its id only names it
LOG_SCALE = ("volume", "events_per_user")  # vary multiplicatively: judged on log values
TWO_SIDED = ("volume",)  # the rest only warn when high (a drop in new users is no alarm)


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
    severity: str = QUARANTINE  # what a failure does: quarantine the day, or warn
    band: tuple[float | None, float | None] | None = None  # anomaly checks: the accepted band
    skipped: str = ""  # why the rule was not judged (reported as skipped, never as passed)

    @property
    def name(self) -> str:
        return f"{self.rule}({self.column})" if self.column else self.rule

    @property
    def verdict(self) -> str:
        if self.skipped:
            return "skipped"
        if self.success:
            return "pass"
        return "FAIL" if self.severity == QUARANTINE else "WARN"

    def describe(self) -> str:
        parts = [self.name]
        details = []
        if self.unexpected_count is not None:
            details.append(f"{self.unexpected_count} {self.unit}")
        if self.observed is not None:
            details.append(f"observed {self.observed}")
        if self.expected:
            details.append(f"expected {self.expected}")
        if self.samples:
            details.append("e.g. " + ", ".join(self.samples[:3]))
        return parts[0] + (": " + "; ".join(details) if details else "")


@dataclass(frozen=True)
class ValidationResult:
    day: str
    success: bool  # no quarantine-severity rule failed (warnings do not stop the day)
    rows: int
    accepted_rows: int
    duplicate_rows: int
    late_rows: int
    quarantined_rows: int
    rules: tuple[RuleResult, ...]
    content_duplicate_rows: int = 0  # of duplicate_rows: same (user, item, ts, type) under another event id
    files_read: int = 0
    files_skipped: int = 0  # entries of the partition not read, each listed with its reason
    parameters: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    version: str | None = None  # the accepted partition's content hash: with day and path, an AcceptedRef
    path: str | None = None  # accepted/date=<day>/ (None: quarantined)
    quarantine_path: str | None = None
    report_path: str | None = None
    profile: dict[str, Any] = field(default_factory=dict)  # the day's metrics the anomaly checks judge
    unknown_columns: tuple[str, ...] = ()

    @property
    def failed(self) -> tuple[RuleResult, ...]:
        """Rules that quarantine the day."""
        return tuple(r for r in self.rules if r.verdict == "FAIL")

    @property
    def warnings(self) -> tuple[RuleResult, ...]:
        """Anomalies: recorded, reported and gateable, but the day goes on."""
        return tuple(r for r in self.rules if r.verdict == "WARN")

    def summary_lines(self) -> list[str]:
        """One line per failed rule, quarantining ones first: what the log shows first."""
        # A missing column fails every rule on it: its existence rule, the cause, comes first.
        failed = sorted(self.failed, key=lambda r: r.rule != "expect_column_to_exist")
        return [f"{r.verdict} {r.describe()}" for r in (*failed, *self.warnings)]


def severity_of(cfg: PipelineConfig, rule: str, column: str | None) -> str:
    overrides = cfg.validation.severity
    name = f"{rule}({column})" if column else rule
    return overrides.get(name) or overrides.get(rule) or DEFAULT_SEVERITY.get(rule, QUARANTINE)


# --- parameters, history and the day's profile ------------------------------------------------


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


@dataclass(frozen=True)
class EarlierDays:
    """The days a ``ValidationHistory`` names, located once under the root (``Layout.partition`` checks
    each against its version): accepted partitions, and quarantined days with their attempts, oldest first."""

    accepted: tuple[tuple[str, Path], ...]
    quarantined: tuple[tuple[str, tuple[Path, ...]], ...]

    @classmethod
    def located(cls, layout: Layout, day: str, history: ValidationHistory) -> "EarlierDays":
        later = [r.day for r in (*history.accepted, *history.quarantined) if r.day >= day]
        if later:
            raise ValueError(f"validate {day}: the history must hold earlier days only, got {sorted(set(later))}")
        return cls(accepted=tuple((r.day, layout.partition(r)) for r in history.accepted),
                   quarantined=tuple((r.day, tuple(quarantine_attempts(layout.partition(r))))
                                     for r in history.quarantined))

    def accepted_since(self, start: str) -> list[tuple[str, Path]]:
        return [(d, path) for d, path in self.accepted if start <= d]

    def __bool__(self) -> bool:  # any earlier day at all: only then can a user or item be new
        return bool(self.accepted or self.quarantined)


def _present_keys(chunk: pd.DataFrame, column: str) -> np.ndarray:
    keys, present = text_keys(chunk[column])
    return keys[present]


def _seen_before(earlier_days: EarlierDays, keys: DayKeys, chunk_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: was its user / item seen on any earlier day, accepted or quarantined.

    Quarantined rows count as seen: the people behind a held day are not new the day after, so one
    bad day cannot make the following days look new (no cascade). Bounded: the day's own distinct
    keys, marked while earlier days stream past a chunk at a time (a 64-bit hash collision could
    count one new user as seen: ~1e-5 per 20 M-row day, in an anomaly share only)."""
    sources = [path / "events.parquet" for _, path in earlier_days.accepted]
    sources += [a / "rows.parquet" for _, attempts in earlier_days.quarantined for a in attempts
                if (a / "rows.parquet").exists()]
    marks = {}
    for column, ids, present in (("user_id", keys.user, keys.user_present), ("item_id", keys.item, keys.item_present)):
        unique = np.unique(ids[present])
        seen = np.zeros(unique.size, dtype=bool)
        for path in sources:
            if column in pq.read_schema(path).names:  # a quarantined day may lack the column
                mark_seen(unique, seen, (_present_keys(c, column) for c in staged_chunks(path, chunk_rows, [column])))
        marks[column] = present & in_sorted(unique[seen], ids)
    return marks["user_id"], marks["item_id"]


def day_profile(keys: DayKeys, columns: list[str], seen: tuple[np.ndarray, np.ndarray], judged_new: bool,
                top_names: dict[int, dict[str, str]]) -> dict[str, Any]:
    """The day's whole-day metrics from its compact keys; stored in the accepted manifest as history.
    ``seen``: per row, user / item seen before; ``top_names``: row -> its ids (the top user and item)."""
    n = keys.rows
    if n == 0 or not {"user_id", "item_id", "event_type"} <= set(columns):
        return {"volume": int(n)}
    users, items = tally(keys.user, keys.user_present), tally(keys.item, keys.item_present)
    typed = sum(keys.event_types.values())
    return {
        "volume": int(n),
        "users": users.distinct,
        "items": items.distinct,
        "new_user_share": float((~seen[0]).mean()) if judged_new else None,
        "new_item_share": float((~seen[1]).mean()) if judged_new else None,
        "top_user": top_names[users.top_position]["user_id"] if users.distinct else None,
        "top_user_events": users.top_count,
        "top_user_share": float(users.top_count / n) if users.distinct else 0.0,
        "events_per_user": float(n / users.distinct) if users.distinct else 0.0,
        "top_item": top_names[items.top_position]["item_id"] if items.distinct else None,
        "top_item_share": float(items.top_count / n) if items.distinct else 0.0,
        "event_type_mix": {k: v / typed for k, v in sorted(keys.event_types.items())},
    }


def _history(earlier_days: EarlierDays, day: str, cfg: PipelineConfig) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    """Profiles of the days in the lookback, and how many of them were quarantined.

    A quarantined day broke the contract, yet its distribution may be perfectly normal (a broken
    timestamp column says nothing about who came): its metrics that were judged normal stay in the
    history, those that warned are left out. Dropping the whole day would shift every band and
    could flag a later borderline day because of it."""
    start = (dt.date.fromisoformat(day) - dt.timedelta(days=cfg.validation.anomaly_lookback_days)).isoformat()
    accepted = earlier_days.accepted_since(start)
    history = [(d, read_json(path / MANIFEST).get("profile")) for d, path in accepted]
    quarantined = 0
    for d, attempts in earlier_days.quarantined:
        if d < start or d in {a for a, _ in accepted}:
            continue
        records = sorted((a / "validation.json" for a in attempts if (a / "validation.json").exists()),
                         key=lambda p: p.stat().st_mtime)
        result = read_json(records[-1])["result"] if records else {}
        if not result.get("profile"):
            continue
        warned = {r["rule"] for r in result["rules"] if r["rule"] in ANOMALY_METRICS and r.get("severity") == WARN
                  and not r["success"] and not r.get("skipped")}
        mix_normal = "event_type_mix_shift" not in warned
        history.append((d, {k: v for k, v in result["profile"].items()
                            if k not in warned and (mix_normal or k != "event_type_mix")}))
        quarantined += 1
    return sorted((d, p) for d, p in history if p), quarantined


def _mix_shift(mix: dict[str, float], reference: dict[str, float]) -> float:
    """Total variation distance between two event-type mixes (0 = same, 1 = disjoint)."""
    types = set(mix) | set(reference)
    return 0.5 * sum(abs(mix.get(t, 0.0) - reference.get(t, 0.0)) for t in types)


def robust_band(values: np.ndarray, k: float, min_half_width: float) -> tuple[float, float, float]:
    """(center, low, high): median +- max(k * 1.4826 * MAD, min_half_width)."""
    center = float(np.median(values))
    mad = 1.4826 * float(np.median(np.abs(values - center)))
    half = max(k * mad, min_half_width)
    return center, center - half, center + half


def anomaly_rules(profile: dict[str, Any], history: list[tuple[str, dict[str, Any]]], day: str,
                  cfg: PipelineConfig) -> list[RuleResult]:
    """Each anomaly metric of the day against the robust band of its trailing history."""
    v = cfg.validation
    weekday = dt.date.fromisoformat(day).weekday()
    same_weekday = [(d, p) for d, p in history if dt.date.fromisoformat(d).weekday() == weekday]
    basis, basis_name = (same_weekday, "same-weekday") if len(same_weekday) >= v.weekday_min_days else (history, "trailing")
    if profile.get("event_type_mix") is not None:
        mixes = [p["event_type_mix"] for _, p in basis if p.get("event_type_mix")]
        types = sorted({t for m in mixes for t in m})
        reference = {t: float(np.median([m.get(t, 0.0) for m in mixes])) for t in types}
        profile = {**profile, "event_type_mix_shift": _mix_shift(profile["event_type_mix"], reference) if mixes else None}
        basis = [(d, {**p, "event_type_mix_shift": _mix_shift(p["event_type_mix"], reference)})
                 for d, p in basis if p.get("event_type_mix")] if mixes else basis
    rules = []
    for metric in ANOMALY_METRICS:
        severity = severity_of(cfg, metric, None)
        if severity == OFF:
            continue
        value = profile.get(metric)
        past = np.array([p[metric] for _, p in basis if p.get(metric) is not None], dtype=float)
        shown = None if value is None else _plain(value)
        required = v.weekday_min_days if basis_name == "same-weekday" else v.min_history_days
        too_small = metric != "volume" and profile.get("volume", 0) < v.anomaly_min_rows
        if value is None or len(history) < v.min_history_days or past.size < required or too_small:
            reason = (f"{len(history)} days of history (< {v.min_history_days})" if len(history) < v.min_history_days
                      else f"{profile.get('volume', 0)} rows (< anomaly_min_rows {v.anomaly_min_rows}): shares not judged"
                      if too_small else "no value for this day or its history")
            rules.append(RuleResult(metric, None, True, observed=shown, severity=severity, skipped=reason))
            continue
        log_scale = metric in LOG_SCALE
        transform = (lambda x: np.log(np.maximum(x, 1e-9))) if log_scale else (lambda x: x)
        center, low, high = robust_band(transform(past), v.anomaly_k, v.min_band[metric])
        if log_scale:
            center, low, high = float(np.exp(center)), float(np.exp(low)), float(np.exp(high))
        low_bound = low if metric in TWO_SIDED else None
        ok = value <= high and (low_bound is None or value >= low_bound)
        band_text = (f"[{_plain(low)}, {_plain(high)}]" if low_bound is not None else f"<= {_plain(high)}")
        rules.append(RuleResult(
            metric, None, bool(ok), observed=shown, severity=severity, unit="",
            band=(None if low_bound is None else _plain(low), _plain(high)),
            expected=f"{band_text} (median {_plain(center)} +- {v.anomaly_k:g} MAD of {past.size} {basis_name} days)",
        ))
    return rules


def bot_rule(profile: dict[str, Any], cfg: PipelineConfig) -> RuleResult | None:
    """An obviously automated day: one user behind nearly all of a day's events."""
    v = cfg.validation
    severity = severity_of(cfg, "bot_suspect", None)
    if severity == OFF or "top_user_share" not in profile:
        return None
    share, events = profile["top_user_share"], profile["top_user_events"]
    suspect = share >= v.bot_top_user_share and events >= v.bot_min_events
    return RuleResult(
        "bot_suspect", "user_id", not suspect, severity=severity, unit="",
        observed=f"user {profile['top_user']}: {events} of {profile['volume']} events ({share:.0%})",
        expected=f"top user < {v.bot_top_user_share:.0%} of the day's events when it has >= {v.bot_min_events}",
    )


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


# --- what gates and the run report read --------------------------------------------------------


def validation_metrics(layout: Layout, day: str) -> dict[str, float]:
    """Gateable numbers of the day's validation (config/gates.yaml ``validation_warnings``)."""
    path = layout.reports(day) / "validation" / "validation.json"
    if not path.exists():
        return {}
    rules = read_json(path)["result"]["rules"]
    return {"validation_warnings": float(sum(1 for r in rules if not r["success"] and not r.get("skipped")
                                             and r.get("severity") == WARN))}


def data_checks_html(layout: Layout, day: str) -> str:
    """The run report's "Data checks" section: the day's validation warnings (value and band) and
    the graph-level checks."""
    parts = ["<h2>Data checks</h2>"]
    path = layout.reports(day) / "validation" / "validation.json"
    if path.exists():
        rules = [r for r in read_json(path)["result"]["rules"] if not r["success"] and not r.get("skipped")]
        if rules:
            rows = "".join(
                f"<tr class=warn><td>{html.escape(r['rule'])}{'(' + html.escape(r['column']) + ')' if r.get('column') else ''}</td>"
                f"<td>{html.escape(str(r.get('observed')))}</td><td>{html.escape(_fmt_band(r.get('band')))}</td>"
                f"<td>{html.escape(r.get('expected', ''))}</td></tr>" for r in rules)
            parts.append(f"<p><b>{len(rules)} validation warning(s)</b> (<a href='../../validation/report.html'>validation report</a>)</p>"
                         f"<table><tr><th>rule</th><th>observed</th><th>band</th><th>expected</th></tr>{rows}</table>")
        else:
            parts.append("<p>Validation: no warnings (<a href='../../validation/report.html'>validation report</a>).</p>")
    else:
        parts.append("<p>Validation: no record for this day.</p>")
    graph = layout.current("graphs", day)
    checks = read_json(Path(graph.path) / "stats.json").get("checks", []) if graph else []
    if checks:
        rows = "".join(f"<tr class={'warn' if c['verdict'] == 'WARN' else 'ok'}><td>{html.escape(c['check'])}</td>"
                       f"<td>{c['value']}</td><td>{'' if c['threshold'] is None else c['threshold']}</td>"
                       f"<td>{c['verdict']}</td><td>{html.escape(c['detail'])}</td></tr>" for c in checks)
        parts.append("<h3>Graph checks</h3><table><tr><th>check</th><th>value</th><th>max</th><th>verdict</th>"
                     f"<th>detail</th></tr>{rows}</table>")
    return "".join(parts)


# --- contract checks -------------------------------------------------------------------------


def _with_derived_columns(rows: pd.DataFrame, day: str) -> pd.DataFrame:
    derived = rows.copy()
    start = pd.Timestamp(day, tz="UTC")
    if "ts" in derived.columns:
        derived["ts_offset_hours"] = (derived["ts"] - start) / pd.Timedelta(hours=1)
    else:
        derived["ts_offset_hours"] = np.nan
    return derived


def _file_rules(files: list[dict[str, Any]], skipped: list[dict[str, Any]]) -> list[RuleResult]:
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


def _payload(row: pd.Series) -> str:
    ts = row["ts"].strftime("%Y-%m-%dT%H:%M:%S%z") if pd.notna(row["ts"]) else None
    return f"{row['source_file']}:{row['source_row']} ({row['user_id']}, {row['item_id']}, {ts}, {row['event_type']})"


def payload_conflict_rule(rows: pd.DataFrame) -> RuleResult:
    """An event id reused with a different payload (user, item, ts or type): a contract violation,
    never a redelivery to deduplicate (keeping either copy would be a guess)."""
    distinct = rows.drop_duplicates(["event_id", *PAYLOAD])
    conflicting = distinct.loc[distinct["event_id"].duplicated(keep=False) & distinct["event_id"].notna(), "event_id"]
    ids = conflicting.unique()
    samples = []
    for event_id in ids[:SAMPLE_ROWS]:  # at most SAMPLE_ROWS examples, each naming both rows
        first, second = distinct[distinct["event_id"] == event_id].iloc[:2].to_dict("records")
        samples.append(f"event {event_id}: {_payload(first)} vs {_payload(second)}")
    return RuleResult("event_id_payload_conflict", "event_id", len(ids) == 0, unit="event ids",
                      unexpected_count=len(ids) or None, samples=tuple(samples),
                      observed=f"{int(rows['event_id'].isin(ids).sum())} rows" if len(ids) else None,
                      expected="a reused event_id repeats its event exactly (user, item, ts, event_type)")


def earlier_day_payload_rule(earlier_days: EarlierDays, day: str, rows: pd.DataFrame, window_days: int) -> RuleResult:
    """An event id accepted on an earlier day of the window, delivered again with another payload: the
    same contract violation as a reuse within the day (rule ``event_id_payload_conflict``, so the same
    severity setting). The same payload is a redelivery: passes, counted here, dropped by ``deduplicate``.
    Reads only the earlier rows whose id occurs today (a filter in the Parquet scan), never the window."""
    ids = rows["event_id"].dropna().unique().tolist()
    start = (dt.date.fromisoformat(day) - dt.timedelta(days=window_days)).isoformat()
    columns = ["event_id", *PAYLOAD, *LINEAGE_COLUMNS]
    earlier = [pd.read_parquet(path / "events.parquet", columns=columns,
                               filters=[("event_id", "in", ids)]).assign(accepted_day=d)
               for d, path in earlier_days.accepted_since(start)] if ids else []
    earlier = [frame for frame in earlier if len(frame)]
    expected = "an event id accepted on an earlier day repeats that event exactly (user, item, ts, event_type)"
    if not earlier:
        return RuleResult("event_id_payload_conflict", None, True, observed="0 rows redelivered from earlier days",
                          expected=expected)
    matched = rows[columns].merge(pd.concat(earlier, ignore_index=True), on="event_id", suffixes=("", "_earlier"))
    differs = np.zeros(len(matched), dtype=bool)
    for column in PAYLOAD:  # a null on either side counts as different
        differs |= ~matched[column].eq(matched[f"{column}_earlier"]).fillna(False).to_numpy(dtype=bool)
    conflicts = matched[differs]
    samples = tuple(f"event {c['event_id']}: {_payload(c)} vs {c['accepted_day']} "
                    f"{_payload(pd.Series({k: c[f'{k}_earlier'] for k in (*PAYLOAD, *LINEAGE_COLUMNS)}))}"
                    for _, c in conflicts.head(SAMPLE_ROWS).iterrows())
    redelivered = f"{int((~differs).sum())} rows redelivered from earlier days (same event: dropped as duplicates)"
    ids_in_conflict = conflicts["event_id"].nunique()
    return RuleResult("event_id_payload_conflict", None, ids_in_conflict == 0, unit="event ids of earlier days",
                      unexpected_count=ids_in_conflict or None, samples=samples,
                      observed=f"{len(conflicts)} rows; {redelivered}" if ids_in_conflict else redelivered,
                      expected=expected)


def deduplicate(rows: pd.DataFrame, earlier_ids: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(events, duplicates): the first row of each event id (by ts, file, row) that no earlier day
    accepted, then the first of each content (user, item, ts, type) under different event ids.
    ``duplicates`` keeps every dropped row with its ``duplicate_of`` reason: nothing is lost."""
    ordered = rows.sort_values(["ts", "source_file", "source_row"], kind="stable")
    seen_before = ordered["event_id"].isin(earlier_ids)
    id_copy = ordered["event_id"].duplicated(keep="first")
    kept = ordered[~id_copy & ~seen_before]
    content_copy = kept.duplicated(list(PAYLOAD), keep="first")
    reason = pd.Series("event_id", index=ordered.index)
    reason[seen_before & ~id_copy] = "event_id of an earlier day"
    reason[content_copy[content_copy].index] = "content"
    events = kept[~content_copy].copy()
    duplicates = ordered.drop(index=events.index)
    # By position: assigning a Series to an empty frame would adopt the Series' whole index.
    duplicates = duplicates.assign(duplicate_of=reason.loc[duplicates.index].to_numpy())
    return events, duplicates


def content_duplicate_rule(rows: pd.DataFrame, cfg: PipelineConfig, day_rows: int | None = None) -> RuleResult:
    """The same (user, item, ts, type) under different event ids: deduplicated up to the same
    tolerance as redelivered ids (``validation.max_duplicate_share``), beyond it the day stops.
    ``rows``: the day, or every row of it whose event id or content repeats (``day_rows`` in all)."""
    _, duplicates = deduplicate(rows, pd.Series([], dtype="string"))
    copies = duplicates[duplicates["duplicate_of"] == "content"]
    share = len(copies) / max(len(rows) if day_rows is None else day_rows, 1)
    samples = []
    for _, copy in copies.head(SAMPLE_ROWS).iterrows():  # examples only
        same = rows[list(PAYLOAD)].eq(copy[list(PAYLOAD)]).fillna(False).all(axis=1) & (rows["event_id"] != copy["event_id"])
        original = rows[same].sort_values(["ts", "source_file", "source_row"]).iloc[0]
        samples.append(f"{copy['source_file']}:{copy['source_row']} (event {copy['event_id']}) repeats "
                       f"{original['source_file']}:{original['source_row']} (event {original['event_id']}): "
                       f"{copy['user_id']}, {copy['item_id']}, {copy['ts']}, {copy['event_type']}")
    limit = cfg.validation.max_duplicate_share
    return RuleResult("content_duplicates", None, share <= limit, unexpected_count=len(copies) or None,
                      observed=round(share, 4), samples=tuple(samples),
                      expected=f"share <= {limit} (validation.max_duplicate_share); within it the copies are dropped")


# Judged on the whole day at once (a share or count of the day, not a property of each row): run once on
# the day's compact frame (row count, an exact integer code per event id) instead of per chunk.
WHOLE_DAY_EXPECTATIONS = ("expect_column_proportion_of_unique_values_to_be_between", "expect_table_row_count_to_be_between")


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
                                    observed=_plain(observed), unexpected_count=outcome["unexpected_count"],
                                    expected=expected, samples=samples))
        return rules


def _plain(value: Any) -> Any:
    if isinstance(value, (np.floating, float)):
        return round(float(value), 4)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _with_severity(rules: list[RuleResult], cfg: PipelineConfig) -> list[RuleResult]:
    """Contract rules take their configured severity; rules set "off" are dropped."""
    graded = [replace(r, severity=severity_of(cfg, r.rule, r.column)) for r in rules]
    return [r for r in graded if r.severity != OFF]


# --- outcomes --------------------------------------------------------------------------------


def _status(result: ValidationResult) -> str:
    if not result.success:
        return "FAILED: day quarantined"
    return f"PASSED with {len(result.warnings)} warning(s)" if result.warnings else "PASSED"


def rerun_instructions(day: str) -> str:
    """How to get a quarantined day through: nothing was lost, so fix the landing data and re-run it."""
    return (f"Nothing was lost: every landed row is kept in this quarantine attempt (rows.parquet, raw/). Fix or "
            f"re-deliver the files under landing/date={day}, then re-run the day: airflow dags trigger "
            f"gnn_recsys_nightly --run-id day_{day}__rerun --conf '{{\"day\": \"{day}\"}}' (or clear the run's "
            f"validate task; outside Airflow: graphdistill run ingest --day {day} && graphdistill run validate "
            f"--day {day}). The champion keeps serving meanwhile.")


def _fmt_band(band: tuple[float | None, float | None] | None) -> str:
    if band is None:
        return ""
    low, high = band
    return f"<= {high}" if low is None else f"[{low}, {high}]"


def render_report(result: ValidationResult, files: list[dict[str, Any]],
                  skipped: list[dict[str, Any]] = ()) -> tuple[str, str]:
    """A readable report as (markdown, html): failures and warnings first, then every rule, then
    every entry of the partition (read or skipped with its reason)."""
    status = _status(result)
    # The accounting adds up: rows in = accepted + dropped duplicates + quarantined; entries seen = read + skipped.
    counts = (f"rows in {result.rows} = accepted {result.accepted_rows} + duplicates dropped {result.duplicate_rows} "
              f"(by content {result.content_duplicate_rows}) + quarantined {result.quarantined_rows}; late {result.late_rows}; "
              f"entries seen {len(files) + len(skipped)} = files read {len(files)} + skipped {len(skipped)}")
    ordered = sorted(result.rules, key=lambda r: {"FAIL": 0, "WARN": 1, "skipped": 2, "pass": 3}[r.verdict])
    md = [f"# Validation {result.day}: {status}", "", counts, ""]
    if result.summary_lines():
        md += ["## Failures and warnings", ""] + [f"- {line}" for line in result.summary_lines()] + [""]
    md += ["| rule | column | severity | verdict | observed | band | unexpected | expected | examples (file:row) |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in ordered:
        md.append(f"| {r.rule} | {r.column or ''} | {r.severity} | {'**' + r.verdict + '**' if r.verdict in ('FAIL', 'WARN') else r.verdict} "
                  f"| {r.observed if r.observed is not None else ''} | {_fmt_band(r.band)} "
                  f"| {'' if r.unexpected_count is None else r.unexpected_count} | {r.skipped or r.expected} | {'; '.join(r.samples)} |")
    md += ["", "## Files", "", "| file | status | bytes | rows | sha256 | timestamps | unknown columns | error or reason |",
           "|---|---|---|---|---|---|---|---|"]
    md += [f"| {f['name']} | {'unreadable' if f['error'] else 'read'} | {f['bytes']} | {'' if f['rows'] is None else f['rows']} "
           f"| {(f['sha256'] or '')[:12]} | {f.get('ts_form') or ''} | {', '.join(f.get('extra_columns') or ())} | {f['error'] or ''} |"
           for f in files]
    md += [f"| {s['name']} | skipped | {'' if s.get('bytes') is None else s['bytes']} | | | | | {s['reason']} |" for s in skipped]
    if not result.success:
        md += ["", "## What to do", "", rerun_instructions(result.day)]
    md += ["", "## Notes", ""] + [f"- {n}" for n in result.notes]
    css = {"FAIL": "bad", "WARN": "warn", "skipped": "skip", "pass": "ok"}
    rows_html = "".join(
        f"<tr class={css[r.verdict]}><td>{html.escape(r.rule)}</td><td>{html.escape(r.column or '')}</td>"
        f"<td>{r.severity}</td><td>{r.verdict}</td><td>{html.escape(str(r.observed if r.observed is not None else ''))}</td>"
        f"<td>{html.escape(_fmt_band(r.band))}</td><td>{'' if r.unexpected_count is None else r.unexpected_count}</td>"
        f"<td>{html.escape(r.skipped or r.expected)}</td><td>{html.escape('; '.join(r.samples))}</td></tr>"
        for r in ordered
    )
    files_html = "".join(
        f"<tr><td>{html.escape(f['name'])}</td><td>{'unreadable' if f['error'] else 'read'}</td><td>{f['bytes']}</td>"
        f"<td>{'' if f['rows'] is None else f['rows']}</td><td>{html.escape(f.get('ts_form') or '')}</td>"
        f"<td>{html.escape(', '.join(f.get('extra_columns') or ()))}</td><td>{html.escape(f['error'] or '')}</td></tr>"
        for f in files
    ) + "".join(f"<tr class=skip><td>{html.escape(s['name'])}</td><td>skipped</td><td>{'' if s.get('bytes') is None else s['bytes']}</td>"
                f"<td></td><td></td><td></td><td>{html.escape(s['reason'])}</td></tr>" for s in skipped)
    summary_html = "".join(f"<li>{html.escape(line)}</li>" for line in result.summary_lines())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Validation {result.day}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px}}
tr.bad{{background:#fdd}}tr.warn{{background:#ffe8b0}}tr.skip{{background:#eee}}tr.ok{{background:#efe}}</style></head><body>
<h1>Validation {result.day}: {html.escape(status)}</h1>
<p>{html.escape(counts)}</p>
{f'<h2>Failures and warnings</h2><ul>{summary_html}</ul>' if summary_html else ''}
{'' if result.success else f'<h2>What to do</h2><p>{html.escape(rerun_instructions(result.day))}</p>'}
<table><tr><th>rule</th><th>column</th><th>severity</th><th>verdict</th><th>observed</th><th>band</th><th>unexpected</th><th>expected</th><th>examples (file:row)</th></tr>{rows_html}</table>
<h2>Files</h2><table><tr><th>file</th><th>status</th><th>bytes</th><th>rows</th><th>timestamps</th><th>unknown columns</th><th>error or reason</th></tr>{files_html}</table>
<h2>Notes</h2><ul>{''.join(f'<li>{html.escape(n)}</li>' for n in result.notes)}</ul></body></html>"""
    return "\n".join(md) + "\n", page


def _earlier_event_ids(earlier_days: EarlierDays, day: str, keys: DayKeys, cfg: PipelineConfig
                       ) -> tuple[np.ndarray, pd.Series]:
    """(rows whose event id hash an earlier day of the window accepted, those earlier ids exactly):
    one chunk of an earlier day at a time against the day's own distinct ids, then only the hits
    re-read as text."""
    start = (dt.date.fromisoformat(day) - dt.timedelta(days=cfg.graph.window_days)).isoformat()
    paths = [path / "events.parquet" for _, path in earlier_days.accepted_since(start)]
    unique = np.unique(keys.event_id[keys.event_id_present])
    seen = np.zeros(unique.size, dtype=bool)
    chunk_rows = cfg.validation.chunk_rows
    for path in paths:
        mark_seen(unique, seen, (_present_keys(c, "event_id") for c in staged_chunks(path, chunk_rows, ["event_id"])))
    hits = unique[seen]
    exact = [c["event_id"][in_sorted(hits, text_keys(c["event_id"])[0]) & c["event_id"].notna().to_numpy()]
             for path in (paths if hits.size else []) for c in staged_chunks(path, chunk_rows, ["event_id"])]
    ids = pd.concat(exact, ignore_index=True) if exact else pd.Series([], dtype="string")
    return keys.event_id_present & in_sorted(hits, keys.event_id), ids


def gather(path: Path, rows: np.ndarray, chunk_rows: int) -> pd.DataFrame:
    """The staged rows selected by the mask ``rows``, every column, indexed by their day position."""
    return pd.concat([c[rows[c.index.start:c.index.stop]] if len(c) else c for c in staged_chunks(path, chunk_rows)])


def compact_day(keys: DayKeys, columns: list[str], repeats: pd.DataFrame) -> pd.DataFrame:
    """The frame GX judges whole-day expectations on: one row per staged row, its event id as an
    exact integer code (a unique id keeps its 63-bit hash; ids whose hash repeats, ``repeats``, are
    numbered from their text, above 2**63, so no hash collision can merge two ids)."""
    if "event_id" not in columns:
        return pd.DataFrame(index=pd.RangeIndex(keys.rows))
    codes = keys.event_id & np.uint64(2**63 - 1)
    codes[repeats.index.to_numpy()] = np.uint64(2**63) + pd.factorize(repeats["event_id"])[0].astype(np.uint64)
    return pd.DataFrame({"event_id": pd.arrays.IntegerArray(codes, ~keys.event_id_present)})


def duplicate_rules(earlier_days: EarlierDays, day: str, cfg: PipelineConfig, staged: Path, keys: DayKeys,
                    repeats: pd.DataFrame, earlier_rows: np.ndarray) -> list[RuleResult]:
    """Event ids reused within the day or from an earlier day with another payload, and content copies:
    judged exactly on the rows read back (``repeats``; ``earlier_rows``: rows whose id an earlier day accepted)."""
    hits = gather(staged, earlier_rows, cfg.validation.chunk_rows) if earlier_rows.any() else repeats.iloc[:0]
    return [payload_conflict_rule(repeats), earlier_day_payload_rule(earlier_days, day, hits, cfg.graph.window_days),
            content_duplicate_rule(repeats, cfg, day_rows=keys.rows)]


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
    ``earlier``: the rows whose event id an earlier day accepted, and those ids (``_earlier_event_ids``)."""
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
            suite.check_rows(_with_derived_columns(chunk, day))
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
    seen = _seen_before(earlier_days, keys, chunk_rows)
    profile = day_profile(keys, columns, seen, judged_new=bool(earlier_days), top_names=top_names)
    profiles, held = _history(earlier_days, day, cfg)
    notes = [f"anomaly history: {len(profiles)} days in the {cfg.validation.anomaly_lookback_days}-day lookback, "
             f"{held} of them quarantined (only their metrics judged normal count); judged from {cfg.validation.min_history_days}"]
    rules = _file_rules(files, skipped) + schema_rules(files, cfg) + value_rules(issues, cfg)
    gx_json = None
    if suite is not None:
        suite.check_day(compact_day(keys, columns, repeats[id_repeats[repeats.index.to_numpy()]]))
        rules += suite.rules(columns, issues[issues["rule"] == NOT_NULL_RULE])
        gx_json = suite.record()
    else:
        rules.append(RuleResult("expect_table_row_count_to_be_between", None, False, observed=0,
                                expected=f"min_value={params['min_rows']}"))
    earlier = _earlier_event_ids(earlier_days, day, keys, cfg) if complete else None
    rules += duplicate_rules(earlier_days, day, cfg, rows_file, keys, repeats, earlier[0]) if complete else []
    rules = _with_severity(rules, cfg)
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
