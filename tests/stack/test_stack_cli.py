"""The stack command's failure messages, without starting the stack: a service whose process dies or
never turns healthy is named with its log; status on a folder with no stack says so."""

from __future__ import annotations

import pytest

from graphdistill_airflow import stack as stack_mod


def _stack(tmp_path, **settings):
    return stack_mod.Stack(tmp_path, stack_mod.load_settings(**settings), {name: 1 for name in stack_mod.PORTS})


def test_a_service_whose_process_exits_is_named_with_its_log(tmp_path):
    stack = _stack(tmp_path)
    stack_mod._spawn(stack, "redis", ["sh", "-c", "echo 'FATAL: bad config' ; exit 3"])
    with pytest.raises(stack_mod.ServiceDown, match=r"stack: redis did not come up \(process \d+ exited; last check: "
                                                    r".*\); see .*logs/redis.log") as err:
        stack_mod._wait(stack, "redis", lambda: "no PONG")
    assert err.value.service == "redis"
    assert "FATAL: bad config" in stack.log("redis").read_text()


def test_a_service_that_never_turns_healthy_fails_after_its_timeout(tmp_path):
    stack = _stack(tmp_path, health_timeout_s={"triton": 1.0})
    with pytest.raises(stack_mod.ServiceDown, match=r"triton did not come up \(not healthy after 1 s: HTTP 503\)"):
        stack_mod._wait(stack, "triton", lambda: "HTTP 503")


def test_status_without_a_stack_says_how_to_start_one(tmp_path, capsys):
    assert stack_mod.status(tmp_path) == 1
    assert "not started under" in capsys.readouterr().out


def test_settings_file_is_valid_and_names_every_health_timeout():
    settings = stack_mod.load_settings()
    assert set(settings.health_timeout_s) >= set(stack_mod.SERVICES)
    with pytest.raises(ValueError, match="bucket"):
        stack_mod.load_settings(bucket="x")


def test_every_process_runs_on_the_object_store_root_in_a_copy_of_its_own(tmp_path):
    """GRAPHDISTILL_ROOT is the store for every process; each has its own working copy under the state
    folder (one per worker, stable across its tasks), and Triton's repository is an absolute path on this
    host, not a folder inside some worker's copy."""
    import yaml

    stack = _stack(tmp_path)
    envs = {**{f"worker-{q}": stack.worker_env(q) for q in stack_mod.WORKER_QUEUES},
            **{service: stack.airflow_env(service) for service in ("api-server", "scheduler", "triggerer")}}
    assert {env["GRAPHDISTILL_ROOT"] for env in envs.values()} == {"s3://graphdistill/root"}
    assert {name: env["GRAPHDISTILL_CACHE"] for name, env in envs.items()} == {
        name: str(tmp_path / "cache" / name) for name in envs}
    assert {env["AIRFLOW_HOME"] for env in envs.values()} == {str(tmp_path / "airflow")}
    ops = yaml.safe_load(stack.write_pipeline_config().read_text())["ops"]
    assert ops["triton_repository"] == str(tmp_path / "triton" / "repository") == str(stack.triton_repository)
    with pytest.raises(ValueError, match="root_prefix"):
        stack_mod.load_settings(root_prefix="/leading-slash")
