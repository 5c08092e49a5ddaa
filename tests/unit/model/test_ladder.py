"""The size ladder's choice: a pure function of the measured rungs and the ladder config."""

import pytest

from components.core.config import load_config
from components.model.ladder import Rung, choose_rung, ladder_record


def rung(dim, precision, retention, table_bytes=None, latency=1.0):
    per_value = {"fp32": 4, "fp16": 2, "int8": 1}[precision]
    return Rung(prune_ratio=1 - dim / 16, embedding_dim=dim, precision=precision, num_params_nonzero=dim * 100,
                table_bytes=table_bytes if table_bytes is not None else dim * per_value * 100, latency_p95_ms=latency,
                val_ndcg_at_20=None if retention is None else 0.1 * retention,
                retention=retention)


def ladder_cfg(**overrides):
    return load_config(None, {f"ladder.{k}": v for k, v in overrides.items()}).ladder


# Gowalla-shaped: 16 dims keep 86% of the teacher, 8 dims 72%; int8 costs nothing measurable
GOWALLA = [rung(16, "int8", 0.862), rung(16, "fp16", 0.862), rung(16, "fp32", 0.861),
           rung(8, "int8", 0.719), rung(8, "fp16", 0.719), rung(8, "fp32", 0.718)]


def test_picks_the_smallest_rung_that_keeps_the_target():
    assert choose_rung(GOWALLA, ladder_cfg(min_retention=0.85))[0] == 0  # 16-dim int8, not the 8-dim rungs
    index, reason = choose_rung(GOWALLA, ladder_cfg(min_retention=0.7))
    assert index == 3 and "6 of 6 rungs did" in reason and "71.9%" in reason


def test_falls_back_to_the_best_retaining_rung_and_says_so():
    index, reason = choose_rung(GOWALLA, ladder_cfg(min_retention=0.9))
    assert index == 0 and reason.startswith("no rung kept 90%") and "86.2%" in reason
    # a measured gain below the tie tolerance does not buy 4x the bytes; above it, it does
    noisy = [rung(16, "int8", 0.860), rung(16, "fp32", 0.863)]
    assert choose_rung(noisy, ladder_cfg(min_retention=0.9, tie_tolerance=0.005))[0] == 0
    assert choose_rung(noisy, ladder_cfg(min_retention=0.9, tie_tolerance=0.001))[0] == 1
    # no validation split: nothing is measured, the smallest rung ships
    assert choose_rung([rung(16, "fp32", None), rung(8, "int8", None)], ladder_cfg())[0] == 1


def test_respects_the_bytes_and_latency_budgets():
    # the 16-dim int8 rung would qualify but is over the bytes budget: the best rung within it ships
    rungs = [rung(16, "int8", 0.9, table_bytes=5_000), rung(8, "fp32", 0.8, table_bytes=3_200)]
    assert choose_rung(rungs, ladder_cfg(min_retention=0.85, max_table_bytes=4_000))[0] == 1
    assert choose_rung(rungs, ladder_cfg(min_retention=0.85, max_table_bytes=5_000))[0] == 0
    slow = [rung(16, "int8", 0.9, latency=300.0), rung(8, "int8", 0.8, latency=10.0)]
    assert choose_rung(slow, ladder_cfg(min_retention=0.85, max_latency_ms=250))[0] == 1
    # nothing fits: the smallest ships and the reason names the budgets
    index, reason = choose_rung(rungs, ladder_cfg(max_table_bytes=100))
    assert index == 1 and reason.startswith("no rung within the budgets (table bytes <= 100")


def test_the_record_names_every_rung_its_verdicts_and_the_choice():
    record = ladder_record(GOWALLA, 0.1535, ladder_cfg(min_retention=0.85, max_table_bytes=3_200), 2.5)
    assert [r["qualifies"] for r in record["rungs"]] == [True, True, False, False, False, False]
    assert [r["within_budgets"] for r in record["rungs"]] == [True, True, False, True, True, True]
    assert record["chosen"] == 0 and record["chosen_rung"]["precision"] == "int8" and record["target_met"]
    assert record["budgets"] == {"max_table_bytes": 3_200, "max_latency_ms": 250.0, "latency_calls": 20}
    assert record["teacher_val_ndcg@20"] == 0.1535 and record["seconds"] == 2.5
    assert set(record["rungs"][0]) >= {"prune_ratio", "embedding_dim", "precision", "table_bytes", "latency_p95_ms",
                                       "val_ndcg_at_20", "retention"}


@pytest.mark.parametrize("bad", [{"prune_ratios": []}, {"prune_ratios": [0.5, 0.5]}, {"prune_ratios": [1.0]},
                                 {"precisions": ["int4"]}, {"precisions": ["int8", "int8"]}, {"min_retention": -0.1}])
def test_ladder_config_is_validated(bad):
    with pytest.raises(ValueError, match="ladder"):
        ladder_cfg(**bad)
