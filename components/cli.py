"""Command line: one command per pipeline step (the same functions the DAG calls), data sources,
registry operations, and the demo that runs the real Airflow DAG day by day.

    graphdistill run validate --day 2026-01-03 --root .graphdistill
    graphdistill generate --days 6 --corrupt 2026-01-05:duplicated_events
    graphdistill replay ml-100k/u.data --shift-to 2026-01-01
    graphdistill replay events.csv --user-col visitorid --item-col itemid --type-col event \
        --type-map "addtocart=cart,transaction=purchase" --time-unit ms
    graphdistill demo --days 6
    graphdistill champion | history | outcome DAY | rollback | promote VERSION --reason WHY | announce
    graphdistill recommend u1 u2 | triton-export OUT
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from components.core.config import REPO_ROOT
from components.core.refs import EngineRef
from components.core.errors import PermanentStageFailure, StageSkipped, storage_fault
from components.core.objectstore import ObjectStoreError
from components.core.remote import session
from components.pipeline import (RUN_SCOPED, STAGES, catalog_inputs, context_as_json, default_inputs, describe_inputs,
                                 resolve, run_stage)
from components.core.catalog import (MANIFEST, Layout, cli_run_key, latest_run, object_root, parse_day, read_json, run_dir,
                                     run_key_for)

DAG_ID = "gnn_recsys_nightly"
log = logging.getLogger("graphdistill")


def _overrides(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as YAML (numbers, booleans, lists)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        out[key] = yaml.safe_load(value)
    return out


def _days(start: str, count: int) -> list[str]:
    first = parse_day(start)
    return [(first + dt.timedelta(days=i)).isoformat() for i in range(count)]


def cli_run_key_for(stage: str, layout: Layout, day: str, run_key: str | None) -> str:
    """The run a CLI stage belongs to: ``--run-key``; else a new run for a stage that starts one.
    A stage that continues a run (gate, register, promote, report) needs its key: continuing "the
    day's latest run" made two runs of a day at once both judge one run's candidate."""
    if run_key:
        return run_key_for(run_key)
    if stage in RUN_SCOPED and stage != "evaluate":
        latest = latest_run(layout, day)
        newest = f"the day's newest run is {latest['run_key']}" if latest else f"{day} has no run yet"
        raise ValueError(f"{stage} continues a run of {day}: pass --run-key with the key evaluate printed "
                         f"({newest})")
    return cli_run_key()


def cmd_run(args: argparse.Namespace) -> int:
    cfg = resolve(args.root, args.config, _overrides(args.set))
    day = parse_day(args.day).isoformat()
    layout = Layout.at(cfg.root)
    run_key = cli_run_key_for(args.stage, layout, day, args.run_key)
    upstream = None
    previous = {"gate": "evaluate", "register": "gate", "promote": "register"}.get(args.stage)
    if previous:  # the CLI passes the run's own upstream result, as the DAG does
        recorded = run_dir(layout, day, run_key) / "stages" / f"{previous}.json"
        if not recorded.exists():
            raise FileNotFoundError(f"run {run_key} of {day} has no {previous} result ({recorded}); run {previous} first")
        upstream = read_json(recorded)
    if args.stage == "evaluate":  # the DAG passes convert's result; here: the day's current engine, said so
        engine = layout.current_ref(EngineRef, day)
        if engine is None:
            raise FileNotFoundError(f"no {EngineRef.KIND} artifact for {day} under {layout.root} (run convert first)")
        print(f"candidate: {engine.kind} {engine.day} v{engine.version} (the day's current)", file=sys.stderr)
        upstream = engine.as_dict()
    inputs = default_inputs(args.stage, day, layout)
    for keyword, ref in inputs.items():  # the DAG passes its upstream tasks' results; here: the day's current
        print(f"{keyword}: {ref['kind']} {ref['day']} v{ref['version']} (the day's current)", file=sys.stderr)
    context = catalog_inputs(args.stage, day, layout, cfg)
    if context:
        print(f"from the catalog: {describe_inputs(context)}", file=sys.stderr)
    print(f"run key: {run_key} ({run_dir(layout, day, run_key)})", file=sys.stderr)
    print(json.dumps(run_stage(args.stage, day, cfg, run_key=run_key, upstream=upstream, inputs=inputs,
                               context=context_as_json(context)), indent=2, default=str))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from components.data.sources.synthetic import SyntheticWorld, corrupt_landing, write_landing_day

    world = SyntheticWorld(num_users=args.users, num_items=args.items, start=parse_day(args.start), seed=args.seed)
    universe = world.universe()
    layout = Layout.at(args.root)
    corruptions = dict(spec.split(":", 1) for spec in args.corrupt)
    for day in _days(args.start, args.days):
        path = write_landing_day(world, layout.landing(day), parse_day(day), args.format, universe)
        if day in corruptions:
            corrupt_landing(layout.landing(day), corruptions[day])
        print(f"{day}: {path}{'  (corrupted: ' + corruptions[day] + ')' if day in corruptions else ''}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from components.data.sources.replay import parse_type_map, replay

    result = replay(Path(args.source), Layout.at(args.root).root / "landing",
                    shift_to=parse_day(args.shift_to) if args.shift_to else None, max_days=args.max_days,
                    user_col=args.user_col, item_col=args.item_col, ts_col=args.time_col, type_col=args.type_col,
                    type_map=parse_type_map(args.type_map), time_unit=args.time_unit, sep=args.sep)
    if not result.days:
        raise ValueError(f"{args.source}: no rows to replay")
    print(f"{result.rows} rows into {len(result.days)} days: {result.days[0]} .. {result.days[-1]}")
    return 0


def cmd_champion(args: argparse.Namespace) -> int:
    from components.decide.registry import champion

    current = champion(Layout.at(args.root))
    print(json.dumps(current.__dict__ if current else None, indent=2, default=str))
    return 0 if current else 1


def announce_champion(root: str, layout: Layout, event: str, reason: str) -> int:
    """Tell Airflow the champion changed outside a nightly run: an event on the champion Asset through
    the api-server ($GRAPHDISTILL_API_URL), so the serving refresh DAG exports it within one refresh.
    0 when announced, or when no api-server is configured (said on stderr, with how to finish); 3 when
    one is configured but the event could not be recorded (the change stands)."""
    from components.core.airflow_api import API_URL_ENV, CHAMPION_ASSET, AirflowApi
    from components.decide.registry import champion, version_day

    current = champion(layout)
    if current is None:
        raise LookupError(f"no champion under {layout.registry()} to announce")
    retry = f"`graphdistill announce --reason ...` with {API_URL_ENV} set, or `graphdistill triton-export` by hand"
    url = os.environ.get(API_URL_ENV)
    if not url:
        print(f"champion {current.version} NOT announced: {API_URL_ENV} (http://USER:PASSWORD@api-server:8080) is "
              f"not set, so serving keeps its model until the next promotion; finish with {retry}", file=sys.stderr)
        return 0  # nothing configured to tell: a local root without Airflow is a normal setup
    api = AirflowApi.from_url(url)
    # An s3:// root travels as its URI: the serving refresh reads the store's champion, not this host's copy.
    extra = {"version": current.version, "day": version_day(layout, current.version), "previous": list(current.previous)[-1:] or None,
             "event": event, "reason": reason, "root": str(root) if object_root(root) else str(layout.root),
             "registry": str(layout.registry())}
    try:
        posted = api.emit_asset_event(CHAMPION_ASSET, extra)
    except (OSError, LookupError, KeyError) as exc:  # HTTP, connection and lookup errors
        print(f"champion {current.version} NOT announced through {api.base}: {exc}; finish with {retry}",
              file=sys.stderr)
        return 3
    print(f"champion Asset event {posted.get('id')} for {current.version} ({event}) recorded at {api.base}: "
          f"the serving refresh follows")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from components.decide.registry import promote

    layout = Layout.at(args.root)
    result = promote(layout, args.version, reason=args.reason)
    print(json.dumps(result.__dict__, indent=2))
    return announce_champion(args.root, layout, "manual promotion", args.reason) if result.promoted else 0


def cmd_announce(args: argparse.Namespace) -> int:
    return announce_champion(args.root, Layout.at(args.root), "announce", args.reason)


def cmd_history(args: argparse.Namespace) -> int:
    """Every promotion, rollback and not-promoted decision, with its reason."""
    from components.decide.registry import history

    for entry in history(Layout.at(args.root)):
        manual = " (by hand)" if entry.get("manual") else ""
        recovered = " (logged after a crash)" if entry.get("recovered") else ""
        print(f"{entry.get('at', '?')}  {entry['event']:<12} {entry['version']}{manual}{recovered}  "
              f"{entry.get('reason', '')}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from components.decide.registry import rollback

    layout = Layout.at(args.root)
    print(f"champion is now {rollback(layout, reason=args.reason)}")
    return announce_champion(args.root, layout, "rollback", args.reason)


def cmd_recommend(args: argparse.Namespace) -> int:
    from components.data.features import online_history
    from components.ship.serving import Recommender
    from components.ship.triton import triton_repository

    cfg = resolve(args.root, args.config, _overrides(args.set))
    layout = Layout.at(cfg.root)
    history = online_history(layout, cfg)
    if args.via == "triton":
        from components.core.champion import champion_in
        from components.ship.triton import TritonRunner

        url = args.triton_url or os.environ.get("GRAPHDISTILL_TRITON_URL")
        if not url:
            raise ValueError("recommend --via triton needs --triton-url or GRAPHDISTILL_TRITON_URL")
        champ = champion_in(layout)  # an s3:// root: the store's pointer
        if champ is None:
            raise LookupError(f"no champion in registry {layout.registry()} (nothing promoted yet)")
        runner = TritonRunner(url, triton_repository(layout, cfg.ops.triton_repository), champ.version)
        recommender = Recommender(Path(champ.path), history=history, runner=runner)
    else:
        recommender = Recommender.load(layout, history=history)
    segments = recommender.segments(args.users)
    try:
        answers = recommender.recommend(args.users, args.k)
    except RuntimeError as exc:  # TritonError: not reachable, or serving another version than the champion
        print(f"graphdistill recommend: {exc}", file=sys.stderr)
        return 3
    print(f"# champion {recommender.version} answered by {recommender.runner.description}")
    for user, segment, items in zip(args.users, segments, answers):
        print(user, f"[{segment}]", " ".join(f"{item}:{score:.3f}" for item, score in items))
    return 0


def cmd_outcome(args: argparse.Namespace) -> int:
    from components.decide.outcome import run_outcome

    layout = Layout.at(args.root)
    days = args.day or sorted({p.name for p in (layout.root / "reports").glob("*-*-*")} |
                              {p.name.split("=", 1)[1] for p in (layout.root / "quarantine").glob("date=*")})
    for day in days:
        outcome = run_outcome(layout, day, args.run_key)
        print(json.dumps(outcome.as_dict(), default=str) if args.json else outcome.headline)
    return 0


def cmd_triton_export(args: argparse.Namespace) -> int:
    from components.ship.serving import export_triton_repository

    for path in export_triton_repository(Layout.at(args.root), Path(args.out)):
        print(path)
    return 0


# --- demo: the real DAG, day by day, through `airflow dags test` -----------------------------


AIRFLOW_CONFIG_FILE = REPO_ROOT / "config" / "airflow.cfg"


def airflow_env(root: Path) -> dict[str, str]:
    """Environment of an Airflow process over ``root``: its home (metadata DB, logs) is <root>/airflow,
    derived here at run time; the config file lives in the repo (config/airflow.cfg) so that no file
    inside the root names the root's path and a copied root runs on its own database."""
    env = dict(os.environ)
    env.update({
        "AIRFLOW_HOME": str(root / "airflow"),
        "AIRFLOW_CONFIG": str(AIRFLOW_CONFIG_FILE),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "GRAPHDISTILL_TASK_RETRIES": "0",  # a failed day fails now instead of waiting for retries
        # `airflow dags test` crashes on a DAG with a DeadlineAlert (airflow#73428); deadlines need a scheduler.
        "GRAPHDISTILL_DEADLINE_ALERT": "off",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
    })
    return env


