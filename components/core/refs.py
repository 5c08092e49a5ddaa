"""Typed references: the small, frozen, JSON-serializable records one stage hands to the next.

A stage takes references to its inputs (``DayRef`` -> ``AcceptedRef`` -> ``GraphRef`` -> ``TeacherRef``
-> ...; validate also the earlier days it judges a day against, ``ValidationHistory``) and publishes
through the catalog; the decision stages hand on what they measured and decided
(``EvaluationResult``, ``Blessing``). A reference names its artifact (kind, day, version, path); the
bytes stay where the catalog (components/core/catalog.py ``Layout``) put them, and only the catalog
turns a reference into a location (``Layout.artifact`` for versioned artifacts, ``Layout.partition``
for a day's staging, accepted or quarantine partition).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from components.core.catalog import read_json

# --- references to published artifacts ---------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    """A published artifact by name: the day it is for, its content version and where the catalog put
    it (a folder today; a URI once the catalog has an object-store backend). The catalog
    (``Layout.artifact``) is what turns a reference into the artifact's files. JSON: ``as_dict``."""

    day: str
    version: str
    path: str
    KIND: ClassVar[str] = ""

    @property
    def kind(self) -> str:
        return self.KIND

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "day": self.day, "version": self.version, "path": self.path}

    @classmethod
    def of(cls, result: Any) -> Self:
        """The reference a stage's result object carries (its day, version and path)."""
        return cls(day=result.day, version=result.version, path=result.path)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """The reference in a stage's JSON result (extra keys, e.g. metrics, are the result's own)."""
        kind = data.get("kind", cls.KIND)
        if kind != cls.KIND:
            raise ValueError(f"expected a {cls.KIND} reference, got kind {kind!r} ({data.get('day')} "
                             f"v{data.get('version')})")
        return cls(day=str(data["day"]), version=str(data["version"]), path=str(data["path"]))


class DayRef(Ref):
    """A landed day as ingest staged it (staging/date=<day>/: rows, value issues, files.json); its
    version is the content hash of those files (``Layout.partition`` checks it)."""

    KIND = "staging"


class AcceptedRef(Ref):
    """A day that passed validation (accepted/date=<day>/); version: the content hash of its files."""

    KIND = "accepted"


class QuarantinedRef(Ref):
    """A day validation quarantined (quarantine/date=<day>/: one folder per attempt, each with its raw
    files, staged rows and validation record); version: the content hash of its complete attempts."""

    KIND = "quarantine"


