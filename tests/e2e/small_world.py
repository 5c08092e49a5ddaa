"""Gates for the e2e tests' small generated worlds (~100 evaluated users a day).

The production gates (config/gates.yaml) want >= 300 evaluated users, so on these worlds every
night would be INCONCLUSIVE; these keep the shipped rules with a low users floor and a 20%
non-inferiority bound, calibrated on the 400-user world: good candidates measured about
[+0.16, +0.42] relative change vs the champion, the shuffled-label candidate [-0.47, -0.27].
"""

from pathlib import Path

import yaml

from components.data.sources.synthetic import SyntheticWorld, corrupt_landing, write_landing_day
from components.core.catalog import Layout, parse_day

# Roles and judged segments as in config/gates.yaml: decisions on users with history, teacher retention
# a diagnostic that a conclusive win overrides.
SMALL_WORLD_GATES = {
    "gates": [
        {"metric": "users_evaluated", "kind": "min", "threshold": 30},
        {"metric": "ndcg@20", "kind": "min", "threshold": 0.01},
        {"metric": "ndcg@20", "kind": "min_lift_over", "baseline": "popularity", "threshold": 0.0,
         "segment": "history"},
        {"metric": "ndcg@20", "kind": "max_regression_vs", "baseline": "champion", "threshold": 0.2,
         "segment": "history"},
        {"metric": "ndcg@20", "kind": "min_ratio_to", "baseline": "teacher", "threshold": 0.8, "role": "diagnostic"},
        {"metric": "parity_topk_overlap", "kind": "min", "threshold": 0.95},
        {"metric": "latency_p99_ms", "kind": "max", "threshold": 250.0},
    ]
}


def write_small_world_gates(root: Path) -> Path:
    path = Path(root) / "small_world_gates.yaml"
    path.write_text(yaml.safe_dump(SMALL_WORLD_GATES))
    return path


def land_small_world(layout: Layout, days: list[str], seed: int, corrupt: bool = True) -> None:
    """Land ``days`` of a generated world (one universe) as parquet; with ``corrupt`` the fourth day
    is corrupted (a missing column), so the nightly quarantines it."""
    world = SyntheticWorld(start=parse_day(days[0]), seed=seed)
    universe = world.universe()
    for day in days:
        write_landing_day(world, layout.landing(day), parse_day(day), "parquet", universe)
    if corrupt:
        corrupt_landing(layout.landing(days[3]), "missing_column")