def airflow_bin() -> str:
    return str(Path(sys.executable).with_name("airflow"))


def run_dag_day(root: Path, day: str, conf: dict[str, Any], log_file: Path, timeout_s: float | None = None,
                extra_env: dict[str, str] | None = None) -> int:
    """``airflow dags test`` for one day: a real, in-process DAG run on SQLite.

    The day is named in the conf (a manual run must name its day, components.decide.outcome.run_day); the
    logical date D + 1 is the one the scheduler would give day D's run (it starts once D has ended).
    Past ``timeout_s`` the run is killed and subprocess.TimeoutExpired raised.
    """
    env = {**airflow_env(root), **(extra_env or {})}
    run_at = (parse_day(day) + dt.timedelta(days=1)).isoformat()
    if not (root / "airflow" / "airflow.db").exists():
        subprocess.run([airflow_bin(), "db", "migrate"], env=env, check=True, capture_output=True)
    with log_file.open("w") as out:
        proc = subprocess.run([airflow_bin(), "dags", "test", DAG_ID, run_at, "--conf", json.dumps({**conf, "day": day})],
                              env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s)
    return proc.returncode


def day_summary(layout: Layout, day: str) -> dict[str, Any]:
    """What the day's latest run did, read back from its artifacts (not from logs)."""
    latest = latest_run(layout, day)
    stages = Path(latest["dir"]) / "stages" if latest else layout.reports(day) / "missing"
    read = lambda name: read_json(stages / f"{name}.json") if (stages / f"{name}.json").exists() else None  # noqa: E731
    accepted = read_json(layout.accepted(day) / MANIFEST) if (layout.accepted(day) / MANIFEST).exists() else None
    # The newest quarantine attempt counts only if the day is not accepted (a later fix wins).
    quarantined = [] if accepted or not layout.quarantine(day).exists() else sorted(
        layout.quarantine(day).glob("*/rows.parquet"), key=lambda p: p.stat().st_mtime)
    summary: dict[str, Any] = {
        "day": day,
        "accepted_rows": accepted["rows_accepted"] if accepted else 0,
        "quarantined": bool(quarantined),
    }
    if accepted and accepted.get("warnings"):  # anomalies the day was accepted with (validate.py)
        summary["validation_warnings"] = [w.split(":", 1)[0] for w in accepted["warnings"]]
    if quarantined:
        import pandas as pd

        summary["quarantined_rows"] = len(pd.read_parquet(quarantined[-1]))
    features, graph, gate, promotion = read("features"), read("graph"), read("gate"), read("promote")
    if features:
        rows = features.get("materialized_rows") or {}
        summary["features_rows"] = f"{rows.get('user_activity', 0)}u/{rows.get('item_popularity', 0)}i"
    if graph:
        summary["graph"] = f"{graph['num_users']}u/{graph['num_items']}i/{graph['train_pairs']}e"
    if gate:
        from components.decide.report import champion_health_text, repeat_only_text

        summary["verdict"] = gate.get("verdict")
        summary["users_evaluated"] = gate.get("users_evaluated")
        summary["history_users_evaluated"] = gate.get("history_users_evaluated")
        if gate.get("users_without_unseen_test_items") is not None:
            summary["repeat_only_users"] = gate["users_without_unseen_test_items"]
            summary["repeat_only"] = repeat_only_text(gate["users_without_unseen_test_items"])
        summary["failed_gates"] = list(gate.get("failed", []))
        summary["inconclusive_gates"] = list(gate.get("inconclusive", []))
        summary["overridden_gates"] = list(gate.get("overridden", []))
        summary["champion_health"] = champion_health_text(gate)
    if promotion:
        summary["champion"] = promotion.get("champion_version")
    if latest and latest.get("outcome"):
        summary["outcome"] = f"{latest['outcome']}: {latest['reason']}"
    return summary


