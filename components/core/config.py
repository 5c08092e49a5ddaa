"""Typed pipeline configuration: declared once, validated on load, defaults that run the demo.

Every threshold a validation rule or a promotion gate uses lives here (gates are loaded from the
declarative gate file config/gates.yaml). Overrides come as a nested mapping or dotted keys
(``{"teacher.epochs": 3}``) so Airflow Params and CLI flags use the same path.
"""

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from components.core.errors import PermanentStageFailure

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG_FILE = REPO_ROOT / "config" / "pipeline.yaml"
DEFAULT_GATES_FILE = REPO_ROOT / "config" / "gates.yaml"


def default_root() -> str:
    """The artifact root when none is given: $GRAPHDISTILL_ROOT, else <repo>/.graphdistill."""
    return os.environ.get("GRAPHDISTILL_ROOT", str(REPO_ROOT / ".graphdistill"))


def default_config_file() -> str:
    """The pipeline config when none is given: $GRAPHDISTILL_CONFIG, else config/pipeline.yaml."""
    return os.environ.get("GRAPHDISTILL_CONFIG", str(DEFAULT_CONFIG_FILE))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    """The interaction-log contract (see README "Interaction logs")."""

    event_weights: dict[str, float] = Field(
        default_factory=lambda: {"view": 1.0, "click": 2.0, "cart": 3.0, "purchase": 5.0}
    )
    # Late events: rows landing in day D's partition whose timestamp is up to this many hours
    # before D (or after D's end, for clock skew) are accepted into D and counted as late.
    late_tolerance_hours: float = Field(6.0, ge=0, le=48)

    @field_validator("event_weights")
    @classmethod
    def _positive_weights(cls, weights: dict[str, float]) -> dict[str, float]:
        if not weights or any(w <= 0 for w in weights.values()):
            raise ValueError("event_weights must be a non-empty mapping of positive weights")
        return weights


Severity = Literal["quarantine", "warn", "off"]

# Anomaly checks judged against the trailing history of accepted days (components/data/anomalies.py).
# Volume and events per user are judged on a log scale (they vary multiplicatively).
ANOMALY_METRICS = ("volume", "new_user_share", "new_item_share", "top_user_share", "events_per_user",
                   "top_item_share", "event_type_mix_shift")


