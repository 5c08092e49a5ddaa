"""A run's outcome, read back from its records: the one place ops-facing code finds a night's decision.

Everything ops-facing (the DAG-run note, the Airflow UI plugin, Asset metadata, notifiers, metrics,
the CLI) derives a night's decision through ``run_outcome`` and finds files through
``run_report_dir`` / ``validation_report`` here. The decision itself is recorded by the stage that
made it (``outcome.json`` in the run's folder: validate -> quarantined, a skipped model stage ->
skipped, gate -> rejected / inconclusive, promote -> promoted / not_promoted); this module adds the
numbers and reports behind it::

    reports/<day>/runs/<run_key>/  outcome.json blessing.json evaluation.json report.html stages/<stage>.json
    reports/<day>/latest.json      the day's newest run
    reports/<day>/validation/report.html, quarantine/date=<day>/<attempt>/report.html validation.json

Also the run's day: which day a DAG run processes, and the clear error when that is ambiguous.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from components.decide.report import champion_health_text, fmt_number, gate_label, override_text
from components.core.catalog import (MANIFEST, OUTCOME_FILE, Layout, latest_run, object_root, parse_day, read_json,
                                run_dir, run_key_for)

# What a night can end as (the DAG-run note, the plugin and the alerts use these words); all but
# INCOMPLETE are recorded by the stages (components.core.catalog.OUTCOME_KINDS).
PROMOTED = "promoted"  # a new champion serves
REJECTED = "rejected"  # the candidate failed a gate; the champion keeps serving
INCONCLUSIVE = "inconclusive"  # no gate failed, but some could not decide (too few users, wide interval)
NOT_PROMOTED = "not_promoted"  # blessed, but the compare-and-swap refused (stale, historical day, rolled back)
SKIPPED = "skipped"  # nothing to judge (e.g. no training window yet)
QUARANTINED = "quarantined"  # the day's data failed validation; nothing downstream ran
INCOMPLETE = "incomplete"  # no decision recorded: a stage failed or the run is still going
# The champion conclusively lost to popularity (or there is none yet) and the candidate did not
# qualify: the popularity version serves now (config champion_health.fallback / no_champion;
# components/decide/fallback.py).
FALLBACK_POPULARITY = "fallback_popularity"
KINDS = (PROMOTED, REJECTED, INCONCLUSIVE, NOT_PROMOTED, SKIPPED, QUARANTINED, INCOMPLETE, FALLBACK_POPULARITY)

KEY_METRICS = ("ndcg@20", "recall@20")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class Outcome:
    """A night's decision with its reason and the numbers behind it."""

    day: str
    run_id: str | None
    kind: str
    reason: str
    candidate_version: str | None = None
    champion_before: str | None = None
    champion_after: str | None = None
    # {"candidate": {"ndcg@20": ..}, "champion": {..}, "teacher": {..}, "popularity": {..}}
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    # every gate that failed or was inconclusive, with its role, value and interval ("overridden" when so)
    failed_gates: tuple[str, ...] = ()
    gates: dict[str, str] = field(default_factory=dict)  # gate label -> pass|fail|inconclusive|skipped
    gate_roles: dict[str, str] = field(default_factory=dict)  # gate label -> decision|diagnostic
    overridden_gates: tuple[str, ...] = ()  # diagnostic gates overridden by a conclusive win
    # The champion as served vs popularity on the day ({verdict, relative_change, ci_low, ci_high, n, ...});
    # the flag is what alerting reads: the champion conclusively lost to popularity.
    champion_health: dict[str, Any] | None = None
    champion_worse_than_popularity: bool = False
    failed_rules: tuple[str, ...] = ()
    rows_accepted: int | None = None
    rows_quarantined: int | None = None
    runtime: str | None = None  # the engine runtime that measured the engine gates
    report: str | None = None  # run report (HTML), when written
    validation_report: str | None = None  # validation or quarantine report (HTML)

    @property
    def headline(self) -> str:
        """One line: the word ops scan for first, then the reason."""
        return f"{self.day}: {self.kind.upper().replace('_', ' ')} - {self.reason}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "headline": self.headline}


# --- where a run's files live ------------------------------------------------------------------


def run_report_dir(layout: Layout, day: str, run_id: str | None = None) -> Path | None:
    """A run's folder (reports/<day>/runs/<run_key>/); without ``run_id``, the day's newest run's."""
    if run_id:
        return run_dir(layout, day, run_key_for(run_id))
    latest = latest_run(layout, day)
    return Path(latest["dir"]) if latest else None


