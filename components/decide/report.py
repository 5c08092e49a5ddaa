"""Report stage: one run's human-readable report (reports/<day>/runs/<run_key>/, never shared by
two runs; reports/<day>/latest.json points at the day's newest run).

report.html with the run's outcome, the gate table (n, point value and interval of every gate),
the evaluation per segment (warm / cold users as served), the registry entry and lineage, plus PNGs:
training curves (teacher / student / pruned loss and validation NDCG per epoch, from each model's
history.json) and the metric history across days (candidate vs champion NDCG@20 / Recall@20, from
each earlier day's latest run's evaluation.json and blessing.json). Also the gate table renderers used by
the gate stage and the CLI. matplotlib is imported lazily with the Agg backend (no display).
"""

from __future__ import annotations

import datetime as dt
import html
import logging
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

from components.core.config import PipelineConfig
from components.core.catalog import (Layout, atomic_write_bytes, latest_run, read_json, read_measured_json, read_outcome,
                                     run_dir)
from components.core.refs import describe_comparison

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
CURVES_PNG = "training_curves.png"
HISTORY_PNG = "metric_history.png"


def _as_dict(blessing: Any) -> dict[str, Any]:
    return asdict(blessing) if is_dataclass(blessing) else dict(blessing)


# The "answered by" columns: the keys of EvaluationResult.answered_by, in the table's order.
ANSWERED_BY = ("model", "fold_in", "popularity")


def fmt_number(value: Any, digits: int = 4) -> str:
    """A number as people read it: 300, 0.05, 0.1235, 250, 200,000,000 (never 1e+05 or 2e+08)."""
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if value != value or value in (float("inf"), float("-inf")):
        return str(value)
    if float(value).is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    if abs(value) >= 1000:
        return f"{value:,.1f}"
    return f"{value:.{digits}g}"


def _fmt(value: Any) -> str:
    return fmt_number(value, digits=6)


def _interval(gate: dict[str, Any]) -> str:
    if gate.get("ci_low") is None:
        return "–"
    return f"[{_fmt(gate['ci_low'])}, {_fmt(gate['ci_high'])}]"


def _verdict_cell(gate: dict[str, Any]) -> str:
    return gate["verdict"].upper() + (" (overridden)" if gate.get("overridden") else "")


def _gate_rows(blessing: dict[str, Any]) -> list[list[str]]:
    rows = []
    for gate in blessing["gates"]:
        rows.append([
            gate["metric"], gate["kind"], gate.get("role", "decision"), gate.get("segment", "all"),
            gate["baseline"] or "–", _fmt(gate.get("n")), _fmt(gate["value"]), _fmt(gate["baseline_value"]),
            _fmt(gate["statistic"]), _interval(gate), _fmt(gate["threshold"]), _verdict_cell(gate), gate["note"],
            gate["measured_by"],
        ])
    return rows


GATE_HEADER = ["metric", "kind", "role", "segment", "baseline", "n", "value", "baseline value", "statistic",
               "interval", "threshold", "verdict", "note", "measured by"]
VERDICT_COLUMN = GATE_HEADER.index("verdict")
COMPARISON_HEADER = ["comparison", "metric", "segment", "n", "value", "baseline value", "relative change",
                     "interval", "rule", "verdict", "meaning"]


def _comparison_rows(blessing: dict[str, Any]) -> list[list[str]]:
    """The headline comparisons behind overrides and the champion's health."""
    meaning = {("candidate", "pass"): "conclusively beats", ("champion", "fail"): "conclusively WORSE than"}
    rows = []
    for c in [*blessing.get("wins", ()), *([blessing["champion_health"]] if blessing.get("champion_health") else [])]:
        word = meaning.get((c["subject"], c["verdict"]), "not conclusively better than" if c["subject"] == "candidate"
                           else "not conclusively worse than")
        rows.append([f"{c['subject']} vs {c['baseline']}", c["metric"], c["segment"], _fmt(c["n"]), _fmt(c["value"]),
                     _fmt(c["baseline_value"]), _fmt(c["relative_change"]), _interval(c), c["rule"],
                     c["verdict"].upper(), f"{c['subject']} {word} {c['baseline']}" if c["verdict"] != "skipped"
                     else c.get("note", "")])
    return rows


def override_text(blessing: dict[str, Any]) -> str | None:
    """One sentence per overridden diagnostic gate (None when nothing was overridden)."""
    gates = [g for g in blessing["gates"] if g.get("overridden")]
    if not gates:
        return None
    beaten = " and ".join(f"{w['baseline']} ({describe_comparison(w)})" for w in blessing.get("wins", ())
                          if w["verdict"] == "pass")
    return "; ".join(f"diagnostic gate {gate_label(g)} {'FAILED' if g['verdict'] == 'fail' else 'INCONCLUSIVE'}, "
                     f"overridden: candidate conclusively beats {beaten}" for g in gates)


