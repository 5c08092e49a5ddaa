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
