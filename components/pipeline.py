"""The nightly pipeline's stages by name: one table that the DAG, the CLI and the tests share.

Stage modules are imported only when their stage runs (torch, DGL, Feast and GX are heavy), so
parsing the DAG or printing ``--help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import logging
import time
from pathlib import Path
from typing import Any

from components.core.config import DEFAULT_CONFIG_FILE, PipelineConfig, load_config
from components.core.errors import PermanentStageFailure, StageSkipped, storage_fault
from components.core.remote import session
from components.core.refs import (AcceptedRef, DayRef, ExportRef, GraphRef, PrunedRef, QuarantinedRef, Ref,
                                  StudentRef, TeacherRef, ValidationHistory)
from components.core.catalog import (Layout, cli_run_key, mark_latest, parse_day, record_outcome, run_dir, tidy,
                                write_json)

log = logging.getLogger(__name__)

# name -> (module, function); every function is run(layout, day, cfg) -> frozen dataclass. A stage that
# builds on upstream results (INPUTS) takes their references as keywords: validate(staged=) ->
# features(accepted=), graph(accepted=) -> teacher(graph=) -> distill(graph=, teacher=) ->
# prune(graph=, teacher=, student=) -> export(graph=, model=) -> convert(export=); what it reads besides
# (validate's history, the graph's window, the teacher's warm start: ``catalog_inputs``, typed in CONTEXT)
# is chosen once, from the catalog: by the DAG's catalog_inputs task for the night (``night_inputs``), by
# the CLI for one stage.
# The decision stages (RUN_SCOPED) take the run's key and their upstream's result as keywords:
# evaluate(candidate=<convert result>) -> gate(evaluation=) -> register(blessing=) -> promote(registration=).
STAGES: dict[str, tuple[str, str]] = {
    "ingest": ("components.data.ingest", "run_ingest"),
    "validate": ("components.data.validate", "run_validate"),
    "features": ("components.data.features", "run_features"),
    "graph": ("components.data.graph", "run_graph"),
    "teacher": ("components.model.teacher", "run_teacher"),
    "distill": ("components.model.distill", "run_distill"),
    "prune": ("components.model.prune", "run_prune"),
    "export": ("components.ship.export", "run_export"),
    "convert": ("components.ship.convert", "run_convert"),
    "evaluate": ("components.decide.evaluation", "run_evaluate"),
    "gate": ("components.decide.gates", "run_gate"),
    "register": ("components.decide.registry", "run_register"),
    "promote": ("components.decide.registry", "run_promote"),
    "report": ("components.decide.report", "run_report"),
}
INPUTS: dict[str, dict[str, type[Ref]]] = {
    "validate": {"staged": DayRef},
    "features": {"accepted": AcceptedRef},
    "graph": {"accepted": AcceptedRef},
    "teacher": {"graph": GraphRef},
    "distill": {"graph": GraphRef, "teacher": TeacherRef},
    "prune": {"graph": GraphRef, "teacher": TeacherRef, "student": StudentRef},
    "export": {"graph": GraphRef, "model": PrunedRef},
    "convert": {"export": ExportRef},
}
# What a stage reads besides its upstream results, by keyword: the type of the reference (a tuple of them
# for a window; None where the catalog has none). The teacher reads a warm start only as LightGCN.
CONTEXT: dict[str, dict[str, type]] = {
    "validate": {"history": ValidationHistory},
    "features": {"window": AcceptedRef},
    "graph": {"window": AcceptedRef, "id_maps": GraphRef, "same_day": GraphRef, "previous": GraphRef},
    "teacher": {"warm_start": TeacherRef},
}
RUN_SCOPED = {"evaluate": "candidate", "gate": "evaluation", "register": "blessing", "promote": "registration",
              "report": None}


def resolve(root: str | None, config_file: str | None, overrides: dict[str, Any] | None) -> PipelineConfig:
    """The config a run uses: file (default config/pipeline.yaml), then overrides, then root."""
    merged = dict(overrides or {})
    if root:
        merged["root"] = root
    return load_config(Path(config_file) if config_file else DEFAULT_CONFIG_FILE, merged)


def default_inputs(name: str, day: str, layout: Layout) -> dict[str, dict[str, str]]:
    """The references a stage runs on when none are named: the day's current versions (the CLI's
    default; it prints them). Raises naming the stage to run first."""
    found = {}
    for keyword, ref_type in INPUTS.get(name, {}).items():
        partition = ref_type in (DayRef, AcceptedRef)  # a day partition, replaced per day
        ref = (next(iter(layout.partition_refs(ref_type, day, day)), None) if partition
               else layout.current_ref(ref_type, day))
        if ref is None:
            raise FileNotFoundError(f"{name} {day}: no {ref_type.KIND} {'partition' if partition else 'artifact'} of "
                                    f"{day} under {layout.root} (run the stage that builds it first"
                                    + (", or the day was quarantined)" if ref_type is AcceptedRef else ")"))
        found[keyword] = ref.as_dict()
    return found


def _typed(ref_type: type[Ref], found: Any) -> Any:
    return None if found is None else ref_type(day=found.day, version=found.version, path=found.path)


def catalog_inputs(name: str, day: str, layout: Layout, cfg: PipelineConfig) -> dict[str, Any]:
    """What a stage reads besides its upstream results, chosen once for ``day`` from the catalog (the
    stage records it in its artifact's lineage): validate's history (every accepted and quarantined day
    before ``day``), the accepted days of the graph's training window and the graphs whose ID maps it
    keeps or extends, the features' lookback, the LightGCN teacher's warm start (its newest earlier
    version). Validate writes none of it (its history and the windows end the day before), so validating
    the day changes none of it."""
    if name == "validate":
        before = (parse_day(day) - dt.timedelta(days=1)).isoformat()
        first = dt.date.min.isoformat()
        return {"history": ValidationHistory(accepted=tuple(layout.partition_refs(AcceptedRef, first, before)),
                                             quarantined=tuple(layout.partition_refs(QuarantinedRef, first, before)))}
    if name == "graph":
        from components.data.graph import newest_id_maps, window_days

        return {"window": tuple(layout.partition_refs(AcceptedRef, *window_days(day, cfg.graph))),
                "id_maps": newest_id_maps(layout), "same_day": layout.current_ref(GraphRef, day),
                "previous": _typed(GraphRef, layout.latest_before(GraphRef.KIND, day))}
    if name == "features":
        from components.data.features import lookback_days

        first, last = lookback_days(day, tuple(cfg.features.windows_days))
        return {"window": tuple(r for r in layout.partition_refs(AcceptedRef, first, last) if r.day < day)}
    if name == "teacher" and cfg.teacher.kind == "lightgcn":
        return {"warm_start": _typed(TeacherRef, layout.latest_before(TeacherRef.KIND, day))}
    return {}


def night_inputs(day: str, cfg: PipelineConfig) -> dict[str, dict[str, Any]]:
    """``catalog_inputs`` of every stage that reads any, resolved once for the night of ``day`` (the
    DAG's catalog_inputs task, before validate: nothing in it is of ``day``), as JSON by stage."""
    day = parse_day(day).isoformat()
    with session(cfg.root) as layout:
        found = {name: catalog_inputs(name, day, layout, cfg) for name in CONTEXT}
    for name, context in found.items():
        if context:
            log.info("%s %s reads from the catalog: %s", name, day, describe_inputs(context))
    return {name: context_as_json(context) for name, context in found.items()}


def context_as_json(context: dict[str, Any]) -> dict[str, Any]:
    """``catalog_inputs`` as JSON (what XCom carries): a reference's dict, a window's list of them, None."""
    def one(value: Any) -> Any:
        return (None if value is None else [r.as_dict() for r in value] if isinstance(value, tuple)
                else value.as_dict())

    return {keyword: one(value) for keyword, value in context.items()}


def context_from_json(name: str, payload: dict[str, Any]) -> dict[str, Any]:
    """``context_as_json``'s inverse for stage ``name``, each keyword typed as CONTEXT declares it."""
    wanted = CONTEXT.get(name, {})
    unknown = set(payload) - set(wanted)
    if unknown:
        raise ValueError(f"stage {name} reads {sorted(wanted) or 'nothing'} from the catalog, got {sorted(unknown)}")

    def one(ref_type: type, value: Any) -> Any:
        return (None if value is None else tuple(ref_type.from_dict(v) for v in value) if isinstance(value, list)
                else ref_type.from_dict(value))

    return {keyword: one(wanted[keyword], value) for keyword, value in payload.items()}


def describe_inputs(inputs: dict[str, Any]) -> str:
    """``catalog_inputs`` in one line, e.g. "window: accepted 2026-01-01..2026-01-04 (4 days); id_maps:
    graphs 2026-01-04 v1a2b...": what the CLI prints and a stage logs."""
    def one(value: Any) -> str:
        if value is None:
            return "none"
        if isinstance(value, ValidationHistory):
            return " + ".join(one(refs) if refs else f"no {kind} days"
                              for kind, refs in (("accepted", value.accepted), ("quarantined", value.quarantined)))
        if isinstance(value, tuple):
            days = f"{len(value)} day{'s' if len(value) != 1 else ''}"
            return f"{value[0].kind} {value[0].day}..{value[-1].day} ({days})" if value else "no days"
        return f"{value.kind} {value.day} v{value.version}"

    return "; ".join(f"{keyword}: {one(value)}" for keyword, value in inputs.items())


def run_stage(name: str, day: str, cfg: PipelineConfig, *, run_key: str | None = None,
              upstream: dict[str, Any] | None = None, inputs: dict[str, dict[str, Any]] | None = None,
              context: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one stage for ``day`` as part of run ``run_key`` (default: a new CLI run key); returns its
    result as a JSON-serializable dict. ``upstream`` is the result the stage works on (RUN_SCOPED);
    ``inputs`` the results (or references) a stage builds on, by keyword (INPUTS); ``context`` what it
    reads besides, as JSON (``context_as_json``; default: ``catalog_inputs``, resolved here and logged)."""
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    wanted = INPUTS.get(name, {})
    if set(inputs or {}) != set(wanted):
        raise ValueError(f"stage {name} builds on {sorted(wanted) or 'no references'}, got {sorted(inputs or {})}")
    refs = {keyword: wanted[keyword].from_dict(payload) for keyword, payload in (inputs or {}).items()}
    reads = None if context is None else context_from_json(name, context)
    module, function = STAGES[name]
    run = getattr(importlib.import_module(module), function)
    day = parse_day(day).isoformat()
    run_key = run_key or cli_run_key()
    # An s3:// root: hydrate the local copy first, publish what the stage wrote after (components/core/
    # remote.py); the champion pointer is decided on the store itself (components/decide/pointer.py).
    try:
        with session(cfg.root, landing_day=day if name == "ingest" else None) as layout:
            return _run_recorded(layout, name, run, day, cfg, run_key, upstream, refs, reads)
    except (StageSkipped, PermanentStageFailure):
        raise
    except Exception as exc:  # disk full, read-only root, permission denied: a message, no retries
        # Mapped around the run's own records and an s3:// root's copy and publish too: a full disk at
        # latest.json after the stage (found on a real tmpfs) escaped as a bare OSError, which the DAG
        # retried for nothing.
        fault = storage_fault(exc, cfg.root)
        if fault is None:
            raise
        raise fault from exc


def _run_recorded(layout: Layout, name: str, run: Any, day: str, cfg: PipelineConfig, run_key: str,
                  upstream: dict[str, Any] | None, refs: dict[str, Ref], context: dict[str, Any] | None
                  ) -> dict[str, Any]:
    # Each reference located under this process's root (the catalog's seam): a reference another worker
    # handed on names its artifact; the path it carries is where that worker's copy held it.
    refs = {keyword: type(ref)(day=ref.day, version=ref.version, path=layout.locate(ref))
            for keyword, ref in refs.items()}
    try:
        tidy(layout, started_at=time.time())
        if name in RUN_SCOPED:
            keyword = RUN_SCOPED[name]
            result = run(layout, day, cfg, run_key=run_key, **({keyword: upstream} if keyword else {}))
        else:
            if upstream is not None:
                raise ValueError(f"stage {name} takes no upstream result")
            if context is None:
                context = catalog_inputs(name, day, layout, cfg)
                if context:
                    log.info("%s %s reads from the catalog: %s", name, day, describe_inputs(context))
            result = run(layout, day, cfg, **refs, **context)
    except StageSkipped as exc:  # a decision too: the run's outcome says why nothing was trained
        record_outcome(layout, day, run_key, "skipped", f"{name}: {exc}")
        raise
    except PermanentStageFailure as exc:
        if name == "validate":
            record_outcome(layout, day, run_key, "quarantined", f"validation failed: {exc}")
        raise
    payload = dataclasses.asdict(result) if dataclasses.is_dataclass(result) else result
    # The run's own record of each stage's result: the demo summary and ops read it back.
    write_json(run_dir(layout, day, run_key) / "stages" / f"{name}.json", payload)
    mark_latest(layout, day, run_key)
    return payload
