"""Gates: bootstrap intervals and PASS / FAIL / INCONCLUSIVE per kind, counts and latency gates,
segments, bootstrap (no champion), and the evaluation as served with the champion as of the day."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import bootstrap

from components.core.config import GateSpec, GatesConfig, load_gates
from components.ship.convert import EngineResult
from components.model.metrics import ranking_scorer, served_scorer, user_metrics
from components.core.refs import Blessing, EngineRef, EvaluationResult, PerUser
from components.decide.evaluation import prefix_scorer, run_evaluate
from components.decide.gates import BOOTSTRAP_NOTE, bootstrap_interval, decide, judge
from components.data.graph import GraphArtifact
from components.core.catalog import Layout, read_json, write_json

from tests.unit.ship_fixtures import make_world, random_embeddings, run_ship_day, tiny_config, write_gates

CALLS = 1000
ENGINE = EngineResult(
    day="2024-01-08", version="e", path="", runtime="onnxruntime", runtime_reason="test",
    runtime_description="ONNX Runtime (CPUExecutionProvider)", tensorrt_status="skipped: test",
    engine_path="m.onnx", engine_bytes=5000, parity_users=10, parity_max_abs_diff=2e-6,
    parity_topk_overlap=1.0,
    latency_ms={"1": {"p50_ms": 0.1, "p95_ms": 0.15, "p99_ms": 0.2, "repeats": CALLS},
                "64": {"p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0, "repeats": CALLS}},
)


def _gates(*specs, **settings):
    return GatesConfig(gates=tuple(GateSpec(**s) for s in specs), **settings)


def _measured(candidate, champion=None, teacher=None, popularity=None, cold=None, metric="ndcg@20"):
    """Per-user vectors (one metric) and the evaluation summary a gate reads."""
    candidate = np.asarray(candidate, dtype=float)
    n = candidate.size
    cold = np.zeros(n, bool) if cold is None else np.asarray(cold, bool)
    models = {"candidate": candidate, "champion": champion, "teacher": teacher,
              "popularity": popularity if popularity is not None else np.zeros(n)}
    values = {m: {metric: np.asarray(v, float)} for m, v in models.items() if v is not None}
    per_user = PerUser(users=np.arange(n), cold=cold, values=values)
    segments = {m: {seg: {metric: float(v[metric][mask].mean()) if mask.any() else 0.0,
                          "users_evaluated": int(mask.sum())}
                    for seg, mask in (("all", np.ones(n, bool)), ("warm", ~cold), ("cold", cold))}
                for m, v in values.items()}
    evaluation = EvaluationResult(
        day="2024-01-08", run_key="r", path="", per_user_path="", candidate_id="2024-01-08-c", candidate_refs={},
        graph_version="g", candidate_version="2024-01-08-c", teacher_version="t",
        champion_version="v1" if champion is not None else None, baseline_reason="test",
        candidate=segments["candidate"]["all"], teacher=segments.get("teacher", {}).get("all"),
        champion=segments.get("champion", {}).get("all"), popularity=segments["popularity"]["all"],
        segments=segments, holdout_users=n, holdout_pairs=3 * n, users_evaluated=n,
        warm_users_evaluated=int((~cold).sum()), cold_users_evaluated=int(cold.sum()),
        users_without_unseen_test_items=0)
    return evaluation, per_user


def _judge(spec, **kwargs):
    evaluation, per_user = _measured(**kwargs)
    return judge(evaluation, per_user, ENGINE, _gates(spec), seed=0)


@pytest.mark.parametrize("direction, bound, low, high, verdict", [
    (">=", -0.05, -0.02, 0.03, "pass"), (">=", -0.05, -0.09, -0.06, "fail"), (">=", -0.05, -0.08, 0.01, "inconclusive"),
    (">", 0.05, 0.05, 0.2, "inconclusive"), (">", 0.05, 0.051, 0.2, "pass"), (">", 0.05, 0.0, 0.05, "fail"),
    ("<=", 250.0, 10.0, 12.0, "pass"), ("<=", 250.0, 251.0, 300.0, "fail"),
    (">=", 0.0, float("nan"), 1.0, "inconclusive"),
])
def test_a_verdict_needs_the_whole_interval(direction, bound, low, high, verdict):
    assert decide(direction, bound, low, high) == verdict


RNG = np.random.default_rng(0)
BASE = RNG.uniform(0.1, 0.5, 2000)
NOISE = RNG.normal(0, 0.05, 2000)


@pytest.mark.parametrize("candidate, verdict", [
    (BASE + NOISE, "pass"),                 # same quality: the interval excludes a 5% drop
    (0.8 * BASE + NOISE, "fail"),           # a 20% drop: the whole interval is below -5%
    ((BASE + NOISE)[:12], "inconclusive"),  # 12 users: the interval is too wide to tell
])
def test_non_inferiority_against_the_champion(candidate, verdict):
    spec = {"metric": "ndcg@20", "kind": "max_regression_vs", "baseline": "champion", "threshold": 0.05}
    blessing = _judge(spec, candidate=candidate, champion=BASE[: candidate.size])
    (gate,) = blessing.gates
    assert gate.verdict == verdict and gate.n == candidate.size
    assert gate.statistic == pytest.approx(candidate.mean() / BASE[: candidate.size].mean() - 1)
    assert gate.ci_low < gate.statistic < gate.ci_high
    assert gate.baseline_value == pytest.approx(BASE[: candidate.size].mean())
    assert blessing.verdict == {"pass": "blessed", "fail": "rejected", "inconclusive": "inconclusive"}[verdict]
    assert blessing.blessed is (verdict == "pass")


def test_interval_is_scipy_paired_bootstrap_seeded_and_reproducible():
    candidate, champion = BASE[:300] + NOISE[:300], BASE[:300]
    gates = _gates({"metric": "ndcg@20", "kind": "min", "threshold": 0})
    first = bootstrap_interval((candidate, champion), "relative change", gates, seed=7)
    assert bootstrap_interval((candidate, champion), "relative change", gates, seed=7) == first
    reference = bootstrap((candidate, champion), lambda c, b, axis: c.mean(axis) / b.mean(axis) - 1, paired=True,
                          vectorized=True, n_resamples=gates.bootstrap_resamples, confidence_level=0.90,
                          method="percentile", random_state=np.random.default_rng(7)).confidence_interval
    assert first == pytest.approx((reference.low, reference.high))
    with pytest.raises(ValueError, match="greater than or equal to 1000"):
        _gates({"metric": "ndcg@20", "kind": "min", "threshold": 0}, bootstrap_resamples=100)


def test_lift_ratio_and_absolute_floor():
    lift = _judge({"metric": "ndcg@20", "kind": "min_lift_over", "baseline": "popularity", "threshold": 0.05},
                  candidate=BASE + NOISE, popularity=0.5 * BASE)
    assert lift.gates[0].verdict == "pass" and lift.gates[0].ci_low > 0.05
    ratio = _judge({"metric": "ndcg@20", "kind": "min_ratio_to", "baseline": "teacher", "threshold": 0.9},
                   candidate=0.7 * BASE, teacher=BASE)
    assert ratio.gates[0].verdict == "fail" and ratio.gates[0].ci_high < 0.9
    assert ratio.failed == ("ndcg@20 min_ratio_to teacher",)
    floor = _judge({"metric": "ndcg@20", "kind": "min", "threshold": 0.2}, candidate=BASE)
    assert floor.gates[0].verdict == "pass" and floor.gates[0].value == pytest.approx(BASE.mean())


def test_too_few_users_is_inconclusive_and_keeps_the_champion_unless_configured():
    spec = {"metric": "users_evaluated", "kind": "min", "threshold": 1000}
    evaluation, per_user = _measured(candidate=BASE[:50], champion=BASE[:50])
    blessing = judge(evaluation, per_user, ENGINE, _gates(spec), seed=0)
    assert blessing.gates[0].verdict == "inconclusive" and blessing.gates[0].n == 50
    assert "too few to decide" in blessing.gates[0].note
    assert (blessing.blessed, blessing.verdict, blessing.inconclusive) == (False, "inconclusive",
                                                                          ("users_evaluated min",))
    lenient = judge(evaluation, per_user, ENGINE, _gates(spec, inconclusive="promote"), seed=0)
    assert lenient.blessed and lenient.verdict == "blessed"
    enough = judge(*_measured(candidate=BASE), ENGINE, _gates(spec), seed=0)
    assert enough.gates[0].verdict == "pass"


def test_segment_gate_judges_only_its_users():
    cold = np.arange(BASE.size) < 200
    candidate = np.where(cold, 0.5 * BASE, BASE)  # cold users served much worse
    spec = {"metric": "ndcg@20", "kind": "max_regression_vs", "baseline": "champion", "threshold": 0.05}
    warm = _judge({**spec, "segment": "warm"}, candidate=candidate, champion=BASE, cold=cold)
    cold_gate = _judge({**spec, "segment": "cold"}, candidate=candidate, champion=BASE, cold=cold)
    assert warm.gates[0].n == 1800 and warm.gates[0].verdict == "pass"
    assert cold_gate.gates[0].n == 200 and cold_gate.gates[0].verdict == "fail"
    assert cold_gate.failed == ("ndcg@20 max_regression_vs champion [cold]",)


def test_engine_gates_use_engine_measurements_at_the_largest_batch():
    gates = _gates(
        {"metric": "parity_max_abs_diff", "kind": "max", "threshold": 1e-5},
        {"metric": "parity_topk_overlap", "kind": "min", "threshold": 0.95},
        {"metric": "latency_p99_ms", "kind": "max", "threshold": 2.5},
        {"metric": "latency_p95_ms", "kind": "max", "threshold": 2.5},
        {"metric": "engine_bytes", "kind": "max", "threshold": 10_000},
    )
    blessing = judge(*_measured(candidate=BASE), ENGINE, gates, seed=0)
    verdicts = {g.metric: (g.value, g.verdict) for g in blessing.gates}
    assert verdicts == {
        "parity_max_abs_diff": (2e-6, "pass"),
        "parity_topk_overlap": (1.0, "pass"),
        "latency_p99_ms": (3.0, "fail"),  # batch 64's p99, not batch 1's 0.2
        "latency_p95_ms": (2.0, "pass"),
        "engine_bytes": (5000.0, "pass"),
    }
    assert not blessing.blessed and blessing.failed == ("latency_p99_ms max",)
    assert all("onnxruntime" in g.measured_by for g in blessing.gates)
    assert "batch 64, 1000 timed calls" in blessing.gates[2].measured_by and blessing.gates[2].n == CALLS


def test_latency_from_too_few_calls_is_inconclusive():
    few = EngineResult(**{**ENGINE.__dict__, "latency_ms": {"64": {"p50_ms": 1.0, "p95_ms": 1.1, "p99_ms": 1.2,
                                                                 "repeats": 30}}})
    blessing = judge(*_measured(candidate=BASE), few, _gates({"metric": "latency_p99_ms", "kind": "max",
                                                               "threshold": 250}), seed=0)
    assert blessing.gates[0].verdict == "inconclusive" and "only 30 timed calls" in blessing.gates[0].note


def test_missing_engine_result_fails_engine_gates_never_passes_them():
    gates = _gates({"metric": "parity_topk_overlap", "kind": "min", "threshold": 0.95})
    blessing = judge(*_measured(candidate=BASE), None, gates, seed=0)
    assert blessing.gates[0].verdict == "fail" and not blessing.blessed


def test_bootstrap_skips_champion_gates_and_applies_the_rest():
    gates = load_gates()  # the shipped config/gates.yaml
    evaluation, per_user = _measured(candidate=BASE + NOISE, teacher=BASE, popularity=0.3 * BASE)
    per_user.values["candidate"]["recall@20"] = 2 * (BASE + NOISE)
    for model in ("teacher", "popularity"):
        per_user.values[model]["recall@20"] = 2 * per_user.values[model]["ndcg@20"]
    blessing = judge(evaluation, per_user, ENGINE, gates, seed=0, data_metrics={"validation_warnings": 0})
    skipped = [g for g in blessing.gates if g.verdict == "skipped"]
    assert skipped and all(g.baseline == "champion" and g.note == BOOTSTRAP_NOTE for g in skipped)
    assert len(skipped) == sum(1 for s in gates.gates if s.baseline == "champion")
    assert all(g.verdict == "pass" for g in blessing.gates if g.baseline != "champion"), blessing.gates
    assert blessing.blessed and blessing.bootstrap and blessing.champion_version is None


def test_unknown_metric_is_a_config_error():
    with pytest.raises(ValueError, match="'ndcg@7' is neither an engine metric"):
        _judge({"metric": "ndcg@7", "kind": "min", "threshold": 0}, candidate=BASE)


def test_prefix_scorer_scores_unknown_items_minus_inf():
    user, item = random_embeddings(3, 4, seed=0)
    scores = prefix_scorer(user, item, num_items=6)(torch.tensor([0, 2]))
    assert scores.shape == (2, 6)
    np.testing.assert_allclose(scores[:, :4].numpy(), user[[0, 2]] @ item.T, rtol=1e-6)
    assert torch.isneginf(scores[:, 4:]).all()


def test_served_scorer_answers_users_without_embedding_with_the_fallback():
    user, item = random_embeddings(3, 4, seed=0)
    fallback = ranking_scorer(np.array([1.0, 5.0, 3.0, 0.0]), 4)
    scorer = served_scorer(prefix_scorer(user, item, 4), np.array([True, False, True]), fallback)
    scores = scorer(torch.tensor([0, 1, 2, 7]))  # user 1: no history; user 7: unknown to the model
    np.testing.assert_allclose(scores[[0, 2]].numpy(), user[[0, 2]] @ item.T, rtol=1e-6)
    assert scores[1].tolist() == scores[3].tolist() == [-2.0, 0.0, -1.0, -3.0]  # -(popularity rank)


def _old_champion(layout: Layout, num_users: int = 30, num_items: int = 50, day: str = "2024-01-07",
                  user_order=None, item_order=None):
    """A registered, promoted champion of an earlier day over a subset of today's IDs (``*_order``:
    the champion's index of each of its IDs u0.., i0..; identity by default)."""
    version = f"{day}-old"
    user, item = random_embeddings(num_users, num_items, seed=9)
    path = layout.registry() / "versions" / version
    path.mkdir(parents=True)
    np.savez(path / "embeddings.npz", user=user, item=item)
    history = np.ones(num_users, bool)
    history[5] = False  # a user the champion never trained: served by its fallback
    np.savez(path / "seen.npz", indptr=np.concatenate([[0], np.cumsum(history)]), indices=np.zeros(history.sum()))
    np.save(path / "popularity.npy", np.arange(num_items, dtype=np.float32)[::-1].copy())
    user_order = np.arange(num_users) if user_order is None else np.asarray(user_order)
    item_order = np.arange(num_items) if item_order is None else np.asarray(item_order)
    pd.DataFrame({"user_id": [f"u{i}" for i in range(num_users)], "idx": user_order}).to_parquet(path / "users.parquet")
    pd.DataFrame({"item_id": [f"i{i}" for i in range(num_items)], "idx": item_order}).to_parquet(path / "items.parquet")
    write_json(path / "manifest.json", {"version": version, "day": day, "status": "blessed"})
    write_json(layout.registry() / "champion.json", {"version": version, "promoted_at": "x", "reason": "test",
                                                      "previous": []})
    (layout.registry() / "history.jsonl").write_text(json.dumps({"event": "promote", "version": version,
                                                                 "at": "x", "reason": "test"}) + "\n")
    return version, path