class ValidationConfig(_Section):
    """The data contract's thresholds and every validation rule's severity (README "Interaction-log contract").

    Contract rules (schema and types, nulls, event types, timestamps, duplicates, unreadable files)
    quarantine the day; anomaly checks (volume, new-user/item shares, concentration, event-type
    mix, unknown columns, a bot-like day) warn by default. ``severity`` overrides any rule by
    name (``expect_column_values_to_not_be_null`` or ``expect_column_values_to_not_be_null(ts)``).
    """

    # Contract floor: fewer rows quarantine the day. Real logs have near-empty days (MovieLens-100k
    # has a 1-row day), so anything beyond "not empty" is the volume anomaly check's job.
    min_rows: int = Field(1, ge=1)
    # Redelivered events (same event_id) are normal in at-least-once logs up to this share;
    # above it the producer is broken and the day is quarantined.
    max_duplicate_share: float = Field(0.05, ge=0, le=1)
    # Declared type of each id column: "integer" reads a whole float (13.0) as 13 and fails any
    # non-integer (id_type); "string" keeps text as it came (a whole float is still flagged,
    # id_float_form). Ids are compared in Unicode NFC either way (id_unicode_form).
    id_types: dict[str, Literal["string", "integer"]] = Field(
        default_factory=lambda: {"event_id": "string", "user_id": "string", "item_id": "string"})
    # Text that means "no value" in any contract column: it becomes null (the not-null rule names it).
    null_tokens: list[str] = Field(default_factory=lambda: ["NULL", "null", "None", "none", "nan", "NaN", "NA", "N/A", "\\N"])
    # Unit of epoch timestamps; "auto" detects it per value by magnitude (components/data/coercion.py
    # EPOCH_UNIT_LIMITS: < 1e11 s, < 1e14 ms, < 1e17 us, else ns) and a file mixing units fails
    # ts_consistent_form. Declare it when a log's epochs are near 1970 (small numbers).
    epoch_unit: Literal["auto", "s", "ms", "us", "ns"] = "auto"
    # Anomaly bands: median +- k * 1.4826 * MAD of the trailing accepted days (same weekday when
    # at least ``weekday_min_days`` of them are in the lookback), judged once ``min_history_days``
    # accepted days exist; a band is never narrower than ``min_band[metric]`` either side.
    # Tuned on MovieLens-100k's 213 days (benchmarks/real_logs): k=4 with same-weekday bands from
    # 4 days warned on 30% of them (4-sample MADs are noise); k=5, 8 same weekdays in 56 days: 9%.
    anomaly_k: float = Field(5.0, gt=0)
    anomaly_lookback_days: int = Field(56, ge=1)
    min_history_days: int = Field(7, ge=1)
    weekday_min_days: int = Field(8, ge=1)
    # Shares and per-user rates of a day with fewer rows are not judged (MovieLens-100k has days of
    # 1, 4 and 6 ratings whose "top item share" is noise); the volume check still judges such a day.
    anomaly_min_rows: int = Field(50, ge=1)
    min_band: dict[str, float] = Field(default_factory=lambda: {
        "volume": 1.0,  # log scale: at least e^1 = 2.7x either way
        "new_user_share": 0.1,
        "new_item_share": 0.1,
        "top_user_share": 0.1,
        "events_per_user": 0.7,  # log scale: 2x
        "top_item_share": 0.05,
        "event_type_mix_shift": 0.1,
    })
    # An obviously automated day: one user produces at least this share of a day's events, with
    # at least ``bot_min_events`` events. Loud either way; its severity decides warn or quarantine.
    bot_top_user_share: float = Field(0.9, gt=0, le=1)
    bot_min_events: int = Field(50, ge=1)
    severity: dict[str, Severity] = Field(default_factory=dict)
    # Rows read, checked (the GX suite runs per chunk) and written per chunk by ingest and validate:
    # the memory bound of a day (benchmarks/validate_scale). The verdict, counts and accepted rows
    # do not depend on it; the accepted files' row groups do.
    chunk_rows: int = Field(1_000_000, ge=1)
    # Rows of a landed file ingest reads and converts at a time (components/data/landed.py: a survey
    # pass, then a converting pass), so a day landed as one 1.2 GB file is never held whole. The
    # staged bytes, issues and verdict do not depend on it (tests/unit/data/test_streaming_ingest.py).
    landing_chunk_rows: int = Field(1_000_000, ge=1)
    # Graph-level checks after the graph is built (recorded in graphs/<day>/stats.json "checks").
    graph_max_degree_drift: float = Field(0.25, ge=0, le=1)  # total variation of log2 degree histograms vs the previous graph
    graph_max_isolated_share: float = Field(0.5, ge=0, le=1)  # nodes without a training edge
    # Holdout pairs whose user or item has no training edge: 0.35-0.99 on normal MovieLens-100k days
    # (most raters are new there), so only a day where nearly nothing can be evaluated warns.
    graph_max_cold_share: float = Field(0.99, ge=0, le=1)

    @field_validator("id_types")
    @classmethod
    def _id_columns(cls, types: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(types) - {"event_id", "user_id", "item_id"})
        if unknown:
            raise ValueError(f"id_types: unknown column(s) {unknown}; known: event_id, user_id, item_id")
        return {"event_id": "string", "user_id": "string", "item_id": "string", **types}

    @field_validator("min_band")
    @classmethod
    def _known_metrics(cls, bands: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(bands) - set(ANOMALY_METRICS))
        if unknown:
            raise ValueError(f"min_band: unknown metric(s) {unknown}; known: {list(ANOMALY_METRICS)}")
        return {**{m: 0.0 for m in ANOMALY_METRICS}, **bands}


