import pytest

from components.core.config import DEFAULT_CONFIG_FILE, DEFAULT_GATES_FILE, load_config, load_gates


def test_defaults_load_and_gate_file_is_valid():
    cfg = load_config()
    assert cfg.teacher.embedding_dim == 64
    assert len(cfg.gates.gates) >= 5
    assert {g.kind for g in load_gates(DEFAULT_GATES_FILE).gates} >= {"min", "max", "min_ratio_to", "max_regression_vs", "min_lift_over"}


def test_dotted_overrides_apply_and_change_the_hash():
    base = load_config()
    changed = load_config(overrides={"teacher.epochs": 3, "graph": {"window_days": 7}})
    assert changed.teacher.epochs == 3 and changed.graph.window_days == 7
    assert changed.teacher.embedding_dim == base.teacher.embedding_dim
    assert changed.config_hash() != base.config_hash()
    # The root is where artifacts live, not what they are: it does not change the hash.
    assert load_config(overrides={"root": "/elsewhere"}).config_hash() == base.config_hash()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"teacher.layer_weights": [0.5, 0.5]}, "layer_weights"),
        ({"validation.min_band": {"volumes": 1.0}}, "unknown metric"),
        ({"validation.severity": {"volume": "ignore"}}, "severity"),
        ({"teacher.embeding_dim": 8}, "embeding_dim"),
        ({"data.event_weights": {"view": -1}}, "positive"),
    ],
)
def test_invalid_config_is_rejected_naming_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(overrides=overrides)


def test_gate_needing_a_baseline_is_rejected(tmp_path):
    bad = tmp_path / "gates.yaml"
    bad.write_text("gates:\n  - {metric: ndcg@20, kind: min_ratio_to, threshold: 0.9}\n")
    with pytest.raises(ValueError, match="needs a baseline"):
        load_gates(bad)


def test_a_missing_config_file_is_an_error_not_the_defaults(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "typo.yaml")


def test_retuning_a_gate_does_not_invalidate_trained_models(tmp_path):
    gates = tmp_path / "gates.yaml"
    gates.write_text(DEFAULT_GATES_FILE.read_text().replace("threshold: 0.80", "threshold: 0.85"))
    base, retuned = load_config(), load_config(overrides={"gates_file": str(gates)})
    assert retuned.config_hash() != base.config_hash()
    for stage in ("validate", "graph", "teacher", "distill", "prune", "export", "engine"):
        assert retuned.config_hash(stage) == base.config_hash(stage)
    assert load_config(overrides={"distill.epochs": 3}).config_hash("teacher") == base.config_hash("teacher")
    assert load_config(overrides={"distill.epochs": 3}).config_hash("distill") != base.config_hash("distill")


def test_override_typo_names_the_key_and_suggests_the_field():
    """A typo in a run's conf overrides fails without retries (PermanentStageFailure), naming the key
    and where it came from, not blaming config/pipeline.yaml."""
    from components.core.config import ConfigError
    from components.core.errors import PermanentStageFailure

    with pytest.raises(ConfigError) as info:
        load_config(DEFAULT_CONFIG_FILE, {"distill.epoch": 3})
    message = str(info.value)
    assert isinstance(info.value, PermanentStageFailure)
    assert "the run's overrides: 'distill.epoch'" in message and "did you mean 'distill.epochs'?" in message
    with pytest.raises(ConfigError, match=r"'distill.epochs': .*greater than or equal to 1 \(got -1\)"):
        load_config(DEFAULT_CONFIG_FILE, {"distill": {"epochs": -1}})


def test_file_errors_name_the_file(tmp_path):
    from components.core.config import ConfigError

    path = tmp_path / "pipeline.yaml"
    path.write_text("graph:\n  window_dayz: 3\n")
    with pytest.raises(ConfigError, match=rf"config file {path}: 'graph.window_dayz'.*did you mean 'graph.window_days'"):
        load_config(path)


def test_the_shipped_gates_declare_their_roles_and_judge_comparisons_on_users_with_history():
    gates = load_gates(DEFAULT_GATES_FILE)
    roles = {(g.metric, g.kind, g.baseline): g.role for g in gates.gates}
    assert roles[("ndcg@20", "min_ratio_to", "teacher")] == "diagnostic"
    assert [k for k, role in roles.items() if role == "diagnostic"] == [("ndcg@20", "min_ratio_to", "teacher")]
    assert roles[("validation_warnings", "max", None)] == roles[("latency_p99_ms", "max", None)] == "decision"
    assert {g.segment for g in gates.gates if g.baseline in ("champion", "popularity")} == {"history"}
    assert (gates.conclusive_win.metric, gates.conclusive_win.segment) == ("ndcg@20", "history")
    assert gates.champion_health.fallback == "popularity" and gates.champion_health.tolerance == 0.0


@pytest.mark.parametrize("text, message", [
    ("gates:\n  - {metric: ndcg@20, kind: min, threshold: 0.1, role: advisory}\n", "role"),
    ("gates:\n  - {metric: ndcg@20, kind: min, threshold: 0.1, segment: returning}\n", "segment"),
    ("gates: []\nchampion_health: {fallback: retire}\n", "fallback"),
    ("gates: []\nconclusive_win: {min_lift_over_champion: -0.1}\n", "min_lift_over_champion"),
    ("gates: []\nconclusive_win: {segmnt: all}\n", "segmnt"),
])
def test_invalid_roles_segments_and_fallbacks_are_rejected_naming_the_file_and_field(tmp_path, text, message):
    bad = tmp_path / "gates.yaml"
    bad.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        load_gates(bad)
    assert str(bad) in str(error.value)


def test_an_unmarked_gate_decides():
    from components.core.config import GateSpec

    assert GateSpec(metric="ndcg@20", kind="min", threshold=0.1).role == "decision"
