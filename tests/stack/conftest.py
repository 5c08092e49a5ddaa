"""Fixtures that start real servers on loopback: SeaweedFS alone (object-store tests, seconds) and the
whole stack (graphdistill_airflow/stack.py; `make test-stack`, minutes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from graphdistill_airflow import stack as stack_mod


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    """SeaweedFS's S3 gateway (the stack's own start-up code) in a temporary state folder."""
    state = tmp_path_factory.mktemp("seaweedfs")
    weed = stack_mod.Stack(state, stack_mod.load_settings(), {name: stack_mod.free_port() for name in stack_mod.PORTS})
    try:
        stack_mod.start_seaweedfs(weed)
        yield weed
    finally:
        stack_mod.down(state, quiet=True)


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """The whole stack, started once per session; GRAPHDISTILL_STACK_STATE reuses a running one."""
    reuse = os.environ.get("GRAPHDISTILL_STACK_STATE")
    if reuse:
        yield stack_mod.Stack.load(Path(reuse))
        return
    state = tmp_path_factory.mktemp("stack")
    started = stack_mod.up(state, stack_mod.load_settings(task_retries=0))
    try:
        yield started
    finally:
        stack_mod.down(state, quiet=True)
