"""Gate stage: a blessing judged from the evaluation's measurements.

Gating (``judge``, ``run_gate``) judges, as a pure function of the measurements and
config/gates.yaml: each evaluation gate gets a paired bootstrap confidence interval
(``scipy.stats.bootstrap``, seeded) of its statistic over users and a verdict PASS / FAIL /
INCONCLUSIVE by the rule of its kind; engine gates compare the engine's measurements (latency from
>= ``min_latency_calls`` timed calls). Without a champion (bootstrap), gates against the champion
are skipped and say so. A gate's role is decision or diagnostic: a diagnostic FAIL / INCONCLUSIVE
is overridden when the candidate conclusively beats the champion and popularity (``candidate_wins``).
The champion's health against popularity is judged alongside (``champion_health``; it never
blocks a candidate); when it conclusively loses and the candidate is not blessed, the blessing
says the night falls back to popularity (``fallback``, config ``champion_health.fallback``), as it
does at bootstrap when no candidate has qualified yet (``champion_health.no_champion``). The
blessing records n, point value and interval of every gate and comparison. The registry decides
promotion (components/decide/registry.py); nothing here imports it back.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from components.core.catalog import Layout, atomic_write_bytes, record_outcome, run_dir, write_json
from components.core.config import GateSpec, GatesConfig, PipelineConfig
from components.core.refs import (BLESSING_FILE, EVALUATION_FILE, Blessing, Comparison, EvaluationResult, GateResult,
                                  PerUser, read_upstream)
from components.decide.candidate import CandidateRefs
from components.decide.pointer import champion
from components.decide.report import fmt_number

log = logging.getLogger(__name__)

LATENCY_METRICS = ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms")
ENGINE_METRICS = ("parity_max_abs_diff", "parity_topk_overlap", "engine_bytes") + LATENCY_METRICS
COUNT_METRICS = ("users_evaluated",)
DATA_METRICS = ("validation_warnings",)  # components/data/validation_report.py validation_metrics
BOOTSTRAP_NOTE = "skipped (no champion: bootstrap)"


# A gate kind judges statistic s with interval [lo, hi] against a bound: PASS when the whole
# interval satisfies the rule, FAIL when the whole interval violates it, INCONCLUSIVE otherwise.
def _rule(kind: str, threshold: float) -> tuple[str, float, str]:
    """(statistic name, bound, direction) of a gate kind (see config/gates.yaml)."""
    return {
        "min": ("value", threshold, ">="),
        "max": ("value", threshold, "<="),
        "min_ratio_to": ("ratio", threshold, ">="),
        # non-inferiority: relative change c/b - 1 >= -threshold (at most a `threshold` drop)
        "max_regression_vs": ("relative change", -threshold, ">="),
        # lift: relative change c/b - 1 > threshold
        "min_lift_over": ("relative change", threshold, ">"),
    }[kind]


def _holds(direction: str, value: float, bound: float) -> bool:
    return {">=": value >= bound, ">": value > bound, "<=": value <= bound}[direction]


def decide(direction: str, bound: float, low: float, high: float) -> str:
    """PASS if the whole interval satisfies ``direction bound``, FAIL if none of it does."""
    if math.isnan(low) or math.isnan(high):
        return "inconclusive"
    best, worst = (high, low) if direction in (">=", ">") else (low, high)
    if _holds(direction, worst, bound):
        return "pass"
    if not _holds(direction, best, bound):
        return "fail"
    return "inconclusive"


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def _ratio(c: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.mean(c, axis=axis) / np.mean(b, axis=axis)


def _relative_change(c: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return _ratio(c, b, axis) - 1.0


STATISTICS = {"value": _mean, "ratio": _ratio, "relative change": _relative_change}


def bootstrap_interval(samples: tuple[np.ndarray, ...], statistic: str, gates: GatesConfig,
                       seed: int) -> tuple[float, float]:
    """Seeded (paired, for two samples) bootstrap interval of ``statistic`` over users."""
    from scipy.stats import bootstrap

    if samples[0].size < 2 or all(np.all(s == s[0]) for s in samples):
        # scipy cannot resample one user; identical values have a degenerate interval.
        point = float(STATISTICS[statistic](*samples)) if samples[0].size else math.nan
        return (point, point) if samples[0].size >= 2 else (math.nan, math.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        result = bootstrap(samples, STATISTICS[statistic], paired=len(samples) > 1, vectorized=True,
                           n_resamples=gates.bootstrap_resamples, confidence_level=gates.confidence_level,
                           method=gates.bootstrap_method, random_state=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _engine_value(metric: str, engine) -> tuple[float, int]:
    """(value, timed calls behind it) of an engine metric; latency at the largest batch size."""
    if metric in LATENCY_METRICS:
        stats = engine.latency_ms[str(engine.largest_batch)]
        key = metric.removeprefix("latency_")
        if key not in stats:
            raise ValueError(f"engine {engine.version} measured no {key} (has {sorted(stats)}); re-run convert")
        return float(stats[key]), int(stats.get("repeats", 0))
    return float(getattr(engine, metric)), 0


def _label(spec: GateSpec) -> str:
    return (f"{spec.metric} {spec.kind}{' ' + spec.baseline if spec.baseline else ''}"
            f"{'' if spec.segment == 'all' else ' [' + spec.segment + ']'}")


def judge_gate(spec: GateSpec, evaluation: EvaluationResult, per_user: PerUser | None, engine,
               gates: GatesConfig, seed: int, data_metrics: dict[str, float] | None = None) -> GateResult:
    common = dict(metric=spec.metric, kind=spec.kind, threshold=spec.threshold, baseline=spec.baseline,
                  segment=spec.segment, description=spec.description, role=spec.role)
    name, bound, direction = _rule(spec.kind, spec.threshold)
    if spec.metric in DATA_METRICS:  # the day's data, e.g. validation warnings (kinds min/max)
        if spec.baseline is not None:
            raise ValueError(f"gate on data metric {spec.metric!r} supports kinds min/max only, got {spec.kind}")
        if spec.metric not in (data_metrics or {}):
            return GateResult(**common, n=0, value=None, baseline_value=None, statistic=None, ci_low=None,
                              ci_high=None, verdict="skipped", note="no validation record for this day",
                              measured_by="none")
        value = float(data_metrics[spec.metric])
        verdict = "pass" if _holds(direction, value, bound) else "fail"
        return GateResult(**common, n=0, value=value, baseline_value=None, statistic=value, ci_low=None,
                          ci_high=None, verdict=verdict,
                          note=f"{name} {value:g} {direction} {bound:g}" + ("" if verdict == "pass" else " violated"),
                          measured_by="validation")
    if spec.metric in ENGINE_METRICS:
        if spec.baseline is not None:
            raise ValueError(f"gate on engine metric {spec.metric!r} supports kinds min/max only, got {spec.kind}")
        if engine is None:
            return GateResult(**common, n=0, value=None, baseline_value=None, statistic=None, ci_low=None,
                              ci_high=None, verdict="fail", note="no engine result: engine metrics were not measured",
                              measured_by="none")
        value, calls = _engine_value(spec.metric, engine)
        measured_by = f"{engine.runtime} ({engine.runtime_description})"
        verdict = "pass" if _holds(direction, value, bound) else "fail"
        note = f"{name} {value:.6g} {direction} {bound:g}" + ("" if verdict == "pass" else " violated")
        if spec.metric in LATENCY_METRICS:
            measured_by += f", batch {engine.largest_batch}, {calls} timed calls"
            if calls < gates.min_latency_calls:
                verdict = "inconclusive"
                note = f"only {calls} timed calls (< min_latency_calls {gates.min_latency_calls}): {note}"
        return GateResult(**common, n=calls, value=value, baseline_value=None, statistic=value, ci_low=None,
                          ci_high=None, verdict=verdict, note=note, measured_by=measured_by)

    if spec.metric in COUNT_METRICS:  # min_users_evaluated: too few users decide nothing
        segment = evaluation.metrics_of("candidate", spec.segment) or {}
        value = float(segment.get("users_evaluated", 0))
        ok = _holds(direction, value, bound)
        return GateResult(**common, n=int(value), value=value, baseline_value=None, statistic=value, ci_low=None,
                          ci_high=None, verdict="pass" if ok else "inconclusive",
                          note=f"{int(value)} users {direction} {bound:g}" + ("" if ok else ": too few to decide"),
                          measured_by=f"evaluation ({spec.segment} users)")

    if per_user is None or spec.metric not in per_user.values["candidate"]:
        raise ValueError(f"gate metric {spec.metric!r} is neither an engine metric {ENGINE_METRICS}, a count "
                         f"{COUNT_METRICS} nor a per-user evaluation metric "
                         f"(have {sorted(per_user.values['candidate']) if per_user else 'none'})")
    mask = per_user.segment_mask(spec.segment)
    candidate = per_user.values["candidate"][spec.metric][mask]
    n = int(candidate.size)
    value = float(candidate.mean()) if n else None
    measured_by = f"evaluation ({n} {spec.segment} users, paired bootstrap {gates.bootstrap_resamples}x)"
    samples: tuple[np.ndarray, ...] = (candidate,)
    base = None
    if spec.baseline is not None:
        if spec.baseline == "champion" and "champion" not in per_user.values:
            return GateResult(**common, n=n, value=value, baseline_value=None, statistic=None, ci_low=None,
                              ci_high=None, verdict="skipped", note=BOOTSTRAP_NOTE, measured_by=measured_by)
        if spec.baseline not in per_user.values:
            return GateResult(**common, n=n, value=value, baseline_value=None, statistic=None, ci_low=None,
                              ci_high=None, verdict="fail", note=f"baseline {spec.baseline} was not evaluated",
                              measured_by=measured_by)
        baseline = per_user.values[spec.baseline][spec.metric][mask]
        base = float(baseline.mean()) if n else None
        samples = (candidate, baseline)
    if n < 2:
        return GateResult(**common, n=n, value=value, baseline_value=base, statistic=None, ci_low=None, ci_high=None,
                          verdict="inconclusive", note=f"{n} users: no interval", measured_by=measured_by)
    with np.errstate(divide="ignore", invalid="ignore"):
        statistic = float(STATISTICS[name](*samples))
    low, high = bootstrap_interval(samples, name, gates, seed)
    verdict = decide(direction, bound, low, high)
    level = f"{gates.confidence_level:.0%}"
    note = f"{name} {statistic:.4g}, {level} CI [{low:.4g}, {high:.4g}] {direction} {bound:g}: " + {
        "pass": "whole interval holds", "fail": "whole interval violates",
        "inconclusive": "interval straddles the bound"}[verdict]
    return GateResult(**common, n=n, value=value, baseline_value=base, statistic=statistic, ci_low=low,
                      ci_high=high, verdict=verdict, note=note, measured_by=measured_by)


def compare(per_user: PerUser | None, subject: str, baseline: str, metric: str, segment: str, direction: str,
            bound: float, gates: GatesConfig, seed: int) -> Comparison:
    """``subject`` against ``baseline`` on the same ``segment`` users: relative change of ``metric``
    with its paired bootstrap interval, judged ``direction bound`` as a gate is (``decide``)."""
    common = dict(subject=subject, baseline=baseline, metric=metric, segment=segment,
                  rule=f"relative change {direction} {bound:g}")
    missing = [m for m in (subject, baseline) if per_user is None or m not in per_user.values]
    if missing:
        return Comparison(**common, n=0, value=None, baseline_value=None, relative_change=None, ci_low=None,
                          ci_high=None, verdict="skipped", note=f"not evaluated: {', '.join(missing)}")
    if metric not in per_user.values[subject]:
        raise ValueError(f"comparison metric {metric!r} was not evaluated (have {sorted(per_user.values[subject])})")
    mask = per_user.segment_mask(segment)
    ours, theirs = per_user.values[subject][metric][mask], per_user.values[baseline][metric][mask]
    n = int(ours.size)
    values = dict(value=float(ours.mean()) if n else None, baseline_value=float(theirs.mean()) if n else None)
    if n < 2:
        return Comparison(**common, n=n, **values, relative_change=None, ci_low=None, ci_high=None,
                          verdict="inconclusive", note=f"{n} {segment} users: no interval")
    with np.errstate(divide="ignore", invalid="ignore"):
        change = float(_relative_change(ours, theirs))
    low, high = bootstrap_interval((ours, theirs), "relative change", gates, seed)
    return Comparison(**common, n=n, **values, relative_change=change, ci_low=low, ci_high=high,
                      verdict=decide(direction, bound, low, high))


def candidate_wins(per_user: PerUser | None, gates: GatesConfig, seed: int) -> tuple[Comparison, Comparison]:
    """Does the candidate conclusively beat the champion and popularity (config ``conclusive_win``)?
    PASS: the interval's lower bound is above the configured lift."""
    win = gates.conclusive_win
    return (compare(per_user, "candidate", "champion", win.metric, win.segment, ">", win.min_lift_over_champion,
                    gates, seed),
            compare(per_user, "candidate", "popularity", win.metric, win.segment, ">",
                    win.min_lift_over_popularity, gates, seed))