class FeatureConfig(_Section):
    windows_days: tuple[int, ...] = (1, 7, 28)
    # Length of the user_activity:recent_items list (distinct items of the largest window, most
    # recent first): serving excludes these and folds users the model does not know in from them.
    recent_items: int = Field(50, ge=1)
    online_store: Literal["sqlite", "redis"] = "sqlite"
    redis_connection_string: str = "localhost:6379"
    # Feast's registry: "file" (data/registry.db in the repo, written atomically) or "sql" (a database
    # every worker and the serving fleet share, e.g. the stack's Postgres: postgresql+psycopg2://...).
    registry_store: Literal["file", "sql"] = "file"
    registry_url: str = ""

    @model_validator(mode="after")
    def _sql_registry_has_a_url(self) -> "FeatureConfig":
        if self.registry_store == "sql" and "://" not in self.registry_url:
            raise ValueError(f"registry_store 'sql' needs registry_url (a SQLAlchemy URL), got {self.registry_url!r}")
        return self


class GraphConfig(_Section):
    window_days: int = Field(28, ge=1)
    # Exponential time decay of edge weights; None disables decay.
    decay_half_life_days: float | None = Field(14.0, gt=0)


class GraphFilterConfig(_Section):
    """The closed-form teacher (components/model/models/graph_filter.py); used when teacher.kind is graph_filter."""

    # gf_cf: linear filter + ideal low-pass (Shen et al. 2021); bspm: blur, add ideal, sharpen (Choi et al. 2023)
    variant: Literal["gf_cf", "bspm"] = "gf_cf"
    # Rank of the randomized SVD of R~ (the ideal low-pass filter's cut-off); GF-CF's Gowalla setting is 256.
    rank: int = Field(256, ge=1)
    ideal_weight: float = Field(0.3, ge=0)
    # torch.svd_lowrank sketches rank + oversample columns and runs this many power iterations.
    # 4, not the papers' 2: on Gowalla NDCG@20 0.1540 vs 0.1535, on MovieLens-100k +0.2% vs -0.2%
    # of the exact SVD, on a public split kept aside 2 lost 2.6% and 4 closed the gap
    # (benchmarks/filter_defaults, benchmarks/gowalla); it costs ~1.6x the SVD's seconds, a few
    # seconds at Gowalla's size, small beside scoring.
    svd_oversample: int = Field(16, ge=0)
    svd_iterations: int = Field(4, ge=0)
    # The exact (LAPACK) SVD instead, when the graph's smaller side is at most this and the dense R~
    # fits compute.block_bytes: the randomized SVD lost 5.9% NDCG@20 at 2 power iterations on the
    # Instacart sample (rank 256 of 593 users), 0.2% on MovieLens-100k (benchmarks/filter_defaults);
    # the exact one took 1.3 s there. 0 turns it off.
    svd_exact_max_side: int = Field(2048, ge=0)
    # BSPM's Euler integration of blurring (ds/dt = s (P - I)) and sharpening (ds/dt = -s P), P = R~^T R~.
    blur_time: float = Field(1.0, ge=0)
    blur_steps: int = Field(1, ge=1)
    sharpen_time: float = Field(2.5, ge=0)
    sharpen_steps: int = Field(1, ge=1)
    # The authors' Gowalla setting sharpens with RK4; a single Euler step inverts the ranking.
    sharpen_solver: Literal["euler", "rk4"] = "rk4"
    # Users scored per block: peak scoring memory ~ 4 bytes * block_users * (2 * num_items + num_users).
    block_users: int = Field(1024, ge=1)


