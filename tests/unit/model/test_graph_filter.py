"""Graph-filter teacher (GF-CF / BSPM), DGL normalization with edge weights, spectral student init,
and both teacher kinds through one interface (distill, evaluation)."""

import dataclasses

import numpy as np
import pytest
import torch

from components.core.config import load_config
from components.model.distill import run_distill
from components.model.metrics import evaluate_scorer, popularity_scorer
from components.core.interactions import Interactions, normalized_edges
from components.model.models.graph_filter import FilterParams, GraphFilter, exact_svd
from components.model.models.lightgcn import build_adjacency
from components.core.catalog import Layout, read_json
from components.core.refs import TeacherRef
from components.model.teacher import fit_graph_filter, load_teacher, run_teacher, spectral_student
from tests.unit.data_fixtures import current_inputs
from tests.unit.model_fixtures import planted, write_graph

DAY = "2026-01-02"


def dense_normalized(user, item, weight, num_users, num_items):
    """Reference R and R~ = D_u^-1/2 R D_i^-1/2 by dense numpy (duplicates summed)."""
    r = np.zeros((num_users, num_items))
    np.add.at(r, (user, item), weight)
    du, di = r.sum(1), r.sum(0)
    inv = lambda d: np.where(d > 0, 1 / np.sqrt(np.where(d > 0, d, 1)), 0)  # noqa: E731
    return r, r * inv(du)[:, None] * inv(di)[None, :], di


def random_pairs(num_users=40, num_items=30, n=400, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, num_users, n), rng.integers(0, num_items, n),
            rng.uniform(0.5, 5.0, n).astype(np.float32))


@pytest.mark.parametrize("weighted", [False, True])
def test_dgl_normalization_matches_dense_reference_and_merges_duplicates(weighted):
    user, item, weight = random_pairs()
    edges = normalized_edges(Interactions(user, item, weight), 40, 30, weighted)
    r, norm, _ = dense_normalized(user, item, weight if weighted else np.ones_like(weight), 40, 30)
    if not weighted:  # a repeated pair is one edge of strength 1
        r, norm, _ = dense_normalized(*np.unique(np.stack([user, item]), axis=1), 1.0, 40, 30)
    assert len(edges) == np.count_nonzero(r)  # duplicates merged into one edge
    assert np.allclose(edges.strength, r[edges.user, edges.item])
    assert np.allclose(edges.norm, norm[edges.user, edges.item], atol=1e-6)


def test_weighted_adjacency_changes_lightgcn_propagation():
    user, item, weight = random_pairs(seed=1)
    binary = build_adjacency(user, item, 40, 30)
    weighted = build_adjacency(user, item, 40, 30, weight)
    x = torch.randn(70, 4)
    assert not torch.allclose(binary.csr @ x, weighted.csr @ x, atol=1e-3)
    # equal weights: the weighted adjacency is the binary one (normalization is scale-free)
    same = build_adjacency(*np.unique(np.stack([user, item]), axis=1), 40, 30, np.full(len(np.unique(user * 30 + item)), 3.0))
    assert torch.allclose((binary.csr @ x), (same.csr @ x), atol=1e-5)


def _fit(weighted=False, **params):
    user, item, weight = random_pairs()
    edges = normalized_edges(Interactions(user, item, weight), 40, 30, weighted)
    params = FilterParams(rank=30, svd_oversample=0, block_users=7, **params)
    return GraphFilter.fit(edges.user, edges.item, edges.strength, edges.norm, 40, 30, params), edges


def test_a_graph_with_a_small_side_takes_the_exact_svd():
    user, item, weight = random_pairs()
    edges = normalized_edges(Interactions(user, item, weight), 40, 30, False)
    _, norm, _ = dense_normalized(*np.unique(np.stack([user, item]), axis=1), 1.0, 40, 30)
    reference = np.linalg.svd(norm, compute_uv=False)[:10]
    params = FilterParams(rank=10, svd_oversample=0, svd_iterations=0)  # the roughest sketch
    fit = lambda p, budget=None: GraphFilter.fit(edges.user, edges.item, edges.strength, edges.norm, 40, 30, p,  # noqa: E731
                                                 block_bytes=budget)
    assert exact_svd(40, 30, params, None) and np.allclose(fit(params).s.numpy(), reference, atol=1e-5)
    off = dataclasses.replace(params, svd_exact_max_side=0)
    assert not exact_svd(40, 30, off, None) and not np.allclose(fit(off).s.numpy(), reference, atol=1e-2)
    over_budget = 4 * 40 * 30 - 1  # the dense R~ would not fit
    assert not exact_svd(40, 30, params, over_budget)
    assert not np.allclose(fit(params, over_budget).s.numpy(), reference, atol=1e-2)


