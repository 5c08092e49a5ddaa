"""Realistic synthetic interaction logs, deterministic per (seed, day).

The world: users and items belong to taste communities; item popularity is power-law (Zipf) within
and across communities; each user has a small set of favourite items they come back to (repeat
consumption); activity follows a weekly cycle and an evening-peaked daily cycle; users and items
appear over time; a share of events is noise (uniform items). A GNN that learns communities beats
popularity by a clear margin on this data, which the tests check.

Each day is generated independently from ``(seed, day)``, so any day can be (re)generated in any
order with identical bytes: backfills and re-runs see the same landing data.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from components.core.catalog import atomic_write_bytes

EVENT_TYPES = ("view", "click", "cart", "purchase")
EVENT_TYPE_PROBS = (0.6, 0.25, 0.1, 0.05)
# Share of activity per UTC hour: quiet nights, an evening peak.
HOURLY_PROFILE = np.array(
    [2, 1, 1, 1, 1, 2, 3, 4, 5, 5, 5, 5, 6, 6, 5, 5, 6, 7, 9, 10, 10, 9, 6, 4], dtype=float
)
WEEKDAY_FACTOR = np.array([0.95, 0.95, 1.0, 1.0, 1.05, 1.15, 1.2])  # Monday .. Sunday
FAVOURITES = 5  # items per user that they come back to


@dataclass(frozen=True)
class SyntheticWorld:
    """Parameters of the simulated marketplace (defaults: small enough for CI, big enough to learn)."""

    num_users: int = 400
    num_items: int = 300
    num_communities: int = 8
    start: dt.date = dt.date(2026, 1, 1)
    seed: int = 0
    zipf_exponent: float = 1.1
    events_per_active_user: float = 6.0
    daily_active_share: float = 0.35
    community_share: float = 0.8  # events inside the user's community
    repeat_share: float = 0.25  # events on one of the user's favourites
    noise_share: float = 0.05  # uniformly random items
    initial_user_share: float = 0.7  # users present on the start day; the rest join over time
    initial_item_share: float = 0.8
    growth_days: int = 60

    def universe(self) -> "_Universe":
        return _Universe.build(self)


@dataclass(frozen=True)
class _Universe:
    user_community: np.ndarray
    user_join_day: np.ndarray
    item_community: np.ndarray
    item_release_day: np.ndarray
    item_popularity: np.ndarray  # unnormalised Zipf weights
    favourites: np.ndarray  # [num_users, FAVOURITES] item indices

    @classmethod
    def build(cls, world: SyntheticWorld) -> "_Universe":
        rng = np.random.default_rng([world.seed, 1])
        user_community = rng.integers(0, world.num_communities, world.num_users)
        item_community = rng.integers(0, world.num_communities, world.num_items)
        ranks = rng.permutation(world.num_items) + 1
        item_popularity = ranks.astype(float) ** -world.zipf_exponent

        def join_days(n: int, initial_share: float) -> np.ndarray:
            days = rng.integers(1, world.growth_days + 1, n)
            days[rng.random(n) < initial_share] = 0
            return days

        user_join_day = join_days(world.num_users, world.initial_user_share)
        item_release_day = join_days(world.num_items, world.initial_item_share)
        favourites = _favourites(rng, user_community, item_community, item_popularity, FAVOURITES)
        return cls(user_community, user_join_day, item_community, item_release_day, item_popularity, favourites)


def _favourites(
    rng: np.random.Generator, user_community: np.ndarray, item_community: np.ndarray,
    item_popularity: np.ndarray, k: int, draws_per_round: int = 4,
) -> np.ndarray:
    """[num_users, k] distinct items per user, drawn by popularity within the user's community.

    Weighted sampling without replacement equals drawing with replacement and keeping first
    occurrences, so each round draws ``draws_per_round * k`` items per unfinished user by inverse
    CDF and dedupes (user, item) pairs: memory O(users * k + items), never users x items. A user
    whose community has fewer than k items repeats them; a community without items uses all items.
    """
    num_users, num_items = user_community.size, item_community.size
    favourites = np.empty((num_users, k), dtype=np.int64)
    by_community = np.argsort(item_community, kind="stable")
    bounds = np.searchsorted(item_community[by_community], np.arange(user_community.max(initial=0) + 2))
    for community in np.unique(user_community):  # a handful of communities
        users = np.flatnonzero(user_community == community)
        pool = by_community[bounds[community] : bounds[community + 1]]
        pool = pool if pool.size else np.arange(num_items)
        cdf = np.cumsum(item_popularity[pool])
        need = min(k, pool.size)
        draw_user = np.empty(0, np.int64)
        draw_item = np.empty(0, np.int64)
        pending = np.arange(users.size)
        while pending.size:
            batch_user = np.repeat(pending, draws_per_round * k)
            batch_item = np.searchsorted(cdf, rng.random(batch_user.size) * cdf[-1], side="right")
            draw_user = np.concatenate([draw_user, batch_user])
            draw_item = np.concatenate([draw_item, np.minimum(batch_item, pool.size - 1)])
            # First occurrence of each (user, item), in draw order (stable sorts keep it).
            _, first = np.unique(draw_user * pool.size + draw_item, return_index=True)
            first.sort()
            draw_user, draw_item = draw_user[first], draw_item[first]
            order = np.argsort(draw_user, kind="stable")
            draw_user, draw_item = draw_user[order], draw_item[order]
            counts = np.bincount(draw_user, minlength=users.size)
            rank = np.arange(draw_user.size) - np.repeat(np.cumsum(counts) - counts, counts)
            keep = rank < need
            draw_user, draw_item = draw_user[keep], draw_item[keep]
            pending = np.flatnonzero(np.minimum(counts, need) < need)
        chosen = pool[draw_item].reshape(users.size, need)
        favourites[users] = chosen[:, np.arange(k) % need]
    return favourites


def _day_seed(seed: int, day: dt.date) -> list[int]:
    return [seed, 2, day.toordinal()]


def generate_day(world: SyntheticWorld, day: dt.date, universe: _Universe | None = None) -> pd.DataFrame:
    """One day of events: event_id, user_id, item_id, event_type, ts (UTC), sorted by ts."""
    universe = universe or world.universe()
    rng = np.random.default_rng(_day_seed(world.seed, day))
    offset = (day - world.start).days
    users = np.flatnonzero(universe.user_join_day <= offset)
    items_live = universe.item_release_day <= offset
    activity = world.daily_active_share * WEEKDAY_FACTOR[day.weekday()]
    active = users[rng.random(users.size) < activity]
    counts = rng.poisson(world.events_per_active_user, active.size) + 1
    event_user = np.repeat(active, counts)
    n = event_user.size

    # Choose how each event picks its item, then pick per group with vectorized sampling.
    kind = rng.choice(3, size=n, p=[world.repeat_share, world.noise_share, 1 - world.repeat_share - world.noise_share])
    item = np.empty(n, dtype=np.int64)
    repeat = kind == 0
    item[repeat] = universe.favourites[event_user[repeat], rng.integers(0, FAVOURITES, repeat.sum())]
    noise = kind == 1
    live_idx = np.flatnonzero(items_live)
    item[noise] = live_idx[rng.integers(0, live_idx.size, noise.sum())]
    organic = kind == 2
    in_community = rng.random(n) < world.community_share
    weights = universe.item_popularity * items_live
    # Community draws: inverse-CDF sampling per community on the live items' popularity.
    for community in range(universe.item_community.max() + 1):  # loop over a handful of communities
        members = organic & in_community & (universe.user_community[event_user] == community)
        pool = np.flatnonzero((universe.item_community == community) & items_live)
        if not members.any() or pool.size == 0:
            in_community[members] = False
            continue
        cdf = np.cumsum(weights[pool])
        item[members] = pool[np.searchsorted(cdf, rng.random(members.sum()) * cdf[-1])]
    global_draw = organic & ~in_community
    cdf = np.cumsum(weights)
    item[global_draw] = np.searchsorted(cdf, rng.random(global_draw.sum()) * cdf[-1])

    hours = rng.choice(24, size=n, p=HOURLY_PROFILE / HOURLY_PROFILE.sum())
    seconds = hours * 3600 + rng.integers(0, 3600, n)
    start = pd.Timestamp(day, tz="UTC")
    ts = start + pd.to_timedelta(seconds, unit="s")
    event_type = np.array(EVENT_TYPES)[rng.choice(len(EVENT_TYPES), size=n, p=EVENT_TYPE_PROBS)]
    digest = hashlib.sha256(f"{world.seed}:{day.isoformat()}".encode()).hexdigest()[:8]
    frame = pd.DataFrame(
        {
            "event_id": np.char.add(f"e{digest}-", np.char.zfill(np.arange(n).astype(str), 7)),
            "user_id": np.char.add("u", event_user.astype(str)),
            "item_id": np.char.add("i", item.astype(str)),
            "event_type": event_type,
            "ts": ts,
        }
    )
    return frame.sort_values(["ts", "event_id"], kind="stable").reset_index(drop=True)


Format = Literal["csv", "jsonl", "parquet"]


def write_log(frame: pd.DataFrame, path: Path) -> Path:
    """Write a log file in the format its suffix names (.csv, .jsonl, .parquet), atomically."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        data = frame.to_parquet(index=False)
    elif suffix == ".csv":
        data = frame.to_csv(index=False, date_format="%Y-%m-%dT%H:%M:%SZ").encode()
    elif suffix == ".jsonl":
        data = frame.to_json(orient="records", lines=True, date_format="iso", date_unit="s").encode()
    else:
        raise ValueError(f"{path}: unsupported log format {suffix!r} (use .csv, .jsonl or .parquet)")
    atomic_write_bytes(path, data)
    return path


