"""Real storage faults for tests: a small tmpfs (disk full, read-only) and an unprivileged user
(permission denied). Where the machine does not allow one (no mount rights, as in many CI
containers; no setpriv), the test is skipped with the failing command's own error, never passed."""

from __future__ import annotations

import atexit
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
    Skips the test, quoting the error, where nobody cannot run a Python that imports the code."""
    prefix = () if os.geteuid() else ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")
    python, env, refused = _unprivileged_python(prefix)
    if refused:
        pytest.skip(refused)
    env = {**env, "HOME": str(folder), "OMP_NUM_THREADS": "1"}
    return _run([*prefix, *python, *args], env=env, cwd=folder, timeout=300, **kwargs)


@functools.cache
def _unprivileged_python(prefix: tuple[str, ...]) -> tuple[tuple[str, ...], dict[str, str], str | None]:
    """(python argv, environment, why not) for the user ``prefix`` runs as: this Python if that user can
    run it and import the code, else a readable copy of its interpreter and standard library (pyenv and
    uv keep them under a 0700 home) that adds this venv's site-packages."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    refused = _refused(prefix, (sys.executable,), env)
    if not refused or not prefix:
        return (sys.executable,), env, refused
    copy = _readable_interpreter()
    site_packages = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    env = {**os.environ, "PYTHONHOME": str(copy), "LD_LIBRARY_PATH": str(copy / "lib"),
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(copy / "sitecustomize")])}
    (copy / "sitecustomize").mkdir(exist_ok=True)
    # .pth files of the venv must run as in the venv, hence addsitedir rather than PYTHONPATH
    (copy / "sitecustomize" / "sitecustomize.py").write_text(
        "import site\n" + "".join(f"site.addsitedir({p!r})\n" for p in site_packages))
    python = (str(copy / "bin" / Path(sys.executable).name),)
    again = _refused(prefix, python, env)
    return python, env, again and f"{refused}; a readable copy of the interpreter: {again}"


def _refused(prefix: tuple[str, ...], python: tuple[str, ...], env: dict[str, str]) -> str | None:
    cmd = [*prefix, *python, "-c", "import components, numpy, pandas, torch"]
    probe = _run(cmd, env=env, cwd="/", timeout=120)
    if probe.returncode == 0:
        return None
    return (f"needs an unprivileged user who can run Python and import {REPO_ROOT}: "
            f"`{' '.join(cmd)}` failed: {probe.stderr.strip()[-300:] or probe.returncode}")


_LEFT_OUT = ("site-packages", "test", "idlelib", "tkinter", "ensurepip", "lib2to3", "config-*")


def _readable_interpreter() -> Path:
    """The base interpreter (binary, libpython, standard library without its tests) copied into a
    world-readable temporary folder, removed when the test process exits."""
    base = Path(sys.base_prefix)
    stdlib = f"python{sys.version_info.major}.{sys.version_info.minor}"
    copy = Path(tempfile.mkdtemp(prefix="graphdistill-python-"))
    copy.chmod(0o755)
    atexit.register(shutil.rmtree, copy, True)
    (copy / "bin").mkdir()
    binary = Path(sys.executable).resolve()
    shutil.copy2(binary, copy / "bin" / Path(sys.executable).name)
    shutil.copytree(base / "lib" / stdlib, copy / "lib" / stdlib, ignore=shutil.ignore_patterns(*_LEFT_OUT),
                    symlinks=True)
    for library in (base / "lib").glob("libpython*.so*"):
        shutil.copy2(library, copy / "lib", follow_symlinks=False)
    for path in [copy, *copy.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else path.stat().st_mode | 0o444)
    return copy