# Demo sizing: 4500 users give the last days >= 1,000 evaluated users, so gate intervals are
# conclusive (4000 gave 929 and 938; evaluated users scale with the users active on a day). Fewer
# epochs than a production night (the teacher warm-starts from yesterday's, the student starts from
# the teacher's principal axes) keep the demo short.
DEMO_USERS, DEMO_ITEMS = 4500, 1500
DEMO_OVERRIDES = ["distill.epochs=10"]  # the default teacher (graph filter) has no epochs


def cmd_demo(args: argparse.Namespace) -> int:
    from components.decide.registry import champion
    from components.decide.report import gate_table_markdown
    from components.core.refs import Blessing

    if object_root(args.root):  # airflow dags test keeps its own SQLite and logs under the root
        raise ValueError(f"demo runs on a local folder, got {args.root!r}; run stages on an s3:// root with "
                         f"`graphdistill run` or the DAG")
    root = Path(args.root).resolve()
    if args.fresh and root.exists():
        shutil.rmtree(root)
    layout = Layout.at(root)
    days = _days(args.start, args.days)
    bad_day = days[args.bad_day_index] if 0 <= args.bad_day_index < len(days) else None
    gen = argparse.Namespace(root=str(root), start=args.start, days=args.days, users=args.users, items=args.items,
                             seed=args.seed, format="parquet",
                             corrupt=[f"{bad_day}:duplicated_events"] if bad_day else [])
    cmd_generate(gen)
    conf = {"root": str(root), "overrides": {**_overrides(DEMO_OVERRIDES), **_overrides(args.set)}}
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    rows = []
    for day in days:
        rc = run_dag_day(root, day, conf, logs / f"{day}.log")
        summary = day_summary(layout, day)
        summary["dag_run"] = "success" if rc == 0 else f"failed (rc={rc}, log {logs / f'{day}.log'})"
        rows.append(summary)
        print(json.dumps(summary, default=str))
    print("\nday        | accepted | quarantined | graph (users/items/edges) | evaluated | repeat-only | verdict      "
          "| outcome")
    for r in rows:
        print(f"{r['day']} | {r['accepted_rows']:8} | {r.get('quarantined_rows', 0) if r['quarantined'] else 0:11} | "
              f"{r.get('graph', '-'):25} | {str(r.get('users_evaluated', '-')):9} | "
              f"{str(r.get('repeat_only_users', '-')):11} | {str(r.get('verdict', '-')):12} | {r.get('outcome', '-')}")
    current = champion(layout)
    print(f"\nchampion: {current.version if current else 'none'}")
    judged = [(d, latest_run(layout, d)) for d in reversed(days)]
    last = next(((d, Path(lr["dir"])) for d, lr in judged if lr and (Path(lr["dir"]) / "blessing.json").exists()), None)
    if last:
        print(f"\ngate table of {last[0]}:\n")
        print(gate_table_markdown(Blessing.load(last[1] / "blessing.json")))
        print(f"report: {last[1] / 'report.html'}")
    return 0 if current else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="graphdistill", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    default_root = os.environ.get("GRAPHDISTILL_ROOT", str(REPO_ROOT / ".graphdistill"))

    run = sub.add_parser("run", help="run one pipeline stage for a day")
    run.add_argument("stage", choices=list(STAGES))
    run.add_argument("--day", required=True)
    run.add_argument("--root", default=default_root)
    run.add_argument("--config", default=None, help="pipeline YAML (default config/pipeline.yaml)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    run.add_argument("--run-key", default=None,
                     help="run the stage as part of this run (reports/<day>/runs/<key>/); default: a new cli-<UTC> "
                          "run for evaluate and earlier stages, the day's latest run for gate..report")
    run.set_defaults(func=cmd_run)

    gen = sub.add_parser("generate", help="write synthetic landing partitions")
    gen.add_argument("--root", default=default_root)
    gen.add_argument("--start", default="2026-01-01")
    gen.add_argument("--days", type=int, default=5)
    gen.add_argument("--users", type=int, default=400)
    gen.add_argument("--items", type=int, default=300)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--format", choices=["csv", "jsonl", "parquet"], default="parquet")
    gen.add_argument("--corrupt", action="append", default=[], metavar="DAY:KIND",
                     help="missing_column|duplicated_events|wrong_day|empty_file|unreadable_file")
    gen.set_defaults(func=cmd_generate)

    rep = sub.add_parser("replay", help="split a timestamped public log (MovieLens, RecBole .inter, any CSV/TSV) into landing days")
    rep.add_argument("source")
    rep.add_argument("--root", default=default_root)
    rep.add_argument("--shift-to", default=None)
    rep.add_argument("--max-days", type=int, default=None)
    rep.add_argument("--user-col", default="user", help="the log's user column (generic CSV/TSV)")
    rep.add_argument("--item-col", default="item", help="the log's item column")
    rep.add_argument("--time-col", default="timestamp", help="the log's time column")
    rep.add_argument("--time-unit", default="auto", choices=["auto", "s", "ms", "us", "ns", "iso"],
                     help="epoch unit or iso; auto detects the epoch unit by magnitude")
    rep.add_argument("--type-col", default=None, help="the log's event-type column (else ratings map to types)")
    rep.add_argument("--type-map", default=None, help='raw event values to contract types, e.g. "addtocart=cart,transaction=purchase"')
    rep.add_argument("--sep", default=None, help="separator of a generic file (default: tab for .tsv, else comma)")
    rep.set_defaults(func=cmd_replay)

    demo = sub.add_parser("demo", help="generate days and run the real DAG over them (airflow dags test)")
    demo.add_argument("--root", default=str(REPO_ROOT / ".graphdistill" / "demo"))
    demo.add_argument("--start", default="2026-01-01")
    demo.add_argument("--days", type=int, default=6)
    demo.add_argument("--users", type=int, default=DEMO_USERS)
    demo.add_argument("--items", type=int, default=DEMO_ITEMS)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--bad-day-index", type=int, default=3, help="index of the day whose logs are corrupted (duplicated events); -1 for none")
    demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help=f"config override, repeatable (the demo sets {' '.join(DEMO_OVERRIDES)} first)")
    demo.add_argument("--no-fresh", dest="fresh", action="store_false", help="keep an existing demo root")
    demo.set_defaults(func=cmd_demo)

    for name, func, help_text in (("champion", cmd_champion, "print the serving champion"),
                                  ("rollback", cmd_rollback, "restore the previous champion and tell serving "
                                                             "(champion Asset event via $GRAPHDISTILL_API_URL)"),
                                  ("announce", cmd_announce, "emit the champion Asset event for the current "
                                                             "champion (after a rollback that could not reach Airflow)")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--root", default=default_root)
        if name != "champion":
            p.add_argument("--reason", default=f"manual {name}")
        p.set_defaults(func=func)
    prom = sub.add_parser("promote", help="promote any blessed registry version by hand (recorded as manual; "
                                          "lifts a rollback; skips the automatic compare-and-swap checks)")
    prom.add_argument("version")
    prom.add_argument("--root", default=default_root)
    prom.add_argument("--reason", required=True, help="why (recorded in the registry history)")
    prom.set_defaults(func=cmd_promote)
    hist = sub.add_parser("history", help="promotions, rollbacks and not-promoted decisions with reasons")
    hist.add_argument("--root", default=default_root)
    hist.set_defaults(func=cmd_history)
    rec = sub.add_parser("recommend", help="top-k items for users from the champion and their Feast history")
    rec.add_argument("users", nargs="+")
    rec.add_argument("-k", type=int, default=10)
    rec.add_argument("--root", default=default_root)
    rec.add_argument("--config", default=None, help="pipeline YAML (its features section opens the online store)")
    rec.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    rec.add_argument("--via", choices=("local", "triton"), default="local",
                     help="local: the champion's engine in this process; triton: Triton answers (exit 3 when it "
                          "is unreachable or serves another version than the champion)")
    rec.add_argument("--triton-url", default=None, help="Triton's HTTP URL (default $GRAPHDISTILL_TRITON_URL)")
    rec.set_defaults(func=cmd_recommend)
    out = sub.add_parser("outcome", help="each night's decision (promoted, rejected, quarantined, ...) and why")
    out.add_argument("day", nargs="*", help="days (YYYY-MM-DD); default: every day with records")
    out.add_argument("--run-key", default=None, help="a run of the day (Airflow run_id or CLI run key); default: its latest")
    out.add_argument("--root", default=default_root)
    out.add_argument("--json", action="store_true", help="the full outcome as one JSON object a line")
    out.set_defaults(func=cmd_outcome)
    tri = sub.add_parser("triton-export", help="write a Triton model repository for the champion")
    tri.add_argument("out")
    tri.add_argument("--root", default=default_root)
    tri.set_defaults(func=cmd_triton_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        # An s3:// root: the command works in the hydrated local copy; what it wrote is published after.
        with session(args.root) if getattr(args, "root", None) else contextlib.nullcontext():
            return args.func(args)
    except StageSkipped as exc:
        print(f"graphdistill {args.command}: skipped: {exc}", file=sys.stderr)
        return 0
    except (PermanentStageFailure, LookupError, PermissionError, FileNotFoundError, ValueError,
            ObjectStoreError) as exc:
        # Expected operator errors (nothing to roll back, unblessed version, bad input): one clear line;
        # a permission the OS refused (e.g. reading a stage's inputs) says what to do, as everywhere.
        fault = storage_fault(exc, getattr(args, "root", None) or ".") if isinstance(exc, OSError) else None
        print(f"graphdistill {args.command}: {fault or exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # disk full, read-only root, permission denied: one line, not a traceback
        fault = storage_fault(exc, getattr(args, "root", None) or ".")
        if fault is None:
            raise
        print(f"graphdistill {args.command}: {fault}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
