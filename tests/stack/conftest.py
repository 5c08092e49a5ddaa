"""Fixtures that start real servers on loopback (SeaweedFS alone: tests/conftest.py): the
whole stack (graphdistill_airflow/stack.py; `make test-stack`, minutes)."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
import yaml

from components.core.config import default_config_file
from components.data.sources.synthetic import SyntheticWorld, corrupt_landing, write_landing_day
from components.core.catalog import Layout, parse_day
from graphdistill_airflow import stack as stack_mod
from tests.e2e.small_world import write_small_world_gates


# The last three whole days before now: the scheduler's catch-up from GRAPHDISTILL_START_DATE creates
# exactly one run for each. Night 1 has no training window yet (history only), night 2 bootstraps the
# champion, night 3 lands a partition with a missing column (quarantined).
NIGHTS = [(dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=n)).isoformat() for n in (3, 2, 1)]
SMALL = {"teacher": {"epochs": 30, "eval_every": 5}, "distill": {"epochs": 30}, "prune": {"finetune_epochs": 5}}


def land_nights(root: Path) -> Path:
    """Land the nights' partitions under ``root`` and write the pipeline config the scheduled runs read
    (config/pipeline.yaml with the e2e sizes and the small world's gates); returns the config file."""
    layout = Layout.at(root)
    world = SyntheticWorld(start=parse_day(NIGHTS[0]), seed=11)
    universe = world.universe()
    for day in NIGHTS:
        write_landing_day(world, layout.landing(day), parse_day(day), "parquet", universe)
    corrupt_landing(layout.landing(NIGHTS[2]), "missing_column")
    cfg = yaml.safe_load(Path(default_config_file()).read_text())
    for section, values in SMALL.items():
        cfg.setdefault(section, {}).update(values)
    cfg["gates_file"] = str(write_small_world_gates(root))
    path = root / "stack_pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """The whole stack with the nights landed, started once per session (GRAPHDISTILL_STACK_STATE: reuse
    a stack already started by this fixture's code)."""
    reuse = os.environ.get("GRAPHDISTILL_STACK_STATE")
    if reuse:
        yield stack_mod.Stack.load(Path(reuse))
        return
    state = tmp_path_factory.mktemp("stack")
    config = land_nights(state / "root")
    # One retry, 5 s apart, and a 30 s heartbeat timeout: a task whose worker is SIGKILLed is retried in
    # seconds, not after Airflow's 300 s + 5 min defaults.
    started = stack_mod.up(state, stack_mod.load_settings(task_retries=1, heartbeat_timeout_s=30),
                           extra_env={"GRAPHDISTILL_START_DATE": NIGHTS[0], "GRAPHDISTILL_CONFIG": str(config),
                                      "GRAPHDISTILL_RETRY_DELAY_S": "5"})
    try:
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
