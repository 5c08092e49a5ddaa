"""Gowalla benchmark: teacher, distilled student and pruned student on the LightGCN paper split.

Measures Recall@20 / NDCG@20 on test.txt (full ranking, training items excluded, as the paper
code), parameters, bytes on disk, seconds per epoch, wall time to reach given Recall@20 levels,
adjacency build and full evaluation pass times (medians over --timing-repeats), DGL vs
torch.sparse propagation, and prints the official LightGCN-PyTorch reference numbers beside ours.

    .venv/bin/python benchmarks/gowalla/run.py --budget-minutes 25

Writes results/<machine>.json and results/README.md (also after each phase, so a run cut short
still leaves its numbers). Not a test: it is slow by design and its numbers are quoted, not asserted.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from components.core.config import load_config  # noqa: E402
from components.model.distill import train_student  # noqa: E402
from components.model.metrics import embedding_scorer, evaluate_scorer, popularity_scorer  # noqa: E402
from components.model.models.lightgcn import LightGCN, build_adjacency, count_parameters  # noqa: E402
from components.model.prune import prune_model  # noqa: E402
from components.data.sources.lightgcn_split import load_lightgcn_split  # noqa: E402
from components.core.catalog import write_json  # noqa: E402
from components.model.teacher import lightgcn_teacher, teacher_topk  # noqa: E402
from components.model.train import final_embeddings, fit_lightgcn, load_model, train_step, write_model_files  # noqa: E402

log = logging.getLogger("benchmarks.gowalla")

# Official LightGCN-PyTorch (gusye1234/LightGCN-PyTorch) on this 2-core CPU, and the paper's Table.
REFERENCE = {
    "official_seconds_per_epoch_batch2048": 235.0,
    "official_adjacency_build_seconds": 118.0,
    "official_full_test_pass_seconds": 160.0,
    "paper_recall@20": 0.1830,
    "paper_ndcg@20": 0.1554,
}
TARGETS = {"train_speedup": 10.0, "eval_speedup": 20.0, "student_param_ratio": 8.0, "student_ndcg_retention": 0.95,
           "pruned_ndcg_retention": 0.93, "pruned_size_ratio": 2.0}
# Both pruning methods run on the same student; the target accepts either.
PRUNED = ("pruned_structured", "pruned_magnitude")


def median_time(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return statistics.median(times), times


def time_to_recall(history: list[dict], levels: list[float]) -> dict[str, float | None]:
    """Training seconds (evaluation excluded) at the first evaluation reaching each Recall@20 level."""
    out: dict[str, float | None] = {}
    for level in levels:
        hit = next((h["train_seconds_total"] for h in history if h.get("val_recall@20", -1) >= level), None)
        out[f"{level:.4f}"] = hit
    return out


def model_summary(name: str, model: LightGCN, adjacency, train, test, ks, out_dir: Path, history, extra=None) -> dict:
    user_emb, item_emb = final_embeddings(model, adjacency, "sparse")
    metrics = evaluate_scorer(embedding_scorer(user_emb, item_emb), train, test, model.num_items, ks)
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = write_model_files(out_dir, model, user_emb, item_emb, "gowalla", metrics, history)
    epoch_seconds = [h["seconds"] for h in history]
    return {
        "name": name, "embedding_dim": model.embedding_dim, "num_layers": model.num_layers,
        "num_params": count_parameters(model), "num_params_nonzero": count_parameters(model, nonzero=True),
        "bytes": sizes, "epochs_run": len(history),
        "seconds_per_epoch_median": statistics.median(epoch_seconds) if epoch_seconds else None,
        "train_seconds_total": sum(epoch_seconds),
        **{k: metrics[k] for k in ("recall@20", "ndcg@20", "precision@20", "hitrate@20", "recall@50", "ndcg@50",
                                   "coverage@20", "users_evaluated")},
        "curve": [{k: h[k] for k in ("epoch", "loss", "seconds", "train_seconds_total", "val_recall@20", "val_ndcg@20")
                   if k in h} for h in history],
        **(extra or {}),
    }


def compute_targets(r: dict) -> dict[str, tuple[float, bool]]:
    """The issue's targets against whatever the results hold so far (value, met)."""
    out: dict[str, tuple[float, bool]] = {}
    teacher, student = r.get("teacher"), r.get("student")
    probe = r.get("timings", {}).get("quiet_probe")
    if teacher:
        out["teacher recall@20 >= 0.1830"] = (teacher["recall@20"], teacher["recall@20"] >= REFERENCE["paper_recall@20"])
        out["teacher ndcg@20 >= 0.1554"] = (teacher["ndcg@20"], teacher["ndcg@20"] >= REFERENCE["paper_ndcg@20"])
    if probe:
        same = probe["same_process_speedup"]
        ref = REFERENCE["official_seconds_per_epoch_batch2048"] / probe["seconds_per_epoch_estimate"]
        out["epoch speedup >= 10x vs official-style step, same process"] = (same, same >= TARGETS["train_speedup"])
        out["epoch speedup >= 10x vs official 235 s reference"] = (ref, ref >= TARGETS["train_speedup"])
    elif teacher and teacher.get("seconds_per_epoch_median"):
        ref = REFERENCE["official_seconds_per_epoch_batch2048"] / teacher["seconds_per_epoch_median"]
        out["epoch speedup >= 10x vs official 235 s reference"] = (ref, ref >= TARGETS["train_speedup"])
    # every full test pass measured (run and probe): one median, no choosing between measurements
    passes = r.get("timings", {}).get("eval_pass_runs", []) + (probe or {}).get("eval_pass_runs", [])
    eval_s = statistics.median(passes) if passes else None
    if eval_s:
        ratio = REFERENCE["official_full_test_pass_seconds"] / eval_s
        out[f"eval speedup >= 20x (median of {len(passes)} passes)"] = (ratio, ratio >= TARGETS["eval_speedup"])
    if teacher and student:
        params = teacher["num_params"] / student["num_params"]
        out["student params ratio >= 8"] = (params, params >= TARGETS["student_param_ratio"])
        keep = student["ndcg@20"] / teacher["ndcg@20"]
        out["student ndcg@20 >= 95% teacher"] = (keep, keep >= TARGETS["student_ndcg_retention"])
    for key in PRUNED:
        pruned = r.get(key)
        if not (teacher and student and pruned):
            continue
        if key == "pruned_structured":
            smaller = student["num_params"] / pruned["num_params"]
            out["structured: >= 2x smaller than the student"] = (smaller, smaller >= TARGETS["pruned_size_ratio"])
        else:
            sparsity = 1 - pruned["num_params_nonzero"] / pruned["num_params"]
            out["magnitude: >= 50% sparsity"] = (sparsity, sparsity >= 0.5 - 1e-6)
        keep = pruned["ndcg@20"] / teacher["ndcg@20"]
        out[f"{key.split('_')[1]}: ndcg@20 >= 93% teacher"] = (keep, keep >= TARGETS["pruned_ndcg_retention"])
    return out


