"""Conditional writes on a real S3-compatible server (SeaweedFS's S3 gateway): create-only and
compare-and-swap are refused when their condition fails, and a promotion race through the store has
exactly one winner every round."""

from __future__ import annotations

import json
import threading
import uuid

import pytest

from components.core.objectstore import ObjectChampionPointer, ObjectExists, ObjectStore, ObjectStoreError, StaleETag
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


def test_promotion_race_has_exactly_one_winner_every_round(store):
    """Two promoters, each with its own candidate judged against the same champion, 100 rounds; the loser
    re-reads, sees the champion moved and records not_promoted (stale)."""
    pointer = ObjectChampionPointer(store)
    pointer.propose("v000", lambda champion, cand: (True, "bootstrap"))
    rounds, outcomes = 100, []
    for r in range(1, rounds + 1):
        judged_against = pointer.current()[0]["version"]
        decide = lambda champion, cand: (True, "blessed") if champion == judged_against else (False, "stale")  # noqa: E731
        barrier, results = threading.Barrier(2), {}

        def promoter(name: str) -> None:
            barrier.wait()
            results[name] = pointer.propose(name, decide)

        threads = [threading.Thread(target=promoter, args=(f"r{r:03d}{side}",)) for side in "ab"]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [d for d in results.values() if d.promoted]
        losers = [d for d in results.values() if not d.promoted]
        assert len(winners) == 1 and len(losers) == 1, f"round {r}: {results}"
        assert losers[0].reason == "stale" and losers[0].champion_before == winners[0].candidate
        assert pointer.current()[0]["version"] == winners[0].candidate
        outcomes.append((winners[0].attempts, losers[0].attempts))
    final = pointer.current()[0]
    assert final["seq"] == rounds + 1
    history = pointer.history()
    assert len(history) == 1 + 2 * rounds  # one object per decision, none rewritten
    assert sum(h["promoted"] for h in history) == rounds + 1
    # Both promoters really raced (read the same ETag) in most rounds: the loser needed a second read.
    contested = sum(1 for _, loser_attempts in outcomes if loser_attempts > 1)
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

    second = stack_mod.Stack(tmp_path, stack_mod.load_settings(), {name: stack_mod.free_port() for name in stack_mod.PORTS})
    try:
        stack_mod.start_seaweedfs(second)
        assert s3_client(second).get_object(Bucket=second.settings.bucket, Key="_stack/health")["Body"].read() == b"ok"
    finally:
        stack_mod.down(tmp_path, quiet=True)
    assert s3_client(seaweedfs).get_object(Bucket=seaweedfs.settings.bucket, Key="_stack/health")["Body"].read() == b"ok"