def test_the_champion_is_scored_through_its_own_id_maps(tmp_path):
    """A champion whose indices differ from today's graph (other order, fewer IDs) is scored by ID."""
    layout = Layout.at(tmp_path)
    cfg = tiny_config(tmp_path)
    day = "2024-01-08"
    run_ship_day(layout, day, cfg, make_world(), gate=False)
    rng = np.random.default_rng(3)
    user_order, item_order = rng.permutation(30), rng.permutation(50)
    version, path = _old_champion(layout, user_order=user_order, item_order=item_order)
    result = run_evaluate(layout, day, cfg, run_key="r1", candidate=layout.current_ref(EngineRef, day).as_dict())
    assert result.champion_version == version
    graph = GraphArtifact.load(layout.current("graphs", day))
    with np.load(path / "embeddings.npz") as saved:
        user, item = saved["user"], saved["item"]
    # Today's user u / item i is the champion's user_order[u] / item_order[i]; i50.. are unknown to it.
    expected = np.full((graph.num_users, graph.num_items), -np.inf, dtype=np.float32)
    expected[:30, :50] = user[user_order] @ item[item_order].T
    popularity = np.full(graph.num_items, -np.inf, dtype=np.float32)
    popularity[:50] = np.load(path / "popularity.npy")[item_order]
    fallback_rows = np.isin(np.arange(graph.num_users), [*range(30, graph.num_users), int(np.flatnonzero(user_order == 5)[0])])
    expected[fallback_rows] = popularity  # ranked like the popularity counts (unknown items stay -inf)
    direct = user_metrics(lambda users: torch.from_numpy(expected[users.numpy()].copy()),
                          graph.train_interactions(), graph.holdout_interactions(), graph.num_items, cfg.eval.ks,
                          include_cold=True)
    per_user = PerUser.load(result.per_user_path)
    np.testing.assert_allclose(per_user.values["champion"]["ndcg@20"], direct.values["ndcg@20"], rtol=1e-6)


