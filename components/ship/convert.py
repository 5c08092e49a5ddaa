"""Convert stage: a TensorRT engine where TensorRT and CUDA exist, ONNX Runtime otherwise.

Runtime selection (``engine.runtime``):
  auto         TensorRT if the ``tensorrt`` package imports and CUDA is present, else ONNX Runtime
               (CUDAExecutionProvider if present, else CPUExecutionProvider)
  tensorrt     TensorRT or a clear error saying what is missing
  onnxruntime  ONNX Runtime

Whatever runs is what the engine gates measure (parity vs PyTorch's stored reference, latency
per batch size, size) and the result says which runtime that was and why. A conversion that
did not happen is recorded as ``tensorrt_status: "skipped: <reason>"``, never as built; a build
that failed under ``auto`` falls back to ONNX Runtime as ``"failed: <error>"`` (``tensorrt`` raises).
TensorRT is imported lazily: it is not installable on CPU machines.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from components.core.config import EngineConfig, PipelineConfig
from components.core.refs import ExportRef
from components.ship.export import (
    INPUT_NAME,
    KIND as EXPORT_KIND,
    ONNX_FILE,
    OUTPUT_NAMES,
    REFERENCE_FILE,
    onnxruntime_session,
    parity,
)
from components.core.catalog import (ArtifactRef, Layout, atomic_write_bytes, read_measured_json, staging_dir,
                                write_measured_json)

log = logging.getLogger(__name__)

KIND = "engines"
PLAN_FILE = "model.plan"
RESULT_FILE = "engine.json"
WARMUP_RUNS = 3


def tensorrt_available() -> tuple[bool, str]:
    """(usable, reason): TensorRT needs both the package and a CUDA device."""
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or a broken install raising OSError on its .so
        return False, f"TensorRT unavailable: {exc}"
    import torch

    if not torch.cuda.is_available():
        return False, f"TensorRT {trt.__version__} installed but CUDA is not available to torch"
    return True, f"TensorRT {trt.__version__} on {torch.cuda.get_device_name(0)}"


def _import_tensorrt():
    ok, reason = tensorrt_available()
    if not ok:
        raise RuntimeError(reason)
    import tensorrt as trt

    return trt


def _trt_logger(trt):
    return trt.Logger(trt.Logger.WARNING)


def build_tensorrt_engine(
    onnx_path: str | Path, out_path: str | Path, cfg: EngineConfig, batch_sizes: tuple[int, ...]
) -> dict[str, Any]:
    """Parse ONNX, build a serialized engine with a batch profile over ``batch_sizes``, write it.

    Returns build facts (TensorRT version, fp16 used, profile, bytes, seconds). Parser errors are
    raised with every message the parser reported.
    """
    trt = _import_tensorrt()
    logger = _trt_logger(trt)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    # TensorRT < 10 needs EXPLICIT_BATCH for ONNX; 10+ is always explicit-batch (flag deprecated).
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) if major < 10 else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mb << 20)
    fast_fp16 = bool(getattr(builder, "platform_has_fast_fp16", True))
    use_fp16 = cfg.fp16 and fast_fp16
    if use_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    sizes = sorted(set(int(b) for b in batch_sizes))
    profile_shape = ((sizes[0],), (sizes[len(sizes) // 2],), (sizes[-1],))
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, *profile_shape)
    config.add_optimization_profile(profile)

    started = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    atomic_write_bytes(Path(out_path), bytes(plan))
    seconds = time.perf_counter() - started
    facts = {
        "tensorrt_version": trt.__version__,
        "fp16": use_fp16,
        "fp16_requested": cfg.fp16,
        "platform_has_fast_fp16": fast_fp16,
        "profile": {"min": profile_shape[0][0], "opt": profile_shape[1][0], "max": profile_shape[2][0]},
        "workspace_mb": cfg.workspace_mb,
        "bytes": Path(out_path).stat().st_size,
        "build_seconds": round(seconds, 3),
    }
    log.info("tensorrt engine %s built in %.1fs: %s", out_path, seconds, facts)
    return facts


class Runner(Protocol):
    name: str

    def run(self, user_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class TensorRTRunner:
    """Runs a serialized engine with torch CUDA tensors as I/O buffers (no pycuda)."""

    name = "tensorrt"

    def __init__(self, plan_path: str | Path) -> None:
        import torch

        trt = _import_tensorrt()
        self._torch = torch
        self._runtime = trt.Runtime(_trt_logger(trt))
        self.engine = self._runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {plan_path} (built by another version?)")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        dtypes = {
            trt.float32: torch.float32, trt.float16: torch.float16,
            trt.int32: torch.int32, trt.int8: torch.int8, trt.bool: torch.bool,
        }
        if hasattr(trt, "int64"):
            dtypes[trt.int64] = torch.int64
        self._dtype = {n: dtypes[self.engine.get_tensor_dtype(n)] for n in names}
        self.description = f"TensorRT {trt.__version__} on {torch.cuda.get_device_name(0)}"

    def run(self, user_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        # TensorRT < 10 casts int64 inputs to int32: feed whatever the engine declares.
        users = torch.from_numpy(np.asarray(user_idx, np.int64)).to("cuda", self._dtype[INPUT_NAME])
        self.context.set_input_shape(INPUT_NAME, tuple(users.shape))
        self.context.set_tensor_address(INPUT_NAME, users.data_ptr())
        outputs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=self._dtype[name], device="cuda")
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        # Inputs were written on the current stream; order the engine after them.
        self.stream.wait_stream(torch.cuda.current_stream())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        self.stream.synchronize()
        items = outputs[OUTPUT_NAMES[0]].to(torch.int64).cpu().numpy()
        scores = outputs[OUTPUT_NAMES[1]].to(torch.float32).cpu().numpy()
        return items, scores


class OnnxRuntimeRunner:
    name = "onnxruntime"

    def __init__(self, onnx_path: str | Path, providers: list[str] | None = None, threads: int = 0) -> None:
        import onnxruntime as ort

        if providers is None:
            available = ort.get_available_providers()
            providers = ["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []
            providers.append("CPUExecutionProvider")
        self.session = onnxruntime_session(onnx_path, providers, threads)
        self.provider = self.session.get_providers()[0]
        self.description = f"ONNX Runtime {ort.__version__} ({self.provider})"

    def run(self, user_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        items, scores = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.asarray(user_idx, np.int64)})
        return items, scores


@dataclass(frozen=True)
class RuntimeChoice:
    runtime: str  # "tensorrt" | "onnxruntime"
    reason: str
    tensorrt_status: str  # "pending" until built; "skipped: <reason>" when not attempted


def choose_runtime(cfg: EngineConfig) -> RuntimeChoice:
    ok, reason = tensorrt_available()
    if cfg.runtime == "tensorrt":
        if not ok:
            raise RuntimeError(f"engine.runtime is 'tensorrt' but {reason}; set engine.runtime to auto or onnxruntime")
        return RuntimeChoice("tensorrt", f"engine.runtime=tensorrt: {reason}", "pending")
    if cfg.runtime == "onnxruntime":
        why = "engine.runtime=onnxruntime requested"
        return RuntimeChoice("onnxruntime", why, f"skipped: {why}")
    if ok:
        return RuntimeChoice("tensorrt", f"engine.runtime=auto: {reason}", "pending")
    return RuntimeChoice("onnxruntime", reason, f"skipped: {reason}")


def measure_latency(
    runner: Runner, num_users: int, batch_sizes: tuple[int, ...], repeats: int, seed: int
) -> dict[str, dict[str, float]]:
    """Per batch size: p50/p95/p99/mean milliseconds per batch call over ``repeats`` timed runs
    (after warm-up), each on a fresh seeded batch of user indices."""
    rng = np.random.default_rng(seed)
    latency: dict[str, dict[str, float]] = {}
    for batch in sorted(set(batch_sizes)):
        batches = rng.integers(0, num_users, size=(repeats + WARMUP_RUNS, batch), dtype=np.int64)
        for users in batches[:WARMUP_RUNS]:
            runner.run(users)
        times = np.empty(repeats)
        for r, users in enumerate(batches[WARMUP_RUNS:]):
            started = time.perf_counter()
            runner.run(users)
            times[r] = (time.perf_counter() - started) * 1e3
        latency[str(batch)] = {
            "p50_ms": float(np.percentile(times, 50)),
            "p95_ms": float(np.percentile(times, 95)),
            "p99_ms": float(np.percentile(times, 99)),
            "mean_ms": float(times.mean()),
            "users_per_s": float(batch / (times.mean() / 1e3)),
            "repeats": repeats,
        }
        log.info("latency %s batch=%d: p50 %.3f ms, p99 %.3f ms (%d repeats)",
                 runner.name, batch, latency[str(batch)]["p50_ms"], latency[str(batch)]["p99_ms"], repeats)
    return latency


@dataclass(frozen=True)
class EngineResult:
    """What serves the gates: runtime, why, artifact, parity vs PyTorch, latency per batch size."""

    day: str
    version: str
    path: str
    runtime: str  # "tensorrt" | "onnxruntime"
    runtime_reason: str
    runtime_description: str  # e.g. "ONNX Runtime 1.32.0 (CPUExecutionProvider)"
    tensorrt_status: str  # "built" | "skipped: <reason>" | "failed: <error>" (auto mode fell back to ORT)
    engine_path: str  # the TensorRT plan, or the ONNX model ONNX Runtime serves
    engine_bytes: int
    parity_users: int
    parity_max_abs_diff: float
    parity_topk_overlap: float
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # batch size -> stats
    export_version: str = ""
    build: dict[str, Any] = field(default_factory=dict)  # TensorRT build facts when built

    @property
    def largest_batch(self) -> int:
        return max(int(b) for b in self.latency_ms)

    @property
    def latency_p99_ms(self) -> float:
        """p99 at the largest measured batch size: what the latency gate checks."""
        return float(self.latency_ms[str(self.largest_batch)]["p99_ms"])


def load_engine_result(ref: ArtifactRef) -> EngineResult:
    """The EngineResult of a published engine version (engine.json + where things live)."""
    measured = dict(read_measured_json(Path(ref.path), RESULT_FILE))
    engine_file = measured.pop("engine_file")
    if engine_file:
        engine_path = Path(ref.path) / engine_file
    else:  # ONNX Runtime serves the export's model itself; resolved under this root so a
        # moved or re-mounted root still finds it (ref.path = <root>/engines/<day>/<version>).
        export = ref.manifest["inputs"]["export"]
        engine_path = Path(ref.path).parents[2] / EXPORT_KIND / export["day"] / export["version"] / ONNX_FILE
    return EngineResult(day=ref.day, version=ref.version, path=ref.path, engine_path=str(engine_path), **measured)


def build_engine(choice: RuntimeChoice, onnx_path: Path, out: Path, cfg: PipelineConfig, day: str
                 ) -> tuple[RuntimeChoice, str, Runner, int, dict[str, Any]]:
    """(runtime choice, tensorrt_status, runner, engine bytes, build record): the TensorRT plan built into
    ``out`` when chosen (auto mode falls back to ONNX Runtime on a failed build), else ONNX Runtime."""
    build: dict[str, Any] = {}
    tensorrt_status = choice.tensorrt_status
    if choice.runtime == "tensorrt":
        try:
            build = build_tensorrt_engine(onnx_path, out / PLAN_FILE, cfg.engine, cfg.export.batch_sizes)
        except Exception as exc:
            if cfg.engine.runtime == "tensorrt":
                raise
            # auto: serve (and gate) on ONNX Runtime tonight, and say loudly that the build failed.
            log.error("convert %s: TensorRT build failed, falling back to ONNX Runtime: %s", day, exc)
            choice = RuntimeChoice("onnxruntime", f"TensorRT build failed: {exc}", f"failed: {exc}")
            tensorrt_status = choice.tensorrt_status
        else:
            tensorrt_status = "built"
    if tensorrt_status == "built":
        return choice, tensorrt_status, TensorRTRunner(out / PLAN_FILE), build["bytes"], build
    return choice, tensorrt_status, OnnxRuntimeRunner(onnx_path), onnx_path.stat().st_size, build


def runner_parity(runner: Runner, users: np.ndarray, ref_items: np.ndarray, ref_scores: np.ndarray,
                  step: int) -> tuple[float, float]:
    """(max |score diff|, top-K overlap) of the runner against the export's reference outputs, run in
    batches no larger than the profile allows (TensorRT rejects bigger shapes)."""
    outs = [runner.run(users[s : s + step]) for s in range(0, users.shape[0], step)]
    items = np.concatenate([o[0] for o in outs])
    scores = np.concatenate([o[1] for o in outs])
    return parity(ref_items, ref_scores, items, scores)


def run_convert(layout: Layout, day: str, cfg: PipelineConfig, *, export: ExportRef) -> EngineResult:
    """Build the serving engine for ``export`` and measure what the engine gates need.

    Idempotent: if the day's current engine was measured for the same export and config, that
    result is returned unchanged (latencies are measurements, re-taking them would fork versions).
    """
    export_ref = layout.artifact(export)
    config_hash = cfg.config_hash("engine")
    existing = layout.built_from(KIND, day, {"export": export_ref.as_lineage()}, config_hash)
    if existing is not None:
        result = load_engine_result(existing)
        log.info("convert %s: engine %s already measured for export %s; reusing (%s)",
                 day, existing.version, export_ref.version, result.runtime)
        return result

    choice = choose_runtime(cfg.engine)
    onnx_path = Path(export_ref.path) / ONNX_FILE
    export_manifest = export_ref.manifest
    num_users = int(export_manifest["num_users"])
    with np.load(Path(export_ref.path) / REFERENCE_FILE) as reference:
        users, ref_items, ref_scores = reference["user_idx"], reference["top_items"], reference["top_scores"]

    with staging_dir(layout.artifacts(KIND)) as tmp:
        choice, tensorrt_status, runner, engine_bytes, build = build_engine(choice, onnx_path, tmp, cfg, day)
        log.info("convert %s: %s; gates measured on %s; tensorrt_status=%s",
                 day, choice.reason, runner.description, tensorrt_status)
        max_abs_diff, overlap = runner_parity(runner, users, ref_items, ref_scores, max(cfg.export.batch_sizes))
        latency = measure_latency(runner, num_users, cfg.export.batch_sizes, cfg.export.latency_repeats, cfg.seed)

        measured = {
            "runtime": choice.runtime,
            "runtime_reason": choice.reason,
            "runtime_description": runner.description,
            "tensorrt_status": tensorrt_status,
            # Relative to the engine version dir, or the export's ONNX file ORT serves.
            "engine_file": PLAN_FILE if choice.runtime == "tensorrt" else None,
            "engine_bytes": int(engine_bytes),
            "parity_users": int(users.shape[0]),
            "parity_max_abs_diff": max_abs_diff,
            "parity_topk_overlap": overlap,
            "latency_ms": latency,
            "export_version": export_ref.version,
            "build": build,
        }
        write_measured_json(tmp, RESULT_FILE, measured)
        ref = layout.publish(KIND, day, tmp, manifest={
            "inputs": {"export": export_ref.as_lineage()}, "config_hash": config_hash, "runtime": choice.runtime,
            "tensorrt_status": tensorrt_status,
            "metrics": {"engine_bytes": int(engine_bytes), "parity_max_abs_diff": max_abs_diff,
                        "parity_topk_overlap": overlap, "latency_ms": latency},
        })
    result = load_engine_result(ref)
    log.info(
        "convert %s: %s engine %s (%d bytes) parity max_abs_diff=%.2e topk_overlap=%.4f, "
        "p99 %.3f ms at batch %d",
        day, result.runtime, result.version, result.engine_bytes, max_abs_diff, overlap,
        result.latency_p99_ms, result.largest_batch,
    )
    return result
