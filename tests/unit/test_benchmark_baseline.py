"""The Gowalla benchmark's same-process baseline computes what our training step computes."""

import importlib.util
from pathlib import Path

import torch

from components.model.models.lightgcn import LightGCN, build_adjacency
from tests.unit.model_fixtures import planted

RUN = Path(__file__).resolve().parents[2] / "benchmarks" / "gowalla" / "run.py"


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("gowalla_benchmark", RUN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_official_style_step_propagates_like_lightgcn():
    bench = _benchmark_module()
    train, _ = planted(num_users=40, num_items=30, per_user=5, seed=6)
    adjacency = build_adjacency(train.user, train.item, 40, 30)
    torch.manual_seed(0)
    ours = LightGCN(40, 30, embedding_dim=8, num_layers=3)
    official = bench.OfficialStyleStep(adjacency, 40, 30, dim=8, layers=3)
    with torch.no_grad():
        official.user.weight.copy_(ours.user_embedding.weight)
        official.item.weight.copy_(ours.item_embedding.weight)
    (want_u, want_i), (got_u, got_i) = ours(adjacency), official.final()
    assert torch.allclose(got_u, want_u, atol=1e-6) and torch.allclose(got_i, want_i, atol=1e-6)
    before = official.user.weight.detach().clone()
    official(torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5]))  # one training step moves weights
    assert not torch.equal(before, official.user.weight)