def test_run_evaluate_scores_every_user_as_served_against_the_champion_as_of_the_day(tmp_path):
    layout = Layout.at(tmp_path)
    cfg = tiny_config(tmp_path)
    day = "2024-01-08"
    run_ship_day(layout, day, cfg, make_world(), gate=False, cold_users=3)
    version, path = _old_champion(layout)
    result = run_evaluate(layout, day, cfg, run_key="r1", candidate=layout.current_ref(EngineRef, day).as_dict())
    assert result.champion_version == version and "champion as of 2024-01-08" in result.baseline_reason
    graph = GraphArtifact.load(layout.current("graphs", day))
    holdout = pd.read_parquet(f"{graph.ref.path}/holdout.parquet")
    assert result.users_evaluated == holdout["user_idx"].nunique() == 40  # nobody dropped
    assert result.cold_users_evaluated == 3 and result.warm_users_evaluated == 37
    # No features stage for this root: no history to fold in, said in the record.
    assert result.cold_answer == "popularity (no feature store)"
    assert result.answered_by["candidate"] == {"model": 37, "fold_in": 0, "popularity": 3}
    assert result.answered_by["champion"] == {"model": 29, "fold_in": 0, "popularity": 11}
    per_user = PerUser.load(result.per_user_path)
    assert per_user.users.tolist() == list(range(40)) and per_user.cold.sum() == 3
    # Users the champion cannot serve (unknown: >= 30; untrained: 5) get its popularity, as served.
    train, test = graph.train_interactions(), graph.holdout_interactions()
    counts = np.zeros(graph.num_items)
    counts[:50] = np.load(path / "popularity.npy")
    fallback = user_metrics(ranking_scorer(counts, graph.num_items), train, test, graph.num_items, cfg.eval.ks,
                            include_cold=True)
    served_by_fallback = np.isin(per_user.users, [5, *range(30, 40)])
    np.testing.assert_allclose(per_user.values["champion"]["ndcg@20"][served_by_fallback],
                               fallback.values["ndcg@20"][served_by_fallback])
    # the planted-cluster candidate beats a random champion and popularity on the same users
    assert result.candidate["ndcg@20"] > result.champion["ndcg@20"]
    assert result.segments["candidate"]["warm"]["ndcg@20"] > result.popularity["ndcg@20"]
    # cold users: candidate and popularity both answer with this graph's popularity
    assert result.segments["candidate"]["cold"]["ndcg@20"] == result.segments["popularity"]["cold"]["ndcg@20"]
    stored = read_json(layout.reports(day) / "runs" / "r1" / "evaluation.json")
    assert stored["candidate"] == result.candidate and stored["candidate_id"].startswith(day)


