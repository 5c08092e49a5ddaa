"""Distillation and pruning stages on a tiny planted-community graph."""

import numpy as np
import pytest
import torch

from components.core.config import load_config
from components.model.distill import run_distill
from components.model.ladder import LADDER_FILE
from components.ship.export import shipped_precision
from components.core.interactions import Interactions
from components.model.models.lightgcn import LightGCN, build_adjacency, principal_axes, project_ego
from components.model.prune import magnitude_masks, prune_model, remove_dimensions, run_prune
from components.core.catalog import TIMINGS, Layout, read_json, read_measured_json
from components.model.teacher import load_teacher, teacher_topk
from components.model.teacher import run_teacher
from components.model.train import load_embeddings, load_model
from tests.unit.data_fixtures import current_inputs
from tests.unit.model_fixtures import planted, write_graph

DAY = "2026-01-02"
BASE = {"teacher.kind": "lightgcn", "teacher.embedding_dim": 32, "teacher.num_layers": 2, "teacher.epochs": 12, "teacher.lr": 0.02,
        "teacher.batch_size": 256, "teacher.eval_every": 4, "teacher.early_stop_patience": 5,
        "teacher.device": "cpu", "distill.embedding_dim": 8, "distill.num_layers": 2, "distill.epochs": 12,
        "distill.lr": 0.03, "distill.batch_size": 256, "distill.kd_topk": 5,
        "prune.steps": 2, "prune.finetune_epochs": 2}


@pytest.fixture(scope="module")
def day_with_teacher(tmp_path_factory):
    layout = Layout.at(tmp_path_factory.mktemp("root"))
    train, holdout = planted()
    write_graph(layout, DAY, train, holdout, 120, 80)
    run_teacher(layout, DAY, load_config(None, BASE), **current_inputs(layout, "teacher", DAY, load_config(None, BASE)))
    return layout


def test_teacher_topk_excludes_training_positives():
    user = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    item = torch.tensor([[5.0, 0.0], [4.0, -1.0], [0.0, 3.0], [1.0, 1.0]])
    train = Interactions(np.array([0, 1]), np.array([0, 2]), np.ones(2, np.float32))
    scores, items = teacher_topk(lambda u: user[u] @ item.T, train, 2, 4, 2, user_batch_size=1)
    assert items.tolist() == [[1, 3], [3, 0]]
    assert scores.tolist() == [[4.0, 1.0], [1.0, 0.0]]


def test_student_is_smaller_and_retains_quality(day_with_teacher):
    layout = day_with_teacher
    student = run_distill(layout, DAY, load_config(None, BASE), **current_inputs(layout, "distill", DAY))
    metrics = read_json(f"{student.path}/metrics.json")
    assert student.kind == "models/student"
    assert metrics["embedding_dim"] == 8 and metrics["compression_ratio"] == pytest.approx(4.0)
    assert metrics["ndcg_retention_holdout"] > 0.8, metrics["ndcg_retention_holdout"]
    user, item = load_embeddings(student.path)
    assert user.shape == (120, 8) and item.shape == (80, 8)


def test_shuffled_labels_make_a_clearly_worse_student(day_with_teacher):
    good = read_json(f"{run_distill(day_with_teacher, DAY, load_config(None, BASE), **current_inputs(day_with_teacher, 'distill', DAY)).path}/metrics.json")
    bad_cfg = load_config(None, {**BASE, "distill.shuffle_labels": True})
    bad = read_json(f"{run_distill(day_with_teacher, DAY, bad_cfg, **current_inputs(day_with_teacher, 'distill', DAY)).path}/metrics.json")
    assert bad["holdout"]["ndcg@20"] < 0.6 * good["holdout"]["ndcg@20"], (bad["holdout"], good["holdout"])
    # pruning's fine-tune must not repair it: the shipped candidate is the bad one
    bad_pruned = read_json(f"{run_prune(day_with_teacher, DAY, bad_cfg, **current_inputs(day_with_teacher, 'prune', DAY)).path}/metrics.json")
    assert bad_pruned["holdout"]["ndcg@20"] < 0.6 * good["holdout"]["ndcg@20"], (bad_pruned["holdout"], good["holdout"])