@pytest.mark.parametrize("weighted", [False, True])
def test_gf_cf_scores_equal_the_papers_formula(weighted):
    graph_filter, edges = _fit(weighted, ideal_weight=0.3)
    r = np.zeros((40, 30))
    r[edges.user, edges.item] = edges.strength
    _, norm, di = dense_normalized(edges.user, edges.item, edges.strength, 40, 30)
    v = np.linalg.svd(norm, full_matrices=False)[2].T  # full rank: the randomized SVD is exact here
    d = np.where(di > 0, di, 1)
    expected = r @ norm.T @ norm + 0.3 * (r / np.sqrt(d)) @ v @ v.T * np.sqrt(di)
    got = graph_filter.score(torch.arange(40)).numpy()  # blocks of 7 users: same as one block
    assert np.allclose(got, expected, atol=1e-4)


def test_bspm_scores_equal_euler_blur_then_sharpen():
    p = dict(variant="bspm", ideal_weight=0.2, blur_time=1.0, blur_steps=2, sharpen_time=1.5, sharpen_steps=3,
             sharpen_solver="euler")
    graph_filter, edges = _fit(**p)
    r = np.zeros((40, 30))
    r[edges.user, edges.item] = 1.0
    _, norm, di = dense_normalized(edges.user, edges.item, np.ones(len(edges)), 40, 30)
    gram = norm.T @ norm
    v = np.linalg.svd(norm, full_matrices=False)[2].T
    s = r.copy()
    for _ in range(2):
        s = s + 0.5 * (s @ gram - s)
    s = s + 0.2 * (r / np.sqrt(np.where(di > 0, di, 1))) @ v @ v.T * np.sqrt(di)
    for _ in range(3):
        s = s - 0.5 * s @ gram
    assert np.allclose(graph_filter.score(torch.arange(40)).numpy(), s, atol=1e-4)


def test_bspm_rk4_sharpening_approximates_the_matrix_exponential():
    graph_filter, edges = _fit(variant="bspm", ideal_weight=0.2, blur_time=1.0, blur_steps=1, sharpen_time=2.5,
                               sharpen_steps=1, sharpen_solver="rk4")
    r = np.zeros((40, 30))
    r[edges.user, edges.item] = 1.0
    _, norm, di = dense_normalized(edges.user, edges.item, np.ones(len(edges)), 40, 30)
    gram = norm.T @ norm
    v = np.linalg.svd(norm, full_matrices=False)[2].T
    s0 = r @ gram + 0.2 * (r / np.sqrt(np.where(di > 0, di, 1))) @ v @ v.T * np.sqrt(di)
    h = -2.5 * gram  # one RK4 step of ds/dt = -s P is s (I + h + h^2/2 + h^3/6 + h^4/24)
    eye = np.eye(30)
    expected = s0 @ (eye + h + h @ h / 2 + h @ h @ h / 6 + h @ h @ h @ h / 24)
    assert np.allclose(graph_filter.score(torch.arange(40)).numpy(), expected, atol=1e-3)


def test_spectral_student_starts_at_the_filters_low_rank_scores():
    graph_filter, _ = _fit()
    student = spectral_student(graph_filter, dim=6, num_layers=3)
    adjacency = build_adjacency(graph_filter.norm.to_sparse_coo().indices()[0].numpy(),
                                graph_filter.norm.to_sparse_coo().indices()[1].numpy(), 40, 30)
    users, items = student(adjacency)
    u, v, s = graph_filter.low_rank_factors(6)
    expected = u @ torch.diag(s) @ v.T
    got = (users @ items.T).detach()
    scale = float((got * expected).sum() / (expected * expected).sum())
    assert scale > 0 and torch.allclose(got / scale, expected, atol=1e-4)
    assert float(torch.cat([student.user_embedding.weight, student.item_embedding.weight]).detach().std()) == \
        pytest.approx(0.1, rel=1e-3)