def test_a_newer_champion_is_never_the_baseline_of_an_older_day(tmp_path):
    layout = Layout.at(tmp_path)
    cfg = tiny_config(tmp_path)
    run_ship_day(layout, "2024-01-08", cfg, make_world(), gate=False)
    _old_champion(layout, num_users=45, num_items=70, day="2024-01-09")  # newer and larger than the graph
    result = run_evaluate(layout, "2024-01-08", cfg, run_key="r1",
                          candidate=layout.current_ref(EngineRef, "2024-01-08").as_dict())  # no crash: judged as a bootstrap
    assert result.champion_version is None and "bootstrap" in result.baseline_reason


def test_run_gate_writes_a_blessing_per_run_and_never_overwrites_another_run(tmp_path):
    layout = Layout.at(tmp_path)
    cfg = tiny_config(tmp_path)
    day = "2024-01-08"
    blessing = run_ship_day(layout, day, cfg, make_world(), run_key="first")
    out = layout.reports(day) / "runs" / "first"
    assert blessing.blessed and blessing.bootstrap and blessing.verdict == "blessed"
    assert Blessing.load(out / "blessing.json") == blessing
    markdown = (out / "gates.md").read_text()
    gate_table, comparisons = markdown.split("Headline comparisons")
    assert gate_table.count("\n| ") == len(cfg.gates.gates) + 1  # header + one row per gate
    # then candidate vs champion (skipped: bootstrap) and vs popularity; no champion, so no health row
    assert comparisons.count("\n| ") == 3 and "candidate vs popularity" in comparisons
    assert "skipped (no champion: bootstrap)" in markdown and "90% CI [" in markdown
    assert "<table>" in (out / "gates.html").read_text()
    first_bytes = (out / "blessing.json").read_bytes()

    # a bad candidate on the same day, in another run, is rejected and says why; the first run's files stay
    gates_file = write_gates(tmp_path / "strict.yaml", [
        {"metric": "ndcg@20", "kind": "min_ratio_to", "baseline": "teacher", "threshold": 0.9},
        {"metric": "parity_topk_overlap", "kind": "min", "threshold": 0.95},
    ])
    strict = tiny_config(tmp_path, gates_file=str(gates_file))
    run_ship_day(layout, day, strict, make_world(), candidate="bad", run_key="second")
    rejected = Blessing.load(layout.reports(day) / "runs" / "second" / "blessing.json")
    assert not rejected.blessed and rejected.failed == ("ndcg@20 min_ratio_to teacher",)
    assert rejected.candidate_version != blessing.candidate_version
    assert (out / "blessing.json").read_bytes() == first_bytes
    outcome = read_json(layout.reports(day) / "runs" / "second" / "outcome.json")
    assert outcome["kind"] == "rejected" and "ndcg@20 min_ratio_to teacher" in outcome["reason"]
    assert read_json(layout.reports(day) / "latest.json")["run_key"] == "second"