class TeacherConfig(_Section):
    # graph_filter: recomputed from each night's graph in closed form (no training); lightgcn: trained,
    # warm-started from yesterday's teacher. The LightGCN fields below apply to kind lightgcn only.
    kind: Literal["graph_filter", "lightgcn"] = "graph_filter"
    graph_filter: GraphFilterConfig = GraphFilterConfig()
    # Entries of the adjacency both teacher kinds and the student normalize: "binary" (1 per distinct
    # pair, the papers' choice) or "weighted" (summed, time-decayed event weights from the graph).
    edge_weights: Literal["binary", "weighted"] = "binary"
    embedding_dim: int = Field(64, ge=2)
    num_layers: int = Field(3, ge=0)
    # LightGCN's alpha_k; None means uniform 1/(K+1) as in the paper.
    layer_weights: tuple[float, ...] | None = None
    lr: float = Field(1e-3, gt=0)
    l2: float = Field(1e-4, ge=0)
    batch_size: int = Field(2048, ge=1)
    epochs: int = Field(30, ge=1)
    eval_every: int = Field(5, ge=1)
    early_stop_patience: int = Field(3, ge=1)
    val_fraction: float = Field(0.1, ge=0, lt=1)
    # Validation (teacher, student early stopping, pruning, the size ladder) is scored on the pairs of
    # this many of the split's users, drawn with the config seed; None = all. Full ranking costs
    # users x items: at 100k users the teacher's validation of 78k users took 498 s (issue 19). 10,000
    # keeps every user of the demo and 42% of the 30k world's 23,706 (a per-user NDCG@20 spread of
    # ~0.3 gives its mean a standard error of ~0.003, estimated).
    val_users: int | None = Field(10_000, ge=1)
    # The one device of the model stages: the graph filter (SVD and scoring), LightGCN training,
    # distillation, pruning and every evaluation of their scores. "auto": CUDA when present, else CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Propagation backend: "auto" = torch.sparse CSR on CUDA, the measured-faster path on CPU
    # (see components/model/models/lightgcn.py); "dgl" = DGL message passing; "sparse" = CSR matmul.
    propagation: Literal["auto", "dgl", "sparse"] = "auto"
    # Fewer distinct training pairs than this and the teacher stage raises InsufficientHistory
    # (the DAG skips the day's model stages instead of training on noise).
    min_train_pairs: int = Field(50, ge=1)

    @model_validator(mode="after")
    def _weights_match_layers(self) -> "TeacherConfig":
        if self.layer_weights is not None and len(self.layer_weights) != self.num_layers + 1:
            raise ValueError(
                f"layer_weights needs num_layers + 1 = {self.num_layers + 1} entries, "
                f"got {len(self.layer_weights)}"
            )
        return self


class DistillConfig(_Section):
    # Student embedding size (a graph-filter teacher has no embedding size to take a fraction of);
    # the size ladder (ladder.prune_ratios) then decides how many of these dimensions are shipped.
    embedding_dim: int = Field(16, ge=1)
    num_layers: int = Field(3, ge=0)
    epochs: int = Field(30, ge=1)
    # Tuned on the demo data (nightly runs train few epochs); over a longer Gowalla run 5e-3 did
    # slightly better (93.1% vs 92.3% of the teacher's NDCG@20, benchmarks/gowalla).
    lr: float = Field(2e-2, gt=0)
    l2: float = Field(1e-4, ge=0)
    batch_size: int = Field(2048, ge=1)
    # Bound on an epoch's cost, deterministic (not wall time: a version must not depend on the
    # machine's speed): every step propagates the whole graph, so an epoch costs steps x training
    # pairs; the batch grows (an epoch still covers every pair once) until steps x pairs <= this.
    # Also bounds pruning's fine-tune. 4e8 leaves the 30k world's ~0.82-0.85 M pairs at batch 2048
    # (401-414 steps); at 100k users (2.83 M pairs) an epoch takes 141 steps of ~20k pairs instead of
    # 1,382: 101-176 s per epoch at load ~4 on 2 shared cores (20-23 s at ~1.7) instead of 370-657 s
    # at load 3-7 (issue 19, benchmarks/nightly_scale/results).
    # None: batch_size always.
    epoch_edge_budget: int | None = Field(400_000_000, ge=1)
    # Measured on Gowalla, 16-dim student from the GF-CF teacher, 30 CPU minutes each
    # (benchmarks/gowalla/results/students.md): kd_weight 0.2 with ranking distillation only beat its
    # no-KD twin (NDCG@20 0.1320 vs 0.1295); kd_weight 1 with KL fell below it (0.1158 vs 0.1240 at epoch 60).
    kd_weight: float = Field(0.2, ge=0)
    kd_topk: int = Field(20, ge=1)
    kd_temperature: float = Field(1.0, gt=0)
    # kd loss = kd_rank_weight * ranking distillation (teacher top-k as rank-discounted soft
    # positives above the BPR negative, weights exp(-rank / kd_rank_lambda)) + kd_kl_weight * KL over
    # the teacher's top-k. kd_weight 0 trains the no-KD twin (BPR only, same init and schedule).
    kd_rank_weight: float = Field(1.0, ge=0)
    kd_kl_weight: float = Field(0.0, ge=0)
    kd_rank_lambda: float = Field(5.0, gt=0)
    # "teacher": the student starts from the teacher's best low-rank scores (graph filter: its top
    # singular vectors; LightGCN: its egos projected on its top principal axes); "random": N(0, 0.1^2).
    init: Literal["teacher", "random"] = "teacher"
    # Users whose teacher top-k the student distils from: None = all users; N = a sample of N users
    # drawn with the config seed (the others train on BPR alone). The distill record says which.
    teacher_target_users: int | None = Field(None, ge=1)
    # Deliberately corrupt the student's training labels (shuffle items); exists only to prove
    # the gates reject a bad candidate, see tests/e2e.
    shuffle_labels: bool = False


