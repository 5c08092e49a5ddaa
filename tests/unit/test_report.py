"""Report: curves parsed from history.json, metric history across days, HTML + PNGs written."""

from __future__ import annotations

import json

import pytest

from components.gates import Blessing
from components.registry import run_promote, run_register
from components.report import gate_table_markdown, metric_history, run_report, training_curve
from components.storage import Layout

from tests.unit.ship_fixtures import make_world, run_ship_day, tiny_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_training_curve_reads_flat_and_nested_histories():
    flat = training_curve([{"epoch": 1, "loss": 0.9}, {"epoch": 2, "loss": 0.5, "val_ndcg@20": 0.12}])
    assert flat["epoch"] == [1.0, 2.0] and flat["loss"] == [0.9, 0.5]
    assert flat["val_epoch"] == [2.0] and flat["val_ndcg"] == [0.12] and flat["ndcg_key"] == "val_ndcg@20"
    nested = training_curve({"epochs": [{"epoch": 5, "train_loss": 0.3,
                                         "val": {"ndcg@10": 0.2, "ndcg@20": 0.25}}]})
    assert nested["loss"] == [0.3] and nested["val_ndcg"] == [0.25] and nested["ndcg_key"] == "val_ndcg@20"


def test_run_report_over_two_days(tmp_path):
    layout = Layout.at(tmp_path)
    cfg = tiny_config(tmp_path)
    world = make_world()
    for seed, day in enumerate(("2024-01-08", "2024-01-09")):
        run_ship_day(layout, day, cfg, world, seed=seed)
        run_register(layout, day, cfg)
        run_promote(layout, day, cfg)
    result = run_report(layout, "2024-01-09", cfg)
    assert result.history_days == 2 and result.blessed is True
    assert len(result.figures) == 2
    for figure in result.figures:
        with open(figure, "rb") as handle:
            assert handle.read(8) == PNG_MAGIC
    html = (layout.reports("2024-01-09") / "report.html").read_text()
    assert "training_curves.png" in html and "metric_history.png" in html and "Lineage" in html

    rows = metric_history(layout, "2024-01-09")
    assert [r["day"] for r in rows] == ["2024-01-08", "2024-01-09"]
    assert rows[0]["champion_ndcg@20"] is None  # bootstrap day: no champion yet
    evaluation = json.loads((layout.reports("2024-01-09") / "evaluation.json").read_text())
    assert rows[1]["champion_ndcg@20"] == pytest.approx(evaluation["champion"]["ndcg@20"])
    # the earlier day's report does not see the future
    assert run_report(layout, "2024-01-08", cfg).history_days == 1


def test_gate_table_markdown_lists_every_gate(tmp_path):
    layout = Layout.at(tmp_path)
    cfg = tiny_config(tmp_path)
    blessing = run_ship_day(layout, "2024-01-08", cfg, make_world())
    table = gate_table_markdown(blessing)
    rows = [line for line in table.splitlines() if line.startswith("| ") and "metric" not in line]
    assert len(rows) == len(blessing.gates)
    assert sum("SKIPPED" in r for r in rows) == sum(g.verdict == "skipped" for g in blessing.gates) > 0
    assert "BLESSED" in table.splitlines()[0]
    assert gate_table_markdown(Blessing.load(layout.reports("2024-01-08") / "blessing.json")) == table