# --- roles, conclusive wins, champion health, the history segment -----------------------------

RETENTION = {"metric": "ndcg@20", "kind": "min_ratio_to", "baseline": "teacher", "threshold": 0.8,
             "role": "diagnostic"}
NON_INFERIOR = {"metric": "ndcg@20", "kind": "max_regression_vs", "baseline": "champion", "threshold": 0.05}
WINNER = 1.3 * BASE + NOISE  # +30% over a champion = BASE; 0.65 of a teacher = 2 * BASE


def _roles(candidate, champion, popularity, *specs, teacher=2 * BASE, **settings):
    evaluation, per_user = _measured(candidate=candidate, champion=champion, teacher=teacher, popularity=popularity)
    return judge(evaluation, per_user, ENGINE, _gates(*specs, **settings), seed=0)


def test_a_diagnostic_fail_is_overridden_when_the_candidate_conclusively_beats_champion_and_popularity():
    blessing = _roles(WINNER, BASE, 0.5 * BASE, RETENTION, NON_INFERIOR)
    retention = blessing.gates[0]
    assert retention.verdict == "fail" and retention.role == "diagnostic" and retention.overridden
    assert retention.ci_high < 0.8  # measured and shown as it is: only its veto is lifted
    assert blessing.blessed and blessing.verdict == "blessed" and blessing.conclusive_win
    assert blessing.failed == () and blessing.overridden == ("ndcg@20 min_ratio_to teacher",)
    over_champion, over_popularity = blessing.wins
    assert over_champion.verdict == over_popularity.verdict == "pass" and over_champion.ci_low > 0
    assert over_champion.relative_change == pytest.approx(WINNER.mean() / BASE.mean() - 1)
    assert blessing.reason.startswith("no decision gate failed; diagnostic gate ndcg@20 min_ratio_to teacher "
                                      f"FAILED, overridden: candidate conclusively beats champion (ndcg@20 "
                                      f"{over_champion.relative_change:+.1%} [{over_champion.ci_low:+.1%}, ")
    assert "and popularity (ndcg@20 +" in blessing.reason
    assert Blessing.load(_saved(blessing)) == blessing