class PruneConfig(_Section):
    # How a ladder rung with a prune ratio > 0 is pruned (the ratios are ladder.prune_ratios).
    method: Literal["magnitude", "structured"] = "structured"
    steps: int = Field(2, ge=1)
    finetune_epochs: int = Field(5, ge=0)


Precision = Literal["fp32", "fp16", "int8"]


class LadderConfig(_Section):
    """The shipped size, chosen by measurement (components/model/ladder.py): every rung (prune ratio of the
    distilled student x embedding-table precision) is judged on the validation split against the
    teacher; the smallest rung within the budgets that keeps ``min_retention`` of the teacher's
    validation NDCG@20 ships; if none does, the best-retaining rung within the budgets ships."""

    # Share of the distilled student removed (structured: dimensions; magnitude: ego weights);
    # 0 = the student as distilled. Each ratio > 0 costs one pruning run (prune.steps fine-tunes).
    # On Gowalla the 16-dim student keeps 86% of the teacher's NDCG@20, pruned to 8 dims 72%.
    prune_ratios: tuple[float, ...] = (0.0, 0.5)
    # Nearly free rungs: int8 tables measured -0.02% NDCG@20 on Gowalla (benchmarks/gowalla).
    precisions: tuple[Precision, ...] = ("int8", "fp16", "fp32")
    # Above the retention gate (0.80 in config/gates.yaml, judged on the fresh day with intervals):
    # a margin so that the shipped size does not sit at the gate's edge.
    min_retention: float = Field(0.85, ge=0)
    # When no rung reaches min_retention: retentions within this of the best count as equal and the
    # smallest of them ships (a 0.0001 measured gain is not worth 4x the bytes).
    tie_tolerance: float = Field(0.005, ge=0)
    # Budgets: both embedding tables at the rung's precision (scales included; the engine_bytes gate
    # judges the whole serving graph), and the p95 latency of the PyTorch serving graph at the
    # largest export batch size over ``latency_calls`` timed calls (the engine gate judges p99).
    max_table_bytes: int = Field(150_000_000, ge=1)
    max_latency_ms: float = Field(250.0, gt=0)
    latency_calls: int = Field(20, ge=1)

    @field_validator("prune_ratios")
    @classmethod
    def _ratios(cls, ratios: tuple[float, ...]) -> tuple[float, ...]:
        if not ratios or len(set(ratios)) != len(ratios) or not all(0 <= r < 1 for r in ratios):
            raise ValueError(f"prune_ratios needs distinct ratios in [0, 1), got {list(ratios)}")
        return ratios

    @field_validator("precisions")
    @classmethod
    def _precisions(cls, precisions: tuple[str, ...]) -> tuple[str, ...]:
        if not precisions or len(set(precisions)) != len(precisions):
            raise ValueError(f"precisions needs distinct entries of fp32, fp16, int8, got {list(precisions)}")
        return precisions


class ExportConfig(_Section):
    top_k: int = Field(50, ge=1)
    batch_sizes: tuple[int, ...] = (1, 64, 256)
    opset: int = Field(17, ge=13)
    exclude_seen: bool = True
    # Timed calls per batch size after warm-up; the latency gates need >= gates' min_latency_calls.
    latency_repeats: int = Field(1000, ge=3)
    # The embedding tables' precision in the ONNX graph is the size ladder's choice (ladder.precisions).
    # The export fails if the quantized graph's top-K agrees with the fp32 graph's less than this.
    min_topk_overlap_vs_fp32: dict[str, float] = Field(
        default_factory=lambda: {"fp32": 1.0, "fp16": 0.99, "int8": 0.95})

    @field_validator("min_topk_overlap_vs_fp32")
    @classmethod
    def _overlap_floors(cls, floors: dict[str, float]) -> dict[str, float]:
        if set(floors) != {"fp32", "fp16", "int8"} or not all(0 <= v <= 1 for v in floors.values()):
            raise ValueError("min_topk_overlap_vs_fp32 needs a floor in [0, 1] for each of fp32, fp16, int8")
        return floors


