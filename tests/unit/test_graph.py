import numpy as np
import pandas as pd
import pytest

from components.graph import ITEM_ETYPE, USER_ETYPE, GraphArtifact, aggregate_pairs, extend_id_map, run_graph

from tests.unit.data_fixtures import accept, day, setup


def test_id_maps_are_append_only_across_days(tmp_path):
    layout, cfg = setup(tmp_path)
    for offset in range(4):
        accept(layout, cfg, offset)
    maps = []
    for offset in range(1, 4):
        run_graph(layout, day(offset), cfg)
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
    result = run_graph(layout, day(3), cfg)
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
    assert run_graph(layout, day(1), cfg) == run_graph(layout, day(1), cfg)


def test_quarantined_day_has_no_graph(tmp_path):
    layout, cfg = setup(tmp_path)
    accept(layout, cfg, 0)
    with pytest.raises(FileNotFoundError, match="no accepted partition"):
        run_graph(layout, day(1), cfg)


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