def _saved(blessing):
    import tempfile
    from dataclasses import asdict
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / "blessing.json"
    write_json(path, asdict(blessing))
    return path


@pytest.mark.parametrize("champion, popularity, unmet", [
    (BASE, 2.0 * BASE, "popularity"),   # beats the champion only
    (2.0 * BASE, 0.5 * BASE, "champion"),  # beats popularity only
    (1.3 * BASE, 0.5 * BASE, "champion"),  # same as the champion: the interval straddles 0
])
def test_a_diagnostic_fail_vetoes_unless_both_are_conclusively_beaten(champion, popularity, unmet):
    blessing = _roles(WINNER, champion, popularity, RETENTION)
    assert not blessing.blessed and not blessing.conclusive_win and blessing.overridden == ()
    assert blessing.failed == ("ndcg@20 min_ratio_to teacher",) and not blessing.gates[0].overridden
    assert (f"failed gates: ndcg@20 min_ratio_to teacher (diagnostic); diagnostic gates not overridden: candidate "
            f"does not conclusively beat {unmet} (ndcg@20") in blessing.reason


def test_an_inconclusive_win_on_few_users_overrides_nothing():
    # 12 users, popularity as good as the candidate up to noise: the interval straddles 0
    blessing = _roles(WINNER[:12], BASE[:12], 1.3 * BASE[:12], RETENTION, teacher=2 * BASE[:12])
    assert [w.verdict for w in blessing.wins] == ["pass", "inconclusive"]
    assert not blessing.blessed and blessing.overridden == () and not blessing.conclusive_win


