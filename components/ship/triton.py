"""Serving refresh on Triton in explicit model-control mode: publish the champion as a new numbered
version of ``graphdistill_python`` (the Python backend running its ONNX graph with ONNX Runtime),
ask Triton to ``load`` it, wait until that version answers, and check it against the graph itself.

A version folder is staged beside the model and renamed into place, so Triton never reads half of
one. Triton swaps to the new version only once it is ready; a failed load leaves the previous
version serving (TritonError names what Triton said) and the caller alerts.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import string
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.core.config import REPO_ROOT
from components.core.catalog import Layout, atomic_write_bytes, read_json, write_json

log = logging.getLogger(__name__)

PYTHON_MODEL = "graphdistill_python"
TEMPLATE = REPO_ROOT / "deploy" / "triton" / PYTHON_MODEL
KEEP_VERSIONS = 2  # the serving version and the one before it (what a rollback loads back)


def render_triton_config(template: Path, name: str, top_k: int, batch_sizes: list[int]) -> str:
    preferred = sorted({b for b in batch_sizes if b > 1}) or [1]
    return string.Template(template.read_text()).substitute(
        name=name,
        max_batch_size=max(batch_sizes),
        top_k=top_k,
        preferred_batch_sizes=", ".join(str(b) for b in preferred),
    )


def triton_repository(layout: Layout, configured: str) -> Path:
    """Where the serving refresh writes Triton's model repository (``ops.triton_repository``; a relative
    path is under the artifact root)."""
    target = Path(configured)
    return target if target.is_absolute() else layout.root / target


class TritonError(RuntimeError):
    """Triton refused or failed a repository or inference call: names the URL, model and Triton's message."""


@dataclass(frozen=True)
class Refresh:
    model: str
    triton_version: int
    champion_version: str
    checked_users: int


def _call(url: str, body: dict | None = None, timeout: float = 120.0) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        raise TritonError(f"{url}: HTTP {exc.code}: {exc.read().decode(errors='replace')[:500]}") from exc
    return json.loads(raw) if raw else {}


def publish_version(repository: Path, onnx_file: Path, top_k: int, batch_sizes: list[int], label: str) -> int:
    """Write ``onnx_file`` as the next version <repository>/graphdistill_python/<n>/; returns n."""
    model_dir = Path(repository) / PYTHON_MODEL
    model_dir.mkdir(parents=True, exist_ok=True)
    n = max((int(p.name) for p in model_dir.iterdir() if p.name.isdigit()), default=0) + 1
    staging = Path(repository) / f".staging-{PYTHON_MODEL}-{n}"  # outside the model: Triton never lists it
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copy2(onnx_file, staging / "model.onnx")
    shutil.copy2(TEMPLATE / "model.py", staging / "model.py")
    write_json(staging / "graphdistill_version.json", {"version": label})
    atomic_write_bytes(model_dir / "config.pbtxt",
                       render_triton_config(TEMPLATE / "config.pbtxt", PYTHON_MODEL, top_k, batch_sizes).encode())
    os.rename(staging, model_dir / str(n))
    return n


def load(url: str, model: str = PYTHON_MODEL) -> None:
    """Triton's repository API: (re)load ``model``; returns once Triton has it ready or raises TritonError."""
    _call(f"{url}/v2/repository/models/{model}/load", {})


def infer(url: str, user_idx: list[int], model: str = PYTHON_MODEL) -> tuple[np.ndarray, np.ndarray, str]:
    """Top items and scores for ``user_idx`` and the Triton version that answered."""
    got = _call(f"{url}/v2/models/{model}/infer", {"inputs": [
        {"name": "user_idx", "shape": [len(user_idx), 1], "datatype": "INT64", "data": list(map(int, user_idx))}]},
        timeout=30)
    out = {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in got["outputs"]}
    return out["top_items"], out["top_scores"], str(got.get("model_version", ""))


def served_label(repository: Path, triton_version: str, model: str = PYTHON_MODEL) -> str | None:
    """The champion version a Triton model version was published for (its graphdistill_version.json)."""
    record = Path(repository) / model / str(triton_version) / "graphdistill_version.json"
    return read_json(record)["version"] if record.exists() else None