def validation_report(layout: Layout, day: str) -> Path | None:
    """The day's validation report: the accepted one, else the newest quarantine attempt's."""
    accepted = layout.reports(day) / "validation" / "report.html"
    if (layout.accepted(day) / MANIFEST).exists() and accepted.exists():
        return accepted
    attempt = _newest_quarantine(layout, day)
    return attempt / "report.html" if attempt and (attempt / "report.html").exists() else None


def _newest_quarantine(layout: Layout, day: str) -> Path | None:
    if (layout.accepted(day) / MANIFEST).exists() or not layout.quarantine(day).exists():
        return None  # a later accepted delivery of the day supersedes its quarantines
    attempts = [p for p in layout.quarantine(day).iterdir() if (p / "validation.json").exists()]
    return max(attempts, key=lambda p: p.stat().st_mtime) if attempts else None


# --- the outcome ---------------------------------------------------------------------------------


def _read(path: Path | None) -> dict[str, Any] | None:
    return read_json(path) if path is not None and path.exists() else None


def _metrics(evaluation: dict[str, Any] | None) -> dict[str, dict[str, float]]:
    if not evaluation:
        return {}
    return {name: {k: float(evaluation[name][k]) for k in KEY_METRICS if k in evaluation[name]}
            for name in ("candidate", "champion", "teacher", "popularity") if evaluation.get(name)}


# What a gate's statistic must satisfy, as (relation, bound from the threshold) per kind (components.decide.gates._rule).
_NEEDS = {"min": (">=", 1), "max": ("<=", 1), "min_ratio_to": (">=", 1), "max_regression_vs": (">=", -1),
          "min_lift_over": (">", 1)}


def _fmt_gate(gate: dict[str, Any]) -> str:
    """One gate for people: value, interval and what it needed, relative changes as percentages."""
    relative = gate["kind"] in ("max_regression_vs", "min_lift_over")

    def show(x: float | None) -> str:
        return "n/a" if x is None else (f"{x:+.1%}" if relative else fmt_number(x))

    interval = (f" CI [{show(gate['ci_low'])}, {show(gate['ci_high'])}]"
                if gate.get("ci_low") is not None and gate.get("ci_high") is not None else "")
    relation, sign = _NEEDS[gate["kind"]]
    overridden = ", overridden" if gate.get("overridden") else ""
    return (f"[{gate.get('role', 'decision')}] {gate_label(gate)}: {show(gate['statistic'])}{interval} (needs "
            f"{relation} {show(sign * gate['threshold'])}; {gate['verdict'].upper()}{overridden})")


