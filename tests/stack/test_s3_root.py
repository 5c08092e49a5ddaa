"""The artifact root on a real S3-compatible store (SeaweedFS on loopback, the `seaweedfs` fixture):
stages run unchanged on ``s3://bucket/prefix`` and publish what a local root would hold; another
process with an empty working copy reads it; an interrupted publish and a lost champion race leave
nothing of themselves visible; a bad root is one line and exit 2 from the CLI."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from components.cli import main
from components.core.catalog import Layout, object_root, staging_dir
from components.core.config import load_config
from components.core.errors import StageSkipped, StorageFault
from components.core.objectstore import ObjectStore
from components.core.remote import connect, hydrated, session
from components.data.sources.synthetic import SyntheticWorld, write_landing_day
from components.pipeline import INPUTS, run_stage
from graphdistill_airflow.stack import free_port, s3_client
from tests.e2e.small_world import write_small_world_gates
from tests.unit.fault_fixtures import tmpfs

REPO = Path(__file__).resolve().parents[2]
DAYS = ["2026-01-01", "2026-01-02", "2026-01-03"]
BUILDS = ["graph", "teacher", "distill", "prune", "export", "convert"]
KIND_OF = {"ingest": "staging", "validate": "accepted", "features": "features", "graph": "graphs",
           "teacher": "models/teacher", "distill": "models/student", "prune": "models/pruned", "export": "exports",
           "convert": "engines"}


def run_nights(root: str, scratch: Path) -> dict[str, dict[str, str]]:
    """Land three days under ``root`` and run every stage of each night through promotion (the first
    night has no training window: its model stages are skipped). Returns day -> stage -> what it made."""
    world = SyntheticWorld(num_users=150, num_items=100, start=dt.date.fromisoformat(DAYS[0]), seed=3)
    universe = world.universe()
    with session(root) as layout:  # landing data as a producer would put it
        for day in DAYS:
            write_landing_day(world, layout.landing(day), dt.date.fromisoformat(day), "parquet", universe)
    cfg = load_config(None, overrides={
        "root": root, "gates_file": str(write_small_world_gates(scratch)), "export.batch_sizes": [1, 4],
        "distill.epochs": 5, "prune.finetune_epochs": 2, "engine.runtime": "onnxruntime"})
    made: dict[str, dict[str, str]] = {}
    for day in DAYS:
        made[day] = night = {}
        built = {}

        def build(stage: str) -> dict:
            # As another worker hands them on: its copy's paths mean nothing here (run_stage relocates).
            inputs = {keyword: {**built[ref.KIND], "path": f"/another-worker/{ref.KIND}"}
                      for keyword, ref in INPUTS.get(stage, {}).items()}
            built[KIND_OF[stage]] = run_stage(stage, day, cfg, run_key="n1", inputs=inputs)
            return built[KIND_OF[stage]]

        build("ingest"), build("validate")
        features = build("features")
        night["features"] = f"{features['users']}u/{features['items']}i/{features['materialize_mode']}"
        try:
            for stage in BUILDS:
                night[stage] = build(stage)["version"]
        except StageSkipped as exc:
            night["skipped"] = str(exc)
            continue
        evaluation = run_stage("evaluate", day, cfg, run_key="n1", upstream=built["engines"])
        blessing = run_stage("gate", day, cfg, run_key="n1", upstream=evaluation)
        registration = run_stage("register", day, cfg, run_key="n1", upstream=blessing)
        promotion = run_stage("promote", day, cfg, run_key="n1", upstream=registration)
        night.update(verdict=blessing["verdict"], registered=registration["version"], outcome=promotion["outcome"],
                     champion=promotion["champion_version"])
    return made


@pytest.fixture(scope="module")
def s3_env(seaweedfs, tmp_path_factory):
    """boto3's environment for the stack's SeaweedFS, and a working-copy folder of this module's own."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in seaweedfs.s3_env().items():
            patch.setenv(key, value)
        patch.setenv("GRAPHDISTILL_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield patch


@pytest.fixture(scope="module")
def nights(s3_env, seaweedfs, tmp_path_factory):
    """The same three nights on a local root and on s3://<bucket>/<fresh prefix>."""
    local = tmp_path_factory.mktemp("local")
    uri = f"s3://{seaweedfs.settings.bucket}/nights-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    on_local = run_nights(str(local / "root"), local)
    middle = time.perf_counter()
    on_s3 = run_nights(uri, tmp_path_factory.mktemp("s3"))
    store = connect(object_root(uri))
    print(json.dumps({"local_s": round(middle - started, 1), "s3_s": round(time.perf_counter() - middle, 1),
                      "objects": len(store.list("")), "bytes": sum(e.size for e in store.entries("").values())}))
    return {"uri": uri, "local": on_local, "s3": on_s3}


def test_nights_on_s3_make_the_versions_a_local_root_makes(nights, seaweedfs):
    local, remote = nights["local"], nights["s3"]
    assert "skipped" in remote[DAYS[0]] and "skipped" in local[DAYS[0]]
    assert [remote[d]["features"] for d in DAYS] == [local[d]["features"] for d in DAYS]
    assert remote[DAYS[1]]["features"].endswith("/incremental")  # Feast's registry came back from the store
    for day in DAYS[1:]:
        # Content-hashed artifacts are byte-identical (measured latencies live in TIMINGS, outside the hash).
        for stage in ["graph", "teacher", "distill", "prune", "export", "convert"]:
            assert remote[day][stage] == local[day][stage], (day, stage)
        assert remote[day]["verdict"] == local[day]["verdict"] == "blessed"
        assert remote[day]["outcome"] == local[day]["outcome"] == "promoted"
        assert remote[day]["registered"].startswith(f"{day}-")
    assert remote[DAYS[2]]["champion"] == remote[DAYS[2]]["registered"]
    # The store holds every published artifact complete, the champion pointer and one object per decision.
    store = ObjectStore(seaweedfs.settings.bucket, object_root(nights["uri"]).prefix, s3_client(seaweedfs))
    names = set(store.list(""))
    for day in DAYS[1:]:
        for stage in ["graph", "teacher", "distill", "prune", "export", "convert"]:
            assert f"{KIND_OF[stage]}/{day}/{remote[day][stage]}/manifest.json" in names, (day, stage)
        assert f"registry/versions/{remote[day]['registered']}/manifest.json" in names
    assert json.loads(store.read("registry/champion.json").body)["version"] == remote[DAYS[2]]["registered"]
    history = [json.loads(store.read(n).body) for n in store.list("registry/history/")]
    assert [(h["event"], h["version"]) for h in history] == [("promote", remote[d]["registered"]) for d in DAYS[1:]]
    assert not any(n.endswith("history.jsonl") for n in names)  # never one rewritten file


def test_a_second_process_with_an_empty_copy_reads_what_was_published(nights, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("GRAPHDISTILL_CACHE", str(tmp_path / "empty-copy"))
    uri, day = nights["uri"], DAYS[2]
    assert main(["champion", "--root", uri]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == nights["s3"][day]["registered"]
    assert main(["outcome", day, "--root", uri]) == 0
    assert "PROMOTED" in capsys.readouterr().out
    # A report written by this process (a stage run on the copy) is published for the next reader.
    assert main(["run", "report", "--day", day, "--run-key", "n1", "--root", uri]) == 0
    monkeypatch.setenv("GRAPHDISTILL_CACHE", str(tmp_path / "third-copy"))
    layout = hydrated(uri)
    assert layout.root.is_relative_to(tmp_path / "third-copy")
    assert (layout.reports(day) / "runs" / "n1" / "report.html").stat().st_size > 1000
    assert layout.current("graphs", day).version == nights["s3"][day]["graph"]
    assert not list(layout.root.glob("landing/*"))  # landing is hydrated only for its day's ingest


def test_an_interrupted_publish_leaves_nothing_visible(nights, monkeypatch, tmp_path):
    uri, day = f"{nights['uri']}-interrupted", "2030-01-01"

    def killed_before_the_manifest(name: str) -> None:
        if name.endswith("manifest.json"):
            raise KeyboardInterrupt(f"killed while publishing {name}")

    with pytest.raises(KeyboardInterrupt):
        with session(uri, fault_hook=killed_before_the_manifest) as layout:
            with staging_dir(layout.artifacts("graphs")) as build:
                (build / "graph.bin").write_bytes(b"\x01" * 4096)
                version = layout.publish("graphs", day, build, {"inputs": []}).version
    store = connect(object_root(uri))
    assert store.list("") == [f"graphs/{day}/{version}/graph.bin"]  # the file, no manifest, no CURRENT
    monkeypatch.setenv("GRAPHDISTILL_CACHE", str(tmp_path / "reader"))
    reader = hydrated(uri)
    assert reader.current("graphs", day) is None and not (reader.artifacts("graphs") / day).exists()
    # The writer's next session finishes the publish (its copy still holds the artifact): now complete.
    monkeypatch.setenv("GRAPHDISTILL_CACHE", str(layout.root.parents[1]))
    with session(uri):
        pass
    assert hydrated(uri).current("graphs", day).version == version
    monkeypatch.setenv("GRAPHDISTILL_CACHE", str(tmp_path / "reader-2"))
    assert hydrated(uri).current("graphs", day).version == version


def test_a_full_disk_under_the_working_copy_fails_the_stage_for_good_naming_the_copy(nights, monkeypatch, tmp_path):
    """The stage's own run is mapped, and so is hydrating the copy before it: a worker whose cache disk
    is full gets the storage-fault message (no retry can help), not a bare OSError the DAG retries."""
    with tmpfs(tmp_path / "small", 256 * 1024) as small:
        monkeypatch.setenv("GRAPHDISTILL_CACHE", str(small / "copy"))
        cfg = load_config(None, overrides={"root": nights["uri"], "gates_file": str(write_small_world_gates(tmp_path))})
        with pytest.raises(StorageFault, match=rf"^disk full: {small}/copy/.*\[OSError: \[Errno 28\]"):
            run_stage("report", DAYS[2], cfg, run_key="n1")


# A second process (its own working copy, GRAPHDISTILL_CACHE) registers ``version`` of ``day`` and
# decides it against ``judged``; before its swap it checks that the version is already in the store.
DECIDER = """
import json, sys
from components.core.remote import session
from components.decide.registry import decide_promotion
from tests.stack.test_s3_root import register_blessed, version_in_store

uri, version, day, judged = sys.argv[1:5]
with session(uri) as layout:
    register_blessed(layout, version, day)
    hook = lambda step: step == "before_pointer_write" and version_in_store(uri, version)
    print(json.dumps(decide_promotion(layout, version, judged, run_key="second", fault_hook=hook).__dict__))
"""


def register_blessed(layout: Layout, version: str, day: str) -> None:
    """A blessed registry version of ``day`` (what the registry's decisions read of it: manifest, blessing)."""
    from components.decide.registry import register_candidate

    register_candidate(layout, version, day, {}, {}, {"blessing.json": {"blessed": True}}, "blessed")


def version_in_store(uri: str, version: str) -> None:
    """Raise unless the version is complete in the store: a pointer may name only such a version."""
    if connect(object_root(uri)).read(f"registry/versions/{version}/manifest.json") is None:
        raise AssertionError(f"the pointer is about to name {version}, which is not in {uri} yet")


def test_two_copies_promoting_against_one_champion_end_with_one_winner(s3_env, seaweedfs, monkeypatch, tmp_path):
    """Two processes, each with its own working copy, promote a candidate judged against the same
    champion: the second process's swap lands between the first's read and its swap; the first loses
    the store's If-Match, re-reads and records its candidate not_promoted (stale). Each version is in
    the store before the pointer names it, although its session publishes only on exit."""
    from components.decide.registry import decide_promotion

    uri = f"s3://{seaweedfs.settings.bucket}/race-{uuid.uuid4().hex[:8]}"
    store = connect(object_root(uri))
    monkeypatch.setenv("GRAPHDISTILL_CACHE", str(tmp_path / "setup"))
    with session(uri) as layout:
        assert layout.champion_store == f"{uri}/registry"
        register_blessed(layout, "v0", "2026-02-01")
        first = decide_promotion(layout, "v0", None, run_key="setup",
                                 fault_hook=lambda step: step == "before_pointer_write" and version_in_store(uri, "v0"))
    assert first.promoted
    second_process = []

    def the_other_process_swaps_first(step: str) -> None:
        if step == "before_pointer_write" and not second_process:
            version_in_store(uri, "a")
            second_process.append(subprocess.run(
                [sys.executable, "-c", DECIDER, uri, "b", "2026-02-02", "v0"], capture_output=True, text=True,
                env={**os.environ, "GRAPHDISTILL_CACHE": str(tmp_path / "second"), "PYTHONPATH": str(REPO)},
                cwd=REPO, timeout=120))

    monkeypatch.setenv("GRAPHDISTILL_CACHE", str(tmp_path / "first"))
    with session(uri) as layout:
        register_blessed(layout, "a", "2026-02-03")
        lost = decide_promotion(layout, "a", "v0", run_key="first", fault_hook=the_other_process_swaps_first)
    assert second_process[0].returncode == 0, second_process[0].stderr[-2000:]
    won = json.loads(second_process[0].stdout.strip().splitlines()[-1])
    assert (won["promoted"], won["champion_version"], won["previous_champion"]) == (True, "b", "v0")
    assert (lost.promoted, lost.outcome, lost.champion_version) == (False, "not_promoted", "b")
    assert lost.reason == "stale: champion changed since judged (judged against v0, serving b)"
    assert json.loads(store.read("registry/champion.json").body)["version"] == "b"
    entries = [json.loads(store.read(n).body) for n in store.list("registry/history/")]
    assert [(e["event"], e["version"], e.get("seq")) for e in entries] == [
        ("promote", "v0", 1), ("promote", "b", 2), ("not_promoted", "a", None)]
    # Neither copy holds a pointer of its own: the store's is the only answer.
    assert not list(tmp_path.glob("*/**/registry/champion.json")) and not list(tmp_path.glob("*/**/history.jsonl"))


def test_a_rollback_through_one_copy_is_what_every_other_copy_reads(s3_env, seaweedfs, monkeypatch, tmp_path, capsys):
    """An operator rolls back through one working copy; a reader whose copy was hydrated before (and
    still holds an old champion.json from a copy made before the pointer lived on the store only)
    reads the rollback: the CLI's champion and history, serving's champion, the outcome's champion day."""
    from components.core.champion import champion_in
    from components.decide.outcome import champion_day
    from components.decide.registry import champion_as_of, decide_promotion
    from components.ship.serving import _champion

    uri = f"s3://{seaweedfs.settings.bucket}/rollback-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("GRAPHDISTILL_CACHE", str(tmp_path / "operator"))
    with session(uri) as layout:
        for version, day, judged_against in (("v1", "2026-03-01", None), ("v2", "2026-03-02", "v1")):
            register_blessed(layout, version, day)
            assert decide_promotion(layout, version, judged_against).promoted
    monkeypatch.setenv("GRAPHDISTILL_CACHE", str(tmp_path / "reader"))
    reader = hydrated(uri)
    assert champion_in(reader).version == "v2"
    stale = reader.registry() / "champion.json"
    stale.write_text(json.dumps({"version": "v2"}))  # what an older copy kept: it must not be read, nor published
    monkeypatch.setenv("GRAPHDISTILL_CACHE", str(tmp_path / "operator"))
    assert main(["rollback", "--root", uri, "--reason", "v2 hurts clicks"]) == 0
    assert "champion is now v1" in capsys.readouterr().out
    monkeypatch.setenv("GRAPHDISTILL_CACHE", str(tmp_path / "reader"))
    assert champion_in(reader).version == "v1"  # the copy as it was: the pointer is read on the store
    assert _champion(reader)[0].version == _champion(uri)[0].version == "v1"
    assert champion_day(reader) == "2026-03-01"
    assert main(["champion", "--root", uri]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["version"], shown["event"], shown["rolled_back"]) == ("v1", "rollback", ["v2"])
    assert main(["history", "--root", uri]) == 0
    assert [line.split()[1:3] for line in capsys.readouterr().out.splitlines()] == [
        ["promote", "v1"], ["promote", "v2"], ["rollback", "v1"]]
    assert not stale.exists()  # the session's hydrate dropped the old copy's pointer
    assert json.loads(connect(object_root(uri)).read("registry/champion.json").body)["version"] == "v1"
    # Another process promotes v3 while this copy is in a session hydrated before: the next day's
    # baseline is v3, fetched from the store (not skipped as "removed by hand", which would judge against v1).
    with session(uri) as layout:
        other = subprocess.run([sys.executable, "-c", DECIDER, uri, "v3", "2026-03-03", "v1"], capture_output=True,
                               text=True, cwd=REPO, timeout=120,
                               env={**os.environ, "GRAPHDISTILL_CACHE": str(tmp_path / "third"), "PYTHONPATH": str(REPO)})
        assert other.returncode == 0 and json.loads(other.stdout.splitlines()[-1])["promoted"], other.stderr[-2000:]
        assert not (layout.registry() / "versions" / "v3").exists()
        assert champion_as_of(layout, "2026-03-04")[0].version == "v3"


def copy_version(source_uri: str, target_uri: str, version: str) -> None:
    """Put registry version ``version`` of one root into another, as its registering process publishes
    it: every file, then the manifest."""
    source, target = connect(object_root(source_uri)), connect(object_root(target_uri))
    for name in sorted(source.list(f"registry/versions/{version}/"), key=lambda n: n.endswith("manifest.json")):
        target.create(name, source.read(name).body)


def test_a_reader_hydrated_before_a_promotion_serves_the_version_promoted_after(nights, monkeypatch, tmp_path, capsys):
    """Issue 17: a reader outside any decision (serving, the CLI, the plugin, the serving refresh) whose copy
    was hydrated before another process promoted a new version fetches that version from the store when
    the pointer names it, instead of failing on files its copy lacks; a pointer naming a version the
    store does not hold is one clear line from the CLI."""
    from components.core.champion import champion_in
    from components.ship.serving import Recommender

    uri = f"s3://{nights['uri'].split('/')[2]}/readers-{uuid.uuid4().hex[:8]}"
    older, newer = nights["s3"][DAYS[1]]["registered"], nights["s3"][DAYS[2]]["registered"]
    monkeypatch.delenv("GRAPHDISTILL_API_URL", raising=False)
    copy_version(nights["uri"], uri, older)
    monkeypatch.setenv("GRAPHDISTILL_CACHE", str(tmp_path / "setup"))
    assert main(["promote", older, "--root", uri, "--reason", "first champion"]) == 0
    monkeypatch.setenv("GRAPHDISTILL_CACHE", str(tmp_path / "reader"))
    reader = hydrated(uri)
    users = [str(u) for u in range(40)]
    served_before = Recommender.load(reader, runtime="onnxruntime")
    assert served_before.version == older
    # Process B, its own copy: the newer version (published by whoever registered it), promoted by hand.
    copy_version(nights["uri"], uri, newer)
    promoted = subprocess.run([sys.executable, "-m", "components.cli", "promote", newer, "--root", uri, "--reason",
                               "after the reader hydrated"], capture_output=True, text=True, cwd=REPO, timeout=120,
                              env={**os.environ, "GRAPHDISTILL_CACHE": str(tmp_path / "promoter"),
                                   "PYTHONPATH": str(REPO)})
    assert promoted.returncode == 0, promoted.stderr[-2000:]
    assert not (reader.registry() / "versions" / newer).exists()  # the reader's copy, as it was hydrated
    served = Recommender.load(reader, runtime="onnxruntime")  # same copy, no new session
    assert served.version == champion_in(reader).version == newer
    monkeypatch.setenv("GRAPHDISTILL_CACHE", str(tmp_path / "fresh"))
    expected = Recommender.load(hydrated(uri), runtime="onnxruntime").recommend(users, 5)
    assert served.recommend(users, 5) == expected != served_before.recommend(users, 5)
    # The fetched files are what the store holds (ETag-checked), and the copy's index knows them.
    index = json.loads((reader.root / ".sync" / "index.json").read_text())["objects"]
    assert f"registry/versions/{newer}/manifest.json" in index
    # A pointer naming a version the store lacks: the reader still fails, in one line, naming the file.
    store = connect(object_root(uri))
    got = store.read("registry/champion.json")
    store.swap("registry/champion.json", json.dumps({**json.loads(got.body), "version": "ghost"}).encode(), got.etag)
    monkeypatch.setenv("GRAPHDISTILL_CACHE", str(tmp_path / "reader"))
    assert main(["triton-export", str(tmp_path / "triton"), "--root", uri]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("graphdistill triton-export: ") and "versions/ghost/serving.json" in err[-1], err
    assert not (reader.registry() / "versions" / "ghost").exists()


@pytest.mark.parametrize("case", ["malformed", "other_scheme", "no_credentials", "store_down", "no_bucket"])
def test_a_bad_root_is_one_line_and_exit_2(case, seaweedfs, s3_env, monkeypatch, tmp_path, capsys):
    roots = {"malformed": "s3:/x", "other_scheme": "gs://bucket/prefix"}
    expected = {"malformed": "artifact root 's3:/x' is malformed: expected s3://bucket/prefix",
                "other_scheme": "artifact root 'gs://bucket/prefix': scheme 'gs' is not supported",
                "no_credentials": "no credentials for the object store at",
                "store_down": "is not reachable (EndpointConnectionError",
                "no_bucket": "bucket 'no-such-bucket-gd' does not exist at"}
    monkeypatch.setenv("GRAPHDISTILL_CACHE", str(tmp_path / "copy"))
    if case == "no_credentials":
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(key)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    if case == "store_down":
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    root = roots.get(case, "s3://no-such-bucket-gd/p" if case == "no_bucket" else f"s3://{seaweedfs.settings.bucket}/p")
    assert main(["champion", "--root", root]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("graphdistill champion: ") and expected[case] in err, err
    assert not (tmp_path / "copy").exists() and not Path("s3:").exists()  # nothing written anywhere
    if case == "no_bucket":  # SeaweedFS creates a bucket on first write: none was attempted
        assert "no-such-bucket-gd" not in {b["Name"] for b in s3_client(seaweedfs).list_buckets()["Buckets"]}
