import numpy as np
import pandas as pd
import pytest

from components.core.interactions import USER_ETYPE
from components.data.graph import ITEM_ETYPE, GraphArtifact, aggregate_pairs, extend_id_map, run_graph

from tests.unit.data_fixtures import accept, current_inputs, day, setup


def test_id_maps_are_append_only_across_days(tmp_path):
    layout, cfg = setup(tmp_path)
    for offset in range(4):
        accept(layout, cfg, offset)
    maps = []
    for offset in range(1, 4):
        run_graph(layout, day(offset), cfg, **current_inputs(layout, "graph", day(offset), cfg))
        artifact = GraphArtifact.load(layout.current("graphs", day(offset)))
        maps.append((artifact.user_ids(), artifact.item_ids()))
    for (users_a, items_a), (users_b, items_b) in zip(maps, maps[1:]):
        pd.testing.assert_frame_equal(users_a, users_b.iloc[: len(users_a)])
        pd.testing.assert_frame_equal(items_a, items_b.iloc[: len(items_a)])
        assert users_b["idx"].tolist() == list(range(len(users_b)))
    assert len(maps[-1][0]) > len(maps[0][0])  # new users were appended


def test_graph_holds_the_window_before_the_day_and_the_day_as_holdout(tmp_path):
    layout, cfg = setup(tmp_path, **{"graph.window_days": 2})
    for offset in range(4):
        accept(layout, cfg, offset)
    result = run_graph(layout, day(3), cfg, **current_inputs(layout, "graph", day(3), cfg))
    artifact = GraphArtifact.load(layout.current("graphs", day(3)))
    stats = artifact.ref.manifest["stats"]
    assert stats["train_days"] == [day(1), day(2)]
    graph = artifact.dgl_graph()
    assert graph.num_edges(USER_ETYPE) == graph.num_edges(ITEM_ETYPE) == result.train_pairs
    assert graph.num_nodes("user") == result.num_users
    users = artifact.user_ids().set_index("user_id")["idx"]
    items = artifact.item_ids().set_index("item_id")["idx"]
    holdout_events = pd.read_parquet(layout.accepted(day(3)) / "events.parquet")
    expected_pairs = set(zip(users[holdout_events["user_id"]].to_numpy(), items[holdout_events["item_id"]].to_numpy()))
    holdout = artifact.holdout_interactions()
    assert set(zip(holdout.user, holdout.item)) == expected_pairs
    assert stats["holdout"]["pairs"] == len(expected_pairs)
    src, dst = graph.edges(etype=ITEM_ETYPE)
    forward = graph.edges(etype=USER_ETYPE)
    assert sorted(zip(dst.tolist(), src.tolist())) == sorted(zip(forward[0].tolist(), forward[1].tolist()))


def test_rerun_lands_on_the_same_version(tmp_path):
    layout, cfg = setup(tmp_path)
    for offset in range(2):
        accept(layout, cfg, offset)
    assert run_graph(layout, day(1), cfg, **current_inputs(layout, "graph", day(1), cfg)) == run_graph(layout, day(1), cfg, **current_inputs(layout, "graph", day(1), cfg))


def test_quarantined_day_has_no_graph(tmp_path):
    layout, cfg = setup(tmp_path)
    accept(layout, cfg, 0)
    with pytest.raises(FileNotFoundError, match="no accepted partition"):
        run_graph(layout, day(1), cfg, **current_inputs(layout, "graph", day(1), cfg))


def test_decay_halves_weight_per_half_life():
    users = pd.DataFrame({"user_id": ["a"], "idx": [0], "first_seen": ["2026-01-01"]})
    items = pd.DataFrame({"item_id": ["x", "y"], "idx": [0, 1], "first_seen": ["2026-01-01"] * 2})
    as_of = pd.Timestamp("2026-01-15", tz="UTC")
    events = pd.DataFrame({
        "user_id": ["a", "a", "a"], "item_id": ["x", "x", "y"],
        "ts": [as_of - pd.Timedelta(days=14), as_of - pd.Timedelta(days=14), as_of - pd.Timedelta(days=7)],
        "weight": [2.0, 2.0, 4.0],
    })
    pairs = aggregate_pairs(events, users, items, as_of, half_life_days=7.0)
    np.testing.assert_allclose(pairs["weight"], [4.0 * 0.25, 4.0 * 0.5])


def test_extend_id_map_orders_new_ids_by_first_seen_then_id():
    previous = pd.DataFrame({"user_id": ["b"], "idx": [0], "first_seen": ["2026-01-01"]})
    events = pd.DataFrame({
        "user_id": ["z", "a", "b", "c"],
        "ts": pd.to_datetime(["2026-01-02", "2026-01-03", "2026-01-01", "2026-01-02"], utc=True),
    })
    out = extend_id_map(previous, events, "user_id")
    assert out["user_id"].tolist() == ["b", "c", "z", "a"]
    assert out["idx"].tolist() == [0, 1, 2, 3]