def write_results(results: dict, out_dir: Path) -> None:
    results["targets"] = compute_targets(results)
    write_json(out_dir / f"{results['machine']}.json", results)
    (out_dir / "README.md").write_text(render_markdown(results))


def _fmt(value, spec=".4f"):
    return "—" if value is None else format(value, spec)


def render_markdown(r: dict) -> str:
    t, ref = r.get("timings", {}), REFERENCE
    lines = [
        f"# Gowalla benchmark ({r['machine']})", "",
        f"Command: `{r['command']}`  ",
        f"Machine: {r['device']}, torch {r['torch']}, {r['threads']} threads. Started {r['started']}, "
        f"wall {r.get('wall_seconds', 0):.0f} s (budget {r['budget_minutes']} min).", "",
        "Data: LightGCN split, "
        f"{r['data']['num_users']} users, {r['data']['num_items']} items, {r['data']['train_pairs']} train / "
        f"{r['data']['test_pairs']} test pairs. Metrics: full ranking over all items, training items excluded "
        "(LightGCN paper code definitions).", "",
        "## Speed (medians over repeats)", "",
        "| measure | ours | official LightGCN-PyTorch, same CPU | speedup |", "|---|---|---|---|",
    ]
    teacher = r.get("teacher", {})
    spe = teacher.get("seconds_per_epoch_median")
    rows = [("normalized adjacency build (s)", t.get("adjacency_build_s"), ref["official_adjacency_build_seconds"]),
            ("teacher epoch, 64 dims, 3 layers, batch 2048 (s)", spe, ref["official_seconds_per_epoch_batch2048"]),
            ("full test pass, all users (s)", t.get("eval_pass_s"), ref["official_full_test_pass_seconds"])]
    for name, ours, theirs in rows:
        lines.append(f"| {name} | {_fmt(ours, '.2f')} | {theirs:.0f} | "
                     f"{'—' if not ours else format(theirs / ours, '.1f') + 'x'} |")
    probe = t.get("quiet_probe")
    if probe:
        ref_epoch = ref["official_seconds_per_epoch_batch2048"]
        lines += ["", f"Step probe (`{probe['command']}`, {probe['measured']}, load average "
                  f"{probe['load_average'][0]:.2f}), medians of {len(probe['step_seconds_runs'])} runs x "
                  f"{probe['steps_per_epoch']} steps/epoch, both steps timed alternately in one process:", "",
                  "| step (64 dims, 3 layers, batch 2048) | s/epoch | ours faster by |", "|---|---|---|",
                  f"| ours (fit_lightgcn step) | {probe['seconds_per_epoch_estimate']:.1f} | |",
                  f"| official LightGCN-PyTorch step re-implemented (COO sparse.mm per layer, stack+mean, "
                  f"plain Adam), same process | {probe['official_style_seconds_per_epoch_estimate']:.1f} | "
                  f"{probe['same_process_speedup']:.1f}x |",
                  f"| official code as measured on a 2-core machine (whole epoch, incl. its sampler) | "
                  f"{ref_epoch:.0f} | {ref_epoch / probe['seconds_per_epoch_estimate']:.1f}x |",
                  "",
                  f"The official-style step alone (no sampler) took {probe['official_style_seconds_per_epoch_estimate']:.0f} s "
                  f"per epoch here, the whole official epoch {ref_epoch:.0f} s when the reference was taken: this "
                  f"(shared, virtual) machine ran at least "
                  f"{probe['official_style_seconds_per_epoch_estimate'] / ref_epoch:.2f}x slower than then, so the "
                  "ratios against the fixed references understate; the same-process ratio is the fair one.", "",
                  f"Full test pass {probe['eval_pass_s']:.2f} s "
                  f"({ref['official_full_test_pass_seconds'] / probe['eval_pass_s']:.1f}x), "
                  f"adjacency {probe['adjacency_build_s']:.2f} s."]
    prop = t.get("propagation_fwd_bwd_s", {})
    if prop:
        lines += ["", "Propagation forward+backward, 3 layers, 64 dims, whole graph (s): "
                  + ", ".join(f"{k} {v:.3f}" for k, v in prop.items())
                  + f". CPU default: `{t.get('cpu_default_backend')}`."]
    lines += ["", "## Quality and size", "",
              "| model | dim | params | nonzero | model.pt bytes | embeddings bytes | epochs | s/epoch | Recall@20 | NDCG@20 | NDCG@20 / teacher |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    base_ndcg = teacher.get("ndcg@20")
    for key in ("teacher", "student", *PRUNED, "popularity"):
        m = r.get(key)
        if not m:
            continue
        ratio = m["ndcg@20"] / base_ndcg if base_ndcg else None
        lines.append(f"| {key} | {m.get('embedding_dim', '—')} | {m.get('num_params', '—')} | "
                     f"{m.get('num_params_nonzero', '—')} | {m.get('bytes', {}).get('model_pt', '—')} | "
                     f"{m.get('bytes', {}).get('embeddings_npz', '—')} | {m.get('epochs_run', '—')} | "
                     f"{_fmt(m.get('seconds_per_epoch_median'), '.2f')} | {m['recall@20']:.4f} | {m['ndcg@20']:.4f} | "
                     f"{_fmt(ratio, '.3f')} |")
    lines.append(f"| paper (LightGCN, converged) | 64 | | | | | 1000 | | {ref['paper_recall@20']:.4f} | "
                 f"{ref['paper_ndcg@20']:.4f} | |")
    student = r.get("student")
    if student and "init" in student:
        lines += ["", f"Student: init `{student['init']}` (distill.init), lr {student['lr']}, kd_weight "
                  f"{student['kd_weight']}, stopped: {student['stopped']}."]
    if teacher:
        lines += ["", "Teacher training seconds to reach Recall@20 (evaluation time excluded): "
                  + ", ".join(f"{k}: {_fmt(v, '.0f')}" for k, v in teacher.get("time_to_recall", {}).items()),
                  f"Teacher stopped: {teacher.get('stopped')} after {teacher.get('epochs_run')} epochs."]
    for key in PRUNED:
        if not r.get(key, {}).get("steps"):
            continue
        lines += ["", f"## Pruning steps ({key.split('_')[1]})", "",
                  "| step | dim | params | nonzero | sparsity | model.pt bytes | packed sparse bytes | val NDCG@20 |",
                  "|---|---|---|---|---|---|---|---|"]
        for s in r[key]["steps"]:
            lines.append(f"| {s['step']} | {s['embedding_dim']} | {s['num_params']} | {s['num_params_nonzero']} | "
                         f"{s['sparsity']:.3f} | {s['bytes_model_pt']} | {s.get('bytes_packed_sparse') or '—'} | "
                         f"{_fmt(s.get('val_ndcg@20'))} |")
    if r.get("targets"):
        lines += ["", "## Targets", "", "| target | value | met |", "|---|---|---|"]
        for name, (value, met) in r["targets"].items():
            lines.append(f"| {name} | {_fmt(value, '.4f')} | {'yes' if met else 'no'} |")
    if r.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in r["notes"]]
    return "\n".join(lines) + "\n"


