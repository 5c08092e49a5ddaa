"""Anomaly checks that warn: the day's profile (volume, new-user/item shares, top-user and top-item shares,
events per user, event-type mix) against a robust band (median +- k MAD) of the trailing history, and an
obviously automated (one-user) day. Pure functions of the profile, its history and config."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np

from components.core.config import ANOMALY_METRICS, PipelineConfig
from components.data.streaming import DayKeys, tally
from components.data.validation_result import OFF, RuleResult, plain, severity_of

LOG_SCALE = ("volume", "events_per_user")  # vary multiplicatively: judged on log values
TWO_SIDED = ("volume",)  # the rest only warn when high (a drop in new users is no alarm)


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
        shown = None if value is None else plain(value)
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
        band_text = (f"[{plain(low)}, {plain(high)}]" if low_bound is not None else f"<= {plain(high)}")
        rules.append(RuleResult(
            metric, None, bool(ok), observed=shown, severity=severity, unit="",
            band=(None if low_bound is None else plain(low), plain(high)),
            expected=f"{band_text} (median {plain(center)} +- {v.anomaly_k:g} MAD of {past.size} {basis_name} days)",
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
