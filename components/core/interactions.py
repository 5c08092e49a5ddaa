"""Indexed user-item interactions and their symmetric normalization: the graph stage builds them,
the models and the teacher propagate over them. Here, below both, so that model definitions need
no stage module (the normalization is DGL's own, see ``normalized_edges``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from components.core.dgl_compat import import_dgl

USER_ETYPE = ("user", "interacts", "item")


@dataclass(frozen=True)
class Interactions:
    """Indexed interactions: parallel arrays, one entry per distinct (user, item) pair."""

    user: np.ndarray  # int64 user indices
    item: np.ndarray  # int64 item indices
    weight: np.ndarray  # float32 aggregated (decayed, event-weighted) strength

    def __len__(self) -> int:
        return int(self.user.shape[0])


@dataclass(frozen=True)
class NormalizedEdges:
    """The distinct user-item edges of a graph with their normalized strengths.

    ``strength`` is the entry of R (1 for ``weighted=False``, else the summed decayed event weight);
    ``norm`` the entry of R~ = D_u^-1/2 R D_i^-1/2, degrees being row/column sums of the same R.
    """

    user: np.ndarray  # int64
    item: np.ndarray  # int64
    strength: np.ndarray  # float32
    norm: np.ndarray  # float32

    def __len__(self) -> int:
        return int(self.user.shape[0])


def normalized_edges(pairs: Interactions, num_users: int, num_items: int, weighted: bool) -> NormalizedEdges:
    """Dedup and symmetric normalization with DGL's own operations: ``dgl.to_simple`` merges repeated
    (user, item) pairs summing their weights, ``EdgeWeightNorm(norm="both")`` divides each edge by
    sqrt(weighted out-degree of its user * weighted in-degree of its item)."""
    import torch

    dgl = import_dgl()  # before dgl.nn: the compat shim must be in place first
    from dgl.nn.pytorch import EdgeWeightNorm

    if len(pairs) and (int(pairs.user.max()) >= num_users or int(pairs.item.max()) >= num_items):
        raise ValueError(f"pair index out of range: max user {int(pairs.user.max())} (of {num_users}), "
                         f"max item {int(pairs.item.max())} (of {num_items})")
    if weighted and len(pairs) and float(pairs.weight.min()) <= 0:
        raise ValueError(f"weighted normalization needs positive edge weights, min is {float(pairs.weight.min())}")
    graph = dgl.heterograph({USER_ETYPE: (torch.from_numpy(pairs.user.astype(np.int64)),
                                          torch.from_numpy(pairs.item.astype(np.int64)))},
                            num_nodes_dict={"user": num_users, "item": num_items})
    graph.edata["w"] = torch.from_numpy(pairs.weight.astype(np.float32)) if weighted else torch.ones(len(pairs))
    simple = dgl.to_simple(graph, copy_edata=True, aggregator="sum")
    if not weighted:  # a repeated pair is one edge of weight 1, not a heavier edge
        simple.edata["w"] = torch.ones(simple.num_edges())
    strength = simple.edata["w"].float()
    norm = EdgeWeightNorm(norm="both")(simple, strength) if simple.num_edges() else strength
    user, item = simple.edges()
    return NormalizedEdges(user.numpy().astype(np.int64), item.numpy().astype(np.int64),
                           strength.numpy().astype(np.float32), norm.numpy().astype(np.float32))
