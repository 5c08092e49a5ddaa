"""Issue 19 (nightly at ten times Gowalla): the whole-window teacher ranked once for its holdout
metrics and distill's targets, validation on a seeded sample of users, epochs bounded by the data."""

import numpy as np
import pytest
import torch

from components.core.catalog import Layout, read_json
from components.core.config import load_config
from components.model.distill import (distill_targets, known_pairs, load_stage_inputs, run_distill,
                                      stored_targets_mismatch, train_student)
from components.model.metrics import embedding_scorer, evaluate_scorer
from components.model.models.graph_filter import FilterParams, GraphFilter
from components.model.models.lightgcn import LightGCN
from components.model.prune import run_prune
from components.model.teacher import (TARGETS_FILE, DistillTargets, holdout_and_targets, load_teacher, run_teacher,
                                      target_users, teacher_topk)
from components.model.train import (bounded_batch_size, fit_lightgcn, load_model, split_validation,
                                    validation_sample)
from components.core.interactions import Interactions, normalized_edges
from tests.unit.data_fixtures import current_inputs
from tests.unit.model_fixtures import planted, write_graph

DAY = "2026-01-02"
CFG = {"teacher.kind": "graph_filter", "teacher.graph_filter.rank": 16, "distill.embedding_dim": 8,
       "distill.num_layers": 2, "distill.epochs": 4, "distill.lr": 0.03, "distill.batch_size": 256,
       "distill.kd_topk": 5, "teacher.eval_every": 2, "teacher.device": "cpu", "prune.finetune_epochs": 2}


def world():
    """(window pairs, fresh holdout of a third of the users): as at night, most users have no holdout."""
    train_all, holdout = planted(300, 200, per_user=12, holdout_per_user=4, seed=3)
    keep = holdout.user % 3 == 0
    return train_all, Interactions(holdout.user[keep], holdout.item[keep], holdout.weight[keep])


def graph_filter_scorer(train_all):
    e = normalized_edges(train_all, 300, 200, False)
    # blocks of 64 users: the one-pass and two-pass blocks hold different users
    return GraphFilter.fit(e.user, e.item, e.strength, e.norm, 300, 200, FilterParams(rank=32, block_users=64),
                           "cpu").score


def embedding(train_all):
    g = torch.Generator().manual_seed(0)
    return embedding_scorer(torch.randn(300, 8, generator=g), torch.randn(200, 8, generator=g))


@pytest.mark.parametrize("scorer_of", [graph_filter_scorer, embedding], ids=["graph_filter", "embeddings"])
@pytest.mark.parametrize("sample", [None, 50])
@pytest.mark.parametrize("kd", [10, 20])  # 20: the same k as the metrics' largest
def test_one_pass_gives_exactly_the_holdout_metrics_and_the_targets_of_two_passes(scorer_of, sample, kd):
    train_all, holdout = world()
    scorer = scorer_of(train_all)
    cfg = load_config(None, {"distill.kd_topk": kd, "distill.teacher_target_users": sample, "eval.user_batch_size": 64,
                             "eval.ks": [5, 20]})
    metrics, targets = holdout_and_targets(scorer, train_all, holdout, 300, 200, cfg)
    # before: evaluate_scorer on the holdout users, then distill's teacher_topk over the fit + validation pairs
    before = evaluate_scorer(scorer, train_all, holdout, 200, (5, 20), 64)
    fit, val = split_validation(train_all, cfg.teacher.val_fraction, cfg.seed)
    scores, items = teacher_topk(scorer, known_pairs(fit, val), 300, 200, kd, 64, target_users(300, cfg))
    metrics.pop("eval_seconds"), before.pop("eval_seconds")
    assert metrics == before  # exact floats
    assert torch.equal(targets.items, items) and torch.equal(targets.scores, scores)
    assert targets.users.size == (sample or 300) and targets.record()["k"] == kd
    assert metrics["users_evaluated"] == 100
    # no distillation: the same metrics, no targets
    no_kd, none = holdout_and_targets(scorer, train_all, holdout, 300, 200,
                                      load_config(None, {"distill.kd_weight": 0, "eval.user_batch_size": 64,
                                                         "eval.ks": [5, 20]}))
    no_kd.pop("eval_seconds")
    assert none is None and no_kd == before


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    layout = Layout.at(tmp_path_factory.mktemp("root"))
    train, holdout = planted()
    write_graph(layout, DAY, train, holdout, 120, 80)
    cfg = load_config(None, CFG)
    teacher = run_teacher(layout, DAY, cfg, **current_inputs(layout, "teacher", DAY, cfg))
    return layout, teacher


