"""Quantized embedding tables: per-row symmetric int8 and fp16, in the ONNX serving graph and the
export stage's precision-aware check."""

from __future__ import annotations

import numpy as np
import pytest

from components.model.models.serving_graph import ServingGraph
from components.ship.export import (
    INPUT_NAME,
    OUTPUT_NAMES,
    QuantizationError,
    quantization_parity,
    export_onnx,
    onnxruntime_session,
    run_export,
    torch_outputs,
)
from components.model.models.quantize import dequantize, quantize_rows, table_bytes
from components.core.catalog import Layout
from tests.unit.data_fixtures import current_inputs
from tests.unit.ship_fixtures import cluster_embeddings, make_graph, make_model, make_world, random_embeddings, tiny_config


def test_int8_rows_are_symmetric_per_row_and_within_half_a_step():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(50, 8)).astype(np.float32) * rng.uniform(0.01, 100, size=(50, 1)).astype(np.float32)
    table[3] = 0.0
    q = quantize_rows(table, "int8")
    assert q.values.dtype == np.int8 and q.scale.shape == (50, 1)
    assert np.abs(q.values).max() == 127  # each nonzero row's peak maps to +-127
    assert np.all(np.abs(q.values[3]) == 0) and q.scale[3, 0] == 1.0
    error = np.abs(dequantize(q).numpy() - table)
    assert np.all(error <= q.scale / 2 + 1e-6 * np.abs(table))  # rounding: at most half a step per row
    assert table_bytes(q) == 50 * 8 + 50 * 4
    half = quantize_rows(table, "fp16")
    assert half.values.dtype == np.float16 and table_bytes(half) == 50 * 8 * 2
    with pytest.raises(ValueError, match="overflow fp16"):
        quantize_rows(np.full((1, 2), 1e6, np.float32), "fp16")


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_quantized_onnx_graph_matches_its_pytorch_reference(tmp_path, precision):
    user, item = random_embeddings(40, 300, seed=5)
    module = ServingGraph(user, item, top_k=10, precision=precision)
    export_onnx(module, tmp_path / "m.onnx", 17)
    users = np.arange(40, dtype=np.int64)
    ref_items, ref_scores = torch_outputs(module, users)
    items, scores = onnxruntime_session(tmp_path / "m.onnx", threads=1).run(list(OUTPUT_NAMES), {INPUT_NAME: users})
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    np.testing.assert_array_equal(items, ref_items)
    # scores are those of the dequantized tables, close to but not the fp32 ones
    fp32_scores = torch_outputs(ServingGraph(user, item, top_k=10), users)[1]
    assert 0 < np.abs(ref_scores - fp32_scores).max() < 0.05 * np.abs(fp32_scores).max()
    fp32_bytes = (user.size + item.size) * 4
    assert module.table_bytes == (fp32_bytes // 2 if precision == "fp16" else (user.size + item.size) + (40 + 300) * 4)
    assert (tmp_path / "m.onnx").stat().st_size < 0.6 * fp32_bytes + 20_000


def test_export_records_precision_and_fails_when_quantization_reorders_the_top_k(tmp_path):
    layout = Layout.at(tmp_path)
    world = make_world()
    graph = make_graph(layout, "2024-01-08", world)
    make_model(layout, "pruned", "2024-01-08", *cluster_embeddings(world), graph, precision="int8")
    result = run_export(layout, "2024-01-08", tiny_config(tmp_path), **current_inputs(layout, "export", "2024-01-08"))  # the precision the model's ladder chose
    assert result.precision == "int8" and result.quantization_topk_overlap >= 0.95
    assert result.table_bytes < 0.5 * result.fp32_table_bytes
    assert result.parity_max_abs_diff <= 1e-5  # ORT vs the int8 PyTorch graph: like with like



def test_quantization_parity_knows_the_precision_and_fails_below_its_floor():
    # near-tie: fp32 ranks item 0 first (1.0 > 0.9989), int8 rounding lifts item 1 (0.4985 -> 0.5004)
    user = np.array([[1.0, 1.0]], np.float32)
    item = np.array([[1.0, 0.0], [0.5004, 0.4985]], np.float32)
    fp32, int8 = ServingGraph(user, item, 1), ServingGraph(user, item, 1, precision="int8")
    users = np.array([0])
    assert torch_outputs(fp32, users)[0][0, 0] == 0 and torch_outputs(int8, users)[0][0, 0] == 1
    floors = {"fp32": 1.0, "fp16": 0.99, "int8": 0.95}
    with pytest.raises(QuantizationError, match=r"min_topk_overlap_vs_fp32\[int8\] = 0.95"):
        quantization_parity(int8, fp32, users, floors)
    diff, overlap = quantization_parity(int8, fp32, users, {**floors, "int8": 0.0})
    assert overlap == 0.0 and diff == pytest.approx(0.0008, abs=2e-4)
    assert quantization_parity(fp32, fp32, users, floors) == (0.0, 1.0)


def test_parity_counts_a_different_pick_among_items_tied_at_the_cut_as_shared():
    from components.ship.export import parity

    ref_items = np.array([[0, 1, 2]])
    ref_scores = np.array([[3.0, 2.0, 1.0]], np.float32)  # items 2 and 7 both score 1.0
    assert parity(ref_items, ref_scores, np.array([[0, 1, 7]]), ref_scores)[1] == 1.0
    # a different item with a lower score is a real miss
    assert parity(ref_items, ref_scores, np.array([[0, 1, 7]]), np.array([[3.0, 2.0, 0.9]], np.float32))[1] == \
        pytest.approx(2 / 3)
