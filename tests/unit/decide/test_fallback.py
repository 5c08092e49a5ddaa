"""The popularity fallback through the real stages: a champion worse than popularity and a candidate
that does not qualify -> the popularity version serves (registered, promoted by compare-and-swap,
answered by serving like any champion), rollback undoes it, and the next night judges against it."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from components.core.catalog import Layout, read_json
from components.core.refs import Blessing
from components.data.graph import GraphArtifact
from components.decide.outcome import FALLBACK_POPULARITY, INCONCLUSIVE, PROMOTED, note_markdown, run_outcome
from components.decide.registry import (champion, champion_as_of, history, rollback, run_promote, run_register,
                                        version_dir)
from components.ship.convert import choose_runtime, tensorrt_available
from components.ship.serving import Recommender

from tests.unit.data_fixtures import day
from tests.unit.ship_fixtures import TINY_GATES, make_world, run_ship_day, tiny_config, write_gates

# Decision gates only (the fallback is about the champion's loss, not distillation).
DECISION = [g for g in TINY_GATES if g.get("baseline") != "teacher"]


def test_popularity_scores_are_ranks_with_ties_to_the_lower_index():
    from components.decide.fallback import popularity_embeddings

    user, item = popularity_embeddings(np.array([2, 2, 1, 1, 0, 3, 3, 3]), num_users=3, num_items=5)
    np.testing.assert_array_equal(user, np.ones((3, 1)))
    # counts 1, 2, 2, 3, 0: item 3 first, then 1 before 2 (tie), 0, and the never-trained 4 last
    np.testing.assert_array_equal(item[:, 0], [2.0, 4.0, 3.0, 5.0, 1.0])


def _configs(root, fallback: str):
    lenient = tiny_config(root, gates_file=str(write_gates(root / "lenient.yaml", TINY_GATES[:1])))
    strict = tiny_config(root, gates_file=str(write_gates(root / f"strict_{fallback}.yaml", DECISION,
                                                          champion_health={"fallback": fallback})))
    return lenient, strict


def _night(layout, offset, cfg, candidate, run_key):
    run_ship_day(layout, day(offset), cfg, make_world(), seed=offset, candidate=candidate, run_key=run_key)
    registration = run_register(layout, day(offset), cfg, run_key=run_key)
    return registration, run_promote(layout, day(offset), cfg, run_key=run_key, registration=registration)


@pytest.fixture(scope="module")
def weak(tmp_path_factory):
    """day(1): an anti-cluster candidate (worse than popularity) became champion under lenient gates."""
    root = tmp_path_factory.mktemp("fallback") / "root"
    root.mkdir()
    layout = Layout.at(root)
    lenient, _ = _configs(root, "popularity")
    _night(layout, 1, lenient, "anti", "first")
    return root


@pytest.fixture
def world(weak, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(weak, root)
    return Layout.at(root), root


@pytest.fixture(scope="module")
def fell_back(weak, tmp_path_factory):
    """day(2): a random candidate does not qualify against the weak champion (INCONCLUSIVE: its lift over
    popularity straddles the bound on 38 users): popularity serves."""
    root = tmp_path_factory.mktemp("fell_back") / "root"
    shutil.copytree(weak, root)
    layout = Layout.at(root)
    _, strict = _configs(root, "popularity")
    registration, promotion = _night(layout, 2, strict, "random", "night")
    return layout, strict, registration, promotion


def test_a_candidate_that_does_not_qualify_against_a_champion_worse_than_popularity_puts_popularity_in_service(fell_back):
    layout, _, registration, promotion = fell_back
    weak = run_outcome(layout, day(1), "first").champion_after
    blessing = Blessing.load(layout.reports(day(2)) / "runs" / "night" / "blessing.json")
    assert blessing.verdict == "inconclusive" and blessing.champion_worse_than_popularity
    assert blessing.fallback == "popularity" and blessing.champion_version == weak
    popularity = registration.fallback_version
    assert popularity.startswith(f"{day(2)}-popularity-") and registration.status == "inconclusive"
    assert promotion.promoted and promotion.version == popularity and promotion.outcome == FALLBACK_POPULARITY
    assert champion(layout).version == popularity and champion(layout).previous == (weak,)
    moved = history(layout)[-1]
    assert (moved["event"], moved["version"], moved["previous"]) == ("promote", popularity, weak)
    assert moved["reason"].startswith(f"fallback: champion {weak} worse than popularity (ndcg@20 -")
    assert moved["reason"].endswith(f"; candidate {registration.version} inconclusive")
    lineage = read_json(version_dir(layout, popularity) / "lineage.json")
    assert (lineage["kind"], lineage["day"], lineage["judged_against"], lineage["fallback_for"]) == (
        "popularity", day(2), weak, registration.version)
    assert lineage["data"]["graph"]["version"] == blessing.candidate_refs["graph"]["version"]
    metrics = read_json(version_dir(layout, popularity) / "metrics.json")
    assert metrics["parity_topk_overlap"] == 1.0 and metrics["parity_max_abs_diff"] == 0.0


@pytest.mark.parametrize("no_champion", ["popularity", "none"])
def test_with_no_champion_yet_a_candidate_that_does_not_qualify_puts_popularity_in_service(tmp_path, no_champion):
    root = tmp_path / "root"
    root.mkdir()
    layout = Layout.at(root)
    strict = tiny_config(root, gates_file=str(write_gates(root / "strict.yaml", DECISION,
                                                          champion_health={"no_champion": no_champion})))
    registration, promotion = _night(layout, 1, strict, "anti", "first")
    blessing = Blessing.load(layout.reports(day(1)) / "runs" / "first" / "blessing.json")
    assert blessing.bootstrap and not blessing.blessed and blessing.champion_health is None
    outcome = run_outcome(layout, day(1), "first")
    if no_champion == "none":
        assert blessing.fallback is None and registration.fallback_version is None and not promotion.promoted
        assert champion(layout) is None and outcome.kind == blessing.verdict
        return
    popularity = registration.fallback_version
    assert blessing.fallback == "popularity" and promotion.promoted and promotion.outcome == FALLBACK_POPULARITY
    assert champion(layout).version == popularity and not champion(layout).previous
    assert history(layout)[-1]["reason"] == (f"fallback: no champion yet; candidate {registration.version} "
                                             f"{blessing.verdict}: popularity serves until a candidate qualifies")
    assert outcome.kind == FALLBACK_POPULARITY and outcome.reason.startswith(
        f"champion none (bootstrap) -> {popularity} (popularity); candidate {registration.version} {blessing.verdict}: ")
    assert Recommender.load(layout, runtime="onnxruntime").version == popularity


def test_the_popularity_version_is_served_by_the_runtime_convert_chooses(fell_back):
    layout, cfg, registration, _ = fell_back  # tiny_config asks for ONNX Runtime
    folder = version_dir(layout, registration.fallback_version)
    serving, engine = read_json(folder / "serving.json"), read_json(folder / "metrics.json")["engine"]
    assert serving["runtime"] == engine["runtime"] == "onnxruntime"
    assert serving["tensorrt_status"] == engine["tensorrt_status"] == choose_runtime(cfg.engine).tensorrt_status
    assert not (folder / "model.plan").exists()


@pytest.mark.skipif(not tensorrt_available()[0], reason=f"needs TensorRT + CUDA: {tensorrt_available()[1]}")
def test_a_tensorrt_deployment_gets_an_exact_fp32_plan_of_the_popularity_ranking(fell_back, tmp_path):
    from components.core.refs import GraphRef
    from components.decide.registry import popularity_engine

    layout, cfg, registration, _ = fell_back
    folder = version_dir(layout, registration.fallback_version)
    graph = GraphRef.from_dict(read_json(folder / "lineage.json")["data"]["graph"])
    shutil.copy(folder / "model.onnx", tmp_path / "model.onnx")
    on_tensorrt = cfg.model_copy(update={"engine": cfg.engine.model_copy(update={"runtime": "tensorrt"})})
    files, engine = popularity_engine(tmp_path, GraphArtifact.load(layout.artifact(graph)).num_users, on_tensorrt,
                                      day(2))
    assert files["model.plan"].exists() and engine["tensorrt_status"] == "built"
    assert engine["build"]["fp16"] is False and engine["parity_topk_overlap"] == 1.0


def test_the_night_says_popularity_serves_and_why(fell_back):
    layout, _, registration, _ = fell_back
    outcome = run_outcome(layout, day(2), "night")
    weak = outcome.champion_before
    assert outcome.kind == FALLBACK_POPULARITY and outcome.candidate_version == registration.version
    assert outcome.champion_after == registration.fallback_version and outcome.champion_worse_than_popularity
    assert outcome.reason.startswith(f"champion {weak} -> {registration.fallback_version} (popularity); candidate "
                                     f"{registration.version} inconclusive: inconclusive gates (champion kept): ")
    assert outcome.reason.endswith("; replaced tonight") and "WORSE THAN POPULARITY" in outcome.reason
    assert note_markdown(outcome).startswith(f"**FALLBACK POPULARITY** day {day(2)}: champion {weak} -> ")


def test_the_popularity_champion_serves_the_popularity_ranking_minus_seen_items(fell_back):
    layout, cfg, registration, _ = fell_back
    graph_ref = read_json(version_dir(layout, registration.fallback_version) / "lineage.json")["data"]["graph"]
    from components.core.refs import GraphRef

    train = GraphArtifact.load(layout.artifact(GraphRef.from_dict(graph_ref))).train_interactions()
    counts = np.bincount(train.item, minlength=60)
    ranking = np.argsort(-counts, kind="stable")  # the gates' popularity baseline order
    recommender = Recommender.load(layout, runtime="onnxruntime")
    assert recommender.version == registration.fallback_version
    users = [f"u{u}" for u in range(40)] + ["nobody"]
    k = cfg.export.top_k
    served = recommender.recommend(users, k)
    for u, row in enumerate(served[:40]):
        seen = set(train.item[train.user == u].tolist())
        expected = [f"i{i}" for i in ranking if i not in seen][:k]
        assert [item for item, _ in row] == expected, u
    assert [item for item, _ in served[40]] == [f"i{i}" for i in ranking[:k]]  # unknown user: same ranking
    assert list(recommender.segments(["u0", "nobody"])) == ["model", "popularity"]


def test_the_next_night_judges_its_candidate_against_the_popularity_champion(fell_back, tmp_path):
    layout, strict, registration, _ = fell_back
    root = tmp_path / "root"
    shutil.copytree(layout.root, root)
    layout = Layout.at(root)
    assert champion_as_of(layout, day(3))[0].version == registration.fallback_version
    _, promotion = _night(layout, 3, strict, "good", "next")
    blessing = Blessing.load(layout.reports(day(3)) / "runs" / "next" / "blessing.json")
    assert blessing.champion_version == registration.fallback_version and blessing.blessed
    assert blessing.fallback is None and not blessing.champion_worse_than_popularity
    evaluation = read_json(blessing.evaluation_path)
    # the served popularity champion ranks like popularity: it is no better than yesterday's counts allow
    assert evaluation["champion"]["ndcg@20"] < evaluation["candidate"]["ndcg@20"]
    assert promotion.promoted and run_outcome(layout, day(3), "next").kind == PROMOTED
    assert champion(layout).previous[-1] == registration.fallback_version


def test_rollback_from_the_fallback_restores_the_champion_and_sticks(fell_back, tmp_path):
    layout, strict, registration, _ = fell_back
    root = tmp_path / "root"
    shutil.copytree(layout.root, root)
    layout = Layout.at(root)
    weak = champion(layout).previous[-1]
    assert rollback(layout, reason="ops: keep the model") == weak and champion(layout).version == weak
    rerun = run_promote(layout, day(2), strict, run_key="night")
    assert not rerun.promoted and champion(layout).version == weak
    assert f"popularity fallback {registration.fallback_version} not promoted: rolled back:" in rerun.reason
    assert run_outcome(layout, day(2), "night").kind == INCONCLUSIVE
    assert champion_as_of(layout, day(3))[0].version == weak  # the rolled-back fallback is nobody's baseline


def test_keep_keeps_the_weak_champion(world):
    layout, root = world
    _, keep = _configs(root, "keep")
    weak = champion(layout).version
    registration, promotion = _night(layout, 2, keep, "random", "night")
    assert registration.fallback_version is None and not promotion.promoted
    outcome = run_outcome(layout, day(2), "night")
    assert outcome.kind == INCONCLUSIVE and outcome.champion_after == weak and outcome.champion_worse_than_popularity
    assert outcome.reason.endswith("; it keeps serving")
    assert not any("popularity" in v.name for v in (layout.registry() / "versions").iterdir())


def test_a_qualifying_candidate_is_promoted_not_popularity(world):
    layout, root = world
    _, strict = _configs(root, "popularity")
    registration, promotion = _night(layout, 2, strict, "good", "night")
    assert registration.blessed and registration.fallback_version is None
    assert promotion.promoted and promotion.version == registration.version
    assert run_outcome(layout, day(2), "night").kind == PROMOTED
