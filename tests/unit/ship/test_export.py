"""Export: the serving graph ranks like brute force, excludes seen items, and ONNX matches PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

from components.model.models.serving_graph import ServingGraph, seen_items_csr
from components.ship.export import (
    INPUT_NAME,
    OUTPUT_NAMES,
    export_onnx,
    onnxruntime_session,
    parity,
    run_export,
    torch_outputs,
)
from components.core.interactions import Interactions
from components.core.catalog import Layout

from tests.unit.data_fixtures import current_inputs
from tests.unit.ship_fixtures import cluster_embeddings, make_graph, make_model, make_world, random_embeddings, tiny_config


def _interactions(users, items):
    users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
    return Interactions(users, items, np.ones(users.shape[0], np.float32))


def test_seen_items_csr_rows_hold_each_users_sorted_items():
    seen = seen_items_csr(_interactions([2, 0, 2, 2], [5, 1, 3, 4]), num_users=4)
    assert seen.items.dtype == np.int32
    np.testing.assert_array_equal(seen.indptr, [0, 1, 1, 4, 4])
    np.testing.assert_array_equal(seen.items, [1, 3, 4, 5])
    assert seen.max_seen == 3 and seen.nnz == 4


def test_seen_table_grows_with_interactions_not_users_times_heaviest_history():
    """One heavy user used to size a users x max_seen table for everybody (20k users x 5k seen = 400 MB)."""
    num_users, heavy = 20_000, 5_000
    users = np.concatenate([np.zeros(heavy, np.int64), np.arange(1, num_users)])
    items = np.concatenate([np.arange(heavy), np.zeros(num_users - 1, np.int64)])
    seen = seen_items_csr(_interactions(users, items), num_users)
    assert seen.max_seen == heavy
    assert seen.indptr.nbytes + seen.items.nbytes == (num_users + 1) * 8 + (heavy + num_users - 1) * 4


def test_serving_graph_matches_brute_force_and_excludes_seen():
    user, item = random_embeddings(6, 12, seed=3)
    train = _interactions([0, 0, 1, 3, 3, 3], [2, 7, 0, 1, 4, 11])
    module = ServingGraph(user, item, top_k=4, seen_items=seen_items_csr(train, 6))
    users = np.arange(6)
    top_items, top_scores = torch_outputs(module, users)

    scores = user @ item.T
    scores[train.user, train.item] = -np.inf
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(top_items, expected)
    np.testing.assert_allclose(top_scores, np.take_along_axis(scores, expected, 1), rtol=1e-6)
    for u, i in zip(train.user, train.item):
        assert i not in top_items[u]
    # Without exclusion the best seen item would come back: the mask really matters.
    plain_items, _ = torch_outputs(ServingGraph(user, item, top_k=4), users)
    raw = user @ item.T
    best_seen = {u: max(train.item[train.user == u], key=lambda i: raw[u, i]) for u in (0, 1, 3)}
    assert any(best_seen[u] in plain_items[u] for u in best_seen)


def test_top_k_clamped_to_catalogue_and_excluded_slots_are_minus_inf():
    user, item = random_embeddings(2, 3, seed=4)
    train = _interactions([0, 0], [0, 2])
    module = ServingGraph(user, item, top_k=10, seen_items=seen_items_csr(train, 2))
    items, scores = torch_outputs(module, np.array([0, 1]))
    assert items.shape == (2, 3)
    assert items[0, 0] == 1 and np.isneginf(scores[0, 1:]).all()
    assert np.isfinite(scores[1]).all()


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    user, item = random_embeddings(50, 80, dim=16, seed=5)
    rng = np.random.default_rng(0)
    # Users 40-49 have no history: a batch of only them gathers zero-length CSR rows.
    train = _interactions(rng.integers(0, 40, 300), rng.integers(0, 80, 300))
    # duplicates are fine for the table but the graph has distinct pairs; dedupe like it
    pairs = np.unique(np.stack([train.user, train.item], 1), axis=0)
    module = ServingGraph(user, item, top_k=10, seen_items=seen_items_csr(_interactions(*pairs.T), 50))
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(module, path, opset=17)
    return module, path


@pytest.mark.parametrize("batch", [1, 3, 17, 50])
def test_onnx_parity_across_dynamic_batch_sizes(onnx_model, batch):
    module, path = onnx_model
    session = onnxruntime_session(path, threads=1)
    assert [i.name for i in session.get_inputs()] == [INPUT_NAME]
    assert session.get_inputs()[0].shape[0] == "batch"
    users = np.random.default_rng(batch).integers(0, 50, batch).astype(np.int64)
    ref_items, ref_scores = torch_outputs(module, users)
    items, scores = session.run(list(OUTPUT_NAMES), {INPUT_NAME: users})
    assert items.dtype == np.int64 and scores.dtype == np.float32
    assert items.shape == (batch, 10)
    max_abs_diff, overlap = parity(ref_items, ref_scores, items, scores)
    assert max_abs_diff <= 1e-5
    assert overlap == 1.0


def test_onnx_batch_of_users_without_history_scores_every_item(onnx_model):
    module, path = onnx_model
    users = np.arange(40, 50, dtype=np.int64)
    items, scores = onnxruntime_session(path, threads=1).run(list(OUTPUT_NAMES), {INPUT_NAME: users})
    raw = module.user_emb.numpy()[users] @ module.item_emb.numpy().T
    np.testing.assert_array_equal(items, np.argsort(-raw, axis=1, kind="stable")[:, :10])
    assert np.isfinite(scores).all()


def test_parity_metric_counts_differences_and_overlap():
    ref_items = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    ref_scores = np.array([[4.0, 3.0, 2.0, 1.0], [4.0, 3.0, -np.inf, -np.inf]], np.float32)
    items = np.array([[0, 1, 9, 3], [4, 5, 1, 2]])
    scores = np.array([[4.0, 3.0, 2.5, 1.0], [4.0, 3.0, -np.inf, -np.inf]], np.float32)
    max_abs_diff, overlap = parity(ref_items, ref_scores, items, scores)
    assert max_abs_diff == pytest.approx(0.5)
    # user 0: 3 of 4 shared; user 1: both finite items shared, the excluded slots are ignored
    assert overlap == pytest.approx((3 / 4 + 2 / 2) / 2)


def test_run_export_publishes_checked_model_with_parity_and_is_idempotent(tmp_path):
    layout = Layout.at(tmp_path)
    cfg = tiny_config(tmp_path)
    world = make_world()
    graph = make_graph(layout, "2024-01-08", world)
    make_model(layout, "pruned", "2024-01-08", *cluster_embeddings(world), graph)
    result = run_export(layout, "2024-01-08", cfg, **current_inputs(layout, "export", "2024-01-08"))
    assert result.parity_max_abs_diff <= 1e-5 and result.parity_topk_overlap == 1.0
    assert result.parity_users == world.num_users  # fewer users than the sample size: all of them
    assert result.top_k == 5 and result.exclude_seen and result.max_seen == 5
    manifest = layout.current("exports", "2024-01-08").manifest
    assert manifest["inputs"]["model"]["kind"] == "models/pruned"
    assert manifest["io"]["outputs"][0] == {"name": "top_items", "dtype": "int64", "shape": ["batch", 5]}
    again = run_export(layout, "2024-01-08", cfg, **current_inputs(layout, "export", "2024-01-08"))
    assert again.version == result.version

    # the exported model never recommends a training positive
    train = graph.train_interactions()
    session = onnxruntime_session(result.onnx_path, threads=1)
    items, _ = session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.arange(world.num_users, dtype=np.int64)})
    seen = set(zip(train.user.tolist(), train.item.tolist()))
    assert not any((u, int(i)) in seen for u in range(world.num_users) for i in items[u])


def test_run_export_rejects_embeddings_that_do_not_match_the_graph(tmp_path):
    layout = Layout.at(tmp_path)
    world = make_world()
    graph = make_graph(layout, "2024-01-08", world)
    user, item = cluster_embeddings(world)
    make_model(layout, "pruned", "2024-01-08", user[:-1], item, graph)
    with pytest.raises(ValueError, match="embeddings cover 39 users"):
        run_export(layout, "2024-01-08", tiny_config(tmp_path), **current_inputs(layout, "export", "2024-01-08"))


def test_parity_on_no_users_is_not_a_pass():
    import math

    from components.ship.export import parity

    empty_items, empty_scores = np.zeros((0, 5), np.int64), np.zeros((0, 5), np.float32)
    diff, overlap = parity(empty_items, empty_scores, empty_items, empty_scores)
    assert math.isnan(diff) and math.isnan(overlap)