def unmet_wins(wins: tuple[Comparison, ...]) -> tuple[Comparison, ...]:
    """The baselines not conclusively beaten; with no champion (bootstrap: SKIPPED) nothing serves
    that must be beaten but popularity."""
    return tuple(w for w in wins if w.verdict != "pass" and not (w.baseline == "champion" and w.verdict == "skipped"))


def champion_health(per_user: PerUser | None, gates: GatesConfig, seed: int) -> Comparison:
    """The champion as served vs popularity on the day: FAIL when it conclusively loses (the whole
    interval of champion/popularity - 1 below -tolerance); SKIPPED without a champion."""
    health = gates.champion_health
    return compare(per_user, "champion", "popularity", health.metric, health.segment, ">=", -health.tolerance,
                   gates, seed)


def judge(evaluation: EvaluationResult, per_user: PerUser | None, engine_result, gates: GatesConfig,
          seed: int = 0, data_metrics: dict[str, float] | None = None) -> Blessing:
    """Apply every gate; blessed iff no gate holds the candidate back: none failed and none is
    inconclusive (unless gates.yaml says inconclusive promotes), where a diagnostic gate's FAIL or
    INCONCLUSIVE is overridden when the candidate conclusively beats the champion and popularity
    (``candidate_wins``). Skipped gates are listed, never counted as passed. The champion's health
    vs popularity is judged alongside (it never blocks a candidate)."""
    from components.decide.report import override_text

    wins = candidate_wins(per_user, gates, seed)
    conclusive = not unmet_wins(wins) and any(w.verdict == "pass" for w in wins)
    holds_back = lambda g: g.verdict == "fail" or (  # noqa: E731
        g.verdict == "inconclusive" and gates.inconclusive == "keep_champion")
    results = tuple(
        replace(g, overridden=True) if conclusive and g.role == "diagnostic" and holds_back(g) else g
        for g in (judge_gate(spec, evaluation, per_user, engine_result, gates, seed, data_metrics)
                  for spec in gates.gates))
    labels = [_label(spec) for spec in gates.gates]
    failed = tuple(lb for lb, g in zip(labels, results) if g.verdict == "fail" and not g.overridden)
    inconclusive = tuple(lb for lb, g in zip(labels, results) if g.verdict == "inconclusive" and not g.overridden)
    overridden = tuple(lb for lb, g in zip(labels, results) if g.overridden)
    blocked = bool(failed) or (bool(inconclusive) and gates.inconclusive == "keep_champion")
    tagged = {lb: lb + (" (diagnostic)" if g.role == "diagnostic" else "") for lb, g in zip(labels, results)}
    vetoing_diagnostics = any(g.role == "diagnostic" and holds_back(g) and not g.overridden for g in results)
    not_overridden = ("; diagnostic gates not overridden: candidate does not conclusively beat "
                      + " and ".join(f"{w.baseline} ({w.describe()})" for w in unmet_wins(wins))
                      if vetoing_diagnostics else "")
    if failed:
        reason = f"failed gates: {'; '.join(tagged[lb] for lb in failed)}{not_overridden}"
    elif blocked:
        reason = f"inconclusive gates (champion kept): {'; '.join(tagged[lb] for lb in inconclusive)}{not_overridden}"
    else:
        reason = "no gate failed" if not overridden else "no decision gate failed; " + override_text(
            {"gates": [asdict(g) for g in results], "wins": [asdict(w) for w in wins]})
        if inconclusive:
            reason += f"; inconclusive treated as pass: {'; '.join(inconclusive)}"
    health = champion_health(per_user, gates, seed)
    # Popularity serves only when the candidate does not qualify and either the champion conclusively
    # lost to it or there is no champion to serve at all.
    bootstrap = evaluation.champion_version is None
    falls_back = blocked and (gates.champion_health.no_champion if bootstrap else
                              gates.champion_health.fallback if health.verdict == "fail" else None) == "popularity"
    return Blessing(
        day=evaluation.day,
        run_key=evaluation.run_key,
        blessed=not blocked,
        verdict="rejected" if failed else "inconclusive" if blocked else "blessed",
        candidate_version=evaluation.candidate_id,
        candidate_refs=evaluation.candidate_refs,
        champion_version=evaluation.champion_version,
        baseline_reason=evaluation.baseline_reason,
        bootstrap=bootstrap,
        runtime=engine_result.runtime if engine_result else None,
        runtime_description=engine_result.runtime_description if engine_result else None,
        tensorrt_status=engine_result.tensorrt_status if engine_result else None,
        users_evaluated=evaluation.users_evaluated,
        confidence_level=gates.confidence_level,
        bootstrap_resamples=gates.bootstrap_resamples,
        gates=results,
        failed=failed,
        inconclusive=inconclusive,
        reason=reason,
        evaluation_path=evaluation.path,
        overridden=overridden,
        wins=wins,
        conclusive_win=conclusive,
        champion_health=None if health.verdict == "skipped" else health,
        champion_worse_than_popularity=health.verdict == "fail",
        fallback="popularity" if falls_back else None,
        history_users_evaluated=evaluation.history_users_evaluated,
        users_without_unseen_test_items=evaluation.users_without_unseen_test_items,
    )