@dataclass(frozen=True)
class ValidationHistory:
    """The days before the validated one that validate judges it against (anomaly bands, known users
    and items, event ids already accepted): every accepted and every quarantined day before it, oldest
    first, resolved once by the caller (components/pipeline.catalog_inputs). JSON: ``as_dict``."""

    accepted: tuple[AcceptedRef, ...] = ()
    quarantined: tuple[QuarantinedRef, ...] = ()

    def as_dict(self) -> dict[str, list[dict[str, str]]]:
        return {"accepted": [r.as_dict() for r in self.accepted], "quarantined": [r.as_dict() for r in self.quarantined]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ValidationHistory":
        return cls(accepted=tuple(AcceptedRef.from_dict(r) for r in data["accepted"]),
                   quarantined=tuple(QuarantinedRef.from_dict(r) for r in data["quarantined"]))


class FeaturesRef(Ref):
    """The features stage's run for a day (features/runs/<day>.json); version: a hash of the accepted
    partitions it read and the features config (the Feast stores themselves are not versioned)."""

    KIND = "features"


class GraphRef(Ref):
    KIND = "graphs"


class TeacherRef(Ref):
    KIND = "models/teacher"


class ModelRef(Ref):
    """A LightGCN student artifact: distilled (StudentRef) or pruned to its shipped size (PrunedRef)."""


class StudentRef(ModelRef):
    KIND = "models/student"


class PrunedRef(ModelRef):
    KIND = "models/pruned"


class ExportRef(Ref):
    KIND = "exports"


class EngineRef(Ref):
    KIND = "engines"


# Files of a run folder (reports/<day>/runs/<run_key>/): what evaluate measured and gate judged.
EVALUATION_FILE = "evaluation.json"
PER_USER_FILE = "per_user.npz"
BLESSING_FILE = "blessing.json"


def describe_comparison(comparison: dict[str, Any]) -> str:
    """A comparison (:class:`Comparison`) in one phrase, e.g. "ndcg@20 +12.3% [+4.1%, +20.5%],
    812 history users": what reasons, notes and alerts quote."""
    if comparison.get("relative_change") is None:
        return comparison.get("note") or "not measured"
    interval = ("" if comparison.get("ci_low") is None
                else f" [{comparison['ci_low']:+.1%}, {comparison['ci_high']:+.1%}]")
    return (f"{comparison['metric']} {comparison['relative_change']:+.1%}{interval}, "
            f"{comparison['n']} {comparison['segment']} users")


@dataclass(frozen=True)
class EvaluationResult:
    """Means per model and segment on one user set; per-user vectors live in ``per_user_path``."""

    day: str
    run_key: str
    path: str  # reports/<day>/runs/<run_key>/evaluation.json
    per_user_path: str  # per_user.npz: users, cold flag, "<model>__<metric>" vectors
    candidate_id: str  # the registry version this candidate registers as
    candidate_refs: dict[str, Any]  # CandidateRefs.as_dict()
    graph_version: str
    candidate_version: str  # = candidate_id (one id everywhere)
    teacher_version: str | None
    champion_version: str | None  # the baseline: champion as of the day (None at bootstrap)
    baseline_reason: str  # why this baseline (or why none)
    candidate: dict[str, float]  # all-segment means (segments below)
    teacher: dict[str, float] | None
    champion: dict[str, float] | None
    popularity: dict[str, float]
    segments: dict[str, dict[str, dict[str, float]]]  # model -> segment -> metric means
    holdout_users: int  # distinct users in the day's holdout
    holdout_pairs: int
    users_evaluated: int
    warm_users_evaluated: int
    cold_users_evaluated: int  # answered by serving's cold-user path, evaluated as served
    users_without_unseen_test_items: int  # every test item was a training positive or a recent item
    # How users without a trained embedding were answered (fold-in from Feast history, or popularity
    # only when the root has no feature store); defaults read records written before fold-in.
    cold_answer: str = "popularity"
    answered_by: dict[str, dict[str, int]] = field(default_factory=dict)  # model -> model/fold_in/popularity users
    history_users_evaluated: int | None = None  # the "history" segment (None: a record written before it)
    device: str | None = None  # where scores, exclusion and top-K ran (None: a record written before it)

    def metrics_of(self, model: str, segment: str = "all") -> dict[str, float] | None:
        return (self.segments.get(model) or {}).get(segment)

    @classmethod
    def load(cls, path: str | Path) -> "EvaluationResult":
        return cls(**read_json(path))


@dataclass(frozen=True)
class PerUser:
    """Aligned per-user vectors of every evaluated model (row i = user ``users[i]``)."""

    users: np.ndarray
    cold: np.ndarray  # no trained embedding (no training positive in the day's graph)
    values: dict[str, dict[str, np.ndarray]]  # model -> metric -> vector
    # History before the day: a trained embedding or recent items to fold in. Users without any get
    # the same popularity answer from every model, so no comparison can differ on them.
    # None (records written before it): the warm users.
    history: np.ndarray | None = None

    def segment_mask(self, segment: str) -> np.ndarray:
        history = ~self.cold if self.history is None else self.history
        return {"all": np.ones_like(self.cold), "history": history, "warm": ~self.cold, "cold": self.cold}[segment]

    def save(self, path: Path) -> None:
        arrays = {f"{model}__{metric}": v for model, metrics in self.values.items() for metric, v in metrics.items()}
        if self.history is not None:
            arrays["history"] = self.history
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez_compressed(tmp, users=self.users, cold=self.cold, **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "PerUser":
        values: dict[str, dict[str, np.ndarray]] = {}
        with np.load(path) as data:
            for key in data.files:
                if "__" in key:
                    model, metric = key.split("__", 1)
                    values.setdefault(model, {})[metric] = data[key]
            history = data["history"].astype(bool) if "history" in data.files else None
            return cls(users=data["users"], cold=data["cold"].astype(bool), values=values, history=history)


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict with everything needed to audit it."""

    metric: str
    kind: str
    threshold: float
    baseline: str | None
    segment: str
    n: int  # users (evaluation gates) or timed calls (latency gates) behind the value
    value: float | None  # the candidate's (or engine's) point value
    baseline_value: float | None
    statistic: float | None  # point value of what is judged: value, ratio or relative change
    ci_low: float | None  # bootstrap interval of the statistic (None: a measurement without one)
    ci_high: float | None
    verdict: str  # "pass" | "fail" | "inconclusive" | "skipped"
    note: str
    measured_by: str  # "evaluation (...)" or the runtime that measured an engine metric
    description: str = ""
    role: str = "decision"  # "decision" | "diagnostic" (config GateSpec.role)
    overridden: bool = False  # a diagnostic FAIL / INCONCLUSIVE overridden by a conclusive win


@dataclass(frozen=True)
class Comparison:
    """One model against another on the same users: the relative change s/b - 1 of ``metric`` with
    its paired bootstrap interval, judged PASS / FAIL / INCONCLUSIVE against a bound like a gate
    (``rule``: e.g. "> 0"); SKIPPED when a model was not evaluated (no champion)."""

    subject: str
    baseline: str
    metric: str
    segment: str
    rule: str
    n: int
    value: float | None
    baseline_value: float | None
    relative_change: float | None
    ci_low: float | None
    ci_high: float | None
    verdict: str
    note: str = ""

    def describe(self) -> str:
        """E.g. "ndcg@20 +12.3% [+4.1%, +20.5%], 812 history users" (what reasons and alerts quote)."""
        return describe_comparison(asdict(self))


@dataclass(frozen=True)
class Blessing:
    """The TFX-style blessing: promotion reads only this."""

    day: str
    run_key: str
    blessed: bool
    verdict: str  # "blessed" | "rejected" (a gate failed) | "inconclusive" (none failed, some undecided)
    candidate_version: str  # the candidate id = its registry version
    candidate_refs: dict[str, Any]
    champion_version: str | None  # the baseline it was judged against (champion as of the day)
    baseline_reason: str
    bootstrap: bool
    runtime: str | None  # runtime that measured the engine gates
    runtime_description: str | None
    tensorrt_status: str | None
    users_evaluated: int
    confidence_level: float
    bootstrap_resamples: int
    gates: tuple[GateResult, ...] = field(default_factory=tuple)
    failed: tuple[str, ...] = field(default_factory=tuple)
    inconclusive: tuple[str, ...] = field(default_factory=tuple)
    reason: str = ""  # one line: why blessed / rejected / inconclusive (what outcomes and the UI show)
    evaluation_path: str = ""
    path: str = ""
    # Diagnostic gates whose FAIL / INCONCLUSIVE was overridden (not in failed / inconclusive above)
    # because the candidate conclusively beats the champion and popularity (``wins``, all PASS).
    overridden: tuple[str, ...] = field(default_factory=tuple)
    wins: tuple[Comparison, ...] = field(default_factory=tuple)  # candidate vs champion, vs popularity
    conclusive_win: bool = False
    # The champion as served vs popularity on the day (None: no champion, or a record before it).
    champion_health: Comparison | None = None
    champion_worse_than_popularity: bool = False  # champion_health FAIL: what alerts read
    # "popularity" when the night falls back (champion_health FAIL, candidate not blessed, config
    # champion_health.fallback: popularity): register and promote the popularity version instead.
    fallback: str | None = None
    history_users_evaluated: int | None = None
    users_without_unseen_test_items: int | None = None

    @classmethod
    def load(cls, path: str | Path) -> "Blessing":
        data = read_json(path)
        data["gates"] = tuple(GateResult(**g) for g in data["gates"])
        for name in ("failed", "inconclusive", "overridden"):
            data[name] = tuple(data.get(name, ()))
        data["wins"] = tuple(Comparison(**c) for c in data.get("wins", ()))
        if data.get("champion_health"):
            data["champion_health"] = Comparison(**data["champion_health"])
        return cls(**data)


def read_upstream(record_type: type, given: Any, default: Path, *, stage: str, day: str, missing: str,
                  relation: str) -> tuple[Path, Any]:
    """The upstream stage's record a decision stage works on: ``given`` as its result (a dict or object
    with ``path``), a path, or None for ``default`` (the run folder's file); it must exist and be of ``day``.
    ``missing`` says what to run first; ``relation`` reads "<path> <relation> <its day>" on a day mismatch."""
    if isinstance(given, dict):
        path = Path(given["path"])
    elif given is None or isinstance(given, (str, Path)):
        path = Path(given) if given else default
    else:
        path = Path(given.path)
    if not path.exists():
        raise FileNotFoundError(f"{stage} {day}: {path} missing ({missing})")
    record = record_type.load(path)
    if record.day != day:
        raise ValueError(f"{stage} {day}: {path} {relation} {record.day}")
    return path, record
