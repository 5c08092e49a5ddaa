"""Engine: runtime selection says what serves and why; ORT fallback measured; TensorRT where present."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from components.core.config import EngineConfig
from components.ship.convert import (
    OnnxRuntimeRunner,
    choose_runtime,
    load_engine_result,
    measure_latency,
    run_convert,
    tensorrt_available,
)
from components.model.models.serving_graph import ServingGraph
from components.ship.export import export_onnx, parity, torch_outputs
from components.core.catalog import Layout

from tests.unit.data_fixtures import current_inputs
from tests.unit.ship_fixtures import make_world, random_embeddings, run_ship_day, tiny_config

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here; this checks the reason given without it")
def test_tensorrt_unavailable_reason_names_the_missing_module():
    ok, reason = tensorrt_available()
    assert not ok
    assert reason == "TensorRT unavailable: No module named 'tensorrt'"


@pytest.mark.skipif(tensorrt_available()[0], reason="TensorRT usable here: fallback path not reachable")
def test_runtime_selection_without_tensorrt():
    auto = choose_runtime(EngineConfig(runtime="auto"))
    assert auto.runtime == "onnxruntime"
    assert auto.tensorrt_status.startswith("skipped: TensorRT unavailable") or "CUDA" in auto.tensorrt_status
    forced = choose_runtime(EngineConfig(runtime="onnxruntime"))
    assert (forced.runtime, forced.tensorrt_status) == ("onnxruntime", "skipped: engine.runtime=onnxruntime requested")
    with pytest.raises(RuntimeError, match="engine.runtime is 'tensorrt' but TensorRT"):
        choose_runtime(EngineConfig(runtime="tensorrt"))


def test_measure_latency_reports_each_batch_size(tmp_path):
    user, item = random_embeddings(30, 40, seed=1)
    export_onnx(ServingGraph(user, item, top_k=5), tmp_path / "m.onnx", opset=17)
    runner = OnnxRuntimeRunner(tmp_path / "m.onnx", threads=1)
    assert runner.provider == "CPUExecutionProvider"
    latency = measure_latency(runner, 30, (1, 8, 32), repeats=5, seed=0)
    assert sorted(latency, key=int) == ["1", "8", "32"]
    for stats in latency.values():
        assert 0 < stats["p50_ms"] <= stats["p99_ms"] < 1000
        assert stats["repeats"] == 5


def test_run_convert_falls_back_to_onnxruntime_and_records_why(tmp_path, caplog):
    layout = Layout.at(tmp_path)
    cfg = tiny_config(tmp_path, **{"engine.runtime": "auto"})
    run_ship_day(layout, "2024-01-08", cfg, make_world(), gate=False)
    result = load_engine_result(layout.current("engines", "2024-01-08"))
    usable, why = tensorrt_available()
    if usable:
        pytest.skip("TensorRT usable here; the TensorRT test covers this machine")
    assert result.runtime == "onnxruntime"
    assert result.tensorrt_status == f"skipped: {why}"
    assert result.runtime_description.endswith("(CPUExecutionProvider)")
    assert result.engine_path.endswith("model.onnx") and result.engine_bytes > 0
    assert result.parity_max_abs_diff <= 1e-5 and result.parity_topk_overlap == 1.0
    assert set(result.latency_ms) == {"1", "4", "16"} and result.largest_batch == 16
    assert result.latency_p99_ms == result.latency_ms["16"]["p99_ms"]
    # re-run: same export and config -> the measured result is reused, not re-measured
    with caplog.at_level("INFO", logger="components.ship.convert"):
        again = run_convert(layout, "2024-01-08", cfg, **current_inputs(layout, "convert", "2024-01-08"))
    assert again == result
    assert "already measured" in caplog.text
    # Measured afresh (export and engine removed), both land on the same versions: the latencies
    # and build seconds live in timings.json, outside the content hash.
    import shutil

    from components.ship.export import run_export
    from components.core.catalog import read_json

    export_version = layout.current("exports", "2024-01-08").version
    shutil.rmtree(layout.artifacts("exports"))
    shutil.rmtree(layout.artifacts("engines"))
    assert run_export(layout, "2024-01-08", cfg, **current_inputs(layout, "export", "2024-01-08")).version == export_version
    remeasured = run_convert(layout, "2024-01-08", cfg, **current_inputs(layout, "convert", "2024-01-08"))
    assert remeasured.version == result.version and set(remeasured.latency_ms) == {"1", "4", "16"}
    assert "latency_ms" not in read_json(f"{remeasured.path}/engine.json")


needs_trt = pytest.mark.skipif(not tensorrt_available()[0], reason=f"needs TensorRT + CUDA: {tensorrt_available()[1]}")


@pytest.mark.tensorrt
@needs_trt
def test_tensorrt_engine_matches_pytorch_across_batch_sizes(tmp_path):
    trt = pytest.importorskip("tensorrt")
    from components.ship.convert import TensorRTRunner, build_tensorrt_engine

    user, item = random_embeddings(64, 200, dim=16, seed=2)
    module = ServingGraph(user, item, top_k=10)
    export_onnx(module, tmp_path / "m.onnx", opset=17)
    facts = build_tensorrt_engine(tmp_path / "m.onnx", tmp_path / "m.plan", EngineConfig(fp16=False), (1, 8, 32))
    assert facts["tensorrt_version"] == trt.__version__ and facts["profile"] == {"min": 1, "opt": 8, "max": 32}
    runner = TensorRTRunner(tmp_path / "m.plan")
    for batch in (1, 5, 32):
        users = np.arange(batch, dtype=np.int64)
        ref_items, ref_scores = torch_outputs(module, users)
        items, scores = runner.run(users)
        max_abs_diff, overlap = parity(ref_items, ref_scores, items, scores)
        assert max_abs_diff <= 1e-4 and overlap == 1.0


@pytest.mark.tensorrt
@needs_trt
def test_run_convert_builds_tensorrt_when_available(tmp_path):
    layout = Layout.at(tmp_path)
    cfg = tiny_config(tmp_path, **{"engine.runtime": "tensorrt"})
    run_ship_day(layout, "2024-01-08", cfg, make_world(), gate=False)
    result = load_engine_result(layout.current("engines", "2024-01-08"))
    assert result.runtime == "tensorrt" and result.tensorrt_status == "built"
    assert result.engine_path.endswith("model.plan")
    assert result.parity_topk_overlap >= 0.95 and result.parity_max_abs_diff <= 0.01
