"""Report: curves parsed from history.json, metric history across days, HTML + PNGs written."""

from __future__ import annotations

import json

import pytest

from components.core.refs import Blessing
from components.decide.registry import run_promote, run_register
from components.decide.report import gate_table_markdown, metric_history, run_report, training_curve
from components.core.catalog import Layout, latest_run

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
        run_ship_day(layout, day, cfg, world, seed=seed, run_key="r1")
        registration = run_register(layout, day, cfg, run_key="r1")
        assert run_promote(layout, day, cfg, run_key="r1", registration=registration).promoted
    result = run_report(layout, "2024-01-09", cfg, run_key="r1")
    assert result.history_days == 2 and result.blessed is True and result.outcome == "promoted"
    assert len(result.figures) == 2
    assert result.curves == ("teacher", "student", "pruned")  # the student's epochs carry the loss curve
    for figure in result.figures:
        with open(figure, "rb") as handle:
            assert handle.read(8) == PNG_MAGIC
    run_dir = layout.reports("2024-01-09") / "runs" / "r1"
    html = (run_dir / "report.html").read_text()
    assert "training_curves.png" in html and "metric_history.png" in html and "Lineage" in html
    assert "Outcome: PROMOTED" in html and "90% CI [" in html and "cold (0 users)" in html
    assert "<th>cold users answered by</th><td>popularity (no feature store)</td>" in html
    answered = json.loads((run_dir / "evaluation.json").read_text())["answered_by"]["candidate"]
    assert list(answered) == ["fold_in", "model", "popularity"]  # stored sorted: not the table's column order
    assert (f"<tr><th>candidate</th><td>{answered['model']}</td><td>{answered['fold_in']}</td>"
            f"<td>{answered['popularity']}</td></tr>") in html  # values under their own headers
    # the candidate's size ladder: its one rung shipped, and why (no validation split in this world)
    assert "<h2>Shipped size (ladder: target retention 85%" in html
    assert "shipping the best-retaining rung within the budgets (keeps unmeasured (no validation split)" in html
    assert '<tr style="background:#d4f4dd"><td>0</td><td>8</td><td>int8</td><td>1,200</td>' in html

    rows = metric_history(layout, "2024-01-09")
    assert [r["day"] for r in rows] == ["2024-01-08", "2024-01-09"]
    assert rows[0]["champion_ndcg@20"] is None  # bootstrap day: no champion yet
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    assert rows[1]["champion_ndcg@20"] == pytest.approx(evaluation["champion"]["ndcg@20"])
    # the earlier day's report does not see the future
    assert run_report(layout, "2024-01-08", cfg, run_key="r1").history_days == 1


def test_a_rerun_writes_its_own_report_and_the_day_points_to_it(tmp_path):
    layout = Layout.at(tmp_path)
    cfg = tiny_config(tmp_path)
    day = "2024-01-08"
    run_ship_day(layout, day, cfg, make_world(), run_key="first")
    registration = run_register(layout, day, cfg, run_key="first")
    run_promote(layout, day, cfg, run_key="first", registration=registration)
    first = run_report(layout, day, cfg, run_key="first")
    first_html = open(first.path, "rb").read()
    run_ship_day(layout, day, cfg, make_world(), run_key="second")
    registration = run_register(layout, day, cfg, run_key="second")
    decision = run_promote(layout, day, cfg, run_key="second", registration=registration)
    second = run_report(layout, day, cfg, run_key="second")
    assert not decision.promoted and second.outcome == "not_promoted" and second.path != first.path
    assert open(first.path, "rb").read() == first_html and "Outcome: PROMOTED" in first_html.decode()
    assert "already the champion" in open(second.path).read()
    latest = latest_run(layout, day)
    assert latest["run_key"] == "second" and latest["outcome"] == "not_promoted"
    assert latest["dir"] == str(layout.reports(day) / "runs" / "second")


def test_gate_table_markdown_lists_every_gate(tmp_path):
    layout = Layout.at(tmp_path)
    cfg = tiny_config(tmp_path)
    blessing = run_ship_day(layout, "2024-01-08", cfg, make_world())
    table = gate_table_markdown(blessing)
    gate_part = table.split("Headline comparisons")[0]  # the comparisons table follows the gates
    rows = [line for line in gate_part.splitlines() if line.startswith("| ") and "metric" not in line]
    assert len(rows) == len(blessing.gates)
    assert sum("SKIPPED" in r for r in rows) == sum(g.verdict == "skipped" for g in blessing.gates) > 0
    assert "BLESSED" in table.splitlines()[0]
    assert gate_table_markdown(Blessing.load(layout.reports("2024-01-08") / "runs" / "r1" / "blessing.json")) == table


def test_a_tiny_change_is_not_drawn_as_a_cliff():
    from components.decide.report import _honest_axis, _plt

    plt = _plt()
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [0.2, 0.2, 0.2000001])
    fig.canvas.draw()
    assert ax.get_ylim()[0] > 0.19  # matplotlib's autoscale: the 1e-7 step fills the chart
    _honest_axis(ax)
    fig.canvas.draw()
    assert ax.get_ylim()[0] == 0 and ax.yaxis.get_major_formatter().get_offset() == ""
    plt.close(fig)