def run_outcome(layout: Layout, day: str, run_id: str | None = None) -> Outcome:
    """The run's decision as its stages recorded it (never from logs), with the numbers behind it.
    Without ``run_id``: the day's newest run."""
    day = parse_day(day).isoformat()
    records = run_report_dir(layout, day, run_id)
    report = records / "report.html" if records else None
    validation = validation_report(layout, day)
    accepted = _read(layout.accepted(day) / MANIFEST)
    common: dict[str, Any] = {
        "day": day, "run_id": run_id,
        "report": str(report) if report is not None and report.exists() else None,
        "validation_report": str(validation) if validation else None,
        "rows_accepted": int(accepted["rows_accepted"]) if accepted else None,
        "rows_quarantined": 0 if accepted else None,
    }
    recorded = _read(records / OUTCOME_FILE if records else None)
    quarantine = _newest_quarantine(layout, day)
    if quarantine is not None and (recorded is None or recorded["kind"] == QUARANTINED):
        result = read_json(quarantine / "validation.json")["result"]
        failed = tuple(_describe_rule(r) for r in result["rules"] if not r["success"] and not r.get("skipped") and r.get("severity", "quarantine") == "quarantine")
        return Outcome(**{**common, "rows_accepted": 0, "rows_quarantined": int(result["rows"])}, kind=QUARANTINED,
                       reason=f"{result['rows']} rows quarantined; failed rules: " + "; ".join(failed),
                       failed_rules=failed)
    if recorded is None:
        return Outcome(**common, kind=INCOMPLETE, reason="no decision recorded: a stage failed or the run "
                       "has not finished (see the failed task's log)")
    blessing = _read(records / "blessing.json")
    if blessing is not None:
        common.update(
            metrics=_metrics(_read(records / "evaluation.json")), runtime=blessing.get("runtime"),
            gates={gate_label(g): g["verdict"] for g in blessing["gates"]},
            gate_roles={gate_label(g): g.get("role", "decision") for g in blessing["gates"]},
            failed_gates=tuple(_fmt_gate(g) for g in blessing["gates"] if g["verdict"] in ("fail", "inconclusive")),
            overridden_gates=tuple(blessing.get("overridden", ())),
            champion_health=({**blessing["champion_health"], "champion_version": blessing["champion_version"]}
                             if blessing.get("champion_health") else None),
            champion_worse_than_popularity=bool(blessing.get("champion_worse_than_popularity")),
        )
    reason = recorded["reason"]
    if recorded["kind"] == FALLBACK_POPULARITY and blessing:  # the loss itself is appended below, with its numbers
        reason = (f"champion {recorded.get('champion_before') or 'none (bootstrap)'} -> {recorded.get('champion_after')} (popularity); "
                  f"candidate {recorded.get('candidate')} {blessing['verdict']}: {blessing['reason']}")
    if recorded["kind"] == PROMOTED:  # the headline ops scan for: old -> new champion, with its numbers
        numbers = ", ".join(f"{k} {v:.4f}" for k, v in common.get("metrics", {}).get("candidate", {}).items())
        reason = (f"champion {recorded.get('champion_before') or 'none (bootstrap)'} -> {recorded.get('champion_after')}"
                  f"{' (' + numbers + ')' if numbers else ''}; {reason}")
        overrides = override_text(blessing) if blessing else None
        if overrides:
            reason += f"; {overrides}"
    if common.get("champion_worse_than_popularity"):  # a distinct reason ops and alerts can quote
        kept = recorded.get("champion_after") == blessing["champion_version"]
        reason += (f"; {champion_health_text(blessing)}"
                   + ("; it keeps serving" if kept else "; replaced tonight"))
    return Outcome(**common, kind=recorded["kind"], reason=reason,
                   candidate_version=recorded.get("candidate"), champion_before=recorded.get("champion_before"),
                   champion_after=recorded.get("champion_after"))


def _describe_rule(rule: dict[str, Any]) -> str:
    from components.data.validation_result import RuleResult  # the dataclass validation.json records

    fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in rule.items()}
    return RuleResult(**fields).describe()


# --- alerts and metrics ---------------------------------------------------------------------------


def nights_since_promotion(champion_day: str | None, day: str) -> int | None:
    """Nights between the day the serving champion was trained for and ``day`` (None: no champion)."""
    if champion_day is None:
        return None
    return (parse_day(day) - parse_day(champion_day)).days


def champion_day(layout: Layout) -> str | None:
    """The day of the serving champion's version (from its registry manifest)."""
    from components.core.champion import champion_in

    current = champion_in(layout)  # the layout's pointer backend: an s3:// root's store, not the copy
    if current is None:
        return None
    manifest = Path(current.path) / MANIFEST
    return read_json(manifest)["day"] if manifest.exists() else None


def gauges(outcome: Outcome) -> dict[str, float]:
    """The run's numbers as flat gauge names (StatsD/OpenTelemetry), documented in README "Metrics"."""
    values: dict[str, float] = {f"outcome.{kind}": float(outcome.kind == kind) for kind in KINDS}
    for model, metrics in outcome.metrics.items():
        for name, value in metrics.items():
            values[f"{model}.{name.replace('@', '_at_')}"] = value
    for gate, verdict in outcome.gates.items():
        values[f"gate.{_UNSAFE.sub('_', gate)}"] = {"pass": 1.0, "fail": 0.0}.get(verdict, -1.0)
    if outcome.champion_health and outcome.champion_health.get("relative_change") is not None:
        values["champion_health.relative_change"] = float(outcome.champion_health["relative_change"])
    if outcome.champion_health is not None:
        values["champion_health.worse_than_popularity"] = float(outcome.champion_worse_than_popularity)
    if outcome.rows_accepted is not None:
        values["rows.accepted"] = float(outcome.rows_accepted)
    if outcome.rows_quarantined is not None:
        values["rows.quarantined"] = float(outcome.rows_quarantined)
    return values


