"""Evaluate and gate stages: the candidate against its baselines on the fresh day, then a blessing.

Evaluation (``run_evaluate``): the candidate (pruned student), the teacher, the serving champion
and a popularity baseline are ranked over the full catalogue for the SAME holdout users of the
run day (the graph's holdout), training positives excluded, via ``components.evaluate``. ID maps
are append-only, so an older champion covers an index prefix: its missing item rows score -inf
(it cannot recommend what it never saw) and only holdout users known to every compared model are
evaluated. The counts of what was restricted are recorded.

Gating (``judge``, ``run_gate``), TFX Evaluator style: every gate in config/gates.yaml gets a
verdict (pass / fail / skipped) with its metric, value, baseline value, threshold and who
measured it; the candidate is blessed only if no gate failed. Without a champion (bootstrap),
gates against the champion are skipped and say so; every other gate applies.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.config import GateSpec, GatesConfig, PipelineConfig
from components.evaluate import evaluate_scorer, popularity_scorer
from components.graph import GraphArtifact, Interactions
from components.storage import Layout, atomic_write_bytes, read_json, write_json

log = logging.getLogger(__name__)

EVALUATION_FILE = "evaluation.json"
BLESSING_FILE = "blessing.json"
ENGINE_METRICS = ("parity_max_abs_diff", "parity_topk_overlap", "latency_p99_ms", "engine_bytes")
BOOTSTRAP_NOTE = "skipped (no champion: bootstrap)"


# --- evaluation -------------------------------------------------------------------------------


def prefix_scorer(user_emb: np.ndarray, item_emb: np.ndarray, num_items: int):
    """Inner-product scorer over ``num_items`` items for a model covering an item prefix:
    items beyond its embeddings score -inf."""
    user_t = torch.as_tensor(user_emb, dtype=torch.float32)
    item_t = torch.as_tensor(item_emb, dtype=torch.float32)
    known = item_t.shape[0]
    if known > num_items:
        raise ValueError(f"model has {known} item rows, more than the graph's {num_items} items")

    def score(users: torch.Tensor) -> torch.Tensor:
        scores = torch.full((users.numel(), num_items), -torch.inf)
        scores[:, :known] = user_t[users] @ item_t.T
        return scores

    return score


@dataclass(frozen=True)
class EvaluationResult:
    """Metrics of candidate, teacher, champion (None at bootstrap) and popularity on one user set."""

    day: str
    path: str  # reports/<day>/evaluation.json
    graph_version: str
    candidate_version: str
    teacher_version: str | None
    champion_version: str | None
    candidate: dict[str, float]
    teacher: dict[str, float] | None
    champion: dict[str, float] | None
    popularity: dict[str, float]
    holdout_users: int  # distinct users in the day's holdout
    holdout_pairs: int
    users_unknown_to_a_model: int  # holdout users outside some compared model's user range
    pairs_unknown_to_a_model: int
    users_evaluated: int
    cold_users_skipped: int
    known_users_bound: int  # users with index < this are known to every compared model

    def metrics_of(self, baseline: str) -> dict[str, float] | None:
        return {"candidate": self.candidate, "teacher": self.teacher, "champion": self.champion,
                "popularity": self.popularity}[baseline]

    @classmethod
    def load(cls, path: str | Path) -> "EvaluationResult":
        return cls(**read_json(path))


def _restrict_users(test: Interactions, bound: int) -> Interactions:
    keep = test.user < bound
    return Interactions(test.user[keep], test.item[keep], test.weight[keep])


def run_evaluate(layout: Layout, day: str, cfg: PipelineConfig) -> EvaluationResult:
    """Evaluate candidate, teacher, champion and popularity on the day's holdout; write
    reports/<day>/evaluation.json."""
    from components.export import load_embeddings
    from components.registry import champion as current_champion
    from components.teacher import load_teacher_scorer

    graph_ref = layout.current("graphs", day)
    candidate_ref = layout.current("models/pruned", day)
    if graph_ref is None or candidate_ref is None:
        missing = "graphs" if graph_ref is None else "models/pruned"
        raise FileNotFoundError(f"run_evaluate {day}: no {missing} artifact under {layout.root}")
    teacher_ref = layout.current("models/teacher", day)
    champ = current_champion(layout)
    graph = GraphArtifact.load(graph_ref)
    train, holdout = graph.train_interactions(), graph.holdout_interactions()

    models: dict[str, tuple[np.ndarray, np.ndarray]] = {"candidate": load_embeddings(candidate_ref.path)}
    if teacher_ref is None:
        log.warning("evaluate %s: no teacher artifact; teacher-relative gates will fail", day)
    if champ is not None:
        models["champion"] = load_embeddings(champ.path)
    for name, (user_emb, item_emb) in models.items():
        if user_emb.shape[0] > graph.num_users or item_emb.shape[0] > graph.num_items:
            raise ValueError(
                f"evaluate {day}: {name} covers {user_emb.shape[0]} users x {item_emb.shape[0]} items, "
                f"more than graph {graph_ref.version} ({graph.num_users} x {graph.num_items})"
            )
    bound = min(user_emb.shape[0] for user_emb, _ in models.values())
    test = _restrict_users(holdout, bound)
    holdout_users = int(np.unique(holdout.user).size)
    unknown_users = holdout_users - int(np.unique(test.user).size)

    ks, batch = tuple(cfg.eval.ks), cfg.eval.user_batch_size
    metrics: dict[str, dict[str, float]] = {}
    for name, (user_emb, item_emb) in models.items():
        metrics[name] = evaluate_scorer(prefix_scorer(user_emb, item_emb, graph.num_items), train, test,
                                        graph.num_items, ks, batch)
    if teacher_ref is not None:  # either teacher kind, built on this graph (covers all its users)
        metrics["teacher"] = evaluate_scorer(load_teacher_scorer(teacher_ref.path, train), train, test,
                                             graph.num_items, ks, batch)
    metrics["popularity"] = evaluate_scorer(popularity_scorer(train, graph.num_items), train, test,
                                            graph.num_items, ks, batch)

    result = EvaluationResult(
        day=day,
        path=str(layout.reports(day) / EVALUATION_FILE),
        graph_version=graph_ref.version,
        candidate_version=candidate_ref.version,
        teacher_version=teacher_ref.version if teacher_ref else None,
        champion_version=champ.version if champ else None,
        candidate=metrics["candidate"],
        teacher=metrics.get("teacher"),
        champion=metrics.get("champion"),
        popularity=metrics["popularity"],
        holdout_users=holdout_users,
        holdout_pairs=len(holdout),
        users_unknown_to_a_model=unknown_users,
        pairs_unknown_to_a_model=len(holdout) - len(test),
        users_evaluated=int(metrics["candidate"]["users_evaluated"]),
        cold_users_skipped=int(metrics["candidate"]["cold_users_skipped"]),
        known_users_bound=int(bound),
    )
    write_json(Path(result.path), asdict(result))
    k = 20 if 20 in ks else ks[0]
    log.info(
        "evaluate %s: %d holdout users, %d evaluated (%d cold, %d unknown to %s); ndcg@%d candidate %.4f "
        "teacher %s champion %s popularity %.4f",
        day, holdout_users, result.users_evaluated, result.cold_users_skipped, unknown_users,
        "the champion" if champ else "a model", k, result.candidate[f"ndcg@{k}"],
        f"{result.teacher[f'ndcg@{k}']:.4f}" if result.teacher else "n/a",
        f"{result.champion[f'ndcg@{k}']:.4f}" if result.champion else "n/a (bootstrap)",
        result.popularity[f"ndcg@{k}"],
    )
    return result


# --- gating -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict with everything needed to audit it."""

    metric: str
    kind: str
    threshold: float
    baseline: str | None
    value: float | None  # the candidate's (or engine's) value
    baseline_value: float | None
    statistic: float | None  # what is compared with the threshold: value, ratio, regression or lift
    verdict: str  # "pass" | "fail" | "skipped"
    note: str
    measured_by: str  # "evaluation" or the runtime that measured an engine metric
    description: str = ""