class TritonRunner:
    """The engine interface of components.ship.serving.Recommender answered by Triton: every answer is
    checked to come from a Triton version published for ``champion_version``, so string ids are never
    mapped through another version's index (a Triton that has not refreshed yet is an error, not a guess)."""

    name = "triton"

    def __init__(self, url: str, repository: Path, champion_version: str, model: str = PYTHON_MODEL) -> None:
        self.url, self.repository, self.champion_version, self.model = url.rstrip("/"), Path(repository), \
            champion_version, model
        self.description = f"Triton {self.url} ({model})"

    def run(self, user_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        try:
            items, scores, served = infer(self.url, [int(u) for u in user_idx], self.model)
        except urllib.error.URLError as exc:
            raise TritonError(f"{self.url}: Triton not reachable ({exc.reason}); is it running?") from exc
        label = served_label(self.repository, served, self.model)
        if label != self.champion_version:
            raise TritonError(f"{self.url}: {self.model} version {served} serves "
                              f"{label or 'an unknown model'} (repository {self.repository}), the champion is "
                              f"{self.champion_version}: run the serving refresh (champion_serving_refresh)")
        return items.astype(np.int64), scores.astype(np.float32)


def refresh(url: str, repository: Path, onnx_file: Path, top_k: int, batch_sizes: list[int], label: str,
            probe_users: list[int], ready_timeout_s: float = 60.0) -> Refresh:
    """Publish, load, wait until the new version answers, and check its top-K for ``probe_users``
    against the same graph run here with ONNX Runtime. Raises TritonError (the previous version
    keeps serving) when any step fails."""
    n = publish_version(repository, onnx_file, top_k, batch_sizes, label)
    try:
        _load_and_check(url, n, onnx_file, label, probe_users, ready_timeout_s)
    except (TritonError, OSError) as exc:
        # Take the new version off disk and load again: Triton serves (or goes back to) the previous one,
        # and a restarted Triton does not pick the broken version up.
        shutil.rmtree(Path(repository) / PYTHON_MODEL / str(n), ignore_errors=True)
        try:
            load(url)
        except TritonError as again:
            log.error("triton %s: reloading the previous version after a failed refresh failed too: %s", url, again)
        raise TritonError(f"refresh to {label} (version {n}) failed, previous version kept: {exc}") from exc
    model_dir = Path(repository) / PYTHON_MODEL
    for old in sorted((int(p.name) for p in model_dir.iterdir() if p.name.isdigit()))[:-KEEP_VERSIONS]:
        shutil.rmtree(model_dir / str(old))
    log.info("triton %s: %s version %d serves champion %s (checked %d users against the graph)", url, PYTHON_MODEL,
             n, label, len(probe_users))
    return Refresh(PYTHON_MODEL, n, label, len(probe_users))


def _load_and_check(url: str, n: int, onnx_file: Path, label: str, probe_users: list[int],
                    ready_timeout_s: float) -> None:
    import onnxruntime as ort

    load(url)
    deadline = time.monotonic() + ready_timeout_s
    while True:
        items, _, served = infer(url, probe_users)
        if served == str(n):
            break
        if time.monotonic() > deadline:
            raise TritonError(f"{url}: {PYTHON_MODEL} still answers with version {served} {ready_timeout_s:.0f} s "
                              f"after loading version {n} ({label})")
        time.sleep(0.5)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    expected = session.run(["top_items"], {session.get_inputs()[0].name: np.asarray(probe_users, dtype=np.int64)})[0]
    if not np.array_equal(items, expected):
        raise TritonError(f"{url}: {PYTHON_MODEL} version {n} ({label}) answers {items.tolist()[:2]}... for users "
                          f"{probe_users[:2]}..., the graph gives {expected.tolist()[:2]}...")


def refresh_champion(url: str, repository: Path, version_dir: Path, label: str, probe_users: int = 8) -> Refresh:
    """``refresh`` for a registered champion's version folder (model.onnx, serving.json)."""
    serving = read_json(Path(version_dir) / "serving.json")
    batch_sizes = [int(b) for b in serving.get("batch_sizes", [serving.get("max_batch", 64)])]
    users = list(range(min(probe_users, int(serving.get("num_users", probe_users)))))
    return refresh(url, repository, Path(version_dir) / "model.onnx", int(serving["top_k"]), batch_sizes, label, users)
