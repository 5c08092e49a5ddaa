"""Device paths and memory linear in the data (issue 19): the CPU path unchanged bit for bit,
blocks sized from compute.block_bytes, teacher targets from a seeded sample, CUDA where present."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from components.core.config import load_config
from components.model.distill import make_kd_loss, targets_record, teacher_targets
from components.model.metrics import block_rows, embedding_scorer, evaluate_scorer, user_metrics
from components.core.interactions import normalized_edges
from components.model.models.graph_filter import FilterParams, GraphFilter
from components.model.teacher import graph_filter_teacher, target_users, teacher_topk
from tests.unit.model_fixtures import planted

GOLDEN = Path(__file__).parent / "golden"
REPO = Path(__file__).resolve().parents[3]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine (CI has none)")


def golden_graph():
    """The graph the golden outputs were computed on (by the CPU code before the device path, 3618e66)."""
    train, test = planted(300, 200, per_user=12, holdout_per_user=4, seed=3)
    return train, test, normalized_edges(train, 300, 200, False)


def fit(variant, device="cpu", block_bytes=None):
    _, _, e = golden_graph()
    return GraphFilter.fit(e.user, e.item, e.strength, e.norm, 300, 200,
                           # the randomized SVD: the path the golden outputs were recorded on
                           FilterParams(variant=variant, rank=32, block_users=64, svd_iterations=2, svd_exact_max_side=0), device,
                           block_bytes)


@pytest.fixture
def one_thread():
    """The golden outputs were computed with one CPU thread: float sums in another thread split differ
    in the last bits (measured: 1e-7 under OMP_NUM_THREADS=2, what `make test` sets)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("variant", ["gf_cf", "bspm"])
def test_cpu_path_is_what_it_was_before_the_device_path(variant, one_thread):
    train, test, _ = golden_graph()
    graph_filter = fit(variant)
    expected = json.loads((GOLDEN / "graph_filter_cpu.json").read_text())[variant]
    got = evaluate_scorer(graph_filter.score, train, test, 200, (5, 20), 128)
    got.pop("eval_seconds")
    assert got == expected  # exact floats: same top-K, same metrics
    arrays = np.load(GOLDEN / "graph_filter_cpu.npz")
    scores, items = teacher_topk(graph_filter.score, train, 300, 200, 10, 100)
    assert np.array_equal(items.numpy(), arrays[f"{variant}_items"])
    # Scores to the last bits only on the recording machine's kernels: MKL's AVX-512 path (an AMD EPYC
    # here) moves them by up to 4e-6 relative (measured), with the same top-K and the same metrics.
    np.testing.assert_allclose(scores.numpy(), arrays[f"{variant}_scores"], rtol=1e-5, atol=0)
    per_user = user_metrics(graph_filter.score, train, test, 200, (5, 20), 128).values["ndcg@20"]
    assert np.array_equal(per_user, arrays[f"{variant}_ndcg20"])


def test_block_sizes_follow_the_byte_budget():
    assert block_rows(None, 4 * 1000, 4096) == 4096  # no budget: the cap
    assert block_rows(4 * 1000 * 10, 4 * 1000, 4096) == 10
    assert block_rows(100, 4 * 1000, 4096) == 1  # never zero
    assert block_rows(2 ** 40, 4 * 1000, 4096) == 4096
    # the filter's block counts its live rows: GF-CF 5 item rows + 1 user row per user, BSPM 10 + 1
    assert fit("gf_cf", block_bytes=4 * (5 * 200 + 300) * 7).block_users == 7
    assert fit("bspm", block_bytes=4 * (10 * 200 + 300) * 7).block_users == 7
    assert fit("gf_cf").block_users == 64


def test_evaluation_and_teacher_targets_score_at_most_one_budget_block_at_a_time():
    train, test, _ = golden_graph()
    graph_filter = fit("gf_cf", block_bytes=4 * (5 * 200 + 300) * 16)
    calls = []

    def scorer(users):
        calls.append(users.numel())
        return graph_filter.score(users)

    budget = 4 * 200 * 25  # 25 users' scores
    small = evaluate_scorer(scorer, train, test, 200, (5, 20), 4096, block_bytes=budget)
    assert max(calls) == 25 and sum(calls) == 300
    whole = evaluate_scorer(graph_filter.score, train, test, 200, (5, 20), 4096)
    assert small["ndcg@20"] == pytest.approx(whole["ndcg@20"], abs=1e-12)
    calls.clear()
    s_small, i_small = teacher_topk(scorer, train, 300, 200, 10, 4096, block_bytes=budget)
    s_whole, i_whole = teacher_topk(graph_filter.score, train, 300, 200, 10, 4096)
    assert max(calls) == 25 and torch.equal(i_small, i_whole)