class EngineConfig(_Section):
    runtime: Literal["auto", "tensorrt", "onnxruntime"] = "auto"
    fp16: bool = True
    workspace_mb: int = Field(1024, ge=64)


class ComputeConfig(_Section):
    """Memory of the model stages: linear in the data. No stage holds a users x items buffer; the
    graph filter's scoring, the teacher's distillation targets and every evaluation score users in
    blocks whose working set stays within ``block_bytes`` (then capped by
    teacher.graph_filter.block_users / eval.user_batch_size)."""

    # 1 GiB: on Gowalla (29,858 users x 40,981 items) GF-CF's and evaluation's blocks stay at their
    # caps (1024 / 4096 users), BSPM's RK4 scores 610; at 300k users x 400k items GF-CF scores 116.
    block_bytes: int = Field(2 ** 30, ge=2 ** 16)


class EvalConfig(_Section):
    ks: tuple[int, ...] = (10, 20, 50)
    user_batch_size: int = Field(4096, ge=1)


GATE_KINDS = ("min", "max", "min_ratio_to", "max_regression_vs", "min_lift_over")
RELATIVE_KINDS = ("min_ratio_to", "max_regression_vs", "min_lift_over")
# Which users a comparison is judged on (components/core/refs.py PerUser.segment_mask): all; history
# (users with history before the day: a trained embedding or recent items to fold in, the users
# on whom models can answer differently); warm (a trained embedding); cold (none).
Segment = Literal["all", "history", "warm", "cold"]


class GateSpec(_Section):
    """One gate: a metric compared with an absolute threshold or with a baseline's value.

    Evaluation metrics are judged on a paired bootstrap interval over users (see config/gates.yaml
    for each kind's rule); ``segment`` picks which users. ``role``: a decision gate's FAIL (or
    INCONCLUSIVE) keeps the champion; a diagnostic gate's is measured, shown and alerted on, but is
    overridden for a candidate that conclusively beats the champion and popularity
    (``GatesConfig.conclusive_win``). Unmarked gates decide: nobody loses a veto by omission."""

    metric: str
    kind: Literal["min", "max", "min_ratio_to", "max_regression_vs", "min_lift_over"]
    threshold: float
    baseline: Literal["champion", "teacher", "popularity"] | None = None
    segment: Segment = "all"
    role: Literal["decision", "diagnostic"] = "decision"
    description: str = ""

    @model_validator(mode="after")
    def _baseline_when_relative(self) -> "GateSpec":
        relative = self.kind in RELATIVE_KINDS
        if relative and self.baseline is None:
            raise ValueError(f"gate on {self.metric!r} of kind {self.kind} needs a baseline")
        if not relative and self.baseline is not None:
            raise ValueError(f"gate on {self.metric!r} of kind {self.kind} takes no baseline")
        return self


class ConclusiveWin(_Section):
    """When a candidate *conclusively beats* a baseline (what overrides diagnostic gates): the lower
    bound of the paired bootstrap interval of the relative change c/b - 1 of ``metric`` on
    ``segment`` is above ``min_lift_over_<baseline>``. Both the champion (as of the day; none at
    bootstrap) and popularity must be beaten."""

    metric: str = "ndcg@20"
    segment: Segment = "history"
    min_lift_over_champion: float = Field(0.0, ge=0)
    min_lift_over_popularity: float = Field(0.0, ge=0)