@dataclass(frozen=True)
class Blessing:
    """The TFX-style blessing: promotion reads only this."""

    day: str
    blessed: bool
    candidate_version: str
    champion_version: str | None
    bootstrap: bool
    runtime: str | None  # runtime that measured the engine gates
    runtime_description: str | None
    tensorrt_status: str | None
    users_evaluated: int
    gates: tuple[GateResult, ...] = field(default_factory=tuple)
    failed: tuple[str, ...] = field(default_factory=tuple)
    path: str = ""

    @classmethod
    def load(cls, path: str | Path) -> "Blessing":
        data = read_json(path)
        data["gates"] = tuple(GateResult(**g) for g in data["gates"])
        data["failed"] = tuple(data["failed"])
        return cls(**data)


def _statistic(kind: str, value: float, base: float | None) -> float:
    """The quantity a gate kind compares with its threshold (see config/gates.yaml)."""
    if kind in ("min", "max"):
        return value
    assert base is not None
    if base == 0:  # a zero baseline: any positive value is an infinite ratio/lift, no regression
        if value == 0:  # 0 vs 0 measures nothing (e.g. no users evaluated): never a pass
            return math.nan
        return 0.0 if kind == "max_regression_vs" else math.inf
    if kind == "min_ratio_to":
        return value / base
    if kind == "max_regression_vs":
        return (base - value) / base
    if kind == "min_lift_over":
        return value / base - 1.0
    raise ValueError(f"unknown gate kind {kind!r}")