class OfficialStyleStep:
    """The official LightGCN-PyTorch training step, re-implemented here as the same-process baseline:
    a coalesced COO adjacency, one ``torch.sparse.mm`` per layer, the layer outputs stacked and
    averaged, full-table gathers for the batch, BPR + 0.5 * ||ego||^2 / batch, plain Adam.
    (Its per-epoch Python/C++ sampler is not included, so the ratio against it is conservative.)
    """

    def __init__(self, adjacency, num_users: int, num_items: int, dim: int = 64, layers: int = 3,
                 lr: float = 1e-3, decay: float = 1e-4):
        csr = adjacency.csr
        rows = torch.repeat_interleave(torch.arange(csr.shape[0]), torch.diff(csr.crow_indices().long()))
        self.graph = torch.sparse_coo_tensor(torch.stack([rows, csr.col_indices().long()]), csr.values(),
                                             csr.shape).coalesce()
        self.num_users, self.layers, self.decay = num_users, layers, decay
        self.user = torch.nn.Embedding(num_users, dim)
        self.item = torch.nn.Embedding(num_items, dim)
        torch.nn.init.normal_(self.user.weight, std=0.1)
        torch.nn.init.normal_(self.item.weight, std=0.1)
        self.optimizer = torch.optim.Adam([self.user.weight, self.item.weight], lr=lr)

    def final(self) -> tuple[torch.Tensor, torch.Tensor]:
        all_emb = torch.cat([self.user.weight, self.item.weight])
        embs = [all_emb]
        for _ in range(self.layers):
            all_emb = torch.sparse.mm(self.graph, all_emb)
            embs.append(all_emb)
        users, items = torch.split(torch.stack(embs, dim=1).mean(dim=1), [self.num_users, self.item.num_embeddings])
        return users, items

    def __call__(self, u: torch.Tensor, p: torch.Tensor, q: torch.Tensor) -> None:
        users, items = self.final()
        u_e, p_e, q_e = users[u], items[p], items[q]
        reg = 0.5 * (self.user(u).norm(2).pow(2) + self.item(p).norm(2).pow(2)
                     + self.item(q).norm(2).pow(2)) / float(len(u))
        loss = torch.mean(torch.nn.functional.softplus((u_e * q_e).sum(1) - (u_e * p_e).sum(1))) + self.decay * reg
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()


