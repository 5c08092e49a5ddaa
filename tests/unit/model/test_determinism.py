"""Issue 20: a model stage recomputed from the same inputs on the same number of CPU threads publishes
the same bytes, hence the same version (versions are content hashes)."""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from components.core.catalog import Layout
from components.core.config import load_config
from components.model.models.lightgcn import gather_rows
from components.model.teacher import run_teacher
from tests.unit.data_fixtures import current_inputs
from tests.unit.model_fixtures import planted, write_graph

REPO = Path(__file__).resolve().parents[3]
DAY = "2026-01-02"
# The nightly's defaults (graph-filter teacher, 16-dim student, top-20 targets, batches of 2048) on a
# world big enough for torch to split the batch's gathers across threads (>= 32768 elements).
CONFIG = {"teacher.device": "cpu", "distill.epochs": 3, "prune.finetune_epochs": 2}
STAGES = textwrap.dedent("""
    import json, sys, torch
    torch.set_num_threads(2)
    from components.core.catalog import Layout
    from components.core.config import load_config
    from components.model.distill import run_distill
    from components.model.prune import run_prune
    from tests.unit.data_fixtures import current_inputs
    layout, day, cfg = Layout.at(sys.argv[1]), sys.argv[2], load_config(None, json.loads(sys.argv[3]))
    student = run_distill(layout, day, cfg, **current_inputs(layout, "distill", day))
    pruned = run_prune(layout, day, cfg, **current_inputs(layout, "prune", day))
    print(json.dumps({"threads": torch.get_num_threads(), "distill": student.version, "prune": pruned.version}))
""")


@pytest.fixture(scope="module")
def day_with_teacher(tmp_path_factory):
    layout = Layout.at(tmp_path_factory.mktemp("root"))
    train, holdout = planted(150, 100)
    write_graph(layout, DAY, train, holdout, 150, 100)
    cfg = load_config(None, CONFIG)
    run_teacher(layout, DAY, cfg, **current_inputs(layout, "teacher", DAY, cfg))
    return layout


def test_distill_and_prune_recomputed_in_fresh_processes_on_two_threads_publish_the_same_versions(day_with_teacher,
                                                                                                   tmp_path):
    """Before the fix the batch's gathers (``final[index]``) had a backward that adds with parallel
    float atomics on CPU: prune's version differed on every run (measured, 4 of 4)."""
    made = []
    for run in range(2):
        root = tmp_path / f"run{run}"
        shutil.copytree(day_with_teacher.root, root)
        out = subprocess.run([sys.executable, "-c", STAGES, str(root), DAY, json.dumps(CONFIG)], cwd=REPO,
                             capture_output=True, text=True, timeout=600,
                             env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2", "PATH": "/usr/bin:/bin"})
        assert out.returncode == 0, out.stderr[-2000:]
        made.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert made[0]["threads"] == 2
    assert made[0] == made[1]
    for stage in ("distill", "prune"):  # the thread count is part of what the version covers
        kind = "student" if stage == "distill" else "pruned"
        record = json.loads((tmp_path / "run0" / "models" / kind / DAY / made[0][stage] / "metrics.json").read_text())
        assert (record["train"] if stage == "distill" else record)["threads"] == 2


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("shape", [(6144,), (2048, 20)])
def test_gather_rows_is_indexing_with_a_backward_that_is_the_same_on_every_call(shape, two_threads):
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(250, 16, generator=generator, requires_grad=True)
    index = torch.randint(0, 250, shape, generator=generator)
    upstream = torch.randn(*shape, 16, generator=generator)
    assert torch.equal(gather_rows(table, index), table[index])
    grads = set()
    for threads in [1] + [2] * 20:  # one thread sums in index order: every call must give those bits
        torch.set_num_threads(threads)
        table.grad = None
        gather_rows(table, index).backward(upstream)
        grads.add(table.grad.numpy().tobytes())
    assert len(grads) == 1
    # each row's gradient is the sum of its upstream rows (against a float64 reference)
    reference = torch.zeros(250, 16, dtype=torch.float64).index_add_(0, index.reshape(-1),
                                                                     upstream.reshape(-1, 16).double())
    assert torch.allclose(table.grad.double(), reference, atol=1e-5)
