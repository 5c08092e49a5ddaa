"""What people and gates read of a validation: the day's report (markdown and HTML, failures first, what
to do with a quarantined day), the gateable ``validation_warnings`` count, and the run report's
"Data checks" section."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any


from components.core.catalog import Layout, read_json
from components.data.validation_result import WARN, ValidationResult

def _status(result: ValidationResult) -> str:
    if not result.success:
        return "FAILED: day quarantined"
    return f"PASSED with {len(result.warnings)} warning(s)" if result.warnings else "PASSED"


def rerun_instructions(day: str) -> str:
    """How to get a quarantined day through: nothing was lost, so fix the landing data and re-run it."""
    return (f"Nothing was lost: every landed row is kept in this quarantine attempt (rows.parquet, raw/). Fix or "
            f"re-deliver the files under landing/date={day}, then re-run the day: airflow dags trigger "
            f"gnn_recsys_nightly --run-id day_{day}__rerun --conf '{{\"day\": \"{day}\"}}' (or clear the run's "
            f"validate task; outside Airflow: graphdistill run ingest --day {day} && graphdistill run validate "
            f"--day {day}). The champion keeps serving meanwhile.")


def _fmt_band(band: tuple[float | None, float | None] | None) -> str:
    if band is None:
        return ""
    low, high = band
    return f"<= {high}" if low is None else f"[{low}, {high}]"


def render_report(result: ValidationResult, files: list[dict[str, Any]],
                  skipped: list[dict[str, Any]] = ()) -> tuple[str, str]:
    """A readable report as (markdown, html): failures and warnings first, then every rule, then
    every entry of the partition (read or skipped with its reason)."""
    status = _status(result)
    # The accounting adds up: rows in = accepted + dropped duplicates + quarantined; entries seen = read + skipped.
    counts = (f"rows in {result.rows} = accepted {result.accepted_rows} + duplicates dropped {result.duplicate_rows} "
              f"(by content {result.content_duplicate_rows}) + quarantined {result.quarantined_rows}; late {result.late_rows}; "
              f"entries seen {len(files) + len(skipped)} = files read {len(files)} + skipped {len(skipped)}")
    ordered = sorted(result.rules, key=lambda r: {"FAIL": 0, "WARN": 1, "skipped": 2, "pass": 3}[r.verdict])
    md = [f"# Validation {result.day}: {status}", "", counts, ""]
    if result.summary_lines():
        md += ["## Failures and warnings", ""] + [f"- {line}" for line in result.summary_lines()] + [""]
    md += ["| rule | column | severity | verdict | observed | band | unexpected | expected | examples (file:row) |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in ordered:
        md.append(f"| {r.rule} | {r.column or ''} | {r.severity} | {'**' + r.verdict + '**' if r.verdict in ('FAIL', 'WARN') else r.verdict} "
                  f"| {r.observed if r.observed is not None else ''} | {_fmt_band(r.band)} "
                  f"| {'' if r.unexpected_count is None else r.unexpected_count} | {r.skipped or r.expected} | {'; '.join(r.samples)} |")
    md += ["", "## Files", "", "| file | status | bytes | rows | sha256 | timestamps | unknown columns | error or reason |",
           "|---|---|---|---|---|---|---|---|"]
    md += [f"| {f['name']} | {'unreadable' if f['error'] else 'read'} | {f['bytes']} | {'' if f['rows'] is None else f['rows']} "
           f"| {(f['sha256'] or '')[:12]} | {f.get('ts_form') or ''} | {', '.join(f.get('extra_columns') or ())} | {f['error'] or ''} |"
           for f in files]
    md += [f"| {s['name']} | skipped | {'' if s.get('bytes') is None else s['bytes']} | | | | | {s['reason']} |" for s in skipped]
    if not result.success:
        md += ["", "## What to do", "", rerun_instructions(result.day)]
    md += ["", "## Notes", ""] + [f"- {n}" for n in result.notes]
    css = {"FAIL": "bad", "WARN": "warn", "skipped": "skip", "pass": "ok"}
    rows_html = "".join(
        f"<tr class={css[r.verdict]}><td>{html.escape(r.rule)}</td><td>{html.escape(r.column or '')}</td>"
        f"<td>{r.severity}</td><td>{r.verdict}</td><td>{html.escape(str(r.observed if r.observed is not None else ''))}</td>"
        f"<td>{html.escape(_fmt_band(r.band))}</td><td>{'' if r.unexpected_count is None else r.unexpected_count}</td>"
        f"<td>{html.escape(r.skipped or r.expected)}</td><td>{html.escape('; '.join(r.samples))}</td></tr>"
        for r in ordered
    )
    files_html = "".join(
        f"<tr><td>{html.escape(f['name'])}</td><td>{'unreadable' if f['error'] else 'read'}</td><td>{f['bytes']}</td>"
        f"<td>{'' if f['rows'] is None else f['rows']}</td><td>{html.escape(f.get('ts_form') or '')}</td>"
        f"<td>{html.escape(', '.join(f.get('extra_columns') or ()))}</td><td>{html.escape(f['error'] or '')}</td></tr>"
        for f in files
    ) + "".join(f"<tr class=skip><td>{html.escape(s['name'])}</td><td>skipped</td><td>{'' if s.get('bytes') is None else s['bytes']}</td>"
                f"<td></td><td></td><td></td><td>{html.escape(s['reason'])}</td></tr>" for s in skipped)
    summary_html = "".join(f"<li>{html.escape(line)}</li>" for line in result.summary_lines())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Validation {result.day}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px}}
tr.bad{{background:#fdd}}tr.warn{{background:#ffe8b0}}tr.skip{{background:#eee}}tr.ok{{background:#efe}}</style></head><body>
<h1>Validation {result.day}: {html.escape(status)}</h1>
<p>{html.escape(counts)}</p>
{f'<h2>Failures and warnings</h2><ul>{summary_html}</ul>' if summary_html else ''}
{'' if result.success else f'<h2>What to do</h2><p>{html.escape(rerun_instructions(result.day))}</p>'}
<table><tr><th>rule</th><th>column</th><th>severity</th><th>verdict</th><th>observed</th><th>band</th><th>unexpected</th><th>expected</th><th>examples (file:row)</th></tr>{rows_html}</table>
<h2>Files</h2><table><tr><th>file</th><th>status</th><th>bytes</th><th>rows</th><th>timestamps</th><th>unknown columns</th><th>error or reason</th></tr>{files_html}</table>
<h2>Notes</h2><ul>{''.join(f'<li>{html.escape(n)}</li>' for n in result.notes)}</ul></body></html>"""
    return "\n".join(md) + "\n", page


