"""Feast definitions for GraphDistill: entities, sources, feature views. Definitions only.

`feast apply` imports every .py file in this directory, so nothing else lives here. The feature
values are computed by components/data/features.py, which writes one Parquet snapshot per day into the
directories below (as of the end of that day, UTC); Feast's file offline store reads a directory as
one dataset. Names assume the default windows cfg.features.windows_days = (1, 7, 28); the pipeline
checks that its computed columns match these schemas and names any difference.
"""

from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Float64, Int64, String

# A snapshot older than this is stale; a week tolerates skipped (quarantined) days.
SNAPSHOT_TTL = timedelta(days=7)

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING,
              description="A user in the interaction logs")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING,
              description="An item in the interaction logs")

user_features_source = FileSource(
    name="user_features_source",
    path="data/user_features",
    timestamp_field="event_timestamp",
    created_timestamp_column="created_timestamp",
    description="Daily user snapshots, one Parquet file per day",
)
item_features_source = FileSource(
    name="item_features_source",
    path="data/item_features",
    timestamp_field="event_timestamp",
    created_timestamp_column="created_timestamp",
    description="Daily item snapshots, one Parquet file per day",
)

user_activity = FeatureView(
    name="user_activity",
    entities=[user],
    ttl=SNAPSHOT_TTL,
    schema=[
        Field(name="user_id", dtype=String),
        Field(name="events_1d", dtype=Int64, description="events on the day"),
        Field(name="events_7d", dtype=Int64, description="events in the 7 days ending that day"),
        Field(name="events_28d", dtype=Int64, description="events in the 28 days ending that day"),
        Field(name="weighted_7d", dtype=Float64, description="sum of event weights over 7 days"),
        Field(name="distinct_items_28d", dtype=Int64, description="distinct items over 28 days"),
        Field(name="days_since_last_event", dtype=Int64,
              description="whole days since the last event, capped at 28 (none in the window)"),
        Field(name="recent_items", dtype=Array(String),
              description="distinct item ids of the last 28 days, most recent first (up to "
                          "features.recent_items); serving excludes them and folds cold users in"),
    ],
    source=user_features_source,
    online=True,
)

item_popularity = FeatureView(
    name="item_popularity",
    entities=[item],
    ttl=SNAPSHOT_TTL,
    schema=[
        Field(name="item_id", dtype=String),
        Field(name="events_1d", dtype=Int64, description="events on the day"),
        Field(name="events_7d", dtype=Int64, description="events in the 7 days ending that day"),
        Field(name="events_28d", dtype=Int64, description="events in the 28 days ending that day"),
        Field(name="distinct_users_7d", dtype=Int64, description="distinct users over 7 days"),
        Field(name="item_age_days", dtype=Int64,
              description="whole days since the item's first event, capped at 28 (the lookback)"),
    ],
    source=item_features_source,
    online=True,
)