def epoch_time_probe(train, num_users: int, num_items: int, repeats: int, steps: int, seed: int = 0) -> dict:
    """Seconds per epoch of our training step and of the official-style step (``OfficialStyleStep``),
    measured in the same process, alternating, ``repeats`` runs of ``steps`` steps each: median step
    time x steps per epoch. Ours is components.model.train.train_step, the step fit_lightgcn runs.
    """
    from components.model.models.sampling import sample_epoch

    adjacency = build_adjacency(train.user, train.item, num_users, num_items)
    torch.manual_seed(seed)
    model = LightGCN(num_users, num_items, 64, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    official = OfficialStyleStep(adjacency, num_users, num_items)
    users, pos, neg = (torch.from_numpy(a) for a in sample_epoch(train.user, train.item, num_items, seed, 0))
    batch = 2048

    def ours(u, p, q):
        train_step(model, adjacency, "sparse", optimizer, u, p, q, l2=1e-4)

    steps_fns = [("ours", ours), ("official_style", official)]
    per_step: dict[str, list[float]] = {name: [] for name, _ in steps_fns}
    for rep in range(repeats + 1):  # the first run warms up allocators and is dropped
        # rotate the order each repeat: on a shared VM, drift must not favour whichever runs first
        for name, step_fn in steps_fns[rep % len(steps_fns):] + steps_fns[:rep % len(steps_fns)]:
            tic = time.perf_counter()
            for step in range(steps):
                start = ((rep * steps + step) * batch) % len(train)
                step_fn(users[start:start + batch], pos[start:start + batch], neg[start:start + batch])
            if rep:
                per_step[name].append((time.perf_counter() - tic) / steps)
    steps_per_epoch = -(-len(train) // batch)
    ours_s, official_s = (statistics.median(per_step[k]) * steps_per_epoch for k in ("ours", "official_style"))
    return {"step_seconds_runs": per_step["ours"], "official_style_step_seconds_runs": per_step["official_style"],
            "steps_per_epoch": steps_per_epoch, "seconds_per_epoch_estimate": ours_s,
            "official_style_seconds_per_epoch_estimate": official_s, "same_process_speedup": official_s / ours_s,
            "load_average": os.getloadavg()}


def measure_propagation(train, num_users: int, num_items: int, adjacency, repeats: int) -> dict:
    """Adjacency build time, and forward+backward of the whole-graph propagation per backend."""
    timings: dict = {}
    timings["adjacency_build_s"], timings["adjacency_build_runs"] = median_time(
        lambda: build_adjacency(train.user, train.item, num_users, num_items), repeats)
    probe = LightGCN(num_users, num_items, 64, 3).to(adjacency.csr.device)
    prop = {}
    for backend in ("sparse", "dgl"):
        def step(backend=backend):
            probe.zero_grad()
            users, items = probe(adjacency, backend)
            (users[:2048].sum() + items[:4096].sum()).backward()
        step()
        prop[backend], _ = median_time(step, repeats)
    timings["propagation_fwd_bwd_s"] = prop
    timings["cpu_default_backend"] = "sparse" if prop["sparse"] * 1.5 < prop["dgl"] else "dgl"
    log.info("adjacency %.2fs; propagation fwd+bwd sparse %.3fs dgl %.3fs", timings["adjacency_build_s"],
             prop["sparse"], prop["dgl"])
    return timings


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "gowalla"))
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--machine", default=f"{platform.machine()}-{os.cpu_count()}cpu")
    parser.add_argument("--epochs", type=int, default=1000, help="teacher epochs (paper: 1000)")
    parser.add_argument("--student-epochs", type=int, default=1000)
    parser.add_argument("--prune-finetune-epochs", type=int, default=3)
    parser.add_argument("--budget-minutes", type=float, default=25.0, help="wall-clock budget for the whole run")
    parser.add_argument("--teacher-share", type=float, default=0.6)
    parser.add_argument("--student-share", type=float, default=0.25)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--timing-repeats", type=int, default=3)
    parser.add_argument("--recall-levels", default="0.05,0.10,0.15,0.183")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--timing-only", action="store_true",
                        help="only re-measure epoch (step probe) and eval timings into the existing results file")
    parser.add_argument("--probe-steps", type=int, default=40)
    parser.add_argument("--teacher-from", default=None,
                        help="model directory of a teacher this benchmark trained before (cache/teacher): skip "
                             "teacher training, reuse its numbers from the machine's results file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for the student and pruning (distill.*, prune.*), repeatable")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.time()
    budget = args.budget_minutes * 60
    out_dir = Path(args.out)
    cache = Path(__file__).resolve().parent / "cache"
    ks = (10, 20, 50)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results: dict = {
        "machine": args.machine, "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "budget_minutes": args.budget_minutes,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "reference": REFERENCE, "notes": [],
        "load_average_at_start": os.getloadavg(),
    }

    tic = time.perf_counter()
    train, test, num_users, num_items = load_lightgcn_split(args.data)
    results["data"] = {"num_users": num_users, "num_items": num_items, "train_pairs": len(train),
                       "test_pairs": len(test), "load_seconds": time.perf_counter() - tic}
    log.info("loaded %s: %d users, %d items, %d train, %d test pairs", args.data, num_users, num_items, len(train), len(test))

    if args.timing_only:
        return timing_only(args, train, test, num_users, num_items, out_dir, ks)

    adjacency = build_adjacency(train.user, train.item, num_users, num_items).to(device)
    previous = json.loads((out_dir / f"{args.machine}.json").read_text()) if args.teacher_from else {}
    if args.teacher_from:  # timings and teacher come from the run that trained it
        results["timings"] = timings = previous.get("timings", {})
    else:
        results["timings"] = timings = measure_propagation(train, num_users, num_items, adjacency, args.timing_repeats)
    pop = evaluate_scorer(popularity_scorer(train, num_items), train, test, num_items, ks)
    results["popularity"] = {k: pop[k] for k in ("recall@20", "ndcg@20", "recall@50", "ndcg@50", "coverage@20")}
    write_results(results, out_dir)

    cfg = load_config(None, {"seed": args.seed, "teacher.kind": "lightgcn", "teacher.embedding_dim": 64, "teacher.num_layers": 3,
                             "teacher.batch_size": 2048, "teacher.lr": 1e-3, "teacher.l2": 1e-4,
                             "distill.epochs": args.student_epochs, "teacher.eval_every": args.eval_every,
                             "teacher.early_stop_patience": 1000, "prune.finetune_epochs": args.prune_finetune_epochs,
                             "prune.method": "structured",
                             **dict(kv.split("=", 1) for kv in args.set)})
    if args.teacher_from:
        teacher_model = load_model(args.teacher_from)[0]
        teacher, teacher_stopped = previous["teacher"], previous["teacher"]["stopped"]
        # provenance of the run that trained the teacher, through any chain of --teacher-from runs
        results["teacher_run"] = previous.get("teacher_run") or {
            k: previous[k] for k in ("command", "started", "wall_seconds") if k in previous}
        results["notes"].append(f"Teacher loaded from {args.teacher_from}, trained by the run of "
                                f"{results['teacher_run']['started']}: `{results['teacher_run']['command']}`.")
    else:
        teacher_budget = budget * args.teacher_share - (time.time() - started)
        torch.manual_seed(args.seed)
        teacher_fit = fit_lightgcn(
            LightGCN(num_users, num_items, 64, 3), train, test, epochs=args.epochs, lr=1e-3, l2=1e-4,
            batch_size=2048, seed=args.seed, eval_every=args.eval_every, patience=1000, device=device, ks=ks,
            max_seconds=teacher_budget, checkpoint_path=None, name="teacher")
        # the paper reports the last/best test numbers; our fit restores the best evaluated state
        teacher_model, teacher_stopped = teacher_fit.model, teacher_fit.stopped
        teacher = model_summary("teacher", teacher_model, adjacency.to("cpu"), train, test, ks, cache / "teacher",
                                teacher_fit.history, {"stopped": teacher_stopped,
                                                      "time_to_recall": time_to_recall(teacher_fit.history, [
                                                          float(x) for x in args.recall_levels.split(",")])})
    t_user, t_item = final_embeddings(teacher_model, adjacency.to("cpu"), "sparse")
    timings["eval_pass_s"], timings["eval_pass_runs"] = median_time(
        lambda: evaluate_scorer(embedding_scorer(t_user, t_item), train, test, num_items, ks), args.timing_repeats)
    results["teacher"] = teacher
    log.info("teacher: %d epochs, %.1fs/epoch, recall@20 %.4f ndcg@20 %.4f; eval pass %.2fs", teacher["epochs_run"],
             teacher["seconds_per_epoch_median"], teacher["recall@20"], teacher["ndcg@20"], timings["eval_pass_s"])
    write_results(results, out_dir)

    student_budget = budget * (args.teacher_share + args.student_share) - (time.time() - started)
    # this route's teacher is the trained LightGCN (the graph-filter route: graph_filter.py, students.py)
    lightgcn = lightgcn_teacher(lambda: teacher_model, t_user, t_item)
    targets = teacher_topk(lightgcn.scorer, train, num_users, num_items, cfg.distill.kd_topk)
    student_fit = train_student(train, test, num_users, num_items, lightgcn, cfg, max_seconds=student_budget,
                                targets=targets)
    student = model_summary("student", student_fit.model, adjacency.to("cpu"), train, test, ks, cache / "student",
                            student_fit.history, {"stopped": student_fit.stopped, "init": cfg.distill.init,
                                                  "lr": cfg.distill.lr, "kd_weight": cfg.distill.kd_weight})
    results["student"] = student
    write_results(results, out_dir)

    prune_budget = max(budget - (time.time() - started) - 60, 60) / (len(PRUNED) * max(cfg.prune.steps, 1))
    for key in PRUNED:
        method = key.split("_")[1]
        prune_cfg = cfg.model_copy(update={"prune": cfg.prune.model_copy(update={"method": method})})
        pruned_model, steps = prune_model(copy.deepcopy(student_fit.model), train, test, lightgcn, prune_cfg, 0.5,
                                          max_seconds=prune_budget, targets=targets)
        results[key] = model_summary(key, pruned_model, adjacency.to("cpu"), train, test, ks, cache / key, [],
                                     {"steps": steps, "method": method,
                                      "epochs_run": sum(s["finetune_epochs"] for s in steps)})
        write_results(results, out_dir)

    if teacher_stopped != "epochs":
        results["notes"].append(
            f"Teacher stopped by the wall-clock budget after {teacher['epochs_run']} epochs "
            f"({teacher['train_seconds_total']:.0f} s of training); the paper trains 1000 epochs, so quality "
            "targets are not expected to be met on this CPU budget.")
    results["notes"].append(
        "Training propagation is the torch.sparse CSR path (the CPU default): the layer sum is one polynomial "
        "sum_k alpha_k A^k evaluated by Horner's rule over 32-column blocks, and its backward is the same pass "
        "(A is symmetric); DGL message passing is the layer-by-layer path, equal within float tolerance "
        "(tests/unit/model/test_lightgcn.py).")
    results["notes"].append(
        "As in the official code, the test split is evaluated every --eval-every epochs and the best evaluated "
        "state is kept (the paper code has no separate validation split).")
    results["notes"].append(
        f"Shared 2-core machine: 1-minute load average {results['load_average_at_start'][0]:.2f} at start and "
        f"{os.getloadavg()[0]:.2f} at the end (other jobs ran beside the benchmark; per-epoch times are medians).")
    results["load_average_at_end"] = os.getloadavg()
    results["wall_seconds"] = time.time() - started
    write_results(results, out_dir)
    log.info("done in %.0fs; results in %s", results["wall_seconds"], out_dir)
    return results