def test_teacher_stores_distills_targets_and_distill_trains_the_same_student_as_rescoring(day):
    layout, teacher_artifact = day
    cfg = load_config(None, CFG)
    record = read_json(f"{teacher_artifact.path}/metrics.json")["distill_targets"]
    assert record["file"] == TARGETS_FILE and record["k"] == 5 and record["users"] == record["of_users"] == 120
    student = run_distill(layout, DAY, cfg, **current_inputs(layout, "distill", DAY))
    assert read_json(f"{student.path}/metrics.json")["teacher_targets"]["source"] == "teacher_artifact"
    # before: train_student ranked the teacher's top-k itself
    graph_ref, teacher_ref, graph, train_all, train, val = load_stage_inputs(
        layout, current_inputs(layout, "distill", DAY)["graph"], current_inputs(layout, "distill", DAY)["teacher"], cfg)
    teacher = load_teacher(teacher_ref.path, train_all, "cpu", cfg.compute.block_bytes)
    rescored = train_student(train, val, graph.num_users, graph.num_items, teacher, cfg)
    stored = DistillTargets.load(teacher_ref.path)
    assert torch.equal(stored.items, teacher_topk(teacher.scorer, known_pairs(train, val), 120, 80, 5)[1])
    published, _ = load_model(student.path)
    for name, tensor in rescored.model.state_dict().items():
        assert torch.equal(published.state_dict()[name], tensor), name


def test_a_distill_config_the_stored_targets_do_not_fit_ranks_its_own(day):
    layout, _ = day
    for override in ({"distill.kd_topk": 4}, {"distill.teacher_target_users": 60}):
        cfg = load_config(None, {**CFG, **override})
        student = run_distill(layout, DAY, cfg, **current_inputs(layout, "distill", DAY))
        assert read_json(f"{student.path}/metrics.json")["teacher_targets"]["source"] == "scored", override
    pruned = run_prune(layout, DAY, load_config(None, CFG), **current_inputs(layout, "prune", DAY))
    pruned_metrics = read_json(f"{pruned.path}/metrics.json")
    assert pruned_metrics["teacher_targets"]["source"] == "teacher_artifact"
    assert {row["batch_size"] for row in pruned_metrics["steps"]} == {256}  # the demo's budget does not bind


def test_stored_targets_are_used_only_for_the_same_k_users_and_excluded_pairs(day):
    layout, teacher_artifact = day
    cfg = load_config(None, CFG)
    _, _, _, train_all, train, val = load_stage_inputs(layout, current_inputs(layout, "distill", DAY)["graph"],
                                                       current_inputs(layout, "distill", DAY)["teacher"], cfg)
    teacher = load_teacher(teacher_artifact.path, train_all)
    stored = DistillTargets.load(teacher_artifact.path)
    # fit + validation pairs are the window's pairs in another order: the same excluded set
    assert stored_targets_mismatch(stored, teacher, known_pairs(train, val), cfg) is None
    assert "excluded pairs" in stored_targets_mismatch(stored, teacher, train, cfg)  # validation pairs missing
    assert "kd_topk" in stored_targets_mismatch(stored, teacher, train_all, load_config(None, {**CFG, "distill.kd_topk": 6}))
    assert "target users" in stored_targets_mismatch(
        stored, teacher, train_all, load_config(None, {**CFG, "distill.teacher_target_users": 60}))
    assert "no targets file" in stored_targets_mismatch(None, teacher, train_all, cfg)
    (scores, items), source = distill_targets(teacher_artifact.path, teacher, train, cfg)
    assert source == "scored" and torch.equal(items, teacher_topk(teacher.scorer, train, 120, 80, 5)[1])


