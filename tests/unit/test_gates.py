"""Gates: each kind's verdict, bootstrap, failures, and the evaluation's champion-prefix rule."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from components.config import GateSpec, GatesConfig, load_gates
from components.engine import EngineResult
from components.gates import BOOTSTRAP_NOTE, Blessing, EvaluationResult, judge, prefix_scorer, run_evaluate
from components.storage import Layout, write_json

from tests.unit.ship_fixtures import make_world, random_embeddings, run_ship_day, tiny_config, write_gates


def _evaluation(candidate, champion=None, teacher=None, popularity=None):
    return EvaluationResult(
        day="2024-01-08", path="", graph_version="g", candidate_version="c", teacher_version="t",
        champion_version="v1" if champion else None, candidate=candidate, teacher=teacher,
        champion=champion, popularity=popularity or {"ndcg@20": 0.1, "recall@20": 0.2},
        holdout_users=10, holdout_pairs=30, users_unknown_to_a_model=0, pairs_unknown_to_a_model=0,
        users_evaluated=10, cold_users_skipped=0, known_users_bound=10,
    )


ENGINE = EngineResult(
    day="2024-01-08", version="e", path="", runtime="onnxruntime", runtime_reason="test",
    runtime_description="ONNX Runtime (CPUExecutionProvider)", tensorrt_status="skipped: test",
    engine_path="m.onnx", engine_bytes=5000, parity_users=10, parity_max_abs_diff=2e-6,
    parity_topk_overlap=1.0,
    latency_ms={"1": {"p50_ms": 0.1, "p99_ms": 0.2}, "64": {"p50_ms": 1.0, "p99_ms": 3.0}},
)


def _gates(*specs):
    return GatesConfig(gates=tuple(GateSpec(**s) for s in specs))


@pytest.mark.parametrize(
    "spec, candidate, baseline_metrics, statistic, verdict",
    [
        ({"metric": "ndcg@20", "kind": "min", "threshold": 0.2}, 0.25, None, 0.25, "pass"),
        ({"metric": "ndcg@20", "kind": "min", "threshold": 0.3}, 0.25, None, 0.25, "fail"),
        ({"metric": "ndcg@20", "kind": "max", "threshold": 0.3}, 0.25, None, 0.25, "pass"),
        ({"metric": "ndcg@20", "kind": "min_ratio_to", "baseline": "teacher", "threshold": 0.8}, 0.25, 0.30,
         0.25 / 0.30, "pass"),
        ({"metric": "ndcg@20", "kind": "min_ratio_to", "baseline": "teacher", "threshold": 0.9}, 0.25, 0.30,
         0.25 / 0.30, "fail"),
        ({"metric": "ndcg@20", "kind": "max_regression_vs", "baseline": "champion", "threshold": 0.05}, 0.24,
         0.25, 0.04, "pass"),
        ({"metric": "ndcg@20", "kind": "max_regression_vs", "baseline": "champion", "threshold": 0.05}, 0.23,
         0.25, 0.08, "fail"),
        ({"metric": "ndcg@20", "kind": "min_lift_over", "baseline": "popularity", "threshold": 0.05}, 0.25,
         0.20, 0.25, "pass"),
        ({"metric": "ndcg@20", "kind": "min_lift_over", "baseline": "popularity", "threshold": 0.05}, 0.20,
         0.20, 0.0, "fail"),
    ],
)
def test_each_gate_kind(spec, candidate, baseline_metrics, statistic, verdict):
    base = {"ndcg@20": baseline_metrics} if baseline_metrics is not None else None
    evaluation = _evaluation(
        {"ndcg@20": candidate},
        champion=base if spec.get("baseline") == "champion" else {"ndcg@20": 1.0},
        teacher=base if spec.get("baseline") == "teacher" else None,
        popularity=base if spec.get("baseline") == "popularity" else {"ndcg@20": 0.0},
    )
    blessing = judge(evaluation, ENGINE, _gates(spec), has_champion=True)
    (gate,) = blessing.gates
    assert gate.statistic == pytest.approx(statistic)
    assert gate.verdict == verdict
    assert gate.value == candidate and gate.threshold == spec["threshold"]
    assert gate.baseline_value == baseline_metrics
    assert blessing.blessed is (verdict == "pass")


def test_engine_gates_use_engine_measurements_at_the_largest_batch():
    gates = _gates(
        {"metric": "parity_max_abs_diff", "kind": "max", "threshold": 1e-5},
        {"metric": "parity_topk_overlap", "kind": "min", "threshold": 0.95},
        {"metric": "latency_p99_ms", "kind": "max", "threshold": 2.5},
        {"metric": "engine_bytes", "kind": "max", "threshold": 10_000},
    )
    blessing = judge(_evaluation({"ndcg@20": 0.3}), ENGINE, gates, has_champion=False)
    verdicts = {g.metric: (g.value, g.verdict) for g in blessing.gates}
    assert verdicts == {
        "parity_max_abs_diff": (2e-6, "pass"),
        "parity_topk_overlap": (1.0, "pass"),
        "latency_p99_ms": (3.0, "fail"),  # batch 64's p99, not batch 1's 0.2
        "engine_bytes": (5000.0, "pass"),
    }
    assert not blessing.blessed and blessing.failed == ("latency_p99_ms max",)
    assert blessing.runtime == "onnxruntime"
    assert all("onnxruntime" in g.measured_by for g in blessing.gates)
    assert "batch 64" in blessing.gates[2].measured_by


def test_missing_engine_result_fails_engine_gates_never_passes_them():
    gates = _gates({"metric": "parity_topk_overlap", "kind": "min", "threshold": 0.95})
    blessing = judge(_evaluation({"ndcg@20": 0.3}), None, gates, has_champion=False)
    assert blessing.gates[0].verdict == "fail" and not blessing.blessed


def test_bootstrap_skips_champion_gates_and_applies_the_rest():
    gates = load_gates()  # the shipped config/gates.yaml
    evaluation = _evaluation({"ndcg@20": 0.30, "recall@20": 0.40}, teacher={"ndcg@20": 0.32, "recall@20": 0.41},
                             popularity={"ndcg@20": 0.10, "recall@20": 0.15})
    blessing = judge(evaluation, ENGINE, gates, has_champion=False, data_metrics={"validation_warnings": 0})
    skipped = [g for g in blessing.gates if g.verdict == "skipped"]
    assert skipped and all(g.baseline == "champion" and g.note == BOOTSTRAP_NOTE for g in skipped)
    assert len(skipped) == sum(1 for s in gates.gates if s.baseline == "champion")
    assert all(g.verdict == "pass" for g in blessing.gates if g.baseline != "champion")
    assert blessing.blessed and blessing.bootstrap and blessing.champion_version is None


def test_a_failing_gate_rejects_and_is_named():
    gates = load_gates()
    evaluation = _evaluation({"ndcg@20": 0.20, "recall@20": 0.40}, champion={"ndcg@20": 0.30, "recall@20": 0.40},
                             teacher={"ndcg@20": 0.21}, popularity={"ndcg@20": 0.10, "recall@20": 0.15})
    blessing = judge(evaluation, ENGINE, gates, has_champion=True)
    assert not blessing.blessed
    assert blessing.failed == ("ndcg@20 max_regression_vs champion",)
    failed = next(g for g in blessing.gates if g.verdict == "fail")
    assert failed.statistic == pytest.approx(1 / 3) and failed.baseline_value == 0.30


def test_zero_baseline_and_nan_values():
    gates = _gates({"metric": "ndcg@20", "kind": "min_lift_over", "baseline": "popularity", "threshold": 0.05})
    lifted = judge(_evaluation({"ndcg@20": 0.1}, popularity={"ndcg@20": 0.0}), ENGINE, gates, True)
    assert lifted.gates[0].statistic == math.inf and lifted.blessed
    flat = judge(_evaluation({"ndcg@20": 0.0}, popularity={"ndcg@20": 0.0}), ENGINE, gates, True)
    assert not flat.blessed
    nan = judge(_evaluation({"ndcg@20": float("nan")}), ENGINE,
                _gates({"metric": "ndcg@20", "kind": "min", "threshold": 0.0}), True)
    assert not nan.blessed


def test_unknown_metric_is_a_config_error():
    with pytest.raises(ValueError, match="'ndcg@7' is neither an engine metric"):
        judge(_evaluation({"ndcg@20": 0.1}), ENGINE, _gates({"metric": "ndcg@7", "kind": "min", "threshold": 0}), True)


def test_prefix_scorer_scores_unknown_items_minus_inf():
    user, item = random_embeddings(3, 4, seed=0)
    scores = prefix_scorer(user, item, num_items=6)(torch.tensor([0, 2]))
    assert scores.shape == (2, 6)
    np.testing.assert_allclose(scores[:, :4].numpy(), user[[0, 2]] @ item.T, rtol=1e-6)
    assert torch.isneginf(scores[:, 4:]).all()


def test_run_evaluate_compares_on_users_known_to_every_model(tmp_path):
    layout = Layout.at(tmp_path)
    cfg = tiny_config(tmp_path)
    world = make_world()
    run_ship_day(layout, "2024-01-08", cfg, world, gate=False)
    # A champion trained on an older, smaller ID range: 30 users x 50 items, placed in the registry.
    user, item = random_embeddings(30, 50, seed=9)
    champion_dir = layout.registry() / "versions" / "2024-01-07-old"
    champion_dir.mkdir(parents=True)
    np.savez(champion_dir / "embeddings.npz", user=user, item=item)
    write_json(champion_dir / "manifest.json", {"version": "2024-01-07-old", "status": "blessed"})
    write_json(layout.registry() / "champion.json", {"version": "2024-01-07-old", "promoted_at": "x",
                                                      "reason": "test", "previous": []})
    result = run_evaluate(layout, "2024-01-08", cfg)
    holdout = pd.read_parquet(f"{layout.current('graphs', '2024-01-08').path}/holdout.parquet")
    expected_known = holdout["user_idx"][holdout["user_idx"] < 30].nunique()
    assert result.known_users_bound == 30
    assert result.users_evaluated == expected_known
    assert result.users_unknown_to_a_model == holdout["user_idx"].nunique() - expected_known
    assert result.pairs_unknown_to_a_model == int((holdout["user_idx"] >= 30).sum())
    assert result.champion["users_evaluated"] == result.candidate["users_evaluated"] == expected_known
    assert result.champion_version == "2024-01-07-old"
    # the planted-cluster candidate beats a random champion and popularity on the same users
    assert result.candidate["ndcg@20"] > result.champion["ndcg@20"]
    assert result.candidate["ndcg@20"] > result.popularity["ndcg@20"]
    stored = json.loads((layout.reports("2024-01-08") / "evaluation.json").read_text())
    assert stored["candidate"] == result.candidate


def test_run_gate_writes_blessing_and_tables(tmp_path):
    layout = Layout.at(tmp_path)
    cfg = tiny_config(tmp_path)
    blessing = run_ship_day(layout, "2024-01-08", cfg, make_world())
    out = layout.reports("2024-01-08")
    assert blessing.blessed and blessing.bootstrap
    loaded = Blessing.load(out / "blessing.json")
    assert loaded == blessing
    markdown = (out / "gates.md").read_text()
    assert markdown.count("\n| ") == len(cfg.gates.gates) + 1  # header + one row per gate
    assert "skipped (no champion: bootstrap)" in markdown
    assert "<table>" in (out / "gates.html").read_text()

    # a bad candidate on the same day (and a stricter teacher gate) is rejected and says why
    gates_file = write_gates(tmp_path / "strict.yaml", [
        {"metric": "ndcg@20", "kind": "min_ratio_to", "baseline": "teacher", "threshold": 0.9},
        {"metric": "parity_topk_overlap", "kind": "min", "threshold": 0.95},
    ])
    strict = tiny_config(tmp_path, gates_file=str(gates_file))
    run_ship_day(layout, "2024-01-08", strict, make_world(), candidate="bad")
    rejected = Blessing.load(out / "blessing.json")
    assert not rejected.blessed and rejected.failed == ("ndcg@20 min_ratio_to teacher",)


def test_zero_versus_zero_fails_relative_gates():
    from components.gates import _passes, _statistic

    for kind, threshold in (("min_ratio_to", 0.8), ("max_regression_vs", 0.05), ("min_lift_over", 0.0)):
        assert not _passes(kind, _statistic(kind, 0.0, 0.0), threshold)
    assert _passes("min_lift_over", _statistic("min_lift_over", 0.1, 0.0), 0.05)
