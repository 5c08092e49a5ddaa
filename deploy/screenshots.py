"""Screenshots of the Airflow UI as ops see it, taken with Chromium (Debian's ``chromium`` package).

    PYTHONPATH=. .venv/bin/python deploy/screenshots.py [--root .graphdistill/screens] [--out doc/screenshots]

1. Runs five real nights with ``airflow dags test`` while a loopback api-server is up (so the outcome
   task writes each run's note through the REST API): d0 history only (skipped), d1 bootstrap
   (promoted), d2 normal, d3 corrupted (quarantined), d4 shuffled-label candidate (rejected).
   ``--reuse`` keeps an existing root and its runs.
2. Restarts the api-server with every visitor an admin (local only, so headless Chromium needs no
   login form), optionally with scheduler, dag-processor and triggerer (``--with-scheduler``: the
   champion-refresh DAG then runs on the champion Asset event), and screenshots the grid, the
   rejected run, its GraphDistill outcome tab, the run report, the Models page and the Assets page.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from components.cli import DEMO_ITEMS, DEMO_OVERRIDES, DEMO_USERS, _overrides, airflow_bin, run_dag_day  # noqa: E402
from components.data.sources.synthetic import SyntheticWorld, corrupt_landing, write_landing_day  # noqa: E402
from components.core.catalog import Layout, parse_day  # noqa: E402
from graphdistill_airflow.local import airflow_process, api_server, server_env  # noqa: E402

DAYS = ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04", "2026-01-05"]
# The demo's world and settings: ~1,000 evaluated users a night, so the shipped gates decide.
NIGHT = _overrides(DEMO_OVERRIDES)
DAG = "gnn_recsys_nightly"


def run_nights(root: Path, port: int) -> None:
    layout = Layout.at(root)
    world = SyntheticWorld(num_users=DEMO_USERS, num_items=DEMO_ITEMS, start=parse_day(DAYS[0]), seed=3)
    universe = world.universe()
    for day in DAYS:
        write_landing_day(world, layout.landing(day), parse_day(day), "parquet", universe)
    corrupt_landing(layout.landing(DAYS[3]), "missing_column")
    with api_server(root, port, root / "api-server-runs.log") as server:
        # The DAGs in the metadata DB first: champion_serving_refresh (unpaused at creation) then
        # gets a queued Asset-triggered run for each promotion, which a scheduler picks up.
        subprocess.run([airflow_bin(), "dags", "reserialize"], env=server_env(root, port, "ops"),
                       check=True, capture_output=True)
        for day in DAYS:
            overrides = {**NIGHT, "distill.shuffle_labels": True} if day == DAYS[4] else NIGHT
            started = time.monotonic()
            rc = run_dag_day(root, day, {"root": str(root), "overrides": overrides}, root / f"{day}.log",
                             extra_env=server.task_env())
            print(f"{day}: rc={rc} in {time.monotonic() - started:.0f} s (log {root / f'{day}.log'})", flush=True)


class Api:
    """The public REST API as the all-admins UI user (a token without credentials)."""

    def __init__(self, base: str) -> None:
        self.base = base
        for _ in range(180):
            try:
                urllib.request.urlopen(f"{base}/api/v2/monitor/health", timeout=5)
                break
            except OSError:
                time.sleep(1)
        self.token = json.loads(urllib.request.urlopen(f"{base}/auth/token", timeout=30).read())["access_token"]

    def get(self, path: str) -> dict:
        request = urllib.request.Request(f"{self.base}{path}", headers={"Authorization": f"Bearer {self.token}"})
        return json.loads(urllib.request.urlopen(request, timeout=60).read())

    def wait_for_run(self, dag_id: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = self.get(f"/api/v2/dags/{dag_id}/dagRuns?order_by=-id&limit=1")["dag_runs"]
            if runs and runs[0]["state"] in ("success", "failed"):
                return runs[0]
            time.sleep(5)
        raise TimeoutError(f"no finished run of {dag_id} after {timeout:.0f} s")


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    raise SystemExit("Chromium not found: apt-get install -y chromium")


def shoot(browser: str, base: str, path: str, out: Path, size: str = "1500,950", wait_ms: int = 12000) -> None:
    """One headless Chromium screenshot of ``path``, logged in through the all-admins token redirect."""
    url = f"{base}/auth/token/login?next={urllib.parse.quote(base + path, safe='')}"
    subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={size}", f"--virtual-time-budget={wait_ms}", f"--screenshot={out}", url],
                   check=True, capture_output=True, timeout=120)
    shrink(out)
    print(f"{out} <- {path}", flush=True)


def shrink(png: Path) -> None:
    """256-colour palette PNG: UI screenshots lose nothing visible and the repo stays small."""
    from PIL import Image

    Image.open(png).convert("RGB").quantize(256).save(png, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(REPO / ".graphdistill" / "screens"))
    parser.add_argument("--out", default=str(REPO / "doc" / "screenshots"))
    parser.add_argument("--port", type=int, default=28720)
    parser.add_argument("--reuse", action="store_true", help="keep the root and its runs")
    parser.add_argument("--with-scheduler", action="store_true",
                        help="then run scheduler, dag-processor, triggerer until the Asset-triggered refresh ran")
    args = parser.parse_args(argv)
    root, out = Path(args.root).resolve(), Path(args.out)
    browser = chromium()
    if not args.reuse:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        run_nights(root, args.port)
    out.mkdir(parents=True, exist_ok=True)
    env = {**server_env(root, args.port, "ops"), "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True"}
    base = f"http://127.0.0.1:{args.port}"
    with ExitStack() as stack:
        stack.enter_context(airflow_process(["api-server", "--host", "127.0.0.1", "--port", str(args.port),
                                             "--workers", "1"], env, root / "api-server-ui.log"))
        api = Api(base)
        runs = {r["conf"]["day"]: r["dag_run_id"] for r in api.get(f"/api/v2/dags/{DAG}/dagRuns?order_by=id")["dag_runs"]
                if r["conf"].get("day")}
        champion_asset = api.get("/api/v2/assets?name_pattern=graphdistill_champion")["assets"][0]["id"]
        rejected = urllib.parse.quote(runs[DAYS[4]], safe="")
        shoot(browser, base, "/dags", out / "dags_list.png", size="1500,700")
        shoot(browser, base, f"/dags/{DAG}", out / "grid.png")
        shoot(browser, base, f"/dags/{DAG}/runs/{rejected}", out / "rejected_run.png")
        shoot(browser, base, f"/dags/{DAG}/runs/{rejected}/plugin/graphdistill_outcome", out / "rejected_outcome_tab.png")
        shoot(browser, base, f"/graphdistill/runs/{DAG}/{rejected}/report.html", out / "rejected_report.png",
              size="1300,1600")
        shoot(browser, base, "/plugin/graphdistill_models", out / "models.png", size="1500,1200")
        shoot(browser, base, "/assets", out / "assets.png", size="1500,600")
        shoot(browser, base, f"/assets/{champion_asset}", out / "champion_asset.png", size="1500,950", wait_ms=25000)
        if args.with_scheduler:
            with ExitStack() as scheduler:
                for component in ("scheduler", "dag-processor", "triggerer"):
                    scheduler.enter_context(airflow_process([component], env, root / f"{component}.log"))
                refresh = api.wait_for_run("champion_serving_refresh", timeout=600)
                print(f"champion_serving_refresh run {refresh['dag_run_id']}: {refresh['state']}", flush=True)
            # Shot once the scheduler is gone: a page that keeps polling running work never settles.
            shoot(browser, base, "/dags/champion_serving_refresh", out / "champion_serving_refresh.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