class ChampionHealth(_Section):
    """The champion as served against popularity on the fresh day, every night it is evaluated:
    it *conclusively loses* when the upper bound of the paired interval of champion/popularity - 1
    of ``metric`` on ``segment`` is below ``-tolerance``."""

    metric: str = "ndcg@20"
    segment: Segment = "history"
    tolerance: float = Field(0.0, ge=0, lt=1)
    # When the champion conclusively loses and the candidate does not qualify: serve the popularity
    # version (components/decide/fallback.py) or keep the champion; why popularity: config/gates.yaml.
    fallback: Literal["keep", "popularity"] = "popularity"
    # When there is no champion yet (bootstrap) and the candidate does not qualify: serve the popularity
    # version until a candidate does, or serve nothing (serving has no champion to load). On the
    # Instacart sample no candidate ever beat popularity: 12 nights with nothing in service.
    no_champion: Literal["none", "popularity"] = "popularity"


class GatesConfig(_Section):
    # With no champion yet, relative-to-champion gates are skipped (and reported as such);
    # every other gate still applies (components/decide/gates.py judge_gate).
    gates: tuple[GateSpec, ...]
    # Paired bootstrap (scipy.stats.bootstrap) of every evaluation-metric gate's statistic over users.
    bootstrap_resamples: int = Field(2000, ge=1000)
    # Two-sided level: each bound of a 90% interval is a one-sided 95% bound.
    confidence_level: float = Field(0.90, gt=0.5, lt=1)
    bootstrap_method: Literal["percentile", "basic", "BCa"] = "percentile"
    # What an INCONCLUSIVE gate (interval straddles the threshold, too few users or timed calls)
    # means for promotion: keep the champion (default), or promote as if it had passed.
    inconclusive: Literal["keep_champion", "promote"] = "keep_champion"
    # Latency gates need at least this many timed calls (after warm-up) to decide.
    min_latency_calls: int = Field(1000, ge=1)
    conclusive_win: ConclusiveWin = ConclusiveWin()
    champion_health: ChampionHealth = ChampionHealth()


def load_gates(path: str | Path = DEFAULT_GATES_FILE) -> GatesConfig:
    data = yaml.safe_load(Path(path).read_text())
    try:
        return GatesConfig.model_validate(data)
    except Exception as exc:  # pydantic's message names the field; add the file
        raise ValueError(f"{path}: invalid gate file: {exc}") from exc


class OpsConfig(_Section):
    """Alerting, deadlines and serving hand-off (read by the DAG at parse time and by its tasks)."""

    # Alert when the serving champion was trained for a day this many nights before the run's day.
    stale_champion_nights: int = Field(5, ge=1)
    # DeadlineAlert: a run must finish this long after it was queued, else the alert fires.
    run_deadline_hours: float = Field(8.0, gt=0)
    # dagrun_timeout: a run still going after this long is failed (the champion keeps serving).
    run_timeout_hours: float = Field(12.0, gt=0)
    # Airflow connections (absent = the alert is a log line; the note is skipped with a log line):
    # an http(s) webhook (Slack incoming webhook or any JSON endpoint) and the api-server for run notes.
    alert_connection_id: str = "graphdistill_alerts"
    api_connection_id: str = "graphdistill_api"
    # The Airflow UI's address as ops reach it (e.g. https://airflow.example.com): alerts link to the run.
    base_url: str | None = None
    # Where the champion-refresh DAG writes the Triton model repository (relative to root if not absolute).
    triton_repository: str = "serving/triton_repository"
    # The first day the schedule processes (catch-up runs every day from it). null: the first landed day
    # under the root, or, with nothing landed yet, no catch-up at all (one run, for the latest day).
    # The environment variable GRAPHDISTILL_START_DATE overrides it (components.decide.outcome.schedule_start).
    start_date: dt.date | None = None


