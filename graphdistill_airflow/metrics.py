"""Emit a night's numbers as gauges through Airflow's metrics settings ([metrics] statsd_on / otel_on).

Names are ``<metrics.statsd_prefix>.graphdistill.<gauge>`` with the gauges of
components.decide.outcome.gauges (README "Metrics"); with metrics off, Airflow's Stats is a no-op.
"""

from __future__ import annotations

import logging

from components.decide.outcome import Outcome, gauges

log = logging.getLogger(__name__)


def emit_outcome_metrics(outcome: Outcome) -> dict[str, float]:
    from airflow.sdk.observability import stats
    from airflow.sdk.observability.metrics import stats_utils

    # The task runner initializes Stats from [metrics]; `airflow dags test` runs tasks in-process
    # without it, so initialize here the same way (idempotent: a fresh backend from the same config).
    from airflow.sdk.configuration import conf

    stats.initialize(factory=stats_utils.get_stats_factory(),
                     export_legacy_names=conf.getboolean("metrics", "legacy_names_on", fallback=False))
    values = gauges(outcome)
    for name, value in values.items():
        stats.gauge(f"graphdistill.{name}", value)
    log.info("metrics: %d gauges emitted (graphdistill.*): %s", len(values),
             ", ".join(f"{k}={v:.4g}" for k, v in sorted(values.items())))
    return values
