"""Teacher training: learns planted communities, reproducible, warm start, resume, stage contract."""

import logging

import numpy as np
import pytest
import torch

from components.core.config import load_config
from components.model.metrics import evaluate_scorer, popularity_scorer
from components.core.interactions import Interactions
from components.model.models.lightgcn import LightGCN
from components.core.catalog import Layout, read_json
from components.model.teacher import InsufficientHistory, run_teacher, train_teacher
from components.model.train import fit_lightgcn, load_embeddings, load_model, warm_start_rows
from tests.unit.data_fixtures import current_inputs
from tests.unit.model_fixtures import planted, write_graph

FAST = {"teacher.kind": "lightgcn", "teacher.embedding_dim": 16, "teacher.num_layers": 2, "teacher.epochs": 12, "teacher.lr": 0.02,
        "teacher.batch_size": 256, "teacher.eval_every": 4, "teacher.early_stop_patience": 5,
        "teacher.device": "cpu", "teacher.min_train_pairs": 50}


def cfg(**extra):
    return load_config(None, {**FAST, **extra})


def test_teacher_beats_popularity_on_planted_communities():
    train, holdout = planted()
    config = cfg()
    trained = train_teacher(train, None, 120, 80, config)
    users, items = trained.model.user_embedding.weight, trained.model.item_embedding.weight
    from components.model.models.lightgcn import build_adjacency
    from components.model.train import evaluate_model

    adj = build_adjacency(train.user, train.item, 120, 80)
    ours = evaluate_model(trained.model, adj, "sparse", train, holdout, (20,))
    pop = evaluate_scorer(popularity_scorer(train, 80), train, holdout, 80, (20,))
    assert ours["users_evaluated"] == 120
    assert ours["recall@20"] > pop["recall@20"] + 0.15, (ours["recall@20"], pop["recall@20"])
    assert ours["ndcg@20"] > pop["ndcg@20"] * 1.3
    assert users.shape == (120, 16) and items.shape == (80, 16)


def test_two_runs_give_identical_embeddings():
    train, _ = planted(num_users=60, num_items=40, per_user=8)
    config = cfg(**{"teacher.epochs": 3})
    a = train_teacher(train, None, 60, 40, config).model
    b = train_teacher(train, None, 60, 40, config).model
    assert torch.equal(a.user_embedding.weight, b.user_embedding.weight)
    assert torch.equal(a.item_embedding.weight, b.item_embedding.weight)


def test_warm_start_copies_rows_by_index_and_leaves_new_rows_fresh():
    torch.manual_seed(1)
    old = LightGCN(5, 4, embedding_dim=8)
    torch.manual_seed(2)
    new = LightGCN(7, 6, embedding_dim=8)
    fresh_user_row = new.user_embedding.weight[6].clone()
    counts = warm_start_rows(new, old)
    assert counts == {"users_copied": 5, "items_copied": 4, "users_new": 2, "items_new": 2}
    assert torch.equal(new.user_embedding.weight[:5], old.user_embedding.weight)
    assert torch.equal(new.item_embedding.weight[:4], old.item_embedding.weight)
    assert torch.equal(new.user_embedding.weight[6], fresh_user_row)


def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path):
    train, _ = planted(num_users=60, num_items=40, per_user=8)
    val = Interactions(train.user[::7], train.item[::7], train.weight[::7])
    kwargs = dict(lr=0.02, l2=1e-4, batch_size=128, seed=3, eval_every=2, patience=10)
    torch.manual_seed(0)
    full = fit_lightgcn(LightGCN(60, 40, 8, 2), train, val, epochs=4, **kwargs)
    ckpt = tmp_path / "ckpt.pt"
    torch.manual_seed(0)
    fit_lightgcn(LightGCN(60, 40, 8, 2), train, val, epochs=2, checkpoint_path=ckpt, **kwargs)  # "crash" after 2
    torch.manual_seed(5)  # a different init must be overwritten by the checkpoint
    resumed = fit_lightgcn(LightGCN(60, 40, 8, 2), train, val, epochs=4, checkpoint_path=ckpt, **kwargs)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2, 3]
    assert torch.allclose(resumed.model.user_embedding.weight, full.model.user_embedding.weight)
    assert resumed.best_val["ndcg@20"] == pytest.approx(full.best_val["ndcg@20"])


