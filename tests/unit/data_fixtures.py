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


def current_inputs(layout: Layout, stage: str, day: str, cfg=None) -> dict:
    """What the DAG would hand a stage here: the day's current versions of its inputs (as the CLI's
    default does), as typed references, and what the pipeline reads for it from the catalog (``cfg``
    needed for a stage whose reads depend on config: graph, features, teacher; validate's history,
    every earlier day, does not)."""
    from components.pipeline import INPUTS, catalog_inputs, default_inputs

    assert cfg is not None or stage not in ("graph", "features", "teacher"), f"{stage} reads the catalog: pass cfg"
    found = {keyword: INPUTS[stage][keyword].from_dict(ref) for keyword, ref in default_inputs(stage, day, layout).items()}
    reads = catalog_inputs(stage, day, layout, cfg) if cfg is not None or stage == "validate" else {}
    return {**found, **reads}


def validate(layout: Layout, day: str, cfg):
    """The validate stage on the day's staged partition (what ingest returned)."""
    return run_validate(layout, day, cfg, **current_inputs(layout, "validate", day))


def accept(layout: Layout, cfg, offset: int, fmt: str = "parquet"):
    land(layout, offset, fmt)
    run_ingest(layout, day(offset), cfg)
    return validate(layout, day(offset), cfg)


def read_online_features(layout: Layout, cfg, user_ids: list[str], item_ids: list[str]):
    """Online values through Feast: (users with user_activity features, items with item_popularity)."""
    from components.data.features import ITEM_VIEW, USER_VIEW, open_store

    store = open_store(layout, cfg)

    def read(view_name: str, key: str, ids: list[str]):
        view = store.get_feature_view(view_name)
        refs = [f"{view_name}:{f.name}" for f in view.features]
        return store.get_online_features(features=refs, entity_rows={key: list(ids)}).to_df()

    return read(USER_VIEW, "user_id", user_ids), read(ITEM_VIEW, "item_id", item_ids)
