"""Fixtures that start real servers on loopback (SeaweedFS alone: tests/conftest.py): the
whole stack (graphdistill_airflow/stack.py; `make test-stack`, minutes)."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.core.config import REPO_ROOT, default_config_file
from graphdistill_airflow import stack as stack_mod
from tests.e2e.small_world import write_small_world_gates


# The last three whole days before now: the scheduler's catch-up from GRAPHDISTILL_START_DATE creates
# exactly one run for each. Night 1 has no training window yet (history only), night 2 bootstraps the
# champion, night 3 lands a partition with a missing column (quarantined).
NIGHTS = [(dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=n)).isoformat() for n in (3, 2, 1)]
SMALL = {"teacher": {"epochs": 30, "eval_every": 5}, "distill": {"epochs": 30}, "prune": {"finetune_epochs": 5}}


def nights_config(folder: Path) -> Path:
    """The pipeline config the scheduled runs read (config/pipeline.yaml with the e2e sizes and the
    small world's gates), written under ``folder``; returns the config file."""
    cfg = yaml.safe_load(Path(default_config_file()).read_text())
    for section, values in SMALL.items():
        cfg.setdefault(section, {}).update(values)
    cfg["gates_file"] = str(write_small_world_gates(folder))
    path = folder / "stack_pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def land_nights(root: str, env: dict[str, str] | None = None) -> None:
    """Land the nights' partitions under ``root`` as a producer does: `graphdistill generate` in a process
    of its own (an ``s3://`` root: through its own working copy into the store, where any worker's ingest
    finds them); night 3 with a missing column."""
    landed = subprocess.run([sys.executable, "-m", "components.cli", "generate", "--root", root, "--start", NIGHTS[0],
                             "--days", str(len(NIGHTS)), "--seed", "11", "--format", "parquet",
                             "--corrupt", f"{NIGHTS[2]}:missing_column"],
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}, cwd=REPO_ROOT,
                            capture_output=True, text=True)
    if landed.returncode != 0:
        raise RuntimeError(f"graphdistill generate --root {root}: exit {landed.returncode}: {landed.stderr[-1500:]}")


def client_env(stack: stack_mod.Stack, process: str) -> dict[str, str]:
    """What a process outside the stack needs to read and write its root: the store's credentials and
    endpoint, and a working copy of its own."""
    return {**stack.s3_env(), "GRAPHDISTILL_CACHE": str(stack.cache(process))}


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """The whole stack with the nights landed in its object store, started once per session
    (GRAPHDISTILL_STACK_STATE: reuse a stack already started by this fixture's code). The tests'
    process reads the root through the store too (its own working copy)."""
    reuse = os.environ.get("GRAPHDISTILL_STACK_STATE")
    if reuse:
        started = stack_mod.Stack.load(Path(reuse))
        with pytest.MonkeyPatch.context() as patch:
            for key, value in client_env(started, "tests").items():
                patch.setenv(key, value)
            yield started
        return
    state = tmp_path_factory.mktemp("stack")
    config = nights_config(state)
    # One retry, 5 s apart, and a 30 s heartbeat timeout: a task whose worker is SIGKILLed is retried in
    # seconds, not after Airflow's 300 s + 5 min defaults.
    started = stack_mod.up(state, stack_mod.load_settings(task_retries=1, heartbeat_timeout_s=30),
                           extra_env={"GRAPHDISTILL_START_DATE": NIGHTS[0], "GRAPHDISTILL_CONFIG": str(config),
                                      "GRAPHDISTILL_RETRY_DELAY_S": "5"})
    try:
        land_nights(started.root, client_env(started, "producer"))  # the DAG is still paused: nothing ran yet
        with pytest.MonkeyPatch.context() as patch:
            for key, value in client_env(started, "tests").items():
                patch.setenv(key, value)
            yield started
    finally:
        stack_mod.down(state, quiet=True)


@pytest.fixture(scope="session")
def triton(tmp_path_factory):
    """Triton (explicit model control, the nvidia-pytriton binary, its own venv) in a temporary state folder."""
    def start(server: stack_mod.Stack) -> None:
        server.triton_repository.mkdir(parents=True)
        stack_mod.start_triton(server)

    with stack_mod.services(tmp_path_factory.mktemp("triton"), start) as server:
        yield server
