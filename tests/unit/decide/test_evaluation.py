"""Evaluation as served with a real Feast repo (SQLite online store): users without a trained
embedding but with recent items are answered by fold-in, exactly as the Recommender answers them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from components.model.metrics import ranking_scorer, user_metrics
from components.model.train import load_embeddings
from components.data.features import online_history, recent_items_as_of, run_features
from components.core.refs import PerUser
from components.decide.evaluation import read_history, version_served_scorer
from components.core.interactions import Interactions
from components.data.graph import GraphArtifact
from components.decide.registry import champion, run_promote, run_register
from components.ship.serving import Recommender, fold_in
from components.core.catalog import Layout, read_json

from tests.unit.data_fixtures import current_inputs
from tests.unit.ship_fixtures import make_world, run_ship_day, tiny_config, write_accepted_events

DAY, BEFORE = "2024-01-08", "2024-01-07"
COLD = list(range(32, 40))  # u32..u39: in the graph's ID map, no training pairs (cold_users=8)


def _cold_histories(world) -> dict[str, list[int]]:
    """u32..u38: three items of their own cluster each (item i is of cluster i % 4); u39: only an
    item no model knows (answered by popularity)."""
    out = {}
    for u in COLD[:-1]:
        cluster = int(world.user_cluster[u])
        out[f"u{u}"] = [cluster + 4 * ((u + j) % 15) for j in range(3)]
    return out


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """Day BEFORE's events materialized by the features stage, then day DAY's candidate evaluated,
    gated, registered and promoted (it serves)."""
    root = tmp_path_factory.mktemp("served_eval")
    layout, cfg, world = Layout.at(root), tiny_config(root), make_world()
    histories = _cold_histories(world)
    rows = [(user, f"i{item}", f"{BEFORE}T{8 + j:02d}:00") for user, items in histories.items()
            for j, item in enumerate(items)]
    rows.append(("u39", "i_new", f"{BEFORE}T09:00"))
    write_accepted_events(layout, BEFORE, rows)
    run_features(layout, BEFORE, cfg, **current_inputs(layout, "features", BEFORE, cfg))
    run_ship_day(layout, DAY, cfg, world, cold_users=len(COLD))
    registration = run_register(layout, DAY, cfg, run_key="r1")
    assert run_promote(layout, DAY, cfg, run_key="r1", registration=registration).promoted
    return layout, cfg, histories


def test_cold_users_with_history_are_evaluated_by_fold_in_far_above_popularity(evaluated):
    layout, cfg, histories = evaluated
    evaluation = read_json(layout.reports(DAY) / "runs" / "r1" / "evaluation.json")
    assert evaluation["cold_answer"] == "fold-in from Feast recent items as of 2024-01-08T00:00:00+00:00, else popularity"
    assert evaluation["answered_by"]["candidate"] == {"model": 32, "fold_in": 7, "popularity": 1}
    assert evaluation["answered_by"]["teacher"] == {"model": 32, "fold_in": 7, "popularity": 1}

    # The same numbers built by hand: fold_in over the candidate's items with its training degrees,
    # popularity for u39, and every user's recent items excluded like training positives.
    graph = GraphArtifact.load(layout.current("graphs", DAY))
    train, holdout = graph.train_interactions(), graph.holdout_interactions()
    user_emb, item_emb = load_embeddings(layout.current("models/pruned", DAY).path)
    folded_users = np.array([int(u[1:]) for u in histories])
    history_items = np.array(list(histories.values()))
    folded = fold_in(item_emb, np.arange(0, history_items.size + 1, 3), history_items.ravel(),
                     np.bincount(train.item, minlength=graph.num_items))
    expected = user_emb @ item_emb.T
    expected[folded_users] = folded @ item_emb.T
    expected[39] = ranking_scorer(np.bincount(train.item, minlength=graph.num_items), graph.num_items)(
        torch.tensor([0]))[0].numpy()
    excluded = Interactions(np.concatenate([train.user, np.repeat(folded_users, 3)]),
                            np.concatenate([train.item, history_items.ravel()]),
                            np.ones(len(train) + history_items.size, np.float32))
    direct = user_metrics(lambda users: torch.from_numpy(expected[users.numpy()].copy()), excluded, holdout,
                          graph.num_items, cfg.eval.ks, include_cold=True)
    per_user = PerUser.load(evaluation["per_user_path"])
    np.testing.assert_array_equal(per_user.users, direct.users)
    np.testing.assert_allclose(per_user.values["candidate"]["ndcg@20"], direct.values["ndcg@20"], rtol=1e-5)

    cold = evaluation["segments"]["candidate"]["cold"]
    popularity = evaluation["segments"]["popularity"]["cold"]
    assert cold["users_evaluated"] == popularity["users_evaluated"] == 8
    # 7 of 8 cold users folded in from their own cluster: near the warm users, far above popularity.
    warm = evaluation["segments"]["candidate"]["warm"]
    # 7 of 8 cold users folded in from their own cluster: close to the warm users, far above
    # popularity (measured: cold 0.469, warm 0.544, popularity on the cold users 0.014).
    assert cold["ndcg@20"] > 0.4 and popularity["ndcg@20"] < 0.05, (cold, popularity)
    assert cold["ndcg@20"] > 0.75 * warm["ndcg@20"]
    by_popularity = per_user.users == 39  # no usable history: the candidate answers it with popularity
    np.testing.assert_allclose(per_user.values["candidate"]["ndcg@20"][by_popularity],
                               per_user.values["popularity"]["ndcg@20"][by_popularity])


def test_evaluation_and_the_recommender_agree_on_cold_users_top_k(evaluated):
    layout, cfg, histories = evaluated
    rec = Recommender.load(layout, history=online_history(layout, cfg))  # online store: BEFORE's snapshot
    users = [*histories, "u39", "u0"]
    assert rec.segments(users).tolist() == ["fold_in"] * 7 + ["popularity", "model"]
    served = rec.recommend(users, k=5)

    # What run_evaluate scores for the champion: its ID maps, its embeddings / fold-in / popularity,
    # history read through Feast as of the day's start, training and recent items excluded.
    graph = GraphArtifact.load(layout.current("graphs", DAY))
    ids = pd.read_parquet(f"{graph.ref.path}/users.parquet").set_index("user_id")["idx"]
    index = ids.loc[users].to_numpy()
    history, _ = read_history(layout, cfg, graph, np.sort(index), DAY)
    scorer = version_served_scorer(layout, champion(layout).version, graph, history).scorer
    scores = scorer(torch.from_numpy(index))
    train = graph.train_interactions()
    history_user, history_item = history.pairs()
    seen = np.concatenate([train.user * graph.num_items + train.item, history_user * graph.num_items + history_item])
    rows, cols = np.divmod(seen[np.isin(seen // graph.num_items, index)], graph.num_items)
    position = np.full(graph.num_users, -1)
    position[index] = np.arange(index.size)
    scores[position[rows], cols] = -torch.inf
    top = torch.topk(scores, 5, dim=1).indices.numpy()
    names = [[f"i{j}" for j in row] for row in top]
    assert [[item for item, _ in row] for row in served[:8]] == names[:8]  # cold: fold-in and popularity
    # u0 is answered by the ONNX engine: float differences may swap near-ties, never the top-5 itself
    assert {item for item, _ in served[8]} == set(names[8])
    assert recent_items_as_of(layout, cfg, ["u32"], pd.Timestamp(DAY, tz="UTC")) == [
        [f"i{j}" for j in histories["u32"][::-1]]]  # most recent first