def _passes(kind: str, statistic: float, threshold: float) -> bool:
    if math.isnan(statistic):
        return False
    if kind in ("max", "max_regression_vs"):
        return statistic <= threshold
    return statistic >= threshold


def _engine_value(metric: str, engine) -> float:
    if metric == "latency_p99_ms":
        return float(engine.latency_p99_ms)
    return float(getattr(engine, metric))


def judge_gate(spec: GateSpec, evaluation: EvaluationResult, engine, has_champion: bool) -> GateResult:
    common = dict(metric=spec.metric, kind=spec.kind, threshold=spec.threshold, baseline=spec.baseline,
                  description=spec.description)
    if spec.metric in ENGINE_METRICS:
        if spec.baseline is not None:
            raise ValueError(f"gate on engine metric {spec.metric!r} supports kinds min/max only, got {spec.kind}")
        if engine is None:
            return GateResult(**common, value=None, baseline_value=None, statistic=None, verdict="fail",
                              note="no engine result: engine metrics were not measured", measured_by="none")
        value = _engine_value(spec.metric, engine)
        measured_by = f"{engine.runtime} ({engine.runtime_description})"
        if spec.metric == "latency_p99_ms":
            measured_by += f", batch {engine.largest_batch}"
    else:
        if spec.metric not in evaluation.candidate:
            raise ValueError(
                f"gate metric {spec.metric!r} is neither an engine metric {ENGINE_METRICS} nor an evaluation "
                f"metric (have {sorted(evaluation.candidate)})"
            )
        value = float(evaluation.candidate[spec.metric])
        measured_by = f"evaluation ({evaluation.users_evaluated} holdout users)"

    base = None
    if spec.baseline is not None:
        if spec.baseline == "champion" and not has_champion:
            return GateResult(**common, value=value, baseline_value=None, statistic=None, verdict="skipped",
                              note=BOOTSTRAP_NOTE, measured_by=measured_by)
        baseline_metrics = evaluation.metrics_of(spec.baseline)
        if baseline_metrics is None:
            return GateResult(**common, value=value, baseline_value=None, statistic=None, verdict="fail",
                              note=f"baseline {spec.baseline} was not evaluated", measured_by=measured_by)
        base = float(baseline_metrics[spec.metric])
    statistic = _statistic(spec.kind, value, base)
    verdict = "pass" if _passes(spec.kind, statistic, spec.threshold) else "fail"
    op = "<=" if spec.kind in ("max", "max_regression_vs") else ">="
    label = {"min": "value", "max": "value", "min_ratio_to": "ratio", "max_regression_vs": "regression",
             "min_lift_over": "lift"}[spec.kind]
    note = f"{label} {statistic:.6g} {op} {spec.threshold:g}" + ("" if verdict == "pass" else " violated")
    return GateResult(**common, value=value, baseline_value=base, statistic=statistic, verdict=verdict,
                      note=note, measured_by=measured_by)


