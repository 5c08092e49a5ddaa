"""The serving graph: what ONNX exports and the engines run. Scores every item for a batch of users
and returns the top-K with the users' seen items excluded; the size ladder (model plane) times it,
the export (ship plane) writes it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from components.model.models.quantize import Precision, quantize_rows, table_bytes

PARITY_SAMPLE_USERS = 256


def seen_items_table(train: Interactions, num_users: int) -> np.ndarray:
    """Padded seen-item table [num_users, max_seen] (int32, -1 padding), built without loops.

    int32 halves the table (item indices stay far below 2^31); the graph casts to int64.
    """
    if len(train) == 0:
        return np.full((num_users, 0), -1, dtype=np.int32)
    order = np.lexsort((train.item, train.user))
    users, items = train.user[order], train.item[order]
    counts = np.bincount(users, minlength=num_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    position = np.arange(users.shape[0]) - starts[users]
    table = np.full((num_users, int(counts.max())), -1, dtype=np.int32)
    table[users, position] = items
    return table


class ServingGraph(nn.Module):
    """Scores all items for a batch of users and returns the top-K (seen items excluded).

    The embedding tables are stored at ``precision`` (components/model/models/quantize.py): fp32, fp16,
    or int8 with a float32 scale per row; the graph dequantizes the gathered user rows and the
    item table (Cast, Mul) and scores in float32.
    """

    def __init__(
        self,
        user_emb: np.ndarray,
        item_emb: np.ndarray,
        top_k: int,
        seen_items: np.ndarray | None = None,
        precision: Precision = "fp32",
    ) -> None:
        super().__init__()
        self.precision = precision
        self.tables = {"user": quantize_rows(user_emb, precision), "item": quantize_rows(item_emb, precision)}
        for name, table in self.tables.items():
            self.register_buffer(f"{name}_emb", torch.from_numpy(np.ascontiguousarray(table.values)))
            if table.scale is not None:
                self.register_buffer(f"{name}_scale", torch.from_numpy(table.scale))
        self.num_items = int(item_emb.shape[0])
        # topk needs K <= number of items; a tiny catalogue serves all of it.
        self.top_k = min(int(top_k), self.num_items)
        self.exclude_seen = seen_items is not None and seen_items.shape[1] > 0
        if self.exclude_seen:
            if seen_items.shape[0] != user_emb.shape[0]:
                raise ValueError(
                    f"seen_items has {seen_items.shape[0]} rows, user_emb has {user_emb.shape[0]} users"
                )
            self.register_buffer("seen_items", torch.from_numpy(np.ascontiguousarray(seen_items, np.int32)))

    @property
    def table_bytes(self) -> int:
        """Bytes of the two embedding tables at this precision (scales included)."""
        return sum(table_bytes(t) for t in self.tables.values())

    def forward(self, user_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        users = self.user_emb.index_select(0, user_idx).float()
        items = self.item_emb.float()
        if self.precision == "int8":
            users = users * self.user_scale.index_select(0, user_idx)
            items = items * self.item_scale
        scores = users @ items.t()
        if self.exclude_seen:
            seen = self.seen_items.index_select(0, user_idx).long()
            # -1 padding points at an extra dummy column, dropped after the scatter.
            seen = torch.where(seen < 0, torch.full_like(seen, self.num_items), seen)
            padded = torch.cat([scores, torch.zeros_like(scores[:, :1])], dim=1)
            padded = padded.scatter(1, seen, float("-inf"))
            scores = padded[:, : self.num_items]
        top_scores, top_items = torch.topk(scores, self.top_k, dim=1)
        return top_items, top_scores


def parity_users(num_users: int, seed: int, size: int = PARITY_SAMPLE_USERS) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_users, size=min(size, num_users), replace=False)).astype(np.int64)
