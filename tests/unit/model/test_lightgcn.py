"""LightGCN: normalization by hand, DGL == torch.sparse (values and gradients), sampling, losses."""

import math

import numpy as np
import pytest
import torch

from components.model.models.lightgcn import LightGCN, build_adjacency, count_parameters
from components.model.models.losses import (
    bpr_loss,
    ego_l2,
    kl_distillation_loss,
    rank_discount_weights,
    ranking_distillation_loss,
)
from components.model.models.sampling import positive_keys, sample_epoch
from tests.unit.model_fixtures import planted


def test_adjacency_is_symmetric_degree_normalized_and_binary():
    # users 0,1; items 0,1,2 (nodes 2,3,4). u0-i0, u0-i1, u1-i1 (+ a duplicate u0-i0: still one edge)
    adj = build_adjacency(np.array([0, 0, 1, 0]), np.array([0, 1, 1, 0]), 2, 3)
    dense = adj.csr.to_dense()
    expected = torch.zeros(5, 5)
    for u, i, du, di in [(0, 0, 2, 1), (0, 1, 2, 2), (1, 1, 1, 2)]:
        expected[u, 2 + i] = expected[2 + i, u] = 1 / math.sqrt(du * di)
    assert torch.allclose(dense, expected)


def test_dgl_and_sparse_give_equal_embeddings_and_gradients():
    train, _ = planted(num_users=40, num_items=30, per_user=6, seed=3)
    adj = build_adjacency(train.user, train.item, 40, 30)
    torch.manual_seed(0)
    model = LightGCN(40, 30, embedding_dim=8, num_layers=3, layer_weights=(0.1, 0.2, 0.3, 0.4))
    results = {}
    for backend in ("dgl", "sparse"):
        model.zero_grad()
        users, items = model(adj, backend)
        loss = (users[:7] @ items.T).pow(2).sum() + users.sum() * 0.5 + (items ** 3).sum()
        loss.backward()
        results[backend] = (users.detach(), items.detach(), model.user_embedding.weight.grad.clone(),
                            model.item_embedding.weight.grad.clone())
    for got, want in zip(results["dgl"], results["sparse"]):
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)
    assert results["sparse"][2].abs().sum() > 0


def test_propagation_matches_dense_formula_and_heterograph_path():
    from components.data.graph import build_heterograph
    import pandas as pd

    train, _ = planted(num_users=20, num_items=16, per_user=4, seed=1)
    graph = build_heterograph(pd.DataFrame({"user_idx": train.user, "item_idx": train.item,
                                            "weight": train.weight}), 20, 16)
    users, items = graph.edges(etype=("user", "interacts", "item"))  # the graph stage's edges, as the teacher reads them
    adj = build_adjacency(users.numpy(), items.numpy(), graph.num_nodes("user"), graph.num_nodes("item"))
    dense = build_adjacency(train.user, train.item, 20, 16).csr.to_dense()
    assert torch.allclose(adj.csr.to_dense(), dense)
    model = LightGCN(20, 16, embedding_dim=4, num_layers=2)
    e0 = torch.cat([model.user_embedding.weight, model.item_embedding.weight]).detach()
    want = (e0 + dense @ e0 + dense @ dense @ e0) / 3
    users, items = model(adj, "dgl")
    assert torch.allclose(torch.cat([users, items]).detach(), want, atol=1e-6)
    assert count_parameters(model) == (20 + 16) * 4


def test_init_std_is_official_0_1():
    torch.manual_seed(0)
    model = LightGCN(2000, 1000, embedding_dim=32)
    assert model.user_embedding.weight.std().item() == pytest.approx(0.1, rel=0.03)


def test_epoch_sampling_covers_pairs_once_and_rejects_positives():
    train, _ = planted(num_users=60, num_items=25, per_user=12, seed=2)  # dense: rejection matters
    users, pos, neg = sample_epoch(train.user, train.item, 25, seed=5, epoch=0)
    got = np.sort(users * 25 + pos)
    assert np.array_equal(got, np.sort(train.user * 25 + train.item))
    keys = positive_keys(train.user, train.item, 25)
    assert not np.isin(users * 25 + neg, keys).any()
    again = sample_epoch(train.user, train.item, 25, seed=5, epoch=0)
    assert all(np.array_equal(a, b) for a, b in zip((users, pos, neg), again))
    other = sample_epoch(train.user, train.item, 25, seed=5, epoch=1)
    assert not np.array_equal(neg, other[2])


def test_sampling_names_users_without_any_negative():
    user = np.zeros(3, np.int64)
    item = np.arange(3)
    with pytest.raises(ValueError, match=r"users \[0\]"):
        sample_epoch(user, item, 3, seed=0, epoch=0)


def test_losses_values():
    assert bpr_loss(torch.tensor([2.0]), torch.tensor([0.0])).item() == pytest.approx(math.log1p(math.exp(-2)))
    ego = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    assert ego_l2(ego, ego).item() == pytest.approx(0.5 * 50 / 2)
    w = rank_discount_weights(3, lam=1.0)
    assert w.sum().item() == pytest.approx(1.0) and w[0] > w[1] > w[2]
    same = torch.tensor([[1.0, 2.0, 3.0]])
    assert kl_distillation_loss(same, same, 2.0).item() == pytest.approx(0.0, abs=1e-7)
    assert kl_distillation_loss(-same, same, 2.0).item() > 0.1


def test_ranking_distillation_is_pairwise_against_the_negative():
    w = rank_discount_weights(3, lam=1.0)
    top, neg = torch.tensor([[3.0, 1.0, 0.5]]), torch.tensor([0.0])
    expected = sum(float(w[r]) * math.log1p(math.exp(-float(top[0, r]))) for r in range(3))
    assert ranking_distillation_loss(top, neg, w).item() == pytest.approx(expected, rel=1e-5)
    # raising every score of a user (e.g. a popular direction) changes nothing: only the order counts
    assert ranking_distillation_loss(top + 5, neg + 5, w).item() == pytest.approx(expected, rel=1e-5)
    assert ranking_distillation_loss(top, neg + 1, w).item() > expected
