"""Conditional writes on a real S3-compatible server (SeaweedFS's S3 gateway): create-only and
compare-and-swap are refused when their condition fails, and a promotion race through the registry with
its champion pointer on the store has exactly one winner every round."""

from __future__ import annotations

import json
import threading
import uuid

import pytest

from components.core.objectstore import ObjectExists, ObjectStore, ObjectStoreError, StaleETag
from graphdistill_airflow.stack import s3_client


@pytest.fixture
def store(seaweedfs):
    return ObjectStore(seaweedfs.settings.bucket, f"test-{uuid.uuid4().hex[:8]}", s3_client(seaweedfs))


def test_create_only_refuses_an_existing_key_and_keeps_the_first_bytes(store):
    etag = store.create("artifact/manifest.json", b"first")
    with pytest.raises(ObjectExists, match="already exists"):
        store.create("artifact/manifest.json", b"second")
    assert store.read("artifact/manifest.json") == type(store.read("artifact/manifest.json"))(b"first", etag)


def test_swap_refuses_a_stale_etag_and_accepts_the_current_one(store):
    first = store.create("pointer.json", b"v1")
    second = store.swap("pointer.json", b"v2", first)
    assert second != first
    with pytest.raises(StaleETag, match="changed since ETag"):
        store.swap("pointer.json", b"v3-from-a-stale-reader", first)
    assert store.read("pointer.json").body == b"v2"
    with pytest.raises(StaleETag):  # "still absent" is a condition too
        store.swap("pointer.json", b"v4", None)


def test_missing_key_reads_none_and_missing_bucket_names_it(store, seaweedfs):
    assert store.read("nothing-here") is None
    # SeaweedFS would create the bucket on the first PutObject: the client refuses to start instead.
    with pytest.raises(ObjectStoreError, match="s3://no-such-bucket-graphdistill: bucket not reachable: 404"):
        ObjectStore("no-such-bucket-graphdistill", "", s3_client(seaweedfs))
    names = {b["Name"] for b in s3_client(seaweedfs).list_buckets()["Buckets"]}
    assert "no-such-bucket-graphdistill" not in names


def test_registry_promotion_race_through_the_store_has_exactly_one_winner_every_round(seaweedfs, tmp_path,
                                                                                     monkeypatch, caplog):
    """Two runs of a day, each with its own blessed candidate judged against the same champion, promote at
    once through the registry with its pointer on the store, 100 rounds: exactly one wins every round; the
    loser, re-deciding against the winner (a candidate of its own day), is recorded not_promoted."""
    import datetime as dt
    import logging

    from components.core.catalog import Layout
    from components.decide.registry import champion, decide_promotion, history, register_candidate

    for name, value in seaweedfs.s3_env().items():
        monkeypatch.setenv(name, value)
    layout = Layout.at(tmp_path / "root", f"s3://{seaweedfs.settings.bucket}/race-{uuid.uuid4().hex[:8]}")

    def blessed(version: str, day: str) -> str:
        register_candidate(layout, version, day, {}, {}, {"blessing.json": {"blessed": True}}, "blessed")
        return version

    assert decide_promotion(layout, blessed("v000", "2024-01-01"), None, run_key="boot").promoted
    rounds, contested = 100, 0
    caplog.set_level(logging.INFO, logger="components.decide.registry")
    for r in range(1, rounds + 1):
        day = (dt.date(2024, 1, 1) + dt.timedelta(days=r)).isoformat()
        judged_against, candidates = champion(layout).version, [blessed(f"r{r:03d}{side}", day) for side in "ab"]
        barrier, results = threading.Barrier(2), {}
        caplog.clear()

        def run(version: str) -> None:
            barrier.wait()
            results[version] = decide_promotion(layout, version, judged_against, run_key=version)

        threads = [threading.Thread(target=run, args=(version,)) for version in candidates]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [d for d in results.values() if d.promoted]
        losers = [d for d in results.values() if not d.promoted]
        assert len(winners) == 1 and len(losers) == 1, f"round {r}: {results}"
        assert losers[0].reason.startswith("historical day: not newer than the champion")
        assert losers[0].champion_version == winners[0].version == champion(layout).version
        contested += any("lost a race" in m for m in caplog.messages)
    assert champion(layout).seq == rounds + 1
    entries = history(layout)  # one object per decision, none rewritten
    assert [e["event"] for e in entries].count("promote") == rounds + 1
    assert [e["event"] for e in entries].count("not_promoted") == rounds
    assert [e["seq"] for e in entries if e["event"] == "promote"] == list(range(1, rounds + 2))
    # Both runs really raced (read the same ETag) in many rounds: the loser lost a swap and re-decided.
    print(json.dumps({"rounds": rounds, "contested_rounds": contested}))
    assert contested >= 10


def test_wrong_credentials_are_refused_at_connect(seaweedfs):
    import boto3

    stranger = boto3.client("s3", endpoint_url=seaweedfs.s3_endpoint, aws_access_key_id="nobody",
                            aws_secret_access_key="wrong", region_name="us-east-1")
    with pytest.raises(ObjectStoreError, match=f"s3://{seaweedfs.settings.bucket}: bucket not reachable: 403"):
        ObjectStore(seaweedfs.settings.bucket, "", stranger)


def test_a_second_seaweedfs_on_the_host_comes_up_beside_the_first(seaweedfs, tmp_path):
    """Every SeaweedFS port is chosen at start-up: its Lance listener defaulted to 127.0.0.1:9101, so a
    second server on the host (another stack, a test run beside `make stack`) exited at start."""
    from graphdistill_airflow import stack as stack_mod

    with stack_mod.services(tmp_path, stack_mod.start_seaweedfs) as second:
        assert s3_client(second).get_object(Bucket=second.settings.bucket, Key="_stack/health")["Body"].read() == b"ok"
    assert s3_client(seaweedfs).get_object(Bucket=seaweedfs.settings.bucket, Key="_stack/health")["Body"].read() == b"ok"
