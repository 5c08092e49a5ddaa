"""The GraphDistill plugin serves the nightly's records only, and checks read access for the
nightly, whatever DAG id the URL names (issue 20, Why 9: a reader of another DAG with matching
run ids could read the nightly's quarantine reports, which contain raw rows)."""

from __future__ import annotations

import pytest
from fastapi import HTTPException

from graphdistill_airflow import plugin


def _dag_checked(route) -> list[str | None]:
    """The DAG id each of the route's Airflow access checks is bound to (None: the URL's)."""
    checked = []
    for dependency in route.dependant.dependencies:
        call = dependency.call
        if call.__qualname__.startswith("requires_access_dag."):
            cells = dict(zip(call.__code__.co_freevars, (c.cell_contents for c in call.__closure__)))
            checked.append(cells["param_dag_id"])
    return checked


def test_every_page_checks_read_access_for_the_nightly():
    routes = [r for r in plugin.app.routes if getattr(r, "path", "").startswith(("/runs/", "/models"))]
    assert {r.path for r in routes} == {"/runs/{dag_id}/{run_id}.json", "/runs/{dag_id}/{run_id}",
                                        "/runs/{dag_id}/{run_id}/validation.html", "/runs/{dag_id}/{run_id}/{name}",
                                        "/models"}
    for route in routes:
        assert _dag_checked(route) == [plugin.NIGHTLY_DAG_ID], route.path


def test_another_dags_id_is_refused_before_any_record_is_read():
    with pytest.raises(HTTPException) as refused:
        plugin._run_context("champion_serving_refresh", "scheduled__2026-01-02T00:00:00+00:00")
    assert refused.value.status_code == 404
    assert refused.value.detail == ("GraphDistill records belong to DAG 'gnn_recsys_nightly', "
                                    "not 'champion_serving_refresh'")