def test_structured_pruning_halves_dims_and_bytes_and_keeps_quality(day_with_teacher):
    layout = day_with_teacher
    cfg = load_config(None, {**BASE, "ladder.prune_ratios": [0.5]})  # a one-rung ladder: the pruned student
    student = run_distill(layout, DAY, cfg, **current_inputs(layout, "distill", DAY))
    pruned = run_prune(layout, DAY, cfg, **current_inputs(layout, "prune", DAY))
    metrics = read_json(f"{pruned.path}/metrics.json")
    steps = read_json(f"{pruned.path}/history.json")
    assert [s["embedding_dim"] for s in steps] == [6, 4]  # 8 dims -> 25% -> 50% removed
    assert metrics["sparsity"] == pytest.approx(0.5)
    assert metrics["size_ratio_vs_student"] == pytest.approx(2.0)
    assert metrics["device"] == "cpu" and metrics["teacher_targets"]["sampled"] is False
    student_bytes = read_json(f"{student.path}/metrics.json")["bytes"]
    assert metrics["bytes"]["embeddings_npz"] < 0.6 * student_bytes["embeddings_npz"]
    assert metrics["bytes"]["model_pt"] < student_bytes["model_pt"]
    assert load_embeddings(pruned.path)[0].shape == (120, 4)
    assert metrics["ndcg_retention_holdout"] > 0.6, metrics["ndcg_retention_holdout"]


def test_structured_pruning_keeps_the_principal_axes_and_their_scores():
    # ego embeddings of rank 2 in 4 dims: two principal axes carry every score, so cutting to 2 dims
    # after the rotation changes no score, while dropping raw columns would
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(4, 4))[0][:, :2]
    model = LightGCN(30, 20, embedding_dim=4, num_layers=2)
    with torch.no_grad():
        model.user_embedding.weight.copy_(torch.randn(30, 2) @ basis.T)
        model.item_embedding.weight.copy_(torch.randn(20, 2) @ basis.T)
    train, _ = planted(num_users=30, num_items=20, per_user=4, seed=4)
    adjacency = build_adjacency(train.user, train.item, 30, 20)
    smaller, importance = remove_dimensions(model, 2, adjacency, "sparse")
    assert smaller.embedding_dim == 2 and importance[2:].abs().max() < 1e-5 * importance[0]
    (u4, i4), (u2, i2) = model(adjacency), smaller(adjacency)
    assert torch.allclose(u2 @ i2.T, u4 @ i4.T, atol=1e-5)


def test_teacher_init_starts_the_student_at_the_teachers_low_rank_scores(day_with_teacher):
    teacher, _ = load_model(day_with_teacher.current("models/teacher", DAY).path)
    train, _ = planted()
    adjacency = build_adjacency(train.user, train.item, teacher.num_users, teacher.num_items)
    t_user, t_item = teacher(adjacency)
    axes, _ = principal_axes(t_user.detach(), t_item.detach())
    student = project_ego(teacher, axes[:, :8])
    s_user, s_item = student(adjacency)
    assert student.embedding_dim == 8
    assert torch.allclose(s_user, t_user @ axes[:, :8], atol=1e-5)  # P (E M) = (P E) M
    full = project_ego(teacher, axes)  # all axes: a rotation, every score unchanged
    f_user, f_item = full(adjacency)
    assert torch.allclose(f_user @ f_item.T, t_user @ t_item.T, atol=1e-4)


