"""MovieLens-100k (a real public log, shipped by the RecBole wheel) replayed day by day through
ingest -> validate -> graph: how the rules behave on real data, not on our generator."""

import json

import pandas as pd
import pytest

from components.core.config import load_config
from components.data.graph import run_graph
from components.data.ingest import run_ingest
from components.data.sources.public_logs import public_log
from components.data.sources.replay import replay
from components.data.sources.synthetic import corrupt_landing
from components.core.catalog import Layout
from components.data.validate import DataValidationError, run_validate

DAYS = 28
CORRUPT = 14


@pytest.fixture(scope="module")
def movielens():
    try:
        return public_log("ml-100k")
    except FileNotFoundError as exc:  # reported as skipped, never as passed
        pytest.skip(str(exc))


def _replay(tmp_path, source, corrupt: int | None, graph_days: tuple[int, ...] = ()):
    cfg = load_config(overrides={"root": str(tmp_path / "root")})
    layout = Layout.at(cfg.root)
    days = replay(source, layout.root / "landing", max_days=DAYS).days
    if corrupt is not None:
        corrupt_landing(layout.landing(days[corrupt]), "wrong_day")
    outcomes = {}
    for index, day in enumerate(days):
        run_ingest(layout, day, cfg)
        try:
            result = run_validate(layout, day, cfg)
        except DataValidationError as failure:
            outcomes[day] = ("quarantined", str(failure), ())
            continue
        outcomes[day] = ("accepted", "", result.warnings)
        if index in graph_days:
            run_graph(layout, day, cfg)
    return layout, days, outcomes


def test_movielens_days_replay_without_quarantine_and_a_bad_day_does_not_cascade(tmp_path, movielens):
    _, days, clean = _replay(tmp_path / "clean", movielens, None)
    assert len(days) == DAYS and days[0] == "1997-09-20"  # consecutive calendar days of the real log
    assert all(verdict == "accepted" for verdict, _, _ in clean.values())  # real days keep no contract broken
    layout, days, hit = _replay(tmp_path / "hit", movielens, CORRUPT, graph_days=(CORRUPT - 1, CORRUPT + 1, CORRUPT + 2))
    verdict, message, _ = hit[days[CORRUPT]]
    assert verdict == "quarantined" and "expect_column_values_to_be_between(ts_offset_hours)" in message
    for day in days[CORRUPT + 1:]:  # nothing after the bad day is quarantined or flagged because of it
        assert hit[day][0] == "accepted"
        assert {w.name for w in hit[day][2]} <= {w.name for w in clean[day][2]}, day
    for _, _, warnings in clean.values():  # every warning carries its value and band
        for warning in warnings:
            assert warning.observed is not None and (warning.band is not None or warning.rule in ("bot_suspect", "unknown_columns"))
    # The graphs around the quarantined day: no leak, one index per user (the maps did not fork).
    for day in (days[CORRUPT + 1], days[CORRUPT + 2]):
        ref = layout.current("graphs", day)
        checks = {c["check"]: c for c in json.loads((layout.root / "graphs" / day / ref.version / "stats.json").read_text())["checks"]}
        assert checks["leaked_events"]["value"] == 0 and checks["duplicate_edges"]["value"] == 0
        users = pd.read_parquet(f"{ref.path}/users.parquet")
        assert users["user_id"].is_unique and users["idx"].tolist() == list(range(len(users)))
