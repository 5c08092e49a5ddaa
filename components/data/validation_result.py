"""What validation decides: each rule's result with its severity, the day's result, and the error that
quarantines a day. Severities: a rule quarantines by default, the ones in ``DEFAULT_SEVERITY`` warn, and
``validation.severity`` overrides either (or turns a rule off)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from components.core.config import ANOMALY_METRICS, PipelineConfig
from components.core.errors import PermanentStageFailure

SAMPLE_ROWS = 5
QUARANTINE, WARN, OFF = "quarantine", "warn", "off"
# Rules that warn unless config says otherwise; every other rule (the GX contract suite, file and
# type rules) quarantines. validation.severity overrides either.
DEFAULT_SEVERITY: dict[str, str] = {"unknown_columns": WARN, "bot_suspect": WARN, "landing_files_skipped": WARN,
                                    "id_unicode_form": WARN, **{m: WARN for m in ANOMALY_METRICS}}


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


def with_severity(rules: list[RuleResult], cfg: PipelineConfig) -> list[RuleResult]:
    """Contract rules take their configured severity; rules set "off" are dropped."""
    graded = [replace(r, severity=severity_of(cfg, r.rule, r.column)) for r in rules]
    return [r for r in graded if r.severity != OFF]


def plain(value: Any) -> Any:
    if isinstance(value, (np.floating, float)):
        return round(float(value), 4)
    if isinstance(value, np.integer):
        return int(value)
    return value
