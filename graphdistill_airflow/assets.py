"""The Assets the nightly DAG updates: the serving champion, and every night's outcome."""

from airflow.sdk import Asset

# One event per promotion, with metadata (version, day, key metrics, gates, runtime, report link);
# the champion-refresh DAG is scheduled on it.
CHAMPION = Asset(name="graphdistill_champion", uri="graphdistill://registry/champion", group="model")
# One event per night, whatever its outcome (promoted, rejected, quarantined, skipped, ...): the
# data-quality and gate decisions are visible on the Assets page, and other DAGs can react to them.
NIGHTLY_OUTCOME = Asset(name="graphdistill_nightly_outcome", uri="graphdistill://reports/outcome", group="quality")