def validation_metrics(layout: Layout, day: str) -> dict[str, float]:
    """Gateable numbers of the day's validation (config/gates.yaml ``validation_warnings``)."""
    path = layout.reports(day) / "validation" / "validation.json"
    if not path.exists():
        return {}
    rules = read_json(path)["result"]["rules"]
    return {"validation_warnings": float(sum(1 for r in rules if not r["success"] and not r.get("skipped")
                                             and r.get("severity") == WARN))}


def data_checks_html(layout: Layout, day: str) -> str:
    """The run report's "Data checks" section: the day's validation warnings (value and band) and
    the graph-level checks."""
    parts = ["<h2>Data checks</h2>"]
    path = layout.reports(day) / "validation" / "validation.json"
    if path.exists():
        rules = [r for r in read_json(path)["result"]["rules"] if not r["success"] and not r.get("skipped")]
        if rules:
            rows = "".join(
                f"<tr class=warn><td>{html.escape(r['rule'])}{'(' + html.escape(r['column']) + ')' if r.get('column') else ''}</td>"
                f"<td>{html.escape(str(r.get('observed')))}</td><td>{html.escape(_fmt_band(r.get('band')))}</td>"
                f"<td>{html.escape(r.get('expected', ''))}</td></tr>" for r in rules)
            parts.append(f"<p><b>{len(rules)} validation warning(s)</b> (<a href='../../validation/report.html'>validation report</a>)</p>"
                         f"<table><tr><th>rule</th><th>observed</th><th>band</th><th>expected</th></tr>{rows}</table>")
        else:
            parts.append("<p>Validation: no warnings (<a href='../../validation/report.html'>validation report</a>).</p>")
    else:
        parts.append("<p>Validation: no record for this day.</p>")
    graph = layout.current("graphs", day)
    checks = read_json(Path(graph.path) / "stats.json").get("checks", []) if graph else []
    if checks:
        rows = "".join(f"<tr class={'warn' if c['verdict'] == 'WARN' else 'ok'}><td>{html.escape(c['check'])}</td>"
                       f"<td>{c['value']}</td><td>{'' if c['threshold'] is None else c['threshold']}</td>"
                       f"<td>{c['verdict']}</td><td>{html.escape(c['detail'])}</td></tr>" for c in checks)
        parts.append("<h3>Graph checks</h3><table><tr><th>check</th><th>value</th><th>max</th><th>verdict</th>"
                     f"<th>detail</th></tr>{rows}</table>")
    return "".join(parts)