def champion_health_text(blessing: dict[str, Any]) -> str | None:
    """The champion's health on the day in one sentence (None without a champion)."""
    health = blessing.get("champion_health")
    if not health:
        return None
    state = {"fail": "WORSE THAN POPULARITY", "pass": "not worse than popularity"}.get(
        health["verdict"], "not conclusively worse than popularity")
    return f"champion {blessing['champion_version']} as served: {state} ({describe_comparison(health)})"


def gate_label(gate: dict[str, Any]) -> str:
    segment = gate.get("segment") or "all"
    return (f"{gate['metric']} {gate['kind']}{' ' + gate['baseline'] if gate['baseline'] else ''}"
            f"{'' if segment == 'all' else ' [' + segment + ']'}")


def repeat_only_text(users: int) -> str:
    """How the evaluation record, report and CLI name users whose every test item was seen before."""
    return f"users with only repeat test items: {users} (excluded: nothing unseen to recommend)"


def _headline(blessing: dict[str, Any]) -> str:
    verdict = blessing.get("verdict", "blessed" if blessing["blessed"] else "rejected").upper()
    boot = " (bootstrap: no champion, champion gates skipped)" if blessing["bootstrap"] else ""
    level = blessing.get("confidence_level")
    stats = (f"; {level:.0%} paired bootstrap intervals ({blessing.get('bootstrap_resamples')} resamples)"
             if level else "")
    history = (f" ({blessing['history_users_evaluated']} with history)"
               if blessing.get("history_users_evaluated") is not None else "")
    repeats = (f"; {repeat_only_text(blessing['users_without_unseen_test_items'])}"
               if blessing.get("users_without_unseen_test_items") is not None else "")
    extra = "".join(f"; {text}" for text in (override_text(blessing), champion_health_text(blessing)) if text)
    return (f"Candidate {blessing['candidate_version']} on {blessing['day']}: {verdict}{boot}; judged against "
            f"{blessing['champion_version'] or 'no champion'}; {blessing['users_evaluated']} users evaluated"
            f"{history}{repeats}{stats}; engine gates measured on {blessing['runtime_description'] or 'nothing'}; "
            f"TensorRT: {blessing['tensorrt_status'] or 'n/a'}{extra}")


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows])


def gate_table_markdown(blessing: Any) -> str:
    """The blessing as a Markdown table (one row per gate) under a one-line verdict, then the
    headline comparisons (candidate vs champion / popularity, the champion's health)."""
    data = _as_dict(blessing)
    lines = [f"**{_headline(data)}**", "", *_markdown_table(GATE_HEADER, _gate_rows(data))]
    comparisons = _comparison_rows(data)
    if comparisons:
        lines += ["", "Headline comparisons (what overrides diagnostic gates; the champion's health):", "",
                  *_markdown_table(COMPARISON_HEADER, comparisons)]
    return "\n".join(lines) + "\n"


def _html_table(header: list[str], rows: list[list[str]], verdict_column: int) -> str:
    colors = {"PASS": "#d4f4dd", "FAIL": "#f9d6d5", "INCONCLUSIVE": "#fbeec1", "SKIPPED": "#eeeeee"}
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        f'<tr style="background:{colors[row[verdict_column].split()[0]]}">'
        + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def gate_table_html(blessing: Any, standalone: bool = True) -> str:
    data = _as_dict(blessing)
    table = f"<p><b>{html.escape(_headline(data))}</b></p>" + _html_table(GATE_HEADER, _gate_rows(data), VERDICT_COLUMN)
    comparisons = _comparison_rows(data)
    if comparisons:
        table += ("<h3>Headline comparisons (what overrides diagnostic gates; the champion's health)</h3>"
                  + _html_table(COMPARISON_HEADER, comparisons, COMPARISON_HEADER.index("verdict")))
    if not standalone:
        return table
    return _page(f"Gates {data['day']}", table)


def _page(title: str, body: str) -> str:
    style = ("body{font-family:sans-serif;margin:2em;max-width:1200px} table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;text-align:left} img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")


# --- training curves ------------------------------------------------------------------------


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}_"))
        else:
            flat[name] = value
    return flat


