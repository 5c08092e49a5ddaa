"""Validation warnings reach the promotion gates (config/gates.yaml ``validation_warnings``)."""

import pandas as pd

from components.config import GateSpec, load_gates
from components.gates import judge_gate
from components.ingest import run_ingest
from components.sources.synthetic import write_log
from components.validate import validation_metrics

from tests.unit.data_fixtures import accept, day, land, setup

SPEC = GateSpec(metric="validation_warnings", kind="max", threshold=0)


def test_a_warned_day_fails_the_validation_gate_and_a_clean_day_passes(tmp_path):
    from components.validate import run_validate

    layout, cfg = setup(tmp_path)
    accept(layout, cfg, 0)
    path = land(layout, 1)
    write_log(pd.read_parquet(path).assign(user_id="bot-1", extra="x"), path)  # a bot day with an unknown column
    run_ingest(layout, day(1), cfg)
    run_validate(layout, day(1), cfg)
    clean, warned = validation_metrics(layout, day(0)), validation_metrics(layout, day(1))
    assert clean == {"validation_warnings": 0.0} and warned == {"validation_warnings": 2.0}
    assert judge_gate(SPEC, None, None, True, clean).verdict == "pass"
    failed = judge_gate(SPEC, None, None, True, warned)
    assert failed.verdict == "fail" and failed.value == 2.0 and failed.measured_by == "validation"
    missing = judge_gate(SPEC, None, None, True, validation_metrics(layout, day(5)))
    assert missing.verdict == "skipped" and "no validation record" in missing.note


def test_the_shipped_gate_file_has_the_validation_gate():
    gates = {(g.metric, g.kind): g for g in load_gates().gates}
    assert gates[("validation_warnings", "max")].threshold == 0