def test_a_decision_fail_is_never_overridden():
    decision_retention = {**RETENTION, "role": "decision"}
    blessing = _roles(WINNER, BASE, 0.5 * BASE, decision_retention, NON_INFERIOR)
    assert blessing.conclusive_win and not blessing.blessed and blessing.verdict == "rejected"
    assert blessing.failed == ("ndcg@20 min_ratio_to teacher",) and blessing.overridden == ()
    slow = _roles(WINNER, BASE, 0.5 * BASE, {"metric": "latency_p99_ms", "kind": "max", "threshold": 1.0})
    assert slow.conclusive_win and slow.failed == ("latency_p99_ms max",) and not slow.blessed


def test_a_diagnostic_inconclusive_is_overridden_and_at_bootstrap_popularity_is_the_bar():
    # 0.8 of the teacher exactly: the retention interval straddles its bound
    blessing = _roles(WINNER, BASE, 0.5 * BASE, RETENTION, teacher=WINNER / 0.8)
    assert blessing.gates[0].verdict == "inconclusive" and blessing.overridden and blessing.blessed
    assert "INCONCLUSIVE, overridden" in blessing.reason
    bootstrap = _roles(WINNER, None, 0.5 * BASE, RETENTION)
    assert bootstrap.wins[0].verdict == "skipped" and bootstrap.wins[1].verdict == "pass"
    assert bootstrap.blessed and bootstrap.overridden == ("ndcg@20 min_ratio_to teacher",)
    assert bootstrap.champion_health is None and not bootstrap.champion_worse_than_popularity


@pytest.mark.parametrize("champion, popularity, verdict", [
    (0.6 * BASE + NOISE, BASE, "fail"),  # conclusively worse than popularity
    (BASE, 0.6 * BASE + NOISE, "pass"),
    (BASE + NOISE, BASE, "inconclusive"),
])
def test_champion_health_against_popularity(champion, popularity, verdict):
    blessing = _roles(WINNER, champion, popularity, NON_INFERIOR)
    health = blessing.champion_health
    assert (health.subject, health.baseline, health.segment, health.verdict) == (
        "champion", "popularity", "history", verdict)
    assert health.n == BASE.size and health.relative_change == pytest.approx(champion.mean() / popularity.mean() - 1)
    assert health.ci_low <= health.relative_change <= health.ci_high
    assert blessing.champion_worse_than_popularity is (verdict == "fail")
    assert blessing.blessed  # health never blocks a candidate


def test_champion_health_tolerance():
    evaluation, per_user = _measured(candidate=WINNER, champion=0.97 * BASE, popularity=BASE)
    strict = judge(evaluation, per_user, ENGINE, _gates(NON_INFERIOR), seed=0)
    lenient = judge(evaluation, per_user, ENGINE, _gates(NON_INFERIOR, champion_health={"tolerance": 0.05}), seed=0)
    assert strict.champion_health.verdict == "fail" and lenient.champion_health.verdict == "pass"


@pytest.mark.parametrize("candidate, champion, popularity, fallback, expected", [
    (0.5 * BASE + NOISE, 0.6 * BASE, BASE, "popularity", "popularity"),  # champion loses, candidate rejected
    (0.5 * BASE + NOISE, 0.6 * BASE, BASE, "keep", None),  # the same night, configured to keep
    (WINNER, 0.6 * BASE, BASE, "popularity", None),  # champion loses, but the candidate qualifies
    (0.5 * BASE + NOISE, BASE, 0.6 * BASE, "popularity", None),  # candidate rejected, champion healthy
    (0.5 * BASE + NOISE, BASE + NOISE, BASE, "popularity", None),  # champion's loss not conclusive
])
def test_the_night_falls_back_to_popularity_only_when_the_champion_loses_and_no_candidate_qualifies(
        candidate, champion, popularity, fallback, expected):
    blessing = _roles(candidate, champion, popularity, NON_INFERIOR, champion_health={"fallback": fallback})
    assert blessing.fallback == expected
    assert blessing.blessed is (candidate is WINNER)
    if expected:
        assert blessing.champion_worse_than_popularity and blessing.verdict == "rejected"
    assert Blessing.load(_saved(blessing)).fallback == expected