class PipelineConfig(_Section):
    root: str = ".graphdistill"
    seed: int = 0
    data: DataConfig = DataConfig()
    validation: ValidationConfig = ValidationConfig()
    features: FeatureConfig = FeatureConfig()
    graph: GraphConfig = GraphConfig()
    teacher: TeacherConfig = TeacherConfig()
    distill: DistillConfig = DistillConfig()
    prune: PruneConfig = PruneConfig()
    ladder: LadderConfig = LadderConfig()
    export: ExportConfig = ExportConfig()
    engine: EngineConfig = EngineConfig()
    eval: EvalConfig = EvalConfig()
    compute: ComputeConfig = ComputeConfig()
    ops: OpsConfig = OpsConfig()
    gates_file: str = str(DEFAULT_GATES_FILE)

    @property
    def gates(self) -> GatesConfig:
        return load_gates(self.gates_file)

    def config_hash(self, stage: str | None = None) -> str:
        """Hash of the settings that change a stage's result (all of them, gates included, when
        ``stage`` is None). Per-stage hashes let ops retune a gate or a threshold without
        invalidating trained models; the root is excluded (same config, other place)."""
        # compute: how the work is blocked, not what it computes
        payload = self.model_dump(mode="json", exclude={"root", "gates_file", "ops", "compute"})
        payload["gates"] = self.gates.model_dump(mode="json")
        if stage is not None:
            if stage not in STAGE_SECTIONS:
                raise KeyError(f"no config sections declared for stage {stage!r}; known: {sorted(STAGE_SECTIONS)}")
            payload = {key: _field(payload, key) for key in STAGE_SECTIONS[stage]}
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _field(payload: dict, dotted: str):
    """``payload``'s section or ``section.field``."""
    for part in dotted.split("."):
        payload = payload[part]
    return payload


# The config sections (or single fields, "section.field") each stage's output depends on (upstream
# artifacts are pinned by version in the stage's lineage, so only the stage's own knobs are listed,
# plus the seed).
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "validate": ("data", "validation"),
    "features": ("features",),
    "graph": ("data", "graph", "validation"),  # validation: the graph-level check thresholds
    # the teacher stores distill's targets (components/model/teacher.py holdout_and_targets)
    "teacher": ("seed", "teacher", "eval", "distill.kd_weight", "distill.kd_topk", "distill.teacher_target_users"),
    "distill": ("seed", "teacher", "eval", "distill"),
    # export: the ladder times each rung's serving graph at export.top_k and the largest batch size
    "prune": ("seed", "teacher", "eval", "distill", "prune", "ladder", "export"),
    "export": ("seed", "export"),
    "engine": ("seed", "export", "engine"),
}


class ConfigError(PermanentStageFailure, ValueError):
    """The configuration (file or a run's overrides) is invalid: no retry can fix it."""


def _dotted_keys(nested: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for key, value in nested.items():
        dotted = f"{prefix}{key}"
        keys.add(dotted)
        if isinstance(value, dict):
            keys |= _dotted_keys(value, f"{dotted}.")
    return keys


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """The field names declared at ``loc``'s parent (for "did you mean")."""
    model: Any = PipelineConfig
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        model = field.annotation if field is not None else None
        if not isinstance(model, type) or not issubclass(model, BaseModel):
            return []
    return list(model.model_fields)


def describe_config_errors(exc: ValidationError, path: str | Path | None, overrides: dict[str, Any]) -> str:
    """One line per invalid key, naming where the key came from (the run's overrides or the file),
    what was wrong, the value given and, for an unknown key, the closest declared one."""
    from_overrides = _dotted_keys(overrides)
    lines = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        dotted = ".".join(str(part) for part in loc)
        source = "the run's overrides" if dotted in from_overrides else f"config file {path}"
        line = f"{source}: {dotted!r}: {error['msg']}"
        if error["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(loc[-1]), _fields_at(loc), n=1)
            if close:
                line += f" (did you mean {'.'.join([*map(str, loc[:-1]), close[0]])!r}?)"
        elif "input" in error:
            line += f" (got {error['input']!r})"
        lines.append(line)
    return "invalid pipeline config: " + "; ".join(lines)


def _nest(overrides: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            node[leaf] = _merge(node[leaf], value)
        else:
            node[leaf] = value
    return nested


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(
    path: str | Path | None = DEFAULT_CONFIG_FILE, overrides: dict[str, Any] | None = None
) -> PipelineConfig:
    """Load the YAML config (if any), apply overrides (nested or dotted keys), validate."""
    data: dict[str, Any] = {}
    if path is not None:
        if not Path(path).exists():  # a typo must not silently run the defaults
            raise FileNotFoundError(f"pipeline config {path} does not exist")
        data = yaml.safe_load(Path(path).read_text()) or {}
    nested_overrides = _nest(overrides) if overrides else {}
    data = _merge(data, nested_overrides)
    try:
        config = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_config_errors(exc, path, nested_overrides)) from exc
    config.gates  # fail early on a broken gate file
    return config
