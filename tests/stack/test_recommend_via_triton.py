"""`graphdistill recommend --via triton`: the champion answered by Triton (explicit model control) gives the
same recommendations as the champion's engine in-process, and a Triton serving another version than the
champion is refused rather than mapped through the wrong ID index."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.cli import main
from components.core.champion import champion_in
from components.ship.triton import publish_version, load, refresh_champion
from components.data.features import run_features
from tests.unit.data_fixtures import current_inputs
from tests.unit.ship_fixtures import promoted_champion, tiny_config, write_accepted_events

pytestmark = pytest.mark.stack

DAY = "2024-01-08"
# model, model, fold-in (history in Feast, no trained embedding), popularity (unknown)
USERS = ["u0", "u7", "newbie", "nobody"]


def _recommend(capsys, root: Path, *extra: str) -> tuple[int, list[str], str]:
    code = main(["recommend", *USERS, "-k", "3", "--root", str(root), *extra])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


def test_recommend_via_triton_matches_the_local_engine_and_refuses_another_version(triton, tmp_path, capsys):
    layout = promoted_champion(tmp_path, DAY)
    write_accepted_events(layout, DAY, [("newbie", "i0", f"{DAY}T08:00"), ("newbie", "i4", f"{DAY}T09:00")])
    cfg = tiny_config(layout.root)
    run_features(layout, DAY, cfg, **current_inputs(layout, "features", DAY, cfg))
    capsys.readouterr()  # Feast's materialization progress
    champ = champion_in(layout.registry())
    url, repo = triton.triton_url, triton.triton_repository
    refresh_champion(url, repo, Path(champ.path), champ.version)
    via = ("--via", "triton", "--triton-url", url, "--set", f"ops.triton_repository={repo}")

    code, local, err = _recommend(capsys, layout.root)
    assert code == 0, err
    code, remote, err = _recommend(capsys, layout.root, *via)
    assert code == 0, err
    assert remote[0] == f"# champion {champ.version} answered by Triton {url} (graphdistill_python)"
    assert remote[1:] == local[1:] and len(remote) == 1 + len(USERS)

    # Triton moves to a model published for another version (e.g. a refresh ran on another root).
    publish_version(repo, Path(champ.path) / "model.onnx", 5, [1, 8], "some-other-version")
    load(url)
    code, out, err = _recommend(capsys, layout.root, *via)
    assert code == 3 and out == []
    assert f"serves some-other-version (repository {repo}), the champion is {champ.version}" in err