def timing_only(args, train, test, num_users, num_items, out_dir: Path, ks) -> dict:
    """Re-measure the speed numbers (step probe, adjacency, eval pass) into the machine's results file."""
    path = out_dir / f"{args.machine}.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    probe = epoch_time_probe(train, num_users, num_items, args.timing_repeats, args.probe_steps, args.seed)
    adjacency = build_adjacency(train.user, train.item, num_users, num_items)
    build_s, build_runs = median_time(lambda: build_adjacency(train.user, train.item, num_users, num_items),
                                      args.timing_repeats)
    torch.manual_seed(args.seed)
    users, items = final_embeddings(LightGCN(num_users, num_items, 64, 3), adjacency, "sparse")
    eval_s, eval_runs = median_time(
        lambda: evaluate_scorer(embedding_scorer(users, items), train, test, num_items, ks), args.timing_repeats)
    results.setdefault("timings", {})["quiet_probe"] = {
        **probe, "adjacency_build_s": build_s, "eval_pass_s": eval_s, "eval_pass_runs": eval_runs,
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": " ".join([Path(sys.executable).name, *sys.argv])}
    log.info("probe: %.1f s/epoch (median of %d x %d steps), eval pass %.2f s, adjacency %.2f s, load %s",
             probe["seconds_per_epoch_estimate"], args.timing_repeats, args.probe_steps, eval_s, build_s,
             probe["load_average"])
    if "machine" in results:
        write_results(results, out_dir)
    else:
        write_json(path, results)
    return results


if __name__ == "__main__":
    main()
