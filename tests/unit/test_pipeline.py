"""The night's catalog inputs: resolved once (what the DAG's catalog_inputs task returns), as JSON refs."""

import json

import pytest

from components.core.refs import AcceptedRef, ValidationHistory
from components.data.ingest import run_ingest
from components.data.sources.synthetic import corrupt_landing
from components.data.validation_result import DataValidationError
from components.pipeline import (CONTEXT, catalog_inputs, context_as_json, context_from_json, describe_inputs,
                                 night_inputs)

from tests.unit.data_fixtures import accept, day, land, setup, validate


def test_the_night_inputs_are_each_stages_catalog_inputs_as_json_refs(tmp_path):
    layout, cfg = setup(tmp_path, **{"graph.window_days": 2})
    accept(layout, cfg, 0)
    accept(layout, cfg, 1)
    land(layout, 2)
    corrupt_landing(layout.landing(day(2)), "wrong_day")
    run_ingest(layout, day(2), cfg)
    with pytest.raises(DataValidationError):
        validate(layout, day(2), cfg)
    accept(layout, cfg, 3)
    night = json.loads(json.dumps(night_inputs(day(4), cfg)))  # what XCom carries
    assert set(night) == set(CONTEXT) and night["teacher"] == {}  # the default teacher starts cold
    history = night["validate"]["history"]
    assert [r["day"] for r in history["accepted"]] == [day(0), day(1), day(3)]
    assert [(r["kind"], r["day"]) for r in history["quarantined"]] == [("quarantine", day(2))]
    assert [r["day"] for r in night["graph"]["window"]] == [day(3)]  # [D - 2, D - 1]: day 2 was quarantined
    for stage in CONTEXT:  # the same references the stage would resolve for itself
        assert context_from_json(stage, night[stage]) == catalog_inputs(stage, day(4), layout, cfg)
    typed = context_from_json("validate", night["validate"])["history"]
    assert isinstance(typed, ValidationHistory) and isinstance(typed.accepted[0], AcceptedRef)
    assert describe_inputs({"history": typed}) == (f"history: accepted {day(0)}..{day(3)} (3 days) + "
                                                   f"quarantine {day(2)}..{day(2)} (1 day)")
    assert context_as_json(catalog_inputs("graph", day(4), layout, cfg)) == night["graph"]
    with pytest.raises(ValueError, match=r"stage graph reads \['id_maps', 'previous', 'same_day', 'window'\] from "
                                         r"the catalog, got \['history'\]"):
        context_from_json("graph", night["validate"])
