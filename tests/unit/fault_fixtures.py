"""Real storage faults for tests: a small tmpfs (disk full, read-only) and an unprivileged user
(permission denied). Where the machine does not allow one (no mount rights, as in many CI
containers; no setpriv), the test is skipped with the failing command's own error, never passed."""

from __future__ import annotations

import errno
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from components.core.config import REPO_ROOT

NOBODY = 65534  # uid and gid of "nobody"
PAGE = 4096  # tmpfs charges whole pages per file


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    except OSError as exc:  # no mount/setpriv binary, or one this user may not run
        return subprocess.CompletedProcess(cmd, 127, "", str(exc))


def _must(cmd: list[str]) -> None:
    done = _run(cmd)
    if done.returncode:
        raise RuntimeError(f"`{' '.join(cmd)}` failed: {done.stderr.strip()}")


@contextmanager
def tmpfs(mount_point: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes at ``mount_point``, unmounted on exit (also when the test fails)."""
    mount_point.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)]
    done = _run(cmd)
    if done.returncode:
        pytest.skip(f"needs a tmpfs mount: `{' '.join(cmd)}` failed: {done.stderr.strip() or done.returncode}")
    try:
        yield mount_point
    finally:
        if _run(["umount", str(mount_point)]).returncode:  # a child still holding a file: detach it
            _must(["umount", "--lazy", str(mount_point)])


def remount(mount_point: Path, options: str) -> None:
    """``mount -o remount,<options>``: e.g. ``size=65536`` (full or room again), ``ro``, ``rw``."""
    _must(["mount", "-o", f"remount,{options}", str(mount_point)])


def fill(mount_point: Path) -> Path:
    """Write a file until the filesystem refuses (ENOSPC): no room left, whatever the kernel's
    per-CPU slack in its page count. Delete the returned file to make room again."""
    filler = mount_point / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        while True:
            os.write(fd, b"x" * PAGE)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    return filler


def used_bytes(mount_point: Path) -> int:
    stat = os.statvfs(mount_point)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


def footprint(folder: Path) -> int:
    """What ``folder``'s files take on a tmpfs (whole pages), measured on any disk."""
    return sum(-(-p.stat().st_size // PAGE) * PAGE for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder an unprivileged user can reach: pytest's base folder is root-only (and reset to
    0700 by every pytest session started meanwhile), so tmp_path cannot serve here."""
    folder = Path(tempfile.mkdtemp(prefix="graphdistill-perm-"))
    folder.chmod(0o777)
    yield folder
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o777)
    shutil.rmtree(folder)


def as_unprivileged(args: list[str], folder: Path, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python <args>`` as user nobody when we are root (root reads and writes through
    permission bits), else as ourselves, with this repository importable and HOME in ``folder``.
    Skips the test, quoting the error, where nobody cannot run this Python and import the code
    (e.g. a clone or a venv under a 0700 home)."""
    prefix = [] if os.geteuid() else ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HOME": str(folder), "OMP_NUM_THREADS": "1"}
    refused = _unprivileged_python_refused(tuple(prefix))
    if refused:
        pytest.skip(refused)
    return _run([*prefix, sys.executable, *args], env=env, cwd=folder, timeout=300, **kwargs)


@functools.cache
def _unprivileged_python_refused(prefix: tuple[str, ...]) -> str | None:
    """Why the user ``prefix`` runs as cannot run this Python and import the code; None if it can."""
    cmd = [*prefix, sys.executable, "-c", "import components"]
    probe = _run(cmd, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, cwd="/", timeout=120)
    if probe.returncode == 0:
        return None
    return (f"needs an unprivileged user who can run {sys.executable} and import {REPO_ROOT}: "
            f"`{' '.join(cmd)}` failed: {probe.stderr.strip()[-300:] or probe.returncode}")