def training_curve(history: Any) -> dict[str, list[float]]:
    """(epoch, loss, val NDCG) series from a history.json: a list of per-epoch records, or a dict
    holding one under "epochs"/"history". Validation NDCG@20 is preferred, any NDCG otherwise;
    epochs without validation are left out of that series."""
    if isinstance(history, dict):
        history = history.get("epochs", history.get("history", []))
    records = [_flatten(r) for r in history if isinstance(r, dict)]
    curve: dict[str, list[float]] = {"epoch": [], "loss": [], "val_epoch": [], "val_ndcg": []}
    ndcg_keys = sorted({k for r in records for k in r if "ndcg" in k.lower()},
                       key=lambda k: ("20" not in k, "val" not in k.lower(), k))
    for i, record in enumerate(records):
        epoch = float(record.get("epoch", i + 1))
        loss = next((record[k] for k in ("loss", "train_loss", "total_loss", "bpr_loss") if k in record), None)
        if isinstance(loss, (int, float)):
            curve["epoch"].append(epoch)
            curve["loss"].append(float(loss))
        if ndcg_keys and isinstance(record.get(ndcg_keys[0]), (int, float)):
            curve["val_epoch"].append(epoch)
            curve["val_ndcg"].append(float(record[ndcg_keys[0]]))
    curve["ndcg_key"] = ndcg_keys[0] if ndcg_keys else None  # type: ignore[assignment]
    return curve


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _honest_axis(ax) -> None:
    """A metric axis from 0 without an offset: autoscaling with matplotlib's offset made a 1e-6 change
    fill the whole chart, a cliff that was not there."""
    ax.set_ylim(bottom=0)
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")


def plot_training_curves(curves: dict[str, dict[str, list[float]]], out: Path) -> bool:
    if not any(c["epoch"] or c["val_epoch"] for c in curves.values()):
        return False
    plt = _plt()
    fig, (ax_loss, ax_ndcg) = plt.subplots(1, 2, figsize=(11, 4))
    for kind, curve in curves.items():
        if curve["epoch"]:
            ax_loss.plot(curve["epoch"], curve["loss"], marker=".", label=kind)
        if curve["val_epoch"]:
            ax_ndcg.plot(curve["val_epoch"], curve["val_ndcg"], marker="o", label=f"{kind} ({curve['ndcg_key']})")
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="loss")
    ax_ndcg.set(title="validation NDCG", xlabel="epoch", ylabel="NDCG")
    _honest_axis(ax_ndcg)
    for ax in (ax_loss, ax_ndcg):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return True


# --- metric history -------------------------------------------------------------------------


def metric_history(layout: Layout, up_to_day: str) -> list[dict[str, Any]]:
    """One row per report day <= ``up_to_day`` (its latest run): candidate / champion NDCG@20,
    Recall@20, blessed."""
    base = layout.root / "reports"
    rows = []
    if not base.exists():
        return rows
    for day in sorted(p.name for p in base.iterdir() if p.is_dir() and p.name <= up_to_day):
        latest = latest_run(layout, day)
        if latest is None:
            continue
        day_dir = Path(latest["dir"])
        evaluation_path = day_dir / "evaluation.json"
        if not evaluation_path.exists():
            continue
        evaluation = read_json(evaluation_path)
        blessing_path = day_dir / "blessing.json"
        blessing = read_json(blessing_path) if blessing_path.exists() else {}
        champion = evaluation.get("champion") or {}
        rows.append({
            "day": day,
            "candidate_ndcg@20": evaluation["candidate"].get("ndcg@20"),
            "candidate_recall@20": evaluation["candidate"].get("recall@20"),
            "champion_ndcg@20": champion.get("ndcg@20"),
            "champion_recall@20": champion.get("recall@20"),
            "popularity_ndcg@20": evaluation["popularity"].get("ndcg@20"),
            "blessed": blessing.get("blessed"),
        })
    return rows