@pytest.mark.parametrize("candidate, no_champion, expected", [
    (0.5 * BASE + NOISE, "popularity", "popularity"),  # nothing serves yet and the candidate is rejected
    (0.5 * BASE + NOISE, "none", None),  # the same night, configured to serve nothing
    (WINNER, "popularity", None),  # the candidate qualifies: it becomes the first champion
])
def test_at_bootstrap_popularity_serves_until_a_candidate_qualifies(candidate, no_champion, expected):
    lift = {"metric": "ndcg@20", "kind": "min_lift_over", "baseline": "popularity", "threshold": 0.05}
    blessing = _roles(candidate, None, BASE, lift, champion_health={"no_champion": no_champion})
    assert blessing.bootstrap and blessing.fallback == expected and blessing.blessed is (candidate is WINNER)
    assert blessing.champion_health is None and not blessing.champion_worse_than_popularity


def test_the_history_segment_judges_the_users_models_can_answer_differently():
    # 300 users with history (the candidate is 10% better there); 700 without any: every model
    # answers them with the same popularity ranking, so their values are identical.
    popularity = BASE[:1000]
    history = np.arange(1000) < 300
    candidate = np.where(history, 1.1 * popularity, popularity)
    lift = {"metric": "ndcg@20", "kind": "min_lift_over", "baseline": "popularity", "threshold": 0.05}
    evaluation, per_user = _measured(candidate=candidate, popularity=popularity)
    per_user = PerUser(users=per_user.users, cold=per_user.cold, values=per_user.values, history=history)
    judged = judge(evaluation, per_user, ENGINE, _gates({**lift, "segment": "history"}, lift), seed=0)
    on_history, on_all = judged.gates
    assert on_history.n == 300 and on_history.verdict == "pass" and on_history.statistic == pytest.approx(0.1)
    assert on_all.n == 1000 and on_all.verdict == "fail"  # diluted to ~3% by users no model can differ on
    assert judged.failed == ("ndcg@20 min_lift_over popularity",)
    assert judged.wins[1].n == 300  # conclusive wins are judged on users with history by default


def test_per_user_history_round_trips_and_older_files_fall_back_to_warm(tmp_path):
    cold = np.array([False, True, True, False])
    history = np.array([True, True, False, True])  # user 1: cold but folded in from recent items
    values = {"candidate": {"ndcg@20": np.arange(4.0)}}
    PerUser(users=np.arange(4), cold=cold, values=values, history=history).save(tmp_path / "new.npz")
    loaded = PerUser.load(tmp_path / "new.npz")
    assert loaded.segment_mask("history").tolist() == history.tolist()
    PerUser(users=np.arange(4), cold=cold, values=values).save(tmp_path / "old.npz")
    assert PerUser.load(tmp_path / "old.npz").segment_mask("history").tolist() == (~cold).tolist()


def test_users_with_only_repeat_test_items_are_counted_and_shown(tmp_path):
    from components.cli import day_summary
    from components.pipeline import run_stage
    from components.decide.report import run_report

    layout = Layout.at(tmp_path)
    cfg = tiny_config(tmp_path)
    day = "2024-01-08"
    run_ship_day(layout, day, cfg, make_world(), gate=False, repeat_only_users=3)
    evaluation = run_stage("evaluate", day, cfg, run_key="r1",
                           upstream={"day": day, "version": layout.current("engines", day).version})
    assert evaluation["users_without_unseen_test_items"] == 3 and evaluation["users_evaluated"] == 37
    assert evaluation["holdout_users"] == 40 and evaluation["history_users_evaluated"] == 37
    blessing = run_stage("gate", day, cfg, run_key="r1", upstream=evaluation)
    assert blessing["users_without_unseen_test_items"] == 3
    text = "users with only repeat test items: 3 (excluded: nothing unseen to recommend)"
    assert text in (layout.reports(day) / "runs" / "r1" / "gates.md").read_text()
    assert day_summary(layout, day)["repeat_only"] == text
    html = open(run_report(layout, day, cfg, run_key="r1").path).read()
    assert "<th>users with only repeat test items</th><td>3 (excluded: nothing unseen to recommend)</td>" in html
