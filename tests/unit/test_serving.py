"""Serving: the champion behind string IDs, popularity fallback, and the Triton repository export."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.graph import GraphArtifact
from components.registry import run_promote, run_register
from components.serving import Recommender, export_triton_repository
from components.storage import Layout

from tests.unit.ship_fixtures import make_world, run_ship_day, tiny_config

DAY = "2024-01-08"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    layout = Layout.at(root)
    cfg = tiny_config(root)
    world = make_world()
    run_ship_day(layout, DAY, cfg, world, cold_users=2)  # u38, u39: in the ID map, no training pairs
    registration = run_register(layout, DAY, cfg, run_key="r1")
    assert run_promote(layout, DAY, cfg, run_key="r1", registration=registration).promoted
    return layout


def test_known_users_get_model_recommendations_without_seen_items(served):
    rec = Recommender.load(served.root)  # the pipeline root works as well as the registry folder
    graph_dir = served.current("graphs", DAY).path
    graph = GraphArtifact.load(served.current("graphs", DAY))
    train = graph.train_interactions()
    out = rec.recommend(["u0", "u7"], k=3)
    assert [len(r) for r in out] == [3, 3]
    items, scores = rec.runner.run(np.array([0, 7]))
    assert [i for i, _ in out[1]] == [f"i{j}" for j in items[1, :3]]
    np.testing.assert_allclose([s for _, s in out[0]], scores[0, :3], rtol=1e-6)
    assert all(s1 >= s2 for (_, s1), (_, s2) in zip(out[0], out[0][1:]))
    seen_u0 = {f"i{j}" for j in train.item[train.user == 0]}
    assert not seen_u0 & {i for i, _ in out[0]}
    assert pd.read_parquet(f"{graph_dir}/users.parquet").shape[0] == 40


def test_unknown_users_get_the_champion_popularity(served):
    rec = Recommender.load(served.registry())
    graph = GraphArtifact.load(served.current("graphs", DAY))
    counts = np.bincount(graph.train_interactions().item, minlength=graph.num_items)
    expected = np.argsort(-counts, kind="stable")[:4]
    out = rec.recommend(["nobody", "u3", "also-nobody", "u39"], k=4)
    assert out[0] == out[2] == out[3] == [(f"i{j}", float(counts[j])) for j in expected]
    assert out[1] != out[0]
    np.testing.assert_array_equal(rec.fallback_mask(["nobody", "u3", "u39"]), [True, False, True])


def test_k_beyond_the_exported_top_k_is_refused(served):
    rec = Recommender.load(served.root)
    with pytest.raises(ValueError, match=r"k must be in \[1, 5\]"):
        rec.recommend(["u0"], k=6)


def test_no_champion_is_a_clear_error(tmp_path):
    with pytest.raises(LookupError, match="no champion"):
        Recommender.load(tmp_path)


def test_triton_repository_from_the_champion(served, tmp_path):
    written = export_triton_repository(served, tmp_path / "triton")
    assert [p.name for p in written] == ["graphdistill_onnx"]  # no TensorRT plan was built here
    model = tmp_path / "triton" / "graphdistill_onnx"
    assert (model / "1" / "model.onnx").stat().st_size > 0
    config = (model / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config
    assert "max_batch_size: 16" in config
    assert "dims: [ 5 ]" in config and 'name: "user_idx"' in config and "TYPE_INT64" in config
    assert "preferred_batch_size: [ 4, 16 ]" in config
    assert "$" not in config