def note_markdown(outcome: Outcome, limit: int = 1000) -> str:
    """The DAG-run note (Airflow caps notes at 1000 characters; the run header shows its first line):
    the kind, the day and the reason first, then the champion."""
    text = f"**{outcome.kind.upper().replace('_', ' ')}** day {outcome.day}: {outcome.reason}"
    if outcome.failed_gates:  # each with value, interval and what it needed (the reason names them only)
        text += "\n\n" + "\n".join(f"- {gate}" for gate in outcome.failed_gates)
    if outcome.champion_after:
        text += f"\n\nserving champion: {outcome.champion_after}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- which day a run processes -----------------------------------------------------------------


class RunDayError(ValueError):
    """The run does not say unambiguously which day it processes."""


HOW_TO_RUN_A_DAY = 'airflow dags trigger gnn_recsys_nightly --run-id "day_D" --conf \'{"day": "D"}\''


def day_of_interval(data_interval_start: dt.datetime) -> str:
    """The day a scheduled or backfill run processes: its data interval's start (YYYY-MM-DD)."""
    return data_interval_start.date().isoformat()


def run_day(run_type: str, data_interval_start: dt.datetime | None, conf_day: str | None) -> str:
    """The day a DAG run processes.

    Scheduled and backfill runs process their data interval's start (the scheduler runs day D once D
    has ended); a ``day`` in the run's conf must then agree with it. A manual run (UI, REST API,
    ``airflow dags trigger`` / ``test``) must name its day in the conf: Airflow infers a manual run's
    data interval from its trigger time, so the interval of a hand-triggered run is not a day anyone chose.
    """
    interval_day = day_of_interval(data_interval_start) if data_interval_start else None
    if conf_day:
        try:
            day = parse_day(conf_day).isoformat()
        except ValueError as exc:
            raise RunDayError(f"conf day {conf_day!r} is not a date (YYYY-MM-DD); run a day with: "
                              f"{HOW_TO_RUN_A_DAY}") from exc
        if run_type in ("scheduled", "backfill") and interval_day and day != interval_day:
            raise RunDayError(f"conf day {day} disagrees with this {run_type} run's data interval, which "
                              f"starts {interval_day}; drop the conf day, or run {day} with: {HOW_TO_RUN_A_DAY}")
        return day
    if run_type in ("scheduled", "backfill") and interval_day:
        return interval_day
    raise RunDayError(f"a {run_type} run must name its day (its data interval {interval_day or '-'} comes "
                      f"from the trigger time, not from a day you chose); run a day with: {HOW_TO_RUN_A_DAY}")


@dataclass(frozen=True)
class ScheduleStart:
    """Where the nightly schedule starts and whether it catches up, with the reason (shown in the runbook)."""

    start: dt.date
    catchup: bool
    source: str


# With nothing configured and nothing landed, the DAG still needs a start date: an early fixed one with
# catch-up off means the first unpause runs exactly one night (the latest finished day).
NO_CATCHUP_START = dt.date(2026, 1, 1)


def schedule_start(env_start: str | None, configured: dt.date | None, root: str | Path) -> ScheduleStart:
    """The schedule's first day: GRAPHDISTILL_START_DATE, else ops.start_date, else the first landed
    day under the local ``root``'s ``landing/`` (``date=YYYY-MM-DD`` folders), else no catch-up.

    Catch-up from a landed day never creates runs for days before any data existed (an unpause used
    to start ~330 runs, one per day since January, each failing on a missing landing day). An ``s3://``
    root is not listed: the DAG file calls this while it is parsed, over and over."""
    if env_start:
        try:
            return ScheduleStart(parse_day(env_start), True, "GRAPHDISTILL_START_DATE")
        except ValueError as exc:
            raise ValueError(f"GRAPHDISTILL_START_DATE={env_start!r} is not a date (YYYY-MM-DD)") from exc
    if configured is not None:
        return ScheduleStart(configured, True, "ops.start_date")
    remote = object_root(root)
    if remote is not None:
        return ScheduleStart(NO_CATCHUP_START, False, f"the root {remote.uri} is an object store, not listed while "
                                                      f"the DAG is parsed (set GRAPHDISTILL_START_DATE or "
                                                      f"ops.start_date to catch up): no catch-up")
    landing_root = Path(root) / "landing"
    landed = sorted(p.name.removeprefix("date=") for p in landing_root.glob("date=*") if p.is_dir())
    for name in landed:
        try:
            return ScheduleStart(parse_day(name), True, f"first landed day under {landing_root}")
        except ValueError:
            continue  # a stray folder name is not a day; validation reports the partitions themselves
    return ScheduleStart(NO_CATCHUP_START, False, f"nothing landed under {landing_root} yet: no catch-up")
