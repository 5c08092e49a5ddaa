import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.data.sources.replay import parse_type_map, read_timestamped, replay
from components.data.sources.synthetic import SyntheticWorld, generate_day

from tests.unit.data_fixtures import WORLD, current_inputs


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
    with pytest.raises(ValueError, match="odd.csv: line 3: timestamp 'not-a-time': neither ISO 8601 nor an epoch number"):
        read_timestamped(odd)


def test_recbole_atomic_inter_files_and_packaged_logs_by_name(tmp_path):
    from components.data.sources.public_logs import public_log

    source = tmp_path / "tiny.inter"
    source.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n7\t42\t5\t881250949\n8\t43\t2\t881250950\n")
    frame = read_timestamped(source)
    assert frame["user_id"].tolist() == ["7", "8"] and frame["item_id"].tolist() == ["42", "43"]
    assert frame["ts"].iloc[0] == pd.Timestamp(881250949, unit="s", tz="UTC") and frame["rating"].tolist() == [5, 2]
    with pytest.raises(KeyError, match="unknown public log 'ml-1m'; known: ml-100k"):
        public_log("ml-1m")


# RetailRocket's events.csv as it ships (timestamp in epoch ms, visitorid, event in view/addtocart/
# transaction, itemid, transactionid): 36 rows written for this test in that exact header and units
# (not rows of the real dataset).
RETAILROCKET = Path(__file__).parents[2] / "fixtures" / "retailrocket_events.csv"
RR_OPTIONS = dict(user_col="visitorid", item_col="itemid", type_col="event", time_unit="ms",
                  type_map=parse_type_map("addtocart=cart,transaction=purchase"))


def test_a_retailrocket_log_replays_as_it_ships_and_passes_the_contract(tmp_path):
    from components.cli import main
    from components.data.ingest import run_ingest
    from components.data.validate import run_validate

    from tests.unit.data_fixtures import setup

    raw = pd.read_csv(RETAILROCKET, dtype=str)
    frame = read_timestamped(RETAILROCKET, **RR_OPTIONS)
    assert frame["ts"].tolist() == pd.to_datetime(raw["timestamp"].astype("int64"), unit="ms", utc=True).tolist()
    assert frame["user_id"].tolist() == raw["visitorid"].tolist() and frame["item_id"].tolist() == raw["itemid"].tolist()
    assert frame["event_type"].value_counts().to_dict() == {
        "view": int((raw["event"] == "view").sum()), "cart": int((raw["event"] == "addtocart").sum()),
        "purchase": int((raw["event"] == "transaction").sum())}
    # The auto unit finds milliseconds by magnitude: the same times without --time-unit.
    assert read_timestamped(RETAILROCKET, **{**RR_OPTIONS, "time_unit": "auto"})["ts"].equals(frame["ts"])

    layout, cfg = setup(tmp_path)
    assert main(["replay", str(RETAILROCKET), "--root", str(layout.root), "--user-col", "visitorid", "--item-col", "itemid",
                 "--type-col", "event", "--type-map", "addtocart=cart,transaction=purchase", "--time-unit", "ms"]) == 0
    days = sorted(p.name.removeprefix("date=") for p in (layout.root / "landing").iterdir())
    assert days == sorted(frame["ts"].dt.strftime("%Y-%m-%d").unique())
    run_ingest(layout, days[0], cfg)
    result = run_validate(layout, days[0], cfg, **current_inputs(layout, "validate", days[0]))
    first_day = frame[frame["ts"].dt.strftime("%Y-%m-%d") == days[0]]
    assert result.success and result.accepted_rows == len(first_day) and not result.failed
    events = pd.read_parquet(layout.accepted(days[0]) / "events.parquet")
    assert sorted(events["event_type"]) == sorted(first_day["event_type"])


def test_replay_names_what_it_cannot_map(tmp_path):
    with pytest.raises(ValueError, match=r"event type\(s\) 'addtocart' \(7 rows\), 'transaction' \(4 rows\) are not "
                                         r"contract types .* and not in --type-map; first at line \d+"):
        read_timestamped(RETAILROCKET, **{**RR_OPTIONS, "type_map": {}})
    with pytest.raises(ValueError, match=r"--type-map maps to \['basket'\], not event types"):
        read_timestamped(RETAILROCKET, **{**RR_OPTIONS, "type_map": {"addtocart": "basket"}})
    with pytest.raises(ValueError, match=r"line 2: timestamp '1433223227239' is an epoch number; --time-unit iso expects ISO 8601"):
        read_timestamped(RETAILROCKET, **{**RR_OPTIONS, "time_unit": "iso"})
    with pytest.raises(ValueError, match=r"missing column\(s\) \['visitor'\]; found .*--user-col"):
        read_timestamped(RETAILROCKET, **{**RR_OPTIONS, "user_col": "visitor"})
    with pytest.raises(ValueError, match=r"expected RAW=TYPE pairs"):
        parse_type_map("1=view,2")
    mixed = tmp_path / "mixed.tsv"  # a TSV with ISO times, one of them without its offset
    mixed.write_text("user\titem\ttimestamp\nu1\ti1\t2009-05-04T23:08:57Z\nu1\ti2\t2009-05-04T13:54:10\n")
    with pytest.raises(ValueError, match=r"line 3: timestamp '2009-05-04T13:54:10': iso-naive value in a file whose other 1 timestamps are iso-offset"):
        read_timestamped(mixed, time_unit="iso")


def test_movielens_100k_as_recbole_ships_it_replays_with_ratings_as_event_types(tmp_path):
    from components.data.sources.public_logs import public_log

    try:
        source = public_log("ml-100k")
    except FileNotFoundError as missing:
        pytest.skip(str(missing))
    raw = pd.read_csv(source, sep="\t")
    result = replay("ml-100k", tmp_path / "landing", shift_to=dt.date(2026, 1, 1), max_days=3)
    assert result.days == ("2026-01-01", "2026-01-02", "2026-01-03")
    first = pd.read_parquet(tmp_path / "landing" / "date=2026-01-01" / "events.parquet")
    start = pd.to_datetime(raw["timestamp:float"], unit="s", utc=True).min().normalize()
    day_rows = raw[pd.to_datetime(raw["timestamp:float"], unit="s", utc=True) < start + pd.Timedelta(days=1)]
    assert len(first) == len(day_rows)
    expected = pd.Series(np.select([day_rows["rating:float"] >= 5, day_rows["rating:float"] >= 4, day_rows["rating:float"] >= 3],
                                   ["purchase", "cart", "click"], "view")).value_counts().sort_index()
    assert first["event_type"].value_counts().sort_index().tolist() == expected.tolist()