def test_magnitude_pruning_hits_target_sparsity_with_fixed_masks(day_with_teacher):
    layout = day_with_teacher
    cfg = load_config(None, {**BASE, "prune.method": "magnitude"})
    student, _ = load_model(layout.current("models/student", DAY).path)
    masks = magnitude_masks(student, 0.3)
    assert sum(int((~m).sum()) for m in masks) == round(0.3 * (120 + 80) * 8)
    train, _ = planted()
    teacher = load_teacher(layout.current("models/teacher", DAY).path, train)
    model, report = prune_model(student, train, None, teacher, cfg, 0.6)
    assert [r["sparsity"] for r in report] == pytest.approx([0.3, 0.6], abs=1e-3)  # fine-tuning kept masks
    assert report[-1]["num_params_nonzero"] == pytest.approx(0.4 * (120 + 80) * 8, abs=1)
    assert report[-1]["bytes_packed_sparse"] < report[-1]["bytes_model_pt"]


@pytest.mark.parametrize("min_retention", [0.0, 5.0])
def test_prune_stage_records_the_ladder_and_ships_its_choice(day_with_teacher, min_retention):
    layout = day_with_teacher
    cfg = load_config(None, {**BASE, "ladder.min_retention": min_retention})
    run_distill(layout, DAY, cfg, **current_inputs(layout, "distill", DAY))
    pruned = run_prune(layout, DAY, cfg, **current_inputs(layout, "prune", DAY))
    ladder = read_measured_json(pruned.path, LADDER_FILE)
    # Measured latencies live in TIMINGS, outside the version hash: a re-run does not fork the version.
    assert "latency_p95_ms" not in read_json(f"{pruned.path}/{LADDER_FILE}")["chosen_rung"]
    assert len(read_json(f"{pruned.path}/{TIMINGS}")[LADDER_FILE]["rungs"]) == len(ladder["rungs"])
    teacher_val = read_json(f"{layout.current('models/teacher', DAY).path}/metrics.json")["val"]["ndcg@20"]
    rungs = ladder["rungs"]
    # every (prune ratio, precision) measured, with what the choice needs
    assert [(r["prune_ratio"], r["embedding_dim"], r["precision"]) for r in rungs] == [
        (0.0, 8, "int8"), (0.0, 8, "fp16"), (0.0, 8, "fp32"), (0.5, 4, "int8"), (0.5, 4, "fp16"), (0.5, 4, "fp32")]
    assert ladder["teacher_val_ndcg@20"] == pytest.approx(teacher_val)
    for rung in rungs:
        assert rung["retention"] == pytest.approx(rung["val_ndcg_at_20"] / teacher_val)
        assert rung["latency_p95_ms"] > 0 and rung["within_budgets"]
        assert rung["table_bytes"] == (120 + 80) * rung["embedding_dim"] * {"fp32": 4, "fp16": 2}.get(
            rung["precision"], 1) + (0 if rung["precision"] != "int8" else (120 + 80) * 4)
    # int8 tables are nearly free: within 10% of the fp32 validation NDCG on this tiny world
    assert rungs[0]["val_ndcg_at_20"] == pytest.approx(rungs[2]["val_ndcg_at_20"], rel=0.1)
    chosen = ladder["chosen_rung"]
    if min_retention == 0.0:  # every rung qualifies: the smallest ships
        assert (chosen["embedding_dim"], chosen["precision"]) == (4, "int8") and ladder["target_met"]
        assert ladder["reason"].startswith("smallest rung within the budgets")
    else:  # none does: the best-retaining one ships, and the record says so
        best = max(r["retention"] for r in rungs)
        assert chosen["retention"] >= best - ladder["tie_tolerance"] and not ladder["target_met"]
        assert ladder["reason"].startswith("no rung kept 500%")
    metrics = read_json(f"{pruned.path}/metrics.json")
    assert (metrics["embedding_dim"], metrics["precision"]) == (chosen["embedding_dim"], chosen["precision"])
    assert load_embeddings(pruned.path)[0].shape == (120, chosen["embedding_dim"])
    assert shipped_precision(pruned.path) == chosen["precision"]