def judge(evaluation: EvaluationResult, engine_result, gates: GatesConfig, has_champion: bool) -> Blessing:
    """Apply every gate; blessed iff none failed (skipped gates are listed, never counted as passed)."""
    results = tuple(judge_gate(spec, evaluation, engine_result, has_champion) for spec in gates.gates)
    failed = tuple(f"{g.metric} {g.kind}{' ' + g.baseline if g.baseline else ''}" for g in results
                   if g.verdict == "fail")
    return Blessing(
        day=evaluation.day,
        blessed=not failed,
        candidate_version=evaluation.candidate_version,
        champion_version=evaluation.champion_version if has_champion else None,
        bootstrap=not has_champion,
        runtime=engine_result.runtime if engine_result else None,
        runtime_description=engine_result.runtime_description if engine_result else None,
        tensorrt_status=engine_result.tensorrt_status if engine_result else None,
        users_evaluated=evaluation.users_evaluated,
        gates=results,
        failed=failed,
    )


def run_gate(layout: Layout, day: str, cfg: PipelineConfig) -> Blessing:
    """Judge the day's evaluation and engine; write blessing.json, gates.md and gates.html."""
    from components.engine import KIND as ENGINE_KIND, load_engine_result
    from components.report import gate_table_html, gate_table_markdown

    evaluation_path = layout.reports(day) / EVALUATION_FILE
    if not evaluation_path.exists():
        raise FileNotFoundError(f"run_gate {day}: {evaluation_path} missing (run the evaluate stage first)")
    evaluation = EvaluationResult.load(evaluation_path)
    engine_ref = layout.current(ENGINE_KIND, day)
    if engine_ref is None:
        raise FileNotFoundError(f"run_gate {day}: no engines artifact under {layout.root} (run convert first)")
    engine = load_engine_result(engine_ref)
    blessing = judge(evaluation, engine, cfg.gates, has_champion=evaluation.champion is not None)
    out = layout.reports(day)
    blessing = Blessing(**{**blessing.__dict__, "path": str(out / BLESSING_FILE)})
    write_json(out / BLESSING_FILE, asdict(blessing))
    atomic_write_bytes(out / "gates.md", gate_table_markdown(blessing).encode())
    atomic_write_bytes(out / "gates.html", gate_table_html(blessing).encode())
    for gate in blessing.gates:
        log.info("gate %s %s%s: %s (value %s, baseline %s, threshold %g; %s)", gate.metric, gate.kind,
                 f" vs {gate.baseline}" if gate.baseline else "", gate.verdict.upper(), _fmt(gate.value),
                 _fmt(gate.baseline_value), gate.threshold, gate.note)
    log.info("gate %s: candidate %s %s (%d gates, %d failed, %d skipped; engine gates on %s)", day,
             blessing.candidate_version, "BLESSED" if blessing.blessed else "REJECTED", len(blessing.gates),
             len(blessing.failed), sum(g.verdict == "skipped" for g in blessing.gates),
             blessing.runtime_description)
    return blessing


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.6g}"