def test_a_day_relanded_after_later_days_extends_the_newest_id_maps_without_forking(tmp_path):
    from components.data.ingest import run_ingest
    from components.data.sources.synthetic import corrupt_landing
    from components.data.validate import run_validate
    from components.data.validation_result import DataValidationError
    from tests.unit.data_fixtures import land

    layout, cfg = setup(tmp_path)
    for offset in (0, 1):
        accept(layout, cfg, offset)
    land(layout, 2)
    corrupt_landing(layout.landing(day(2)), "wrong_day")
    run_ingest(layout, day(2), cfg)
    with pytest.raises(DataValidationError):
        run_validate(layout, day(2), cfg, **current_inputs(layout, "validate", day(2)))
    accept(layout, cfg, 3)
    for offset in (1, 3):
        run_graph(layout, day(offset), cfg, **current_inputs(layout, "graph", day(offset), cfg))
    accept(layout, cfg, 2)  # the fixed day is re-landed late and re-run
    run_graph(layout, day(2), cfg, **current_inputs(layout, "graph", day(2), cfg))
    accept(layout, cfg, 4)
    run_graph(layout, day(4), cfg, **current_inputs(layout, "graph", day(4), cfg))
    maps = {d: GraphArtifact.load(layout.current("graphs", day(d))).user_ids() for d in (1, 3, 2, 4)}
    chain = [maps[1], maps[3], maps[2], maps[4]]  # in the order they were built
    for shorter, longer in zip(chain, chain[1:]):
        pd.testing.assert_frame_equal(shorter, longer.iloc[: len(shorter)])
    combined = pd.concat(chain).drop_duplicates()
    assert combined["user_id"].is_unique and combined["idx"].is_unique  # one index per user, ever
    relanded = set(pd.read_parquet(layout.accepted(day(2)) / "events.parquet")["user_id"])
    assert relanded <= set(maps[2]["user_id"])


def test_graph_checks_are_written_to_the_stats(tmp_path):
    layout, cfg = setup(tmp_path, **{"graph.window_days": 2})
    for offset in range(4):
        accept(layout, cfg, offset)
    run_graph(layout, day(2), cfg, **current_inputs(layout, "graph", day(2), cfg))
    run_graph(layout, day(3), cfg, **current_inputs(layout, "graph", day(3), cfg))
    stats = GraphArtifact.load(layout.current("graphs", day(3))).ref.manifest["stats"]
    checks = {c["check"]: c for c in stats["checks"]}
    assert checks["leaked_events"]["value"] == 0 and checks["duplicate_edges"]["value"] == 0
    assert checks["degree_drift"]["verdict"] in ("pass", "WARN") and 0 <= checks["degree_drift"]["value"] <= 1
    hist = stats["degree_hist"]["user"]
    assert sum(hist) == pytest.approx(1.0) and len(hist) >= 1
    holdout = stats["holdout"]
    graph = GraphArtifact.load(layout.current("graphs", day(3)))
    train, hold = graph.train_interactions(), graph.holdout_interactions()
    cold = ~np.isin(hold.user, train.user) | ~np.isin(hold.item, train.item)
    assert checks["cold_share"]["value"] == pytest.approx(cold.mean(), abs=1e-6)
    assert holdout["pairs"] == len(hold)


def test_degree_drift_and_leakage_are_measured_exactly():
    from components.data.graph_checks import degree_histogram, histogram_drift

    assert degree_histogram(np.array([0, 1, 2, 3, 4])) == [0.25, 0.5, 0.25]
    assert histogram_drift([1.0], [0.0, 1.0]) == 1.0
    assert histogram_drift([0.5, 0.5], [0.5, 0.5]) == 0.0


def test_rerunning_an_earlier_day_after_later_days_lands_on_the_same_graph(tmp_path):
    layout, cfg = setup(tmp_path)
    for offset in (0, 1, 2):
        accept(layout, cfg, offset)
    first = run_graph(layout, day(1), cfg, **current_inputs(layout, "graph", day(1), cfg))
    run_graph(layout, day(2), cfg, **current_inputs(layout, "graph", day(2), cfg))  # longer maps now exist
    again = run_graph(layout, day(1), cfg, **current_inputs(layout, "graph", day(1), cfg))
    assert again.version == first.version
    assert GraphArtifact.load(layout.current("graphs", day(2))).num_users > first.num_users


def test_the_graph_builds_on_the_references_it_is_given_and_records_them(tmp_path):
    layout, cfg = setup(tmp_path, **{"graph.window_days": 2})
    for offset in range(4):
        accept(layout, cfg, offset)
    yesterday = run_graph(layout, day(2), cfg, **current_inputs(layout, "graph", day(2), cfg))
    given = current_inputs(layout, "graph", day(3), cfg)  # what the pipeline resolves once, from the catalog
    assert [ref.day for ref in given["window"]] == [day(1), day(2)] and given["same_day"] is None
    assert given["previous"].version == given["id_maps"].version == yesterday.version
    run_graph(layout, day(3), cfg, **given)
    manifest = GraphArtifact.load(layout.current("graphs", day(3))).ref.manifest
    assert manifest["inputs"] == [*(ref.as_dict() for ref in (*given["window"], given["accepted"])),
                                  given["id_maps"].as_dict() | {"role": "id_maps"},
                                  given["previous"].as_dict() | {"role": "previous"}]
    # only the days it is given are read, whatever else the catalog holds
    run_graph(layout, day(3), cfg, **{**given, "window": given["window"][1:]})
    assert GraphArtifact.load(layout.current("graphs", day(3))).ref.manifest["stats"]["train_days"] == [day(2)]
    outside = current_inputs(layout, "graph", day(1), cfg)["window"]  # day 0: outside day 3's window
    with pytest.raises(ValueError, match=f"expected {day(3)} and days {day(1)}..{day(2)}"):
        run_graph(layout, day(3), cfg, **{**given, "window": outside})
