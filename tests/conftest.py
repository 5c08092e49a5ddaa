"""Fixtures shared by every test folder: SeaweedFS's S3 gateway (starts in seconds, runs in CI), so the
registry's crash suite (tests/unit) and the object-store tests (tests/stack) use the same real server."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    """SeaweedFS's S3 gateway (the stack's own start-up code) in a temporary state folder."""
    from graphdistill_airflow import stack as stack_mod

    with stack_mod.services(tmp_path_factory.mktemp("seaweedfs"), stack_mod.start_seaweedfs) as weed:
        yield weed
