"""The heavy model tasks go to the Celery queue ``gpu`` (the stack's GPU worker), everything else to
``default``: a task that lost its queue would run its training on a CPU node."""

import os

from tests.dag.test_dag_integrity import dagbag  # noqa: F401  (the parsed DAG, shared fixture)

GPU_TASKS = {"teacher", "distill", "prune", "convert"}


def test_heavy_tasks_on_gpu_queue_others_on_default(dagbag):  # noqa: F811
    dag = dagbag.dags["gnn_recsys_nightly"]
    queues = {t.task_id: t.queue for t in dag.tasks}
    assert {t for t, q in queues.items() if q == "gpu"} == GPU_TASKS
    default = os.environ.get("AIRFLOW__OPERATORS__DEFAULT_QUEUE", "default")
    assert {q for t, q in queues.items() if t not in GPU_TASKS} == {default}
