"""The serving graph: what ONNX exports and the engines run. Scores every item for a batch of users
and returns the top-K with the users' seen items excluded; the size ladder (model plane) times it,
the export (ship plane) writes it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from components.model.models.quantize import Precision, quantize_rows, table_bytes

PARITY_SAMPLE_USERS = 256


class SeenItems(NamedTuple):
    """Each user's seen items in CSR form: ``items[indptr[u]:indptr[u + 1]]`` (sorted), so the table
    grows with the interactions, not with users x the heaviest user's history."""

    indptr: np.ndarray  # int64 [num_users + 1]
    items: np.ndarray  # int32 [nnz]

    @property
    def max_seen(self) -> int:
        return int(np.diff(self.indptr).max(initial=0))

    @property
    def nnz(self) -> int:
        return int(self.items.shape[0])


def seen_items_csr(train: Interactions, num_users: int) -> SeenItems:
    """The training positives per user as :class:`SeenItems`, built without loops.

    int32 items halve the table (item indices stay far below 2^31); the graph casts to int64.
    """
    order = np.lexsort((train.item, train.user))
    counts = np.bincount(train.user, minlength=num_users)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return SeenItems(indptr, train.item[order].astype(np.int32))


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
        seen_items: SeenItems | None = None,
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
        self.exclude_seen = seen_items is not None and seen_items.nnz > 0
        if self.exclude_seen:
            if seen_items.indptr.shape[0] != user_emb.shape[0] + 1:
                raise ValueError(
                    f"seen_items covers {seen_items.indptr.shape[0] - 1} users, user_emb has {user_emb.shape[0]}"
                )
            self.register_buffer("seen_indptr", torch.from_numpy(np.ascontiguousarray(seen_items.indptr, np.int64)))
            self.register_buffer("seen_items", torch.from_numpy(np.ascontiguousarray(seen_items.items, np.int32)))
            self.max_seen = seen_items.max_seen
        else:
            self.max_seen = 0

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
            scores = self._mask_seen(scores, user_idx)
        top_scores, top_items = torch.topk(scores, self.top_k, dim=1)
        return top_items, top_scores

    def _mask_seen(self, scores: torch.Tensor, user_idx: torch.Tensor) -> torch.Tensor:
        """Scores of the batch's seen items set to -inf. The CSR rows are gathered padded to the
        batch's own longest history (not the catalogue's), so memory is batch x max-seen-in-batch."""
        starts = self.seen_indptr.index_select(0, user_idx)
        lengths = self.seen_indptr.index_select(0, user_idx + 1) - starts
        offsets = torch.arange(lengths.max(), dtype=torch.int64).unsqueeze(0)
        valid = offsets < lengths.unsqueeze(1)
        # Positions past a row's end are clamped in range, then sent to a dummy column dropped after the scatter.
        positions = torch.clamp(starts.unsqueeze(1) + offsets, max=self.seen_items.shape[0] - 1)
        # A 2-D gather, not index_select + Reshape: ONNX Reshape reads a 0 dimension (a batch without
        # history) as "keep the input's".
        seen = self.seen_items[positions].long()
        seen = torch.where(valid, seen, torch.full_like(seen, self.num_items))
        padded = torch.cat([scores, torch.zeros_like(scores[:, :1])], dim=1)
        return padded.scatter(1, seen, float("-inf"))[:, : self.num_items]


def parity_users(num_users: int, seed: int, size: int = PARITY_SAMPLE_USERS) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_users, size=min(size, num_users), replace=False)).astype(np.int64)
