"""Serving: the champion behind string IDs, popularity fallback, and the Triton repository export."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from components.data.graph import GraphArtifact
from components.data.features import online_history, recent_items_as_of, run_features
from components.ship.serving import (Recommender, csr_rows, export_triton_repository, fold_in, history_csr,
                                top_k_excluding)
from components.core.catalog import Layout

from tests.unit.data_fixtures import current_inputs
from tests.unit.ship_fixtures import promoted_champion, tiny_config, write_accepted_events

DAY = "2024-01-08"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    return promoted_champion(tmp_path_factory.mktemp("served"), DAY)


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


# --- fold-in and Feast-backed history ---------------------------------------------------------


def test_fold_in_is_one_lightgcn_propagation_step():
    items = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [5.0, 5.0]], dtype=np.float32)
    degrees = np.array([1.0, 4.0, 9.0, 0.0])  # item 3 was never trained: left out
    indptr, indices = np.array([0, 2, 4, 4]), np.array([0, 1, 2, 3])
    users = fold_in(items, indptr, indices, degrees)
    # user 0: (e0 / 1 + e1 / 2) / sqrt(2); user 1: e2 / 3 / sqrt(1); user 2 (no items): zeros
    np.testing.assert_allclose(users, [[1 / np.sqrt(2), 1 / np.sqrt(2)], [1.0, 1.0], [0.0, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(fold_in(items, indptr[:2], indices[:2]), [[1 / np.sqrt(2), np.sqrt(2)]], rtol=1e-6)


def test_csr_helpers_map_histories_and_gather_rows():
    indptr, indices = history_csr([["b", "zzz", "a"], [], ["c"]], pd.Index(["a", "b", "c"]))
    np.testing.assert_array_equal(indptr, [0, 2, 2, 3])
    np.testing.assert_array_equal(indices, [1, 0, 2])  # unknown "zzz" dropped, order kept
    sub_indptr, sub_indices = csr_rows(indptr, indices, np.array([2, 0]))
    np.testing.assert_array_equal(sub_indptr, [0, 1, 3])
    np.testing.assert_array_equal(sub_indices, [2, 1, 0])
    top, scores = top_k_excluding(np.array([[1.0, 0.0]], np.float32), np.eye(2, dtype=np.float32)[[0, 1, 0]],
                                  np.array([0, 1]), np.array([0]), 3)
    np.testing.assert_array_equal(top, [[2, 1, -1]])  # item 0 excluded, only two remain
    np.testing.assert_allclose(scores[0, :2], [1.0, 0.0])


@pytest.fixture(scope="module")
def served_with_feast(served):
    """The served champion plus a real Feast repo (SQLite online store) holding users' recent items."""
    cfg = tiny_config(served.root)
    engine_only = Recommender.load(served)
    first_for_u0 = engine_only.recommend(["u0"], k=1)[0][0][0]
    write_accepted_events(served, DAY, [
        ("newbie", "i0", f"{DAY}T08:00"), ("newbie", "i4", f"{DAY}T09:00"), ("newbie", "i8", f"{DAY}T10:00"),
        ("u39", "i1", f"{DAY}T11:00"), ("u39", "i5", f"{DAY}T12:00"),
        ("u0", first_for_u0, f"{DAY}T13:00"),
        ("stranger", "i_new", f"{DAY}T14:00"),
    ])
    run_features(served, DAY, cfg, **current_inputs(served, "features", DAY, cfg))
    return engine_only, Recommender.load(served, history=online_history(served, cfg)), first_for_u0, cfg


def test_recent_items_come_from_the_feast_online_store(served_with_feast, served):
    _, rec, first_for_u0, cfg = served_with_feast
    assert rec.history(["newbie", "u0", "nobody"]) == [["i8", "i4", "i0"], [first_for_u0], []]
    # As of the day's start nothing was materialized yet; as of its end, what the online store holds.
    start = pd.Timestamp(DAY, tz="UTC")
    assert recent_items_as_of(served, cfg, ["newbie", "u39"], start) == [[], []]
    assert recent_items_as_of(served, cfg, ["u39", "newbie"], start + pd.Timedelta(days=1)) == [
        ["i5", "i1"], ["i8", "i4", "i0"]]


def test_items_seen_since_training_are_excluded_for_known_users(served_with_feast):
    engine_only, rec, first_for_u0, _ = served_with_feast
    before, after = engine_only.recommend(["u0"], k=4)[0], rec.recommend(["u0"], k=4)[0]
    assert before[0][0] == first_for_u0 and first_for_u0 not in {i for i, _ in after}
    assert after[:3] == before[1:4]  # the rest keeps the engine's order and scores
    assert rec.segments(["u0"]).tolist() == ["model"]