def test_spectral_student_without_propagation_starts_at_the_ideal_low_pass_scores():
    graph_filter, edges = _fit()
    student = spectral_student(graph_filter, dim=6, num_layers=0)
    u, v, s = graph_filter.low_rank_factors(6)
    r = torch.zeros(40, 30)
    r[edges.user, edges.item] = 1.0
    ideal = ((r * graph_filter.item_inv_sqrt) @ v) @ (v.T * graph_filter.item_sqrt)  # r D^-1/2 V V^T D^1/2
    got = (student.user_embedding.weight @ student.item_embedding.weight.T).detach()
    # equal up to a positive scale per user (d_u^1/2 and the global init scale): same ranking
    ratio = got / ideal.clamp(min=1e-9)
    keep = ideal.abs() > 1e-4
    per_user = torch.stack([ratio[i][keep[i]].median() for i in range(40) if keep[i].any()])
    assert bool((per_user > 0).all())
    rows = [i for i in range(40) if keep[i].any()]
    assert torch.allclose(got[rows], ideal[rows] * per_user[:, None], rtol=1e-3, atol=1e-6)


def test_svd_is_seeded():
    a, _ = _fit()
    b, _ = _fit()
    assert torch.equal(a.v, b.v)


@pytest.fixture(scope="module")
def filter_day(tmp_path_factory):
    layout = Layout.at(tmp_path_factory.mktemp("root"))
    train, holdout = planted()
    write_graph(layout, DAY, train, holdout, 120, 80)
    return layout, train, holdout


FILTER_CFG = {"teacher.kind": "graph_filter", "teacher.graph_filter.rank": 16, "distill.embedding_dim": 8,
              "distill.num_layers": 2, "distill.epochs": 8, "distill.lr": 0.03, "distill.batch_size": 256,
              "distill.kd_topk": 5, "teacher.eval_every": 4, "teacher.device": "cpu"}


def test_graph_filter_teacher_stage_publishes_a_filter_that_beats_popularity(filter_day):
    layout, train, holdout = filter_day
    cfg = load_config(None, FILTER_CFG)
    given = current_inputs(layout, "teacher", DAY, cfg)
    assert "warm_start" not in given  # recomputed from the graph alone
    with pytest.raises(ValueError, match="a graph_filter teacher has no warm start"):
        run_teacher(layout, DAY, cfg, **given, warm_start=TeacherRef(DAY, "v0", "/t"))
    teacher = run_teacher(layout, DAY, cfg, **given)
    metrics = read_json(f"{teacher.path}/metrics.json")
    assert metrics["kind"] == "graph_filter" and teacher.num_params == 80 * 16 + 16
    assert metrics["device"] == "cpu"  # every record that measures says which device ran
    assert metrics["holdout"]["recall@20"] > metrics["popularity_holdout"]["recall@20"] + 0.15
    assert metrics["val"]["users_evaluated"] > 0 and metrics["val"]["ndcg@20"] > 0
    # the scorer gates and serving load gives back the very numbers the stage measured
    again = evaluate_scorer(load_teacher(teacher.path, train).scorer, train, holdout, 80, (10, 20, 50))
    assert again["ndcg@20"] == pytest.approx(metrics["holdout"]["ndcg@20"])
    assert load_teacher(teacher.path, train).kind == "graph_filter"


def test_student_distilled_from_a_graph_filter_keeps_its_quality(filter_day):
    layout, train, holdout = filter_day
    cfg = load_config(None, FILTER_CFG)
    run_teacher(layout, DAY, cfg, **current_inputs(layout, "teacher", DAY, cfg))
    student = read_json(f"{run_distill(layout, DAY, cfg, **current_inputs(layout, 'distill', DAY)).path}/metrics.json")
    pop = evaluate_scorer(popularity_scorer(train, 80), train, holdout, 80, (20,))
    assert student["embedding_dim"] == 8
    assert student["train"]["device"] == "cpu"
    # the teacher stage ranked them with its holdout pass; distill read them instead of rescoring
    assert student["teacher_targets"] == {"users": 120, "of_users": 120, "sampled": False, "seed": None,
                                          "source": "teacher_artifact"}
    assert student["ndcg_retention_holdout"] > 0.85, student["ndcg_retention_holdout"]
    assert student["holdout"]["ndcg@20"] > 1.3 * pop["ndcg@20"]


def test_edge_weights_setting_changes_the_teacher(filter_day):
    _, train, _ = filter_day
    rng = np.random.default_rng(3)
    weighted_train = Interactions(train.user, train.item, rng.uniform(0.2, 5.0, len(train)).astype(np.float32))
    binary = fit_graph_filter(weighted_train, 120, 80, load_config(None, FILTER_CFG))
    weighted = fit_graph_filter(weighted_train, 120, 80, load_config(None, {**FILTER_CFG, "teacher.edge_weights": "weighted"}))
    users = torch.arange(120)
    assert not torch.allclose(binary.score(users), weighted.score(users), atol=1e-3)
