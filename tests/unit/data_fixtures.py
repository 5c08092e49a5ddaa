"""Small generated landing data for data-plane tests."""

from __future__ import annotations

import datetime as dt

from components.core.config import load_config
from components.data.ingest import run_ingest
from components.data.sources.synthetic import SyntheticWorld, write_landing_day
from components.core.catalog import Layout
from components.data.validate import run_validate

WORLD = SyntheticWorld(num_users=120, num_items=80, num_communities=4, start=dt.date(2026, 1, 1), seed=7)
START = dt.date(2026, 1, 1)


def day(offset: int) -> str:
    return (START + dt.timedelta(days=offset)).isoformat()


def setup(tmp_path, **overrides):
    return Layout.at(tmp_path / "root"), load_config(overrides={"root": str(tmp_path / "root"), **overrides})


def land(layout: Layout, offset: int, fmt: str = "parquet"):
    return write_landing_day(WORLD, layout.landing(day(offset)), START + dt.timedelta(days=offset), fmt)


def accept(layout: Layout, cfg, offset: int, fmt: str = "parquet"):
    land(layout, offset, fmt)
    run_ingest(layout, day(offset), cfg)
    return run_validate(layout, day(offset), cfg)