def test_the_teacher_hash_covers_what_its_targets_depend_on():
    base = load_config(None, {})
    for override in ({"distill.kd_topk": 10}, {"distill.teacher_target_users": 5}, {"distill.kd_weight": 0},
                     {"teacher.val_users": 5}):
        assert load_config(None, override).config_hash("teacher") != base.config_hash("teacher"), override
    assert load_config(None, {"distill.lr": 0.5}).config_hash("teacher") == base.config_hash("teacher")
    assert load_config(None, {"distill.epoch_edge_budget": 10}).config_hash("distill") != base.config_hash("distill")


def test_validation_is_scored_on_a_seeded_sample_of_users(day, tmp_path):
    train_all, _ = world()
    _, val = split_validation(train_all, 0.3, 0)
    sample = validation_sample(val, 40, 0)
    users = np.unique(sample.user)
    assert users.size == 40 and np.array_equal(sample.user, validation_sample(val, 40, 0).user)  # seeded
    assert not np.array_equal(users, np.unique(validation_sample(val, 40, 1).user))
    assert len(sample) == int(np.isin(val.user, users).sum())  # every validation pair of a chosen user
    assert validation_sample(val, None, 0) is val and validation_sample(val, 10 ** 6, 0) is val
    # the stage: the teacher's validation metrics count the sampled users only, and say so
    layout = Layout.at(tmp_path)
    train, holdout = planted()
    write_graph(layout, DAY, train, holdout, 120, 80)
    cfg = load_config(None, {**CFG, "teacher.val_users": 30})
    metrics = read_json(f"{run_teacher(layout, DAY, cfg, **current_inputs(layout, 'teacher', DAY, cfg)).path}/metrics.json")
    assert metrics["validation"]["users"] == 30 and metrics["validation"]["of_users"] > 30
    assert 0 < metrics["val"]["users_evaluated"] <= 30
    everyone = read_json(f"{day[1].path}/metrics.json")  # the default 10,000 keeps all of this world
    assert everyone["validation"]["users"] == everyone["validation"]["of_users"] == everyone["val"]["users_evaluated"]


def test_the_batch_grows_so_an_epoch_stays_within_its_edge_budget():
    assert bounded_batch_size(2048, 1000, None) == 2048
    assert bounded_batch_size(2048, 820_300, 400_000_000) == 2048  # the 30k world: unchanged
    assert bounded_batch_size(2048, 2_829_200, 400_000_000) == 20_066  # 100k users: 141 steps, not 1,382
    assert bounded_batch_size(10, 1000, 1000 * 7) == 143  # 7 steps
    assert bounded_batch_size(10, 1000, 10) == 1000  # at least one step


def test_fit_applies_the_edge_budget_and_a_loose_one_changes_nothing():
    train, val = planted(60, 40, per_user=8, seed=1)
    n = len(train)
    kwargs = dict(epochs=2, lr=0.02, l2=1e-4, batch_size=32, seed=0, eval_every=2, device="cpu", backend="sparse")

    def fit(budget):
        torch.manual_seed(0)  # the same starting model each time
        return fit_lightgcn(LightGCN(60, 40, 8, 2), train, val, epoch_edge_budget=budget, **kwargs)

    free, loose, tight = fit(None), fit(n * n), fit(n * 3)
    assert free.batch_size == loose.batch_size == 32 and tight.batch_size == -(-n // 3)
    for name, tensor in free.model.state_dict().items():
        assert torch.equal(loose.model.state_dict()[name], tensor), name
    assert not torch.equal(tight.model.user_embedding.weight, free.model.user_embedding.weight)
