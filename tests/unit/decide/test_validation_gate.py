"""Validation warnings reach the promotion gates (config/gates.yaml ``validation_warnings``)."""

import pandas as pd

from components.core.config import GateSpec, load_gates
from components.decide.gates import judge_gate
from components.data.ingest import run_ingest
from components.data.sources.synthetic import write_log
from components.data.validation_report import validation_metrics

from tests.unit.data_fixtures import accept, current_inputs, day, land, setup

SPEC = GateSpec(metric="validation_warnings", kind="max", threshold=0)


def test_a_warned_day_fails_the_validation_gate_and_a_clean_day_passes(tmp_path):
    from components.data.validate import run_validate

    layout, cfg = setup(tmp_path)
    accept(layout, cfg, 0)
    path = land(layout, 1)
    write_log(pd.read_parquet(path).assign(user_id="bot-1", extra="x"), path)  # a bot day with an unknown column
    run_ingest(layout, day(1), cfg)
    run_validate(layout, day(1), cfg, **current_inputs(layout, "validate", day(1)))
    clean, warned = validation_metrics(layout, day(0)), validation_metrics(layout, day(1))
    assert clean == {"validation_warnings": 0.0} and warned == {"validation_warnings": 2.0}
    assert judge_gate(SPEC, None, None, None, load_gates(), 0, clean).verdict == "pass"
    failed = judge_gate(SPEC, None, None, None, load_gates(), 0, warned)
    assert failed.verdict == "fail" and failed.value == 2.0 and failed.measured_by == "validation"
    missing = judge_gate(SPEC, None, None, None, load_gates(), 0, validation_metrics(layout, day(5)))
    assert missing.verdict == "skipped" and "no validation record" in missing.note


def test_the_shipped_gate_file_has_the_validation_gate():
    gates = {(g.metric, g.kind): g for g in load_gates().gates}
    assert gates[("validation_warnings", "max")].threshold == 0


def test_the_run_report_section_shows_warnings_with_value_and_band_and_the_graph_checks(tmp_path):
    from components.data.graph import run_graph
    from components.data.validate import run_validate
    from components.data.validation_report import data_checks_html

    layout, cfg = setup(tmp_path, **{"validation.min_history_days": 3})
    for offset in range(3):
        accept(layout, cfg, offset)
    path = land(layout, 3)
    write_log(pd.read_parquet(path).iloc[:25], path)  # low volume: a warning with a band
    run_ingest(layout, day(3), cfg)
    warnings = run_validate(layout, day(3), cfg, **current_inputs(layout, "validate", day(3))).warnings
    (volume,) = [r for r in warnings if r.rule == "volume"]
    run_graph(layout, day(3), cfg, **current_inputs(layout, "graph", day(3), cfg))
    section = data_checks_html(layout, day(3))
    assert f"{len(warnings)} validation warning(s)" in section
    assert f"<td>volume</td><td>25</td><td>[{volume.band[0]}, {volume.band[1]}]</td>" in section
    assert "<td>leaked_events</td><td>0</td>" in section and "Graph checks" in section
    assert "no warnings" in data_checks_html(layout, day(2))