def plot_metric_history(rows: list[dict[str, Any]], out: Path) -> bool:
    if not rows:
        return False
    plt = _plt()
    import matplotlib.dates as mdates

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    days = [dt.date.fromisoformat(r["day"]) for r in rows]
    for ax, metric in zip(axes, ("ndcg@20", "recall@20")):
        for who, style in (("candidate", "o-"), ("champion", "s--")):
            values = [r[f"{who}_{metric}"] for r in rows]
            points = [(d, v) for d, v in zip(days, values) if v is not None]
            if points:
                ax.plot([d for d, _ in points], [v for _, v in points], style, label=who)
        rejected = [(d, r[f"candidate_{metric}"]) for d, r in zip(days, rows)
                    if r["blessed"] is False and r[f"candidate_{metric}"] is not None]
        if rejected:
            ax.scatter([d for d, _ in rejected], [v for _, v in rejected], marker="x", s=80, color="red",
                       label="rejected", zorder=3)
        ax.set(title=f"{metric.upper()} on each day's holdout", xlabel="day", ylabel=metric)
        _honest_axis(ax)
        # whole days only (the auto locator shows hours for short spans)
        span = (days[-1] - days[0]).days
        ax.xaxis.set_major_locator(mdates.DayLocator(interval=max(1, span // 10)))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
        ax.tick_params(axis="x", rotation=45)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return True


# --- stage ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportResult:
    day: str
    run_key: str
    path: str  # reports/<day>/runs/<run_key>/report.html
    figures: tuple[str, ...]
    history_days: int
    blessed: bool | None
    outcome: str | None  # the run's decision (outcome.json kind), None if no decision was recorded
    curves: tuple[str, ...] = ()  # the models whose training curves the report plots


def _kv_table(data: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in data.items())
    return f"<table>{rows}</table>"


def shipped_size_html(layout: Layout, blessing: dict[str, Any] | None) -> str:
    """The judged candidate's size ladder (its pruned model's ladder.json): every rung tried, the
    one shipped and why; empty without a blessing or a ladder record."""
    from components.decide.candidate import CandidateRefs
    from components.model.ladder import LADDER_FILE

    path = Path(CandidateRefs.from_dict(layout, blessing["candidate_refs"]).pruned.path) / LADDER_FILE if blessing else None
    if path is None or not path.exists():
        return ""
    ladder = read_measured_json(path.parent, LADDER_FILE)
    columns = {"prune ratio": "prune_ratio", "dims": "embedding_dim", "precision": "precision",
               "table bytes": "table_bytes", "p95 ms": "latency_p95_ms", "val NDCG@20": "val_ndcg_at_20",
               "retention": "retention", "within budgets": "within_budgets", "qualifies": "qualifies"}
    shipped = ' style="background:#d4f4dd"'
    rows = "".join(f"<tr{shipped if i == ladder['chosen'] else ''}>"
                   + "".join(f"<td>{html.escape(_fmt(rung[key]))}</td>" for key in columns.values()) + "</tr>"
                   for i, rung in enumerate(ladder["rungs"]))
    head = "".join(f"<th>{h}</th>" for h in columns)
    return (f"<h2>Shipped size (ladder: target retention {ladder['min_retention']:.0%} of the teacher's validation "
            f"NDCG@20 {_fmt(ladder['teacher_val_ndcg@20'])})</h2><p>{html.escape(ladder['reason'])}</p>"
            f"<table><tr>{head}</tr>{rows}</table>")


def training_curves(layout: Layout, blessing: dict | None) -> dict:
    """The judged candidate's own models' training records (not the day's current ones), by kind."""
    from components.decide.candidate import CandidateRefs

    curves = {}
    if blessing is not None:
        refs = CandidateRefs.from_dict(layout, blessing["candidate_refs"])
        # The student's epochs carry the training loss; a closed-form teacher has none, and the pruned
        # model's records are pruning steps (validation NDCG only): without it the loss chart was empty.
        student = refs.student(layout)
        for kind, ref in (("teacher", refs.teacher), ("student", student), ("pruned", refs.pruned)):
            if ref is not None and (Path(ref.path) / "history.json").exists():
                curves[kind] = training_curve(read_json(Path(ref.path) / "history.json"))
    return curves


def evaluation_html(evaluation: dict) -> str:
    """The evaluation section: per model and segment, the metrics and how many users; the counts."""
    ks = sorted({k.split("@")[1] for k in evaluation["candidate"] if k.startswith("ndcg@")}, key=int)
    metrics = [f"{m}@{k}" for k in ks for m in ("ndcg", "recall")]
    header = "".join(f"<th>{m}</th>" for m in metrics)
    body = ""
    for who in ("candidate", "teacher", "champion", "popularity"):
        for segment in ("all", "history", "warm", "cold"):
            values = (evaluation["segments"].get(who) or {}).get(segment)
            if values:
                body += (f"<tr><th>{who}</th><td>{segment} ({values['users_evaluated']} users)</td>"
                         + "".join(f"<td>{_fmt(values.get(m))}</td>" for m in metrics) + "</tr>")
    counts = {k: evaluation.get(k) for k in ("holdout_users", "holdout_pairs", "users_evaluated",
                                             "history_users_evaluated", "warm_users_evaluated",
                                             "cold_users_evaluated", "champion_version", "baseline_reason")}
    counts["users with only repeat test items"] = (f"{evaluation['users_without_unseen_test_items']} "
                                                   "(excluded: nothing unseen to recommend)")
    counts["cold users answered by"] = evaluation.get("cold_answer", "popularity")
    # Per model: users without its trained embedding split by how serving answers them.
    # Keyed by name: the stored JSON's key order is not the columns' order.
    answered = "".join(f"<tr><th>{who}</th>" + "".join(f"<td>{_fmt(by.get(key))}</td>" for key in ANSWERED_BY)
                       + "</tr>" for who, by in evaluation.get("answered_by", {}).items())
    answered_table = ("<table><tr><th>answered by</th><th>model</th><th>fold-in</th><th>popularity</th></tr>"
                      f"{answered}</table>" if answered else "")
    return ("<h2>Evaluation on the fresh day (as served: users without a trained embedding get "
            "serving's fold-in or popularity answer)</h2>"
            f"<table><tr><th></th><th>segment</th>{header}</tr>{body}</table>" + _kv_table(counts) + answered_table)


def lineage_html(layout: Layout, version: str | None) -> str:
    """The registry section of the run's candidate version (empty before it is registered)."""
    lineage_path = layout.registry() / "versions" / str(version) / "lineage.json"
    if not (version and lineage_path.exists()):
        return ""
    lineage = read_json(lineage_path)
    return ("<h2>Registry</h2>" + _kv_table({"version": version, "judged_against": lineage.get("judged_against"),
                                             "registered_by_run": lineage.get("registered_by_run")})
            + "<h3>Lineage</h3>" + _kv_table({**lineage["models"], "config_hash": lineage["config_hash"],
                                              "code_version": lineage["code_version"]}))


def run_report(layout: Layout, day: str, cfg: PipelineConfig, *, run_key: str) -> ReportResult:
    """Write the run's report.html and PNGs into its folder from whatever the run produced."""
    out = run_dir(layout, day, run_key)
    out.mkdir(parents=True, exist_ok=True)
    blessing_path = out / "blessing.json"
    blessing = read_json(blessing_path) if blessing_path.exists() else None
    outcome = read_outcome(layout, day, run_key)
    figures = []
    curves = training_curves(layout, blessing)
    if plot_training_curves(curves, out / CURVES_PNG):
        figures.append(CURVES_PNG)
    rows = metric_history(layout, day)
    if plot_metric_history(rows, out / HISTORY_PNG):
        figures.append(HISTORY_PNG)

    from components.data.validation_report import data_checks_html  # validation warnings and graph checks of the day

    sections = []
    if outcome is not None:
        kind = outcome["kind"].upper().replace("_", " ")  # as the note, the grid and the Models page name it
        sections.append(f"<h2>Outcome: {html.escape(kind)}</h2><p>{html.escape(outcome['reason'])}"
                        "</p>" + _kv_table({k: outcome[k] for k in ("candidate", "champion_before", "champion_after")}))
    else:
        sections.append("<h2>Outcome: none recorded</h2><p>No decision was recorded for this run "
                        "(a stage before the decision failed or was not run).</p>")
    sections.append(data_checks_html(layout, day))
    sections.append("<h2>Gates</h2>" + (gate_table_html(blessing, standalone=False) if blessing
                                        else "<p>No blessing in this run (gate stage did not run).</p>"))
    sections.append(shipped_size_html(layout, blessing))
    evaluation_path = out / "evaluation.json"
    if evaluation_path.exists():
        sections.append(evaluation_html(read_json(evaluation_path)))
    for name, title in ((CURVES_PNG, "Training curves"), (HISTORY_PNG, "Metric history across days")):
        if name in figures:
            sections.append(f"<h2>{title}</h2><img src='{name}' alt='{title}'>")
    if rows:
        header = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
        body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in r.values()) + "</tr>" for r in rows)
        sections.append(f"<table><tr>{header}</tr>{body}</table>")
    version = (outcome or {}).get("candidate") or (blessing or {}).get("candidate_version")
    sections.append(lineage_html(layout, version))
    atomic_write_bytes(out / REPORT_FILE, _page(f"GraphDistill run {day} ({run_key})", "".join(sections)).encode())
    log.info("report %s run %s: %s (outcome %s; %d figures, %d days of metric history)", day, run_key,
             out / REPORT_FILE, outcome["kind"] if outcome else "none", len(figures), len(rows))
    return ReportResult(day=day, run_key=run_key, path=str(out / REPORT_FILE),
                        figures=tuple(str(out / f) for f in figures), history_days=len(rows),
                        blessed=blessing["blessed"] if blessing else None, outcome=outcome["kind"] if outcome else None,
                        curves=tuple(curves))
