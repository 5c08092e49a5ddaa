"""Scheduler-driven nights on the stack: nobody triggers anything. The DAG is unpaused, the scheduler
catches up the three nights landed in the object store (GRAPHDISTILL_START_DATE), the Celery workers run
them (the model tasks on queue ``gpu``) against Postgres, Redis and the artifact root on the object store
(s3://<bucket>/root, each worker in its own working copy), and the outcomes are read back over HTTP."""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import urllib.request

import pytest

from tests.stack.conftest import NIGHTS

pytestmark = pytest.mark.stack

DAG = "gnn_recsys_nightly"
# Immutable artifacts in the store: <kind>/<day>/<version>/ (components/core/remote.py's _IMMUTABLE).
ARTIFACT = re.compile(r"^(graphs|models/[^/]+|exports|engines)/(\d{4}-\d{2}-\d{2})/([^/]+)/(.+)$")
GPU_TASKS = {"teacher", "distill", "prune", "convert"}
NIGHTS_TIMEOUT_S = 2400  # three small nights, one at a time, on a 2-core machine


def _patch(stack, path: str, body: dict, token: str) -> dict:
    request = urllib.request.Request(f"{stack.api.base_url}{path}", data=json.dumps(body).encode(), method="PATCH",
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def nights(stack):
    """Unpause the DAG once it is parsed and wait until the scheduler's three runs have finished."""
    api, token = stack.api, stack.api.token()
    deadline = time.monotonic() + 300
    while api.get(f"/api/v2/dags/{DAG}", token)[0] != 200:
        assert time.monotonic() < deadline, f"{DAG} not parsed by the dag-processor; see {stack.log('dag-processor')}"
        time.sleep(2)
    started = time.monotonic()
    _patch(stack, f"/api/v2/dags/{DAG}", {"is_paused": False}, token)
    while True:
        token = api.token()  # tokens expire; a night takes minutes
        runs = api.get_json(f"/api/v2/dags/{DAG}/dagRuns?order_by=id", token)["dag_runs"]
        if len(runs) >= len(NIGHTS) and all(r["state"] in ("success", "failed") for r in runs):
            break
        assert time.monotonic() - started < NIGHTS_TIMEOUT_S, (
            f"nights not finished after {NIGHTS_TIMEOUT_S} s: {[(r['run_id'], r['state']) for r in runs]}")
        time.sleep(10)
    wall_s = round(time.monotonic() - started, 1)
    tasks = {}
    for run in runs:
        quoted = urllib.parse.quote(run["dag_run_id"], safe="")
        tasks[run["dag_run_id"]] = api.get_json(f"/api/v2/dags/{DAG}/dagRuns/{quoted}/taskInstances", token)[
            "task_instances"]
    return {"runs": runs, "tasks": tasks, "token": token, "wall_s": wall_s}


def test_the_scheduler_ran_exactly_the_landed_nights(nights):
    runs = nights["runs"]
    assert [r["run_type"] for r in runs] == ["scheduled"] * len(NIGHTS)
    assert [r["data_interval_start"][:10] for r in runs] == NIGHTS
    print(json.dumps({"nights_wall_s": nights["wall_s"]}))


def test_tasks_ran_on_the_celery_workers_heavy_ones_on_the_gpu_queue(nights):
    ran = [t for tis in nights["tasks"].values() for t in tis if t["state"] in ("success", "failed")]
    assert ran, "no task ran"
    by_queue: dict[str, set[str]] = {}
    for t in ran:
        assert t["executor"] in (None, "CeleryExecutor") and t["hostname"], t
        by_queue.setdefault(t["queue"], set()).add(t["hostname"].split(".", 1)[0])
        assert t["queue"] == ("gpu" if t["task_id"] in GPU_TASKS else "default"), t
    # Each queue was served by its own worker (hostname_callable: worker-<queue>.<host>).
    assert by_queue == {"default": {"worker-default"}, "gpu": {"worker-gpu"}}, by_queue


def test_outcomes_over_http(stack, nights):
    """History only, bootstrap promotion, quarantine: each night's decision, read from the plugin's JSON."""
    kinds = {}
    for run in nights["runs"]:
        quoted = urllib.parse.quote(run["dag_run_id"], safe="")
        outcome = stack.api.get_json(f"/graphdistill/runs/{DAG}/{quoted}.json", nights["token"])
        kinds[run["data_interval_start"][:10]] = (outcome["kind"], run["state"])
    assert kinds == {NIGHTS[0]: ("skipped", "success"), NIGHTS[1]: ("promoted", "success"),
                     NIGHTS[2]: ("quarantined", "failed")}


def test_triton_serves_the_promoted_champion(stack, nights):
    """The promotion's Asset event ran champion_serving_refresh on a worker, which loaded the champion
    into Triton (explicit mode) and checked it; Triton answers with it."""
    from components.decide.registry import champion
    from components.core.catalog import Layout
    from components.ship.triton import PYTHON_MODEL, infer

    deadline = time.monotonic() + 300
    while True:
        refreshes = stack.api.get_json("/api/v2/dags/champion_serving_refresh/dagRuns?order_by=id",
                                       stack.api.token())["dag_runs"]
        if refreshes and all(r["state"] in ("success", "failed") for r in refreshes):
            break
        assert time.monotonic() < deadline, f"champion_serving_refresh not finished: {refreshes}"
        time.sleep(5)
    assert [r["state"] for r in refreshes] == ["success"]
    items, scores, version = infer(stack.triton_url, [0, 1, 2])
    served = json.loads((stack.triton_repository / PYTHON_MODEL / version / "graphdistill_version.json").read_text())
    assert served["version"] == champion(Layout.at(stack.root)).version  # the pointer on the store
    assert items.shape[0] == 3 and (scores[:, :-1] >= scores[:, 1:]).all()  # ranked best first


def _task_log(stack, run_id: str, task_id: str, try_number: int) -> dict:
    path = (f"/api/v2/dags/{DAG}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/{task_id}/logs/"
            f"{try_number}?full_content=true")
    request = urllib.request.Request(f"{stack.api.base_url}{path}", headers={
        "Authorization": f"Bearer {stack.api.token()}", "Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _log_key(run_id: str, ti: dict) -> str:
    """Airflow's default log_filename_template, under the stack's remote log prefix."""
    from graphdistill_airflow.stack import REMOTE_LOG_PREFIX

    mapped = f"map_index={ti['map_index']}/" if ti["map_index"] >= 0 else ""
    return (f"{REMOTE_LOG_PREFIX}/dag_id={DAG}/run_id={run_id}/task_id={ti['task_id']}/{mapped}"
            f"attempt={ti['try_number']}.log")


def test_task_logs_live_in_the_object_store(stack, nights):
    """Remote logging: every task attempt that ran has its log under s3://<bucket>/logs; with the workers'
    local task logs deleted (a lost node), the api-server still serves a task's log, read from the store."""
    import shutil

    from graphdistill_airflow.stack import REMOTE_LOG_PREFIX, s3_client

    s3, bucket = s3_client(stack), stack.settings.bucket
    expected = {_log_key(run_id, t) for run_id, tis in nights["tasks"].items() for t in tis
                if t["state"] in ("success", "failed")}
    deadline = time.monotonic() + 60  # a worker uploads right after its task process exits
    while True:
        stored = {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=f"{REMOTE_LOG_PREFIX}/dag_id={DAG}/") for o in page.get("Contents", [])}
        if expected <= stored or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert expected <= stored, f"task logs missing from s3://{bucket}: {sorted(expected - stored)[:5]}"

    local = stack.state / "airflow" / "logs" / f"dag_id={DAG}"  # both workers' AIRFLOW_HOME/logs on this host
    shutil.rmtree(local, ignore_errors=True)
    promoted = next(r["dag_run_id"] for r in nights["runs"] if r["data_interval_start"][:10] == NIGHTS[1])
    teacher = next(t for t in nights["tasks"][promoted] if t["task_id"] == "teacher")
    key = _log_key(promoted, teacher)
    events = [m["event"] for m in _task_log(stack, promoted, "teacher", teacher["try_number"])["content"]]
    # The reader lists its sources first, in a group: the store's object only, no local file, no worker.
    assert events[:3] == ["::group::Log message source details", f"s3://{bucket}/{key}", "::endgroup::"], events[:5]
    stored_events = {json.loads(line)["event"] for line in
                     s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode().splitlines() if line.strip()}
    assert stored_events and set(events[3:]) == stored_events
    print(json.dumps({"task_log_objects": len(expected), "teacher_log_lines": len(events) - 3}))


def _root_store(stack):
    from components.core.catalog import object_root
    from components.core.remote import connect

    return connect(object_root(stack.root))


def _incomplete_artifacts(objects: dict[str, int]) -> list[str]:
    """Artifact folders in the store with files but no manifest (a half-published version)."""
    from components.core.catalog import MANIFEST

    folders = {m.group(0)[: -len(m.group(4))] for name in objects if (m := ARTIFACT.match(name))}
    return sorted(f for f in folders if f"{f}{MANIFEST}" not in objects)


def test_the_nights_artifacts_live_in_the_object_store(stack, nights):
    """The root is s3://<bucket>/root: night 2's versions (graph, teacher, student, export, engine) are in
    the store whole (each with its manifest), the champion pointer is the store's object naming a
    registered version, the history holds one create-only object per decision, and no local folder was
    the root: each process worked in its own copy under <state>/cache."""
    from components.core.catalog import MANIFEST, Layout
    from components.decide.registry import champion

    assert stack.root == f"s3://{stack.settings.bucket}/root"
    store = _root_store(stack)
    objects = {name: entry.size for name, entry in store.entries().items()}
    by_day: dict[str, dict[str, set[str]]] = {}
    for name in objects:
        if (m := ARTIFACT.match(name)) and m.group(4) == MANIFEST:
            by_day.setdefault(m.group(2), {}).setdefault(m.group(1), set()).add(m.group(3))
    # Night 1 builds its graph, then has no training window; night 3 is quarantined before any build.
    assert {day: set(kinds) for day, kinds in by_day.items()} == {
        NIGHTS[0]: {"graphs"},
        NIGHTS[1]: {"graphs", "models/teacher", "models/student", "models/pruned", "exports", "engines"}}, by_day
    assert _incomplete_artifacts(objects) == []
    landed = sorted({n.split("/")[1] for n in objects if n.startswith("landing/")})
    assert landed == [f"date={d}" for d in NIGHTS]  # the producer's partitions, read by the workers' ingest

    pointer = json.loads(store.read("registry/champion.json").body)
    assert pointer["event"] == "promote" and f"registry/versions/{pointer['version']}/{MANIFEST}" in objects
    assert champion(Layout.at(stack.root)).version == pointer["version"]
    history = sorted(n for n in objects if n.startswith("registry/history/"))
    assert len(history) == 1 and history[0].endswith("-0-move.json"), history  # night 2's promotion, once
    assert json.loads(store.read(history[0]).body)["version"] == pointer["version"]

    assert not (stack.state / "root").exists()  # the local root of `make demo` was never made
    for process in ("worker-default", "worker-gpu", "api-server"):
        copy = stack.cache(process) / stack.settings.bucket / "root"
        assert (copy / ".sync" / "index.json").exists(), f"{process} never worked in its copy {copy}"
    # The engine was built on the gpu worker and reached the default worker (evaluate) through the store.
    engine = sorted(by_day[NIGHTS[1]]["engines"])[0]
    for queue in ("gpu", "default"):
        assert (stack.cache(f"worker-{queue}") / stack.settings.bucket / "root" / "engines" / NIGHTS[1] / engine
                / MANIFEST).exists(), queue
    print(json.dumps({"store_objects": len(objects), "store_bytes": sum(objects.values()),
                      "store_bytes_by_day": {day: sum(size for name, size in objects.items()
                                                      if f"/{day}/" in f"/{name}" or f"date={day}/" in name)
                                             for day in NIGHTS}}))


def test_the_models_page_reads_the_champion_from_the_store(stack, nights):
    """The plugin's page in the api-server (its own copy of the s3 root) names the store's champion."""
    from components.core.catalog import Layout
    from components.decide.registry import champion

    status, body = stack.api.get("/graphdistill/models", stack.api.token())
    assert status == 200, body[:300]
    assert f"Champion {champion(Layout.at(stack.root)).version}" in body.decode()


def test_a_worker_killed_mid_task_loses_no_night(stack, nights):
    """A re-run of night 2 (manual, after the scheduled nights): the gpu worker is SIGKILLed (with its task
    processes) while a model task runs; the scheduler fails the task on its missed heartbeats, a
    replacement gpu worker (the same working copy, as a node's disk) runs the retry, the night completes,
    the champion is untouched and the store holds no partial artifact."""
    import os
    import signal

    from components.decide.registry import champion
    from components.core.catalog import Layout
    from graphdistill_airflow.stack import start_worker

    layout = Layout.at(stack.root)
    champion_before = champion(layout).version
    token = stack.api.token()
    request = urllib.request.Request(
        f"{stack.api.base_url}/api/v2/dags/{DAG}/dagRuns", method="POST",
        data=json.dumps({"logical_date": None, "conf": {"day": NIGHTS[1]}}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        run_id = json.loads(response.read())["dag_run_id"]
    tis_path = f"/api/v2/dags/{DAG}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances"
    deadline = time.monotonic() + 600
    killed = None
    while killed is None:
        running = [t for t in stack.api.get_json(tis_path, stack.api.token())["task_instances"]
                   if t["task_id"] in GPU_TASKS and t["state"] == "running"]
        if running:
            killed = running[0]["task_id"]
            os.killpg(stack.pids["worker-gpu"], signal.SIGKILL)
        assert time.monotonic() < deadline, "no gpu task ever ran"
        time.sleep(0.3)
    start_worker(stack, "gpu")  # the replacement node
    while True:
        run = stack.api.get_json(f"/api/v2/dags/{DAG}/dagRuns/{urllib.parse.quote(run_id, safe='')}", stack.api.token())
        if run["state"] in ("success", "failed"):
            break
        assert time.monotonic() < deadline, f"run {run_id} not finished after the kill: {run['state']}"
        time.sleep(5)
    tis = {t["task_id"]: t for t in stack.api.get_json(tis_path, stack.api.token())["task_instances"]}
    assert run["state"] == "success", {k: (t["state"], t["try_number"]) for k, t in tis.items()}
    assert tis[killed]["state"] == "success" and tis[killed]["try_number"] == 2, tis[killed]
    assert tis[killed]["hostname"].startswith("worker-gpu.")
    assert champion(layout).version == champion_before
    # Nothing partial in the store: every artifact folder has its manifest (a SIGKILLed session never
    # reaches its publish, or stops inside it with manifests still to go, and the retry completes the same
    # content-hashed version), every JSON object reads whole, and a reader with an empty copy finds no
    # half-published version to skip.
    from components.core.remote import WorkingCopy, connect
    from components.core.catalog import object_root

    store = _root_store(stack)
    objects = {name: entry.size for name, entry in store.entries().items()}
    assert _incomplete_artifacts(objects) == []
    for name in objects:
        if name.endswith(".json") and not name.startswith("landing/"):
            json.loads(store.read(name).body)
    reader = WorkingCopy(object_root(stack.root), connect(object_root(stack.root)), stack.cache("after-kill"))
    with reader.locked():
        assert reader.hydrate()["half_published"] == 0
    # The retry's log is in the store; the killed attempt's log never left the dead worker (a worker
    # uploads a log when its task ends).
    from graphdistill_airflow.stack import s3_client

    s3, bucket = s3_client(stack), stack.settings.bucket
    keys = {attempt: _log_key(run_id, {**tis[killed], "try_number": attempt}) for attempt in (1, 2)}
    stored = {}
    for _ in range(30):
        stored = {a: s3.list_objects_v2(Bucket=bucket, Prefix=k).get("KeyCount", 0) > 0 for a, k in keys.items()}
        if stored[2]:
            break
        time.sleep(2)
    assert stored[2], f"s3://{bucket}/{keys[2]} missing"
    print(json.dumps({"killed_task": killed, "run": run_id, "killed_attempt_log_in_store": stored[1]}))
