"""The nightly pipeline's stages by name: one table that the DAG, the CLI and the tests share.

Stage modules are imported only when their stage runs (torch, DGL, Feast and GX are heavy), so
parsing the DAG or printing ``--help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from pathlib import Path
from typing import Any

from components.config import DEFAULT_CONFIG_FILE, PipelineConfig, load_config
from components.errors import StageSkipped
from components.storage import Layout, parse_day, write_json

log = logging.getLogger(__name__)

# name -> (module, function); every function is run(layout, day, cfg) -> frozen dataclass.
STAGES: dict[str, tuple[str, str]] = {
    "ingest": ("components.ingest", "run_ingest"),
    "validate": ("components.validate", "run_validate"),
    "features": ("components.features", "run_features"),
    "graph": ("components.graph", "run_graph"),
    "teacher": ("components.train", "run_teacher"),
    "distill": ("components.distill", "run_distill"),
    "prune": ("components.prune", "run_prune"),
    "export": ("components.export", "run_export"),
    "convert": ("components.engine", "run_convert"),
    "evaluate": ("components.gates", "run_evaluate"),
    "gate": ("components.gates", "run_gate"),
    "register": ("components.registry", "run_register"),
    "promote": ("components.registry", "run_promote"),
    "report": ("components.report", "run_report"),
}


def resolve(root: str | None, config_file: str | None, overrides: dict[str, Any] | None) -> PipelineConfig:
    """The config a run uses: file (default config/pipeline.yaml), then overrides, then root."""
    merged = dict(overrides or {})
    if root:
        merged["root"] = root
    return load_config(Path(config_file) if config_file else DEFAULT_CONFIG_FILE, merged)


def run_stage(name: str, day: str, cfg: PipelineConfig) -> dict[str, Any]:
    """Run one stage for ``day``; returns its result as a JSON-serializable dict."""
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    module, function = STAGES[name]
    run = getattr(importlib.import_module(module), function)
    day = parse_day(day).isoformat()
    layout = Layout.at(cfg.root)
    try:
        result = run(layout, day, cfg)
    except StageSkipped as exc:
        # The reason a night ends without a verdict (components.outcome reads it back).
        write_json(layout.reports(day) / "stages" / "skipped.json", {"stage": name, "reason": str(exc)})
        raise
    payload = dataclasses.asdict(result) if dataclasses.is_dataclass(result) else result
    # The run's own record of each stage's result: the demo summary and ops read it back.
    write_json(layout.reports(day) / "stages" / f"{name}.json", payload)
    return payload
