"""Serving: recommendations from the registry's champion, and a Triton model repository export.

``Recommender.load(registry_root or layout)`` opens the champion's complete version directory:
the TensorRT plan when one was built and TensorRT + CUDA are here, the ONNX model on ONNX Runtime
otherwise. ``recommend(user_ids, k)`` maps string IDs through the version's ID maps; users the
model cannot serve (unknown, or known but without any training interaction, so their embedding
was never trained) get the champion's popularity ranking (computed from its training data and
stored in the version).
"""

from __future__ import annotations

import logging
import shutil
import string
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import REPO_ROOT
from components.registry import champion_in
from components.storage import Layout, atomic_write_bytes, read_json, write_json

log = logging.getLogger(__name__)

TRITON_TEMPLATES = REPO_ROOT / "deploy" / "triton"
TRITON_MODELS = {"tensorrt": ("graphdistill_trt", "model.plan"), "onnxruntime": ("graphdistill_onnx", "model.onnx")}


def _registry_root(source: str | Path | Layout) -> Path:
    if isinstance(source, Layout):
        return source.registry()
    root = Path(source)
    # Accept the registry folder itself or a pipeline root holding registry/.
    return root if (root / "champion.json").exists() or root.name == "registry" else root / "registry"


class Recommender:
    """The champion model behind a string-ID interface."""

    def __init__(self, version_dir: Path, runtime: str = "auto") -> None:
        from components.engine import OnnxRuntimeRunner, TensorRTRunner, tensorrt_available

        self.version_dir = Path(version_dir)
        manifest = read_json(self.version_dir / "manifest.json")
        self.version = manifest["version"]
        serving = read_json(self.version_dir / "serving.json")
        self.top_k = int(serving["top_k"])
        self.max_batch = int(serving.get("max_batch", 1024))
        users = pd.read_parquet(self.version_dir / "users.parquet")
        items = pd.read_parquet(self.version_dir / "items.parquet")
        self._user_index = pd.Index(users["user_id"].astype(str).to_numpy())
        self._user_idx = users["idx"].to_numpy(np.int64)
        self._item_ids = np.empty(len(items), dtype=object)
        self._item_ids[items["idx"].to_numpy(np.int64)] = items["item_id"].astype(str).to_numpy()
        with np.load(self.version_dir / "seen.npz") as seen:
            self._has_history = np.diff(seen["indptr"]) > 0
        popularity = np.load(self.version_dir / "popularity.npy")
        # Padded to top_k (-1 / -inf) so fallback and model rows share one shape.
        popular = np.argsort(-popularity, kind="stable")[: self.top_k]
        self._popular = np.full(self.top_k, -1, dtype=np.int64)
        self._popular_scores = np.full(self.top_k, -np.inf, dtype=np.float32)
        self._popular[: popular.size] = popular
        self._popular_scores[: popular.size] = popularity[popular]

        plan = self.version_dir / "model.plan"
        usable, why = tensorrt_available()
        if runtime == "tensorrt" and not (plan.exists() and usable):
            raise RuntimeError(f"{self.version}: TensorRT serving requested but "
                               f"{'no model.plan in the version' if not plan.exists() else why}")
        if runtime in ("auto", "tensorrt") and plan.exists() and usable:
            self.runner = TensorRTRunner(plan)
        else:
            self.runner = OnnxRuntimeRunner(self.version_dir / "model.onnx")
        log.info("serving champion %s on %s (%d users, %d items, top-%d)", self.version,
                 self.runner.description, len(self._user_index), len(self._item_ids), self.top_k)

    @classmethod
    def load(cls, source: str | Path | Layout, runtime: str = "auto") -> "Recommender":
        registry_root = _registry_root(source)
        champ = champion_in(registry_root)
        if champ is None:
            raise LookupError(f"no champion in registry {registry_root} (nothing promoted yet)")
        return cls(Path(champ.path), runtime)

    def recommend(self, user_ids: list[str], k: int) -> list[list[tuple[str, float]]]:
        """Top-``k`` (item_id, score) per user, seen items excluded; popularity for users the model
        cannot serve. Entries the model excluded (score -inf, tiny catalogues) are dropped."""
        if not 1 <= k <= self.top_k:
            raise ValueError(f"k must be in [1, {self.top_k}] (the exported top-K), got {k}")
        position = self._user_index.get_indexer(pd.Index([str(u) for u in user_ids]))
        known = position >= 0
        idx = np.where(known, self._user_idx[np.maximum(position, 0)], -1)
        served = known & self._has_history[np.clip(idx, 0, None)]
        items = np.tile(self._popular[:k], (len(user_ids), 1))
        scores = np.tile(self._popular_scores[:k], (len(user_ids), 1))
        rows = np.flatnonzero(served)
        for start in range(0, rows.size, self.max_batch):
            chunk = rows[start : start + self.max_batch]
            top_items, top_scores = self.runner.run(idx[chunk])
            width = min(k, top_items.shape[1])  # the export clamps K to the catalogue size
            items[chunk, :width], scores[chunk, :width] = top_items[:, :width], top_scores[:, :width]
            items[chunk, width:], scores[chunk, width:] = -1, -np.inf
        valid = np.isfinite(scores) & (items >= 0)
        names = self._item_ids[np.clip(items, 0, None)]
        return [
            [(str(n), float(s)) for n, s in zip(names[r][valid[r]], scores[r][valid[r]])]
            for r in range(len(user_ids))
        ]

    def fallback_mask(self, user_ids: list[str]) -> np.ndarray:
        """True where ``recommend`` answers with popularity (unknown or history-less users)."""
        position = self._user_index.get_indexer(pd.Index([str(u) for u in user_ids]))
        idx = self._user_idx[np.maximum(position, 0)]
        return ~((position >= 0) & self._has_history[idx])