def test_cold_users_with_history_are_folded_in(served_with_feast):
    engine_only, rec, _, _ = served_with_feast
    users = ["newbie", "u39", "stranger", "nobody"]
    assert rec.segments(users).tolist() == ["fold_in", "fold_in", "popularity", "popularity"]
    np.testing.assert_array_equal(rec.fallback_mask(users), [False, False, True, True])
    assert engine_only.segments(users).tolist() == ["popularity"] * 4  # without history: as before
    out = rec.recommend(users, k=5)
    # newbie's items are all of cluster 0 (item i belongs to cluster i % 4): so are their neighbours,
    # and the scores are the fold-in embedding's dot products, history excluded.
    emb = np.load(rec.version_dir / "embeddings.npz")["item"]
    degree = np.load(rec.version_dir / "popularity.npy")
    newbie = fold_in(emb, np.array([0, 3]), np.array([8, 4, 0]), degree)[0]
    expected = np.argsort(-(emb @ newbie), kind="stable")
    expected = [j for j in expected if j not in (0, 4, 8)][:5]
    assert [i for i, _ in out[0]] == [f"i{j}" for j in expected]
    np.testing.assert_allclose([s for _, s in out[0]], (emb @ newbie)[expected], rtol=1e-5)
    assert all(int(i[1:]) % 4 == 0 for i, _ in out[0])
    assert all(int(i[1:]) % 4 == 1 for i, _ in out[1]) and not {"i1", "i5"} & {i for i, _ in out[1]}
    assert out[2] == out[3] == engine_only.recommend(["nobody"], k=5)[0]  # popularity (i_new unknown)


def test_cli_recommend_reads_the_online_store(served_with_feast, served, capsys):
    from components.cli import main

    _, rec, _, _ = served_with_feast
    assert main(["recommend", "newbie", "nobody", "-k", "3", "--root", str(served.root)]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert header == f"# champion {rec.version} answered by {rec.runner.description}"
    expected = rec.recommend(["newbie", "nobody"], k=3)
    assert lines == [f"{user} [{segment}] " + " ".join(f"{i}:{s:.3f}" for i, s in items)
                     for user, segment, items in zip(["newbie", "nobody"], ["fold_in", "popularity"], expected)]


def test_fold_in_answers_users_the_model_never_trained_far_better_than_popularity():
    """A trained LightGCN, 12 of 120 users left out of its graph: folded in from their items (what
    serving reads from Feast), they are ranked about as well as trained users, far above popularity."""
    from components.core.config import load_config
    from components.model.metrics import embedding_scorer, evaluate_scorer, popularity_scorer
    from components.core.interactions import Interactions
    from components.model.models.lightgcn import build_adjacency
    from components.model.teacher import train_teacher
    from components.model.train import final_embeddings

    from tests.unit.model_fixtures import planted
    from tests.unit.model.test_train import FAST

    train, holdout = planted()
    cold = np.arange(120) % 10 == 0
    graph_pairs = ~cold[train.user]
    model_train = Interactions(train.user[graph_pairs], train.item[graph_pairs], train.weight[graph_pairs])
    model = train_teacher(model_train, None, 120, 80, load_config(None, FAST)).model
    adjacency = build_adjacency(model_train.user, model_train.item, 120, 80)
    with torch.no_grad():
        user_emb, item_emb = (t.numpy() for t in final_embeddings(model, adjacency, "sparse"))
    cold_users = np.flatnonzero(cold)
    history = ~graph_pairs  # planted() groups pairs by user, so these rows are already CSR-ordered
    indptr = np.concatenate([[0], np.cumsum(np.bincount(train.user[history], minlength=120)[cold_users])])
    folded = user_emb.copy()
    folded[cold_users] = fold_in(item_emb, indptr, train.item[history], np.bincount(model_train.item, minlength=80))
    on_cold = np.isin(holdout.user, cold_users)
    cold_holdout = Interactions(holdout.user[on_cold], holdout.item[on_cold], holdout.weight[on_cold])
    ours = evaluate_scorer(embedding_scorer(folded, item_emb), train, cold_holdout, 80, (20,))
    popularity = evaluate_scorer(popularity_scorer(model_train, 80), train, cold_holdout, 80, (20,))
    untrained = evaluate_scorer(embedding_scorer(user_emb, item_emb), train, cold_holdout, 80, (20,))
    assert ours["users_evaluated"] == 12
    assert ours["recall@20"] > popularity["recall@20"] + 0.15, (ours, popularity)
    assert ours["recall@20"] > untrained["recall@20"] + 0.15  # their own (never trained) rows are noise


def test_cli_recommend_via_triton_says_what_is_missing_or_unreachable(served, capsys, monkeypatch):
    from components.cli import main

    monkeypatch.delenv("GRAPHDISTILL_TRITON_URL", raising=False)
    assert main(["recommend", "u0", "--via", "triton", "--root", str(served.root)]) == 2
    assert "needs --triton-url or GRAPHDISTILL_TRITON_URL" in capsys.readouterr().err
    # A port nothing listens on: one line naming the URL, exit 3 (serving is down, the input was fine).
    assert main(["recommend", "u0", "-k", "3", "--via", "triton", "--triton-url", "http://127.0.0.1:9", "--root",
                 str(served.root)]) == 3
    err = capsys.readouterr().err
    assert "http://127.0.0.1:9: Triton not reachable" in err and "Traceback" not in err
