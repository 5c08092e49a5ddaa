"""Triton in explicit model-control mode swaps the champion without downtime: a client sends requests
through a reload and none fails, the answers switch to the new version and never back; a model that
cannot load leaves the previous version serving."""

from __future__ import annotations

import threading
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from components.ship.triton import PYTHON_MODEL, TritonError, infer, refresh

pytestmark = pytest.mark.stack

NUM_USERS, TOP_K = 50, 5
MIN_REQUESTS = 200


def _graph(path, item_offset: int):
    """A serving graph with the champion's signature: user_idx [batch] -> top_items, top_scores [batch, K];
    each user's items are user + offset + rank, so the answering version shows in every answer."""
    items = (np.arange(NUM_USERS)[:, None] + item_offset + np.arange(TOP_K)[None, :]).astype(np.int64)
    scores = np.tile(np.linspace(1.0, 0.5, TOP_K, dtype=np.float32), (NUM_USERS, 1))
    graph = helper.make_graph(
        [helper.make_node("Gather", ["items", "user_idx"], ["top_items"], axis=0),
         helper.make_node("Gather", ["scores", "user_idx"], ["top_scores"], axis=0)],
        "serving", [helper.make_tensor_value_info("user_idx", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("top_items", TensorProto.INT64, ["batch", TOP_K]),
         helper.make_tensor_value_info("top_scores", TensorProto.FLOAT, ["batch", TOP_K])],
        [numpy_helper.from_array(items, "items"), numpy_helper.from_array(scores, "scores")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_reload_under_load_has_zero_failures_and_switches_version(triton, tmp_path):
    url, repo = triton.triton_url, triton.triton_repository
    first = refresh(url, repo, _graph(tmp_path / "a.onnx", 1000), TOP_K, [1, 8], "champion-a", [0, 1, 2])
    answers, failures, stop = [], [], threading.Event()

    def client() -> None:
        i = 0
        while not stop.is_set() or len(answers) + len(failures) < MIN_REQUESTS:
            user = i % NUM_USERS
            try:
                items, _, version = infer(url, [user])
                answers.append((time.monotonic(), version, int(items[0, 0]) - user))
            except Exception as exc:  # noqa: BLE001 - every failure is recorded and fails the test
                failures.append(repr(exc))
            i += 1
            if i > 5000:  # bounded: never an endless loop against the server
                break

    thread = threading.Thread(target=client)
    thread.start()
    time.sleep(1.0)  # requests before the reload
    second = refresh(url, repo, _graph(tmp_path / "b.onnx", 2000), TOP_K, [1, 8], "champion-b", [0, 1, 2])
    time.sleep(1.0)  # and after it
    stop.set()
    thread.join(timeout=120)
    assert failures == []
    assert len(answers) >= MIN_REQUESTS
    offsets = [offset for _, _, offset in answers]
    assert offsets[0] == 1000 and offsets[-1] == 2000
    switch = offsets.index(2000)
    assert set(offsets[:switch]) == {1000} and set(offsets[switch:]) == {2000}  # switched once, never back
    assert {v for _, v, o in answers if o == 2000} == {str(second.triton_version)}
    assert second.triton_version == first.triton_version + 1
    print({"requests": len(answers), "failures": len(failures), "switched_at": switch})


def test_a_model_that_cannot_load_leaves_the_previous_version_serving(triton, tmp_path):
    url, repo = triton.triton_url, triton.triton_repository
    good = refresh(url, repo, _graph(tmp_path / "good.onnx", 3000), TOP_K, [1, 8], "champion-good", [0, 1])
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx graph")
    with pytest.raises(TritonError, match=f"refresh to champion-broken .* failed, previous version kept: .*"
                                          f"{PYTHON_MODEL}/load: HTTP 400"):
        refresh(url, repo, broken, TOP_K, [1, 8], "champion-broken", [0, 1])
    items, _, version = infer(url, [4])
    assert version == str(good.triton_version) and int(items[0, 0]) == 3004
    # The broken version is off disk: a restarted Triton loads the good one.
    assert max(int(p.name) for p in (repo / PYTHON_MODEL).iterdir() if p.name.isdigit()) == good.triton_version