def cold_user_scorer(version_popularity: np.ndarray, num_items: int):
    """How serving answers a user the model has no trained embedding for, as an evaluation scorer
    over ``num_items`` items: today the version's popularity ranking (what ``recommend`` returns
    for such users). The gates evaluate cold users through this one function."""
    from components.evaluate import ranking_scorer

    return ranking_scorer(version_popularity, num_items)


# --- Triton ---------------------------------------------------------------------------------


def render_triton_config(template: Path, name: str, top_k: int, batch_sizes: list[int]) -> str:
    preferred = sorted({b for b in batch_sizes if b > 1}) or [1]
    return string.Template(template.read_text()).substitute(
        name=name,
        max_batch_size=max(batch_sizes),
        top_k=top_k,
        preferred_batch_sizes=", ".join(str(b) for b in preferred),
    )


def export_triton_repository(source: str | Path | Layout, out_dir: str | Path) -> list[Path]:
    """Write a Triton model repository for the champion: <out>/<model>/1/model.{plan,onnx} and
    <out>/<model>/config.pbtxt from deploy/triton templates. The ONNX model is always written;
    the TensorRT model only when the champion has a built plan. Returns the model folders."""
    registry_root = _registry_root(source)
    champ = champion_in(registry_root)
    if champ is None:
        raise LookupError(f"no champion in registry {registry_root}: nothing to export to Triton")
    version_dir = Path(champ.path)
    serving = read_json(version_dir / "serving.json")
    batch_sizes = [int(b) for b in serving.get("batch_sizes", [serving.get("max_batch", 64)])]
    out = Path(out_dir)
    written = []
    for runtime, (model_name, file_name) in TRITON_MODELS.items():
        src = version_dir / file_name
        model_dir = out / model_name
        if model_dir.exists():  # never leave a previous champion's model for Triton to serve
            shutil.rmtree(model_dir)
        if not src.exists():
            continue
        (model_dir / "1").mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, model_dir / "1" / file_name)
        config = render_triton_config(TRITON_TEMPLATES / model_name / "config.pbtxt", model_name,
                                      int(serving["top_k"]), batch_sizes)
        atomic_write_bytes(model_dir / "config.pbtxt", config.encode())
        written.append(model_dir)
    write_json(out / "graphdistill_version.json", {"version": champ.version, "models": [p.name for p in written]})
    log.info("triton repository %s: champion %s as %s", out, champ.version, ", ".join(p.name for p in written))
    return written