def test_scoring_a_larger_than_budget_problem_allocates_about_one_block():
    """40k users x 4k items: a users x items float32 buffer is 640 MB. With a 16 MB budget, filter
    scoring + the teacher's top-K + evaluation peak well below it (a fresh process; the growth is the
    peak RSS while scoring, reset after the fit, minus the resident RSS before scoring)."""
    script = textwrap.dedent("""
        import json, os, resource, numpy as np, torch
        torch.set_num_threads(1)
        from components.model.metrics import evaluate_scorer
        from components.core.interactions import Interactions, normalized_edges
        from components.model.models.graph_filter import FilterParams, GraphFilter
        from components.model.teacher import teacher_topk
        rng = np.random.default_rng(0)
        users, items, n = 40000, 4000, 400000
        u, i = rng.integers(0, users, n), rng.integers(0, items, n)
        train = Interactions(u[:-40000], i[:-40000], np.ones(n - 40000, np.float32))
        test = Interactions(u[-40000:], i[-40000:], np.ones(40000, np.float32))
        e = normalized_edges(train, users, items, False)
        budget = 16 * 2 ** 20
        gf = GraphFilter.fit(e.user, e.item, e.strength, e.norm, users, items, FilterParams(rank=16), "cpu", budget)
        def status(key):
            line = next(l for l in open("/proc/self/status") if l.startswith(key + ":"))
            return int(line.split()[1]) / 1024
        with open("/proc/self/clear_refs", "w") as f:  # the peak from here on: scoring only, not the fit
            f.write("5")
        resident = status("VmRSS")
        top = teacher_topk(gf.score, train, users, items, 20, 4096, block_bytes=budget)
        m = evaluate_scorer(gf.score, train, test, items, (20,), 4096, block_bytes=budget)
        peak = status("VmHWM")
        print(json.dumps({"growth_mb": peak - resident, "block_users": gf.block_users, "users": m["users_evaluated"]}))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600,
                         env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["block_users"] == 16 * 2 ** 20 // (4 * (5 * 4000 + 40000))  # 69 users per filter block
    assert got["users"] > 25000
    # a few 16 MB blocks (scores, their concatenation, R~ x^T) and the [40000, 20] targets, not 640 MB
    assert got["growth_mb"] < 200, got


def test_teacher_targets_from_a_seeded_sample_of_users():
    train, _, _ = golden_graph()
    teacher = graph_filter_teacher(fit("gf_cf"))
    cfg = load_config(None, {"distill.teacher_target_users": 50, "distill.kd_topk": 10, "eval.user_batch_size": 100})
    chosen = target_users(300, cfg)
    assert chosen.size == 50 and np.array_equal(chosen, target_users(300, cfg))  # seeded
    assert not np.array_equal(chosen, target_users(300, load_config(None, {"seed": 1, "distill.teacher_target_users": 50})))
    scores, items = teacher_targets(teacher, train, cfg)
    full_scores, full_items = teacher_topk(teacher.scorer, train, 300, 200, 10, 100)
    assert torch.equal(items[chosen], full_items[chosen]) and torch.equal(scores[chosen], full_scores[chosen])
    others = np.setdiff1d(np.arange(300), chosen)
    assert bool((items[others] == -1).all())
    assert targets_record(300, cfg, "scored") == {"users": 50, "of_users": 300, "sampled": True, "seed": 0,
                                                  "source": "scored"}
    assert targets_record(300, load_config(None, {}), "teacher_artifact") == {
        "users": 300, "of_users": 300, "sampled": False, "seed": None, "source": "teacher_artifact"}
    # the KD term of a batch is the term of its users that have a target: the others add nothing
    kd = make_kd_loss(scores, items, cfg, torch.device("cpu"))
    torch.manual_seed(0)
    user_final, item_final = torch.randn(300, 8), torch.randn(200, 8)
    batch = torch.arange(300)
    negatives = torch.randint(0, 200, (300,))
    with_targets = torch.from_numpy(chosen)
    assert kd(user_final, item_final, batch, None, negatives) == pytest.approx(
        float(kd(user_final, item_final, with_targets, None, negatives[with_targets])))


@cuda
@pytest.mark.parametrize("variant", ["gf_cf", "bspm"])
def test_graph_filter_and_evaluation_on_cuda_match_the_cpu(variant):
    train, test, _ = golden_graph()
    cpu = evaluate_scorer(fit(variant).score, train, test, 200, (20,), 128)
    on_gpu = fit(variant, "cuda")
    assert on_gpu.v.device.type == "cuda" and on_gpu.score(torch.arange(5)).device.type == "cuda"
    gpu = evaluate_scorer(on_gpu.score, train, test, 200, (20,), 128)
    assert gpu["recall@20"] == pytest.approx(cpu["recall@20"], abs=5e-3)
    assert gpu["ndcg@20"] == pytest.approx(cpu["ndcg@20"], abs=5e-3)
    # distillation's pieces take a device filter: targets on the device, the student built on the CPU
    scores, items = teacher_topk(on_gpu.score, train, 300, 200, 10, 100)
    assert items.device.type == "cpu" and bool((items >= 0).all())
    student = graph_filter_teacher(on_gpu).init_student(8, 2)
    assert student.user_embedding.weight.device.type == "cpu"


@cuda
def test_evaluation_on_cuda_equals_the_cpu_for_the_same_scores():
    train, test, _ = golden_graph()
    torch.manual_seed(0)
    user_emb, item_emb = torch.randn(300, 16), torch.randn(200, 16)
    cpu = user_metrics(embedding_scorer(user_emb, item_emb), train, test, 200, (5, 20), 64)
    gpu = user_metrics(embedding_scorer(user_emb, item_emb, "cuda"), train, test, 200, (5, 20), 64)
    for name, values in cpu.values.items():
        np.testing.assert_allclose(gpu.values[name], values, atol=1e-12, err_msg=name)
    assert gpu.coverage == cpu.coverage
