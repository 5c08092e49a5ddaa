"""LightGCN (He et al., SIGIR 2020): ego embeddings, linear propagation, weighted layer sum.

    E^(k+1) = D^-1/2 A D^-1/2 E^(k),     E_final = sum_k alpha_k E^(k),     score(u, i) = e_u . e_i

A is the user-item adjacency, binary as in the paper or weighted by the graph's edge strengths
(``teacher.edge_weights``), normalized once per graph by :func:`build_adjacency` with DGL's ops. Propagation runs one of two ways on the same matrix:

* ``"dgl"``: DGL message passing (``u_mul_e`` + ``sum``) on the homogeneous bipartite graph
  derived from the heterograph's two edge types -- the documented CPU path;
* ``"sparse"``: torch.sparse CSR matmul -- the CUDA path (and the CPU default when faster, see
  :func:`resolve_backend`). The layer sum is evaluated as one polynomial P = sum_k alpha_k A^k by
  Horner's rule, and because A (hence P) is symmetric the backward is the same pass over the
  gradient: same math and gradients as the layer-by-layer form, fewer passes over memory.

A unit test checks the two give equal embeddings and gradients.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from components.core.dgl_compat import import_dgl
from components.core.interactions import Interactions, normalized_edges

Backend = Literal["dgl", "sparse"]

# Measured on Gowalla (70k nodes, 1.62M nnz, d=64, 2 CPU threads), forward+backward of 3 layers:
# CSR polynomial 0.21 s, DGL message passing 1.07 s (5x slower, beyond the 1.5x we would accept to
# keep DGL as the CPU default); see benchmarks/gowalla/results. "auto" on CPU picks the value below.
CPU_DEFAULT_BACKEND: Backend = "sparse"
# On CPU the CSR product gathers rows of X at random; at d=64 (18 MB for Gowalla) X falls out of
# cache and one product costs ~2x two products over 32-column halves, so CPU propagation runs on
# column blocks of this width (measured, benchmarks/gowalla). GPUs take the whole width at once.
CPU_COLUMN_BLOCK = 32


@dataclass(frozen=True)
class NormalizedAdjacency:
    """D^-1/2 A D^-1/2 of the bipartite graph over N = num_users + num_items nodes (users first)."""

    num_users: int
    num_items: int
    csr: torch.Tensor  # torch.sparse_csr [N, N], float32
    src: torch.Tensor  # int64 edge sources (both directions), for the DGL graph
    dst: torch.Tensor
    norm: torch.Tensor  # float32 per-edge 1/sqrt(d_src d_dst)

    @property
    def num_nodes(self) -> int:
        return self.num_users + self.num_items

    def to(self, device: torch.device | str) -> "NormalizedAdjacency":
        return NormalizedAdjacency(self.num_users, self.num_items, self.csr.to(device),
                                   self.src.to(device), self.dst.to(device), self.norm.to(device))

    def dgl_graph(self):
        """Homogeneous DGL graph with edge data "norm" (built lazily, cached per adjacency)."""
        cached = _DGL_CACHE.get(id(self))
        if cached is not None and cached[0] is self:
            return cached[1]
        dgl = import_dgl()
        graph = dgl.graph((self.src, self.dst), num_nodes=self.num_nodes)
        graph.edata["norm"] = self.norm
        _DGL_CACHE.clear()  # one graph at a time: adjacencies are built once per stage
        _DGL_CACHE[id(self)] = (self, graph)
        return graph


_DGL_CACHE: dict[int, tuple[NormalizedAdjacency, object]] = {}


def build_adjacency(user: np.ndarray, item: np.ndarray, num_users: int, num_items: int,
                    weight: np.ndarray | None = None) -> NormalizedAdjacency:
    """Normalized adjacency from (user, item) index pairs: binary (duplicates collapse to one edge)
    when ``weight`` is None, else weighted by the pairs' summed ``weight``. Dedup, degrees and
    normalization come from DGL (components.core.interactions.normalized_edges)."""
    strength = np.ones(len(user), np.float32) if weight is None else np.asarray(weight, np.float32)
    edges = normalized_edges(Interactions(np.asarray(user, np.int64), np.asarray(item, np.int64), strength),
                             num_users, num_items, weighted=weight is not None)
    u, i = edges.user, edges.item + num_users
    n = num_users + num_items
    src = np.concatenate([u, i])
    dst = np.concatenate([i, u])
    norm = np.concatenate([edges.norm, edges.norm])
    # CSR rows = destination: row v sums norm * x[src] over v's in-edges, as message passing does.
    order = np.lexsort((src, dst))
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(dst, minlength=n), out=indptr[1:])
    with warnings.catch_warnings():  # "CSR support is in beta": known, and the path is tested
        warnings.simplefilter("ignore", UserWarning)
        # int32 indices when they fit: MKL's kernel takes int32, int64 would be converted every call
        index_dtype = np.int32 if src.size < 2**31 - 1 else np.int64
        csr = torch.sparse_csr_tensor(torch.from_numpy(indptr.astype(index_dtype)),
                                      torch.from_numpy(src[order].astype(index_dtype)),
                                      torch.from_numpy(norm[order]), (n, n))
    return NormalizedAdjacency(num_users, num_items, csr, torch.from_numpy(src), torch.from_numpy(dst),
                               torch.from_numpy(norm))


def _horner(csr: torch.Tensor, x: torch.Tensor, weights: tuple[float, ...], block: int) -> torch.Tensor:
    """sum_k w_k A^k x by Horner's rule, (w_K x -> A(.) + w_{K-1} x -> ...), over column blocks."""
    out = torch.empty_like(x)
    for start in range(0, x.shape[1], block):
        base = x[:, start:start + block].contiguous()
        acc = base * weights[-1]
        for alpha in reversed(weights[:-1]):
            # alpha * base + A @ acc in one call (torch.sparse.mm would zero-fill, copy, then add)
            acc = torch.addmm(base, csr, acc, beta=alpha)
        out[:, start:start + block] = acc
    return out


