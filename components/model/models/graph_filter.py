"""Closed-form graph-filter recommenders: GF-CF (Shen et al., CIKM 2021) and BSPM (Choi et al., SIGIR 2023).

Both start from the normalized interaction matrix R~ = D_u^-1/2 R D_i^-1/2 (R binary or weighted,
degrees of the same R) and a rank-k randomized SVD R~ ~ U S V^T (``torch.svd_lowrank``). A user's
interaction row r is scored as

* GF-CF: r R~^T R~ + ideal_weight * r D_i^-1/2 V V^T D_i^1/2   (linear filter + ideal low-pass);
* BSPM:  blur s0 = r by Euler steps of ds/dt = s (R~^T R~ - I) over [0, blur_time], add
  ideal_weight * (ideal low-pass of r), then sharpen ds/dt = -s R~^T R~ over [0, sharpen_time]
  (the paper's "final sharpening" variant) with RK4 steps, as the authors' Gowalla setting does:
  one Euler step of length 2.5 is s - 2.5 s R~^T R~, which inverts the ranking (measured: Recall@20
  0.043 on Gowalla), while RK4 approximates exp(-2.5 R~^T R~).

R~^T R~ (items x items) is never formed: each product with it is two sparse x dense products over
a block of users, so memory is O(nnz + block * (num_users + num_items)), the block sized from a byte
budget (``block_bytes``). Nothing is trained: the filter is recomputed from each night's graph in
seconds to minutes, on the CPU or a CUDA device (``device``: every tensor, the SVD and the scoring
live there; the CPU path is the one measured before the device path existed, operation for operation).
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.linalg
import torch

log = logging.getLogger(__name__)

Variant = Literal["gf_cf", "bspm"]


@dataclass(frozen=True)
class FilterParams:
    """What a fitted filter depends on besides the graph (mirrors config.GraphFilterConfig)."""

    variant: Variant = "gf_cf"
    rank: int = 256
    ideal_weight: float = 0.3
    svd_oversample: int = 16
    svd_iterations: int = 4
    svd_exact_max_side: int = 2048
    blur_time: float = 1.0
    blur_steps: int = 1
    sharpen_time: float = 2.5
    sharpen_steps: int = 1
    sharpen_solver: Literal["euler", "rk4"] = "rk4"
    block_users: int = 1024
    seed: int = 0


# Live float32 rows per scored user, in units of num_items (plus one of num_users for R~ x^T):
# GF-CF holds r, R~^T R~ r, the ideal part's two products and their sum; BSPM's RK4 also holds
# s and k1..k4 with their temporaries.
ROWS_PER_USER = {"gf_cf": 5, "bspm": 10}


def _csr(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    order = torch.argsort(rows * shape[1] + cols)
    indptr = torch.zeros(shape[0] + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(torch.bincount(rows, minlength=shape[0]), 0)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": known, covered by tests
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(indptr, cols[order], values[order].float(), shape)


def exact_svd(num_users: int, num_items: int, params: FilterParams, block_bytes: int | None) -> bool:
    """Whether the filter takes the exact SVD: the graph's smaller side is at most
    ``params.svd_exact_max_side`` and the dense R~ fits ``block_bytes``. Where the rank is a large
    share of the smaller side, the randomized SVD's power iterations converge slowly (on the Instacart
    sample, 593 users: -5.9% NDCG@20 at 2 iterations, -0.5% at 6) and the exact one costs seconds."""
    budget = block_bytes if block_bytes is not None else 2 ** 30  # None: the compute.block_bytes default
    return min(num_users, num_items) <= params.svd_exact_max_side and 4 * num_users * num_items <= budget


class GraphFilter:
    """A fitted GF-CF/BSPM filter over one graph; ``score(users)`` is an evaluate.Scorer."""

    def __init__(self, user: np.ndarray, item: np.ndarray, strength: np.ndarray, norm: np.ndarray,
                 num_users: int, num_items: int, v: torch.Tensor, s: torch.Tensor, params: FilterParams,
                 device: torch.device | str = "cpu", block_bytes: int | None = None):
        """``(user, item)`` distinct edges with ``strength`` (the entries of R: 1 or the edge weight)
        and ``norm`` (the entries of R~); ``v`` [num_items, rank] and ``s`` [rank] from the SVD of R~.
        Everything is held on ``device``; a scoring block holds at most ``block_bytes`` (None: only
        ``params.block_users`` bounds it)."""
        self.num_users, self.num_items, self.params = num_users, num_items, params
        self.device, self.block_bytes = torch.device(device), block_bytes
        u, i = torch.from_numpy(np.asarray(user, np.int64)), torch.from_numpy(np.asarray(item, np.int64))
        strength_t, norm_t = torch.from_numpy(np.asarray(strength, np.float32)), torch.from_numpy(np.asarray(norm, np.float32))
        rows = _csr(u, i, strength_t, (num_users, num_items))  # R: the users' interaction rows
        self.indptr, self.indices, self.values = rows.crow_indices(), rows.col_indices(), rows.values()
        self.norm = _csr(u, i, norm_t, (num_users, num_items))  # R~
        self.norm_t = _csr(i, u, norm_t, (num_items, num_users))  # R~^T
        item_degree = torch.zeros(num_items, dtype=torch.float64).index_add_(0, i, strength_t.double())
        inv_sqrt = torch.where(item_degree > 0, item_degree.clamp(min=1e-12).rsqrt(), torch.zeros_like(item_degree))
        self.item_inv_sqrt = inv_sqrt.float()
        self.item_sqrt = item_degree.sqrt().float()
        self.v, self.s = v.float().contiguous(), s.float()
        if self.device.type != "cpu":  # built on the CPU (argsort, bincount), then moved once
            for name in ("indptr", "indices", "values", "norm", "norm_t", "item_inv_sqrt", "item_sqrt", "v", "s"):
                setattr(self, name, getattr(self, name).to(self.device))

    @property
    def block_users(self) -> int:
        """Users per scoring block: ``params.block_users``, fewer when ``block_bytes`` says so."""
        if self.block_bytes is None:
            return self.params.block_users
        per_user = 4 * (ROWS_PER_USER[self.params.variant] * self.num_items + self.num_users)
        return max(1, min(self.params.block_users, self.block_bytes // per_user))

    # --- fitting ---------------------------------------------------------------------------------

    @classmethod
    def fit(cls, user: np.ndarray, item: np.ndarray, strength: np.ndarray, norm: np.ndarray, num_users: int,
            num_items: int, params: FilterParams, device: torch.device | str = "cpu",
            block_bytes: int | None = None) -> "GraphFilter":
        """Rank-``params.rank`` SVD of R~ on ``device``, then the filter: exact (LAPACK) when
        :func:`exact_svd` says so, else randomized and seeded. The sketch is drawn on ``device``: a CUDA
        SVD is seeded too, but its singular vectors are not the CPU's bits."""
        device = torch.device(device)
        tic = time.perf_counter()
        rank = min(params.rank, num_users, num_items)
        q = min(rank + params.svd_oversample, num_users, num_items)
        matrix = torch.sparse_coo_tensor(torch.from_numpy(np.stack([np.asarray(user, np.int64), np.asarray(item, np.int64)])),
                                         torch.from_numpy(np.asarray(norm, np.float32)), (num_users, num_items), check_invariants=False).coalesce().to(device)
        exact = exact_svd(num_users, num_items, params, block_bytes)
        if exact:
            # LAPACK's gesvd on the CPU, whatever the device (seconds at this size): the default gesdd
            # (torch.linalg.svd) failed to converge on 2 of 10 Instacart window graphs in float32,
            # whose many disconnected components repeat the singular value 1.
            _, s_np, vh = scipy.linalg.svd(matrix.to_dense().cpu().numpy(), full_matrices=False, lapack_driver="gesvd")
            s, v = torch.from_numpy(s_np).to(device), torch.from_numpy(vh.T.copy()).to(device)
        else:
            with torch.random.fork_rng():  # svd_lowrank draws its Gaussian sketch from the global generator
                torch.manual_seed(params.seed)
                _, s, v = torch.svd_lowrank(matrix, q=q, niter=params.svd_iterations)
        log.info("graph filter %s: rank-%d %s SVD of R~ (%d x %d, %d nnz) on %s in %.1fs; top singular values %s",
                 params.variant, rank, "exact" if exact else f"randomized ({params.svd_iterations} power iterations)",
                 num_users, num_items, len(norm), device, time.perf_counter() - tic,
                 np.round(s[:3].cpu().numpy(), 4).tolist())
        return cls(user, item, strength, norm, num_users, num_items, v[:, :rank], s[:rank], params,
                   device, block_bytes)

    # --- scoring ---------------------------------------------------------------------------------

    def _rows(self, users: torch.Tensor) -> torch.Tensor:
        """Dense interaction rows r [B, num_items] of ``users``."""
        starts, lengths = self.indptr[users], self.indptr[users + 1] - self.indptr[users]
        block_row = torch.repeat_interleave(torch.arange(users.numel(), device=self.device), lengths)
        # position of each stored entry: its row's start + its offset within the row
        pos = torch.repeat_interleave(starts - (torch.cumsum(lengths, 0) - lengths), lengths) + \
            torch.arange(int(lengths.sum()), device=self.device)
        r = torch.zeros(users.numel(), self.num_items, device=self.device)
        r[block_row, self.indices[pos]] = self.values[pos]
        return r

    def _item_item(self, x: torch.Tensor) -> torch.Tensor:
        """x R~^T R~ for x [B, num_items], as two sparse products (R~^T R~ is never formed)."""
        return (self.norm_t @ (self.norm @ x.T)).T

    def _ideal(self, r: torch.Tensor) -> torch.Tensor:
        """Ideal low-pass: r D_i^-1/2 V V^T D_i^1/2."""
        return ((r * self.item_inv_sqrt) @ self.v) @ (self.v.T * self.item_sqrt)

    def _score_block(self, users: torch.Tensor) -> torch.Tensor:
        p = self.params
        r = self._rows(users)
        if p.variant == "gf_cf":
            return self._item_item(r) + p.ideal_weight * self._ideal(r)
        s, dt = r, p.blur_time / p.blur_steps
        for _ in range(p.blur_steps):
            s = s + dt * (self._item_item(s) - s)
        s = s + p.ideal_weight * self._ideal(r)
        dt = p.sharpen_time / p.sharpen_steps
        sharpen = lambda x: -self._item_item(x)  # noqa: E731
        for _ in range(p.sharpen_steps):
            if p.sharpen_solver == "euler":
                s = s + dt * sharpen(s)
            else:
                k1 = sharpen(s)
                k2 = sharpen(s + 0.5 * dt * k1)
                k3 = sharpen(s + 0.5 * dt * k2)
                k4 = sharpen(s + dt * k3)
                s = s + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return s

    def score(self, users: torch.Tensor) -> torch.Tensor:
        """Scores [len(users), num_items] (fresh tensor on the filter's device), computed over blocks
        of ``block_users``. Callers ask for a block at a time (evaluate.ranked_blocks): the result
        itself is len(users) x num_items."""
        users = torch.as_tensor(users, dtype=torch.int64).to(self.device)
        block = self.block_users
        with torch.no_grad():
            blocks = [self._score_block(users[start:start + block]) for start in range(0, users.numel(), block)]
        return torch.cat(blocks) if len(blocks) != 1 else blocks[0]

    # --- factors -------------------------------------------------------------------------------

    def low_rank_factors(self, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(U_k [num_users, k], V_k [num_items, k], S_k [k]) for k = min(dim, rank): the top singular
        triplets of R~ (U recomputed as R~ V / S, so only V is stored)."""
        k = min(dim, self.v.shape[1])
        v, s = self.v[:, :k], self.s[:k]
        u = (self.norm @ v) / s.clamp(min=1e-12)
        return u, v, s

    def state(self) -> dict[str, np.ndarray]:
        """What an artifact stores besides the graph: the SVD factors."""
        return {"v": self.v.cpu().numpy(), "s": self.s.cpu().numpy()}

    @property
    def num_params(self) -> int:
        return int(self.v.numel() + self.s.numel())