def key_metrics(evaluation: EvaluationResult) -> dict[str, Any]:
    """The few numbers an outcome shows (UI, CLI): n and NDCG@20 / Recall@20 of candidate and baseline."""
    out: dict[str, Any] = {"users_evaluated": evaluation.users_evaluated,
                           "cold_users_evaluated": evaluation.cold_users_evaluated}
    for who in ("candidate", "champion"):
        metrics = evaluation.metrics_of(who) or {}
        for metric in ("ndcg@20", "recall@20"):
            if metric in metrics:
                out[f"{who}_{metric}"] = metrics[metric]
    return out


def run_gate(layout: Layout, day: str, cfg: PipelineConfig, *, run_key: str,
             evaluation: EvaluationResult | dict[str, Any] | None = None) -> Blessing:
    """Judge the run's evaluation (default: the run folder's evaluation.json) and its candidate's
    engine; write blessing.json, gates.md and gates.html to the run's folder; a candidate that is
    not blessed is the run's outcome (rejected / inconclusive)."""
    from components.ship.convert import load_engine_result
    from components.decide.report import gate_table_html, gate_table_markdown

    out = run_dir(layout, day, run_key)
    _, evaluation = read_upstream(EvaluationResult, evaluation, out / EVALUATION_FILE, stage="run_gate", day=day,
                                  missing=f"run the evaluate stage of run {run_key} first", relation="evaluates")
    refs = CandidateRefs.from_dict(layout, evaluation.candidate_refs)
    engine = load_engine_result(refs.engine)
    from components.data.validation_report import validation_metrics

    blessing = judge(evaluation, PerUser.load(evaluation.per_user_path), engine, cfg.gates, cfg.seed,
                     data_metrics=validation_metrics(layout, day))
    blessing = Blessing(**{**blessing.__dict__, "run_key": run_key, "path": str(out / BLESSING_FILE)})
    write_json(out / BLESSING_FILE, asdict(blessing))
    atomic_write_bytes(out / "gates.md", gate_table_markdown(blessing).encode())
    atomic_write_bytes(out / "gates.html", gate_table_html(blessing).encode())
    # The verdict first (what ops scan for), then one line per gate: FAIL and INCONCLUSIVE at WARNING.
    log.log(logging.INFO if blessing.blessed else logging.WARNING,
            "gate %s run %s: candidate %s %s against %s (%d gates, %d failed, %d inconclusive, %d skipped; "
            "engine gates on %s)", day, run_key, blessing.candidate_version, blessing.verdict.upper(),
            blessing.champion_version or "no champion (bootstrap)", len(blessing.gates), len(blessing.failed),
            len(blessing.inconclusive), sum(g.verdict == "skipped" for g in blessing.gates),
            blessing.runtime_description)
    for gate in blessing.gates:
        blocking = gate.verdict in ("fail", "inconclusive") and not gate.overridden
        log.log(logging.WARNING if blocking else logging.INFO,
                "gate %s %s%s [%s, %s]: %s%s (n %d, value %s, baseline %s; %s)", gate.metric, gate.kind,
                f" vs {gate.baseline}" if gate.baseline else "", gate.segment, gate.role, gate.verdict.upper(),
                " (overridden)" if gate.overridden else "", gate.n, fmt_number(gate.value),
                fmt_number(gate.baseline_value), gate.note)
    for win in blessing.wins:
        log.info("candidate vs %s: %s (%s: %s)", win.baseline, win.verdict.upper(), win.rule, win.describe())
    if blessing.champion_health is not None:
        log.log(logging.WARNING if blessing.champion_worse_than_popularity else logging.INFO,
                "champion health %s: champion %s vs popularity %s (%s)", day, blessing.champion_version,
                blessing.champion_health.verdict.upper(), blessing.champion_health.describe())
    if not blessing.blessed:
        serving = champion(layout)
        record_outcome(layout, day, run_key, blessing.verdict, blessing.reason, candidate=blessing.candidate_version,
                       champion_before=serving.version if serving else None,
                       champion_after=serving.version if serving else None,
                       metrics=key_metrics(evaluation))
    return blessing
