"""deploy/helm/values.yaml (Airflow's official chart) runs what the DAGs need: every Celery queue a task
names has a worker set, the ``gpu`` set asks Kubernetes for a GPU, every GRAPHDISTILL_* variable a DAG
file reads is set, and task logs go where the stack sends them (deploy/docker-compose.yml too). (The
values were validated against the chart's values.schema.json by hand; that needs the chart, so it is not
repeated here.)"""

import json
import re
from pathlib import Path

import yaml

from components.core.config import REPO_ROOT
from graphdistill_airflow import stack as stack_mod
from tests.dag.test_dag_integrity import dagbag  # noqa: F401  (the parsed DAGs, shared fixture)

VALUES = yaml.safe_load((REPO_ROOT / "deploy" / "helm" / "values.yaml").read_text())
# Read by the DAGs but with a default that production keeps: the schedule's start from ops config, the
# pipeline config baked into the image.
OPTIONAL_ENV = {"GRAPHDISTILL_START_DATE", "GRAPHDISTILL_CONFIG"}


def _worker_sets() -> dict[str, dict]:
    """queue -> the worker set serving it (the chart's default set included when enabled)."""
    celery = VALUES["workers"]["celery"]
    sets = {s["queue"]: s for s in celery.get("sets", [])}
    if celery.get("enableDefault", True):
        sets[celery.get("queue", "default")] = VALUES["workers"]
    return sets


def test_every_queue_a_task_names_has_a_worker_set_and_gpu_asks_for_a_gpu(dagbag):  # noqa: F811
    queues = {t.queue for dag in dagbag.dags.values() for t in dag.tasks}
    sets = _worker_sets()
    assert queues <= set(sets), f"queues without a worker set in deploy/helm/values.yaml: {queues - set(sets)}"
    gpu = sets["gpu"]["resources"]
    assert int(gpu["requests"]["nvidia.com/gpu"]) >= 1 and int(gpu["limits"]["nvidia.com/gpu"]) >= 1, gpu
    assert "nvidia.com/gpu" not in str(sets["default"].get("resources", {}))  # CPU tasks keep off GPU nodes


def test_every_variable_a_dag_reads_is_set():
    read = {name for path in (REPO_ROOT / "dags").glob("*.py")
            for name in re.findall(r"environ\.get\(\"(GRAPHDISTILL_[A-Z_]+)\"", path.read_text())}
    read.add("GRAPHDISTILL_ROOT")  # components.core.config.default_root, in every stage
    assert {"GRAPHDISTILL_TRITON_URL", "GRAPHDISTILL_TASK_RETRIES"} <= read  # the scan found the DAGs' reads
    provided = {e["name"] for e in VALUES["env"]} | {s["envName"] for s in VALUES["secret"]}
    assert read - OPTIONAL_ENV <= provided, f"not set in deploy/helm/values.yaml: {read - OPTIONAL_ENV - provided}"
    # The outcome task writes run notes through this connection (graphdistill_airflow.local.task_env).
    assert "AIRFLOW_CONN_GRAPHDISTILL_API" in provided


def test_remote_logging_as_on_the_stack(tmp_path):
    """The chart's values and the compose file log where the tested stack does: same bucket, prefix and
    connection id; the chart takes the connection from a secret, compose points it at its SeaweedFS."""
    stack = stack_mod.Stack(Path(tmp_path), stack_mod.load_settings(), {"s3": 8333})
    expected = stack.remote_logging_env()
    connection_env = f"AIRFLOW_CONN_{stack_mod.REMOTE_LOG_CONN_ID.upper()}"
    logging = VALUES["config"]["logging"]
    for key in ("remote_logging", "remote_base_log_folder", "remote_log_conn_id"):
        assert logging[key] == expected[f"AIRFLOW__LOGGING__{key.upper()}"], key
    assert connection_env in {s["envName"] for s in VALUES["secret"]}
    assert VALUES["executor"] == "CeleryExecutor" and VALUES["logs"]["persistence"]["enabled"] is False

    compose = yaml.safe_load((REPO_ROOT / "deploy" / "docker-compose.yml").read_text())
    for name in ("airflow-apiserver", "airflow-worker-default", "airflow-worker-gpu"):
        env = compose["services"][name]["environment"]
        assert {k: env[k] for k in expected if k != connection_env} == {
            k: v for k, v in expected.items() if k != connection_env}, name
        assert json.loads(env[connection_env])["extra"]["endpoint_url"] == env["AWS_ENDPOINT_URL_S3"], name


def test_the_artifact_root_is_the_object_store_as_on_the_stack(tmp_path):
    """The chart, the compose file and the stack run every DAG on the same s3:// root; compose gives each
    container a copy of its own and Triton the repository its serving refresh writes."""
    stack = stack_mod.Stack(Path(tmp_path), stack_mod.load_settings(), {"s3": 8333})
    helm = {e["name"]: e.get("value") for e in VALUES["env"]}
    compose = yaml.safe_load((REPO_ROOT / "deploy" / "docker-compose.yml").read_text())
    assert helm["GRAPHDISTILL_ROOT"] == stack.root == "s3://graphdistill/root"
    init = " ".join(compose["services"]["airflow-init"]["command"])
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-worker-default", "airflow-worker-gpu"):
        env = compose["services"][name]["environment"]
        assert env["GRAPHDISTILL_ROOT"] == stack.root, name
        assert not env["GRAPHDISTILL_CACHE"].startswith("/data/"), name  # container-local, not the shared volume
        assert f"open('{env['GRAPHDISTILL_CONFIG']}', 'w')" in init, name  # the config airflow-init derives
    repository = re.search(r"\['triton_repository'\] = '([^']+)'", init).group(1)
    assert f"--model-repository={repository} " in compose["services"]["triton"]["command"]