def test_run_teacher_publishes_contract_and_warm_starts_next_day(tmp_path, caplog):
    layout = Layout.at(tmp_path)
    train, holdout = planted()
    write_graph(layout, "2026-01-02", train, holdout, 120, 80)
    config = cfg(**{"teacher.epochs": 4})
    first = run_teacher(layout, "2026-01-02", config, **current_inputs(layout, "teacher", "2026-01-02", config))
    assert first.kind == "models/teacher" and first.num_params == (120 + 80) * 16
    user, item = load_embeddings(first.path)
    assert user.shape == (120, 16) and item.shape == (80, 16) and user.dtype == np.float32
    metrics = read_json(f"{first.path}/metrics.json")
    assert metrics["holdout"]["users_evaluated"] == 120
    assert metrics["holdout"]["recall@20"] > metrics["popularity_holdout"]["recall@20"]
    assert "ndcg@20" in metrics["val"] and metrics["bytes"]["model_pt"] > 0
    assert len(read_json(f"{first.path}/history.json")) == 4
    assert run_teacher(layout, "2026-01-02", config, **current_inputs(layout, "teacher", "2026-01-02", config)).version == first.version  # idempotent

    # next day: 10 new users and 5 new items appended; rows of the old model are copied
    more, more_holdout = planted(num_users=130, num_items=85, seed=1)
    write_graph(layout, "2026-01-03", more, more_holdout, 130, 85, new_users=10, new_items=5)
    with caplog.at_level(logging.INFO, logger="components.model.teacher"):
        second = run_teacher(layout, "2026-01-03", config, **current_inputs(layout, "teacher", "2026-01-03", config))
    assert "copied 120 users + 80 items, 10 users + 5 items new" in caplog.text
    assert read_json(f"{second.path}/metrics.json")["warm_start"]["from"]["version"] == first.version
    model, payload = load_model(second.path)
    assert payload["num_users"] == 130 and model.item_embedding.weight.shape == (85, 16)
    # the warm start is the caller's choice (the pipeline's: the newest earlier teacher), recorded
    given = current_inputs(layout, "teacher", "2026-01-03", config)
    assert given["warm_start"].version == first.version
    cold = run_teacher(layout, "2026-01-03", config, **{**given, "warm_start": None})
    assert read_json(f"{cold.path}/metrics.json")["warm_start"]["from"] is None and cold.version != second.version
    assert read_json(f"{cold.path}/manifest.json")["inputs"] == [layout.artifact(given["graph"]).as_lineage()]


def test_too_little_history_raises_insufficient_history(tmp_path):
    layout = Layout.at(tmp_path)
    train, holdout = planted(num_users=4, num_items=10, per_user=3, holdout_per_user=1)
    write_graph(layout, "2026-01-02", train, holdout, 4, 10)
    with pytest.raises(InsufficientHistory, match="min_train_pairs=50"):
        run_teacher(layout, "2026-01-02", cfg(), **current_inputs(layout, "teacher", "2026-01-02", cfg()))


def test_time_budget_stop_evaluates_the_last_epoch_instead_of_discarding_it():
    # Bug caught on Gowalla: stopping on the wall-clock budget between evaluations restored the
    # last *evaluated* state, throwing away the epochs trained since.
    train, _ = planted(num_users=60, num_items=40, per_user=8)
    val = Interactions(train.user[::7], train.item[::7], train.weight[::7])
    torch.manual_seed(0)
    fit = fit_lightgcn(LightGCN(60, 40, 8, 2), train, val, epochs=50, lr=0.02, l2=1e-4, batch_size=128, seed=0,
                       eval_every=40, patience=3, max_seconds=1e-9)
    assert fit.stopped == "time_budget" and len(fit.history) == 1
    assert "val_ndcg@20" in fit.history[0] and fit.best_epoch == 0


