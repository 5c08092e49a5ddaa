import datetime as dt

import numpy as np
import pandas as pd
import pytest

from components.sources.replay import read_timestamped, replay
from components.sources.synthetic import SyntheticWorld, generate_day

from tests.unit.data_fixtures import WORLD


def test_synthetic_days_are_deterministic_and_independent_of_order():
    d1, d2 = dt.date(2026, 1, 3), dt.date(2026, 1, 4)
    first = generate_day(WORLD, d1)
    generate_day(WORLD, d2)
    again = generate_day(WORLD, d1)
    pd.testing.assert_frame_equal(first, again)
    assert not first.equals(generate_day(SyntheticWorld(**{**WORLD.__dict__, "seed": 8}), d1))


def test_synthetic_logs_have_the_advertised_structure():
    world = SyntheticWorld(num_users=600, num_items=400, num_communities=5, seed=3)
    universe = world.universe()
    frames = pd.concat([generate_day(world, dt.date(2026, 1, 1) + dt.timedelta(days=i), universe) for i in range(14)])
    users = frames["user_id"].str[1:].astype(int).to_numpy()
    items = frames["item_id"].str[1:].astype(int).to_numpy()
    # Taste communities: most events stay inside the user's community.
    same = (universe.user_community[users] == universe.item_community[items]).mean()
    assert same > 0.7
    # Power-law popularity: the top 10% of items take a large share of events.
    counts = np.sort(np.bincount(items, minlength=world.num_items))[::-1]
    assert counts[: world.num_items // 10].sum() / counts.sum() > 0.35
    # Daily seasonality: evening busier than night; users appear over time.
    hours = frames["ts"].dt.hour
    assert (hours == 20).sum() > 3 * (hours == 3).sum()
    first_day = set(frames[frames["ts"].dt.day == 1]["user_id"])
    late_users = set(frames[frames["ts"].dt.day == 14]["user_id"]) - set(frames[frames["ts"].dt.day < 14]["user_id"])
    assert first_day and late_users
    # Timestamps fall inside their day; event ids are unique.
    assert frames["event_id"].is_unique


def test_favourites_are_distinct_popular_community_items():
    universe = SyntheticWorld(num_users=3000, num_items=500, num_communities=4, seed=5).universe()
    favourites = universe.favourites
    ordered = np.sort(favourites, axis=1)
    assert (ordered[:, 1:] != ordered[:, :-1]).all()
    assert (universe.item_community[favourites] == universe.user_community[:, None]).all()
    # Drawn by popularity: the community's most popular item is a favourite of most of its users.
    community = universe.user_community == 0
    members = np.flatnonzero(universe.item_community == 0)
    top = members[np.argmax(universe.item_popularity[members])]
    assert (favourites[community] == top).any(axis=1).mean() > 0.5


def test_a_large_world_is_built_in_memory_linear_in_users_and_items():
    # The former users x items favourites draw needed ~360 GB here (dense float64 logits, Gumbel
    # noise and argsort indices); numpy reports its allocations to tracemalloc.
    import tracemalloc

    world = SyntheticWorld(num_users=100_000, num_items=150_000, num_communities=8, seed=1)
    tracemalloc.start()
    universe = world.universe()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert universe.favourites.shape == (100_000, 5)
    assert peak < 100 * 2**20, f"peak {peak / 2**20:.0f} MiB"


def test_replay_movielens_u_data(tmp_path):
    source = tmp_path / "u.data"
    rows = [(1, 10, 5, 86400 * 3 + 5), (2, 11, 3, 86400 * 3 + 100), (1, 12, 4, 86400 * 4 + 7), (3, 10, 1, 86400 * 6)]
    source.write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    result = replay(source, tmp_path / "landing", shift_to=dt.date(2026, 2, 1))
    assert result.days == ("2026-02-01", "2026-02-02", "2026-02-04")
    assert result.rows == 4
    first = pd.read_parquet(tmp_path / "landing" / "date=2026-02-01" / "events.parquet")
    assert first["event_type"].tolist() == ["purchase", "click"]
    assert first["user_id"].tolist() == ["1", "2"]
    # Idempotent: replaying again writes identical bytes.
    before = (tmp_path / "landing" / "date=2026-02-01" / "events.parquet").read_bytes()
    replay(source, tmp_path / "landing", shift_to=dt.date(2026, 2, 1))
    assert (tmp_path / "landing" / "date=2026-02-01" / "events.parquet").read_bytes() == before


def test_replay_generic_csv_names_missing_columns(tmp_path):
    good = tmp_path / "ratings.csv"
    good.write_text("userId,movieId,rating,timestamp\n1,2,4.0,1000\n")
    assert read_timestamped(good)["item_id"].tolist() == ["2"]
    bad = tmp_path / "clicks.csv"
    bad.write_text("who,what\n1,2\n")
    with pytest.raises(ValueError, match=r"clicks.csv: missing column\(s\) \['user', 'item', 'timestamp'\]"):
        read_timestamped(bad)
    odd = tmp_path / "odd.csv"
    odd.write_text("user,item,timestamp\n1,2,2026-01-01T00:00:00Z\n1,3,not-a-time\n")
    with pytest.raises(ValueError, match="odd.csv: row 3: unparsable timestamp 'not-a-time'"):
        read_timestamped(odd)


def test_recbole_atomic_inter_files_and_packaged_logs_by_name(tmp_path):
    from components.sources.public_logs import public_log

    source = tmp_path / "tiny.inter"
    source.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n7\t42\t5\t881250949\n8\t43\t2\t881250950\n")
    frame = read_timestamped(source)
    assert frame["user_id"].tolist() == ["7", "8"] and frame["item_id"].tolist() == ["42", "43"]
    assert frame["ts"].iloc[0] == pd.Timestamp(881250949, unit="s", tz="UTC") and frame["rating"].tolist() == [5, 2]
    with pytest.raises(KeyError, match="unknown public log 'ml-1m'; known: ml-100k"):
        public_log("ml-1m")