class _PolynomialPropagation(torch.autograd.Function):
    """F = P E0 with P = sum_k alpha_k A^k. A is symmetric, so P is, and dL/dE0 = P dL/dF: the
    backward is the same Horner pass over the incoming gradient (3 products, no transposed copy,
    no per-layer intermediates kept for autograd)."""

    @staticmethod
    def forward(ctx, csr: torch.Tensor, ego: torch.Tensor, weights: tuple[float, ...], block: int) -> torch.Tensor:
        ctx.csr, ctx.weights, ctx.block = csr, weights, block
        return _horner(csr, ego, weights, block)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, _horner(ctx.csr, grad.contiguous(), ctx.weights, ctx.block), None, None


def dgl_spmm(adjacency: NormalizedAdjacency, x: torch.Tensor) -> torch.Tensor:
    """One propagation layer by DGL message passing: h_v = sum_{u->v} norm_uv * h_u."""
    fn = import_dgl().function
    graph = adjacency.dgl_graph()
    with graph.local_scope():
        graph.ndata["h"] = x
        graph.update_all(fn.u_mul_e("h", "norm", "m"), fn.sum("m", "h"))
        return graph.ndata["h"]


def gather_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` (rows of a 2-D table, ``index`` of any shape) with a backward that gives the
    same bits on every call (issue 20). On CPU, indexing's backward (index_put_ with accumulate) adds
    with parallel float atomics once a gather has >= 32768 elements and torch has > 1 thread: the
    sum order, hence the last bits, changed run to run. index_select's backward (index_add_) adds in
    index order, the same for any thread count, and measured no slower (1 thread, a batch of 2048
    with top-20 targets, d=16: 1.8 ms vs 2.4 ms). On CUDA it is the other way round (index_add_
    uses atomics, indexing's accumulate sorts), so CUDA keeps indexing."""
    if table.is_cuda:
        return table[index]
    return table.index_select(0, index.reshape(-1)).view(*index.shape, table.shape[1])


def resolve_backend(requested: str, device: torch.device | str) -> Backend:
    """"auto" -> sparse on CUDA, ``CPU_DEFAULT_BACKEND`` on CPU; explicit choices pass through."""
    if requested in ("dgl", "sparse"):
        return requested  # type: ignore[return-value]
    if requested != "auto":
        raise ValueError(f"propagation must be 'auto', 'dgl' or 'sparse', got {requested!r}")
    return "sparse" if torch.device(device).type == "cuda" else CPU_DEFAULT_BACKEND


def uniform_layer_weights(num_layers: int) -> tuple[float, ...]:
    return tuple([1.0 / (num_layers + 1)] * (num_layers + 1))


class LightGCN(nn.Module):
    """Ego embeddings + propagation; ``forward`` returns the final (user, item) embeddings."""

    def __init__(self, num_users: int, num_items: int, embedding_dim: int = 64, num_layers: int = 3,
                 layer_weights: tuple[float, ...] | None = None, init_std: float = 0.1):
        super().__init__()
        weights = tuple(layer_weights) if layer_weights is not None else uniform_layer_weights(num_layers)
        if len(weights) != num_layers + 1:
            raise ValueError(f"layer_weights needs {num_layers + 1} entries, got {len(weights)}")
        self.num_users, self.num_items = num_users, num_items
        self.embedding_dim, self.num_layers = embedding_dim, num_layers
        self.layer_weights = weights
        self.user_embedding = nn.Embedding(num_users, embedding_dim)
        self.item_embedding = nn.Embedding(num_items, embedding_dim)
        # The official LightGCN code initializes ego embeddings from N(0, 0.1^2).
        nn.init.normal_(self.user_embedding.weight, std=init_std)
        nn.init.normal_(self.item_embedding.weight, std=init_std)

    def propagate(self, adjacency: NormalizedAdjacency, backend: Backend = "sparse") -> torch.Tensor:
        """Final embeddings of all nodes [num_users + num_items, d], users first."""
        if adjacency.num_users != self.num_users or adjacency.num_items != self.num_items:
            raise ValueError(f"adjacency is {adjacency.num_users}x{adjacency.num_items}, "
                             f"model is {self.num_users}x{self.num_items}")
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight], 0)
        if backend == "sparse":
            block = self.embedding_dim if ego.is_cuda else CPU_COLUMN_BLOCK
            return _PolynomialPropagation.apply(adjacency.csr, ego, self.layer_weights, block)
        if backend == "dgl":  # layer by layer, as in the paper's equations
            layer, final = ego, ego * self.layer_weights[0]
            for alpha in self.layer_weights[1:]:
                layer = dgl_spmm(adjacency, layer)
                final = final + alpha * layer
            return final
        raise ValueError(f"unknown propagation backend {backend!r}; expected 'dgl' or 'sparse'")

    def forward(self, adjacency: NormalizedAdjacency, backend: Backend = "sparse") -> tuple[torch.Tensor, torch.Tensor]:
        """(user_final [num_users, d], item_final [num_items, d])."""
        final = self.propagate(adjacency, backend)
        return final[: self.num_users], final[self.num_users:]

    def metadata(self) -> dict:
        return {"num_users": self.num_users, "num_items": self.num_items, "embedding_dim": self.embedding_dim,
                "num_layers": self.num_layers, "layer_weights": list(self.layer_weights)}

    @classmethod
    def from_checkpoint(cls, payload: dict) -> "LightGCN":
        model = cls(payload["num_users"], payload["num_items"], payload["embedding_dim"], payload["num_layers"],
                    tuple(payload["layer_weights"]))
        model.load_state_dict(payload["state_dict"])
        return model


def principal_axes(user: torch.Tensor, item: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(axes [d, d], importance [d]): eigenvectors of the embeddings' second moment, users and items
    weighted equally (scores are inner products), columns by decreasing eigenvalue.

    The axes are orthonormal, so rotating both sides onto them changes no score; keeping the first k
    keeps the k directions that carry the most score mass (distill init, structured pruning).
    """
    moment = (user.T @ user / max(len(user), 1) + item.T @ item / max(len(item), 1)).double()
    values, vectors = torch.linalg.eigh(moment)  # ascending
    return vectors.flip(1).to(user.dtype), values.flip(0).to(user.dtype)


def project_ego(model: "LightGCN", basis: torch.Tensor, num_layers: int | None = None) -> "LightGCN":
    """A LightGCN of width basis.shape[1] with ego embeddings model_ego @ basis. Propagation is
    linear, so its final embeddings are model_final @ basis (same layers and weights)."""
    layers = model.num_layers if num_layers is None else num_layers
    weights = model.layer_weights if layers == model.num_layers else None
    out = LightGCN(model.num_users, model.num_items, basis.shape[1], layers, weights)
    with torch.no_grad():
        out.user_embedding.weight.copy_(model.user_embedding.weight @ basis)
        out.item_embedding.weight.copy_(model.item_embedding.weight @ basis)
    return out


def count_parameters(model: nn.Module, nonzero: bool = False) -> int:
    if nonzero:
        return int(sum(int(torch.count_nonzero(p)) for p in model.parameters()))
    return int(sum(p.numel() for p in model.parameters()))