def test_keep_start_returns_a_good_start_that_training_only_damages():
    # A teacher-initialized student (or a pruned model) must not ship worse than where it started:
    # the start is evaluated and kept when no epoch beats it on validation.
    from components.model.train import evaluate_model
    from components.model.models.lightgcn import build_adjacency

    train, holdout = planted()
    good = train_teacher(train, None, 120, 80, cfg()).model
    start = {k: v.clone() for k, v in good.state_dict().items()}
    shuffled = Interactions(train.user, np.random.default_rng(0).permutation(train.item), train.weight)
    adjacency = build_adjacency(shuffled.user, shuffled.item, 120, 80)
    before = evaluate_model(good, adjacency, "sparse", shuffled, holdout, (20,), 1024)["ndcg@20"]
    # training on shuffled labels with a large step size: every epoch is worse than the start
    fit = fit_lightgcn(good, shuffled, holdout, epochs=4, lr=0.1, l2=0.0, batch_size=256, seed=0, eval_every=2,
                       patience=5, keep_start=True)
    assert fit.best_epoch == -1 and fit.best_val["ndcg@20"] == pytest.approx(before)
    assert all(torch.equal(fit.model.state_dict()[k], v) for k, v in start.items())
    assert all(h["val_ndcg@20"] < before for h in fit.history if "val_ndcg@20" in h)
    # without keep_start the same fit returns a damaged model
    again = LightGCN(120, 80, 16, 2)
    again.load_state_dict(start)
    damaged = fit_lightgcn(again, shuffled, holdout, epochs=4, lr=0.1, l2=0.0, batch_size=256, seed=0,
                           eval_every=2, patience=5)
    assert damaged.best_val["ndcg@20"] < before


@pytest.mark.parametrize("kind", ["lightgcn", "graph_filter"])
def test_two_runs_of_the_teacher_on_the_same_inputs_give_the_same_version(tmp_path, kind):
    """Wall-clock seconds live in timings.json, outside the content hash: a re-run on the same
    graph (here: a second root holding the same graph version) lands on the same version."""
    import shutil

    first_root = Layout.at(tmp_path / "first")
    train, holdout = planted()
    graph = write_graph(first_root, "2026-01-02", train, holdout, 120, 80)
    second_root = Layout.at(tmp_path / "second")
    shutil.copytree(first_root.artifacts("graphs"), second_root.artifacts("graphs"))
    config = cfg(**{"teacher.kind": kind, "teacher.epochs": 4})
    first = run_teacher(first_root, "2026-01-02", config, **current_inputs(first_root, "teacher", "2026-01-02", config))
    second = run_teacher(second_root, "2026-01-02", config, **current_inputs(second_root, "teacher", "2026-01-02", config))
    assert second_root.current("graphs", "2026-01-02").version == graph.version
    assert first.version == second.version
    timings = read_json(f"{first.path}/timings.json")
    assert timings["metrics.json"]["train"]["seconds"] > 0
    assert "seconds" not in read_json(f"{first.path}/metrics.json")["train"]
    if kind == "lightgcn":
        assert all({"seconds", "pairs_per_s", "train_seconds_total"} <= set(row) for row in timings["history.json"])
        assert "val_eval_seconds" in timings["history.json"][3]  # the evaluated epoch's evaluation time
        assert not [key for row in read_json(f"{first.path}/history.json") for key in row if "seconds" in key]


class _RunsCode:
    """A pickle that runs code when loaded without weights_only: it creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_model_file_that_would_run_code_is_refused(tmp_path):
    """Model files are loaded with weights_only: whoever can write the root cannot run code."""
    layout = Layout.at(tmp_path)
    train, holdout = planted()
    write_graph(layout, "2026-01-02", train, holdout, 120, 80)
    artifact = run_teacher(layout, "2026-01-02", cfg(**{"teacher.epochs": 1}), **current_inputs(layout, "teacher", "2026-01-02", cfg(**{"teacher.epochs": 1})))
    model, payload = load_model(artifact.path)  # a real model loads
    assert payload["num_users"] == 120
    marker = tmp_path / "code-ran"
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    torch.save({**payload, "graph_version": _RunsCode(marker)}, tampered / "model.pt")
    with pytest.raises(Exception, match="Weights only load failed"):
        load_model(tampered)
    assert not marker.exists()
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"model": _RunsCode(marker)}, checkpoint)
    with pytest.raises(Exception, match="Weights only load failed"):
        train_teacher(train, holdout, 120, 80, cfg(**{"teacher.epochs": 1}), None, checkpoint)
    assert not marker.exists()


def test_load_embeddings_refuses_tables_of_different_widths(tmp_path):
    np.savez(tmp_path / "embeddings.npz", user=np.zeros((3, 4), np.float32), item=np.zeros((5, 8), np.float32))
    with pytest.raises(ValueError, match=r"embeddings.npz: expected user \[U, d\] and item \[I, d\], got \(3, 4\) and \(5, 8\)"):
        load_embeddings(tmp_path)