def write_landing_day(
    world: SyntheticWorld, landing_dir: Path, day: dt.date, fmt: Format = "parquet", universe: _Universe | None = None
) -> Path:
    """Generate ``day`` and write it as ``landing_dir/events.<fmt>``; returns the file path."""
    return write_log(generate_day(world, day, universe), Path(landing_dir) / f"events.{fmt}")


Corruption = Literal["missing_column", "duplicated_events", "wrong_day", "empty_file", "unreadable_file"]


def corrupt_landing(landing_dir: Path, corruption: Corruption) -> Path:
    """Break a landing partition the way real producers do (for tests and the demo's bad day).

    The partition's existing ``events.*`` file is rewritten (or a broken one added) in place.
    """
    landing_dir = Path(landing_dir)
    source = next(iter(sorted(landing_dir.glob("events.*"))), None)
    frame = pd.read_parquet(source) if source is not None and source.suffix == ".parquet" else None
    if corruption == "unreadable_file":
        target = landing_dir / "events_part2.parquet"
        atomic_write_bytes(target, b"PAR1 this is not a parquet file")
        return target
    if corruption == "empty_file":
        for old in landing_dir.glob("events.*"):
            old.unlink()
        target = landing_dir / "events.csv"
        atomic_write_bytes(target, b"")
        return target
    if frame is None:
        raise ValueError(f"{landing_dir}: corrupt_landing({corruption!r}) needs an events.parquet file")
    if corruption == "missing_column":
        frame = frame.drop(columns=["item_id"])
    elif corruption == "duplicated_events":
        frame = pd.concat([frame, frame.iloc[: len(frame) // 2]], ignore_index=True)
    elif corruption == "wrong_day":
        frame = frame.assign(ts=frame["ts"] - pd.Timedelta(days=3))
    else:
        raise ValueError(f"unknown corruption {corruption!r}")
    return write_log(frame, source)
