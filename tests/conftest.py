"""Fixtures shared by every test folder: SeaweedFS's S3 gateway (starts in seconds, runs in CI), so the
registry's crash suite (tests/unit) and the object-store tests (tests/stack) use the same real server."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    """SeaweedFS's S3 gateway (the stack's own start-up code) in a temporary state folder."""
    from graphdistill_airflow import stack as stack_mod

    state = tmp_path_factory.mktemp("seaweedfs")
    weed = stack_mod.Stack(state, stack_mod.load_settings(), {name: stack_mod.free_port() for name in stack_mod.PORTS})
    try:
        stack_mod.start_seaweedfs(weed)
        yield weed
    finally:
        stack_mod.down(state, quiet=True)
