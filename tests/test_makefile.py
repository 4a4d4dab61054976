"""The Makefile never surprises: `make` alone only lists the targets, `make clean` removes only
what git does not track. Both run in a clone of this repository (its Makefile as checked out
here), so nothing of this checkout is touched."""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]


# Run as a user would, not as a sub-make of `make test`: an inherited MAKELEVEL makes make print
# "Entering directory" lines, and MAKEFLAGS would pass on the outer make's options.
_USER_ENV = {name: value for name, value in os.environ.items()
             if name not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES")}


def _run(*command: str, cwd: Path) -> str:
    return subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True, timeout=60,
                          env=_USER_ENV).stdout


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A clone of this repository's HEAD, its Makefile replaced by this checkout's (committed)."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None or shutil.which("make") is None:
        pytest.skip("needs git, make and a git checkout of the project")
    target = tmp_path_factory.mktemp("clone") / "project"
    _run("git", "clone", "--quiet", str(ROOT), str(target), cwd=ROOT)
    shutil.copyfile(ROOT / "Makefile", target / "Makefile")
    if _run("git", "status", "--porcelain", cwd=target):
        _run(*GIT, "commit", "--quiet", "-am", "this checkout's Makefile", cwd=target)
    return target


def test_make_alone_lists_every_target_and_runs_nothing(clone):
    # First as a dry run: a default goal that trains would be listed here, not started.
    would_run = _run("make", "--dry-run", cwd=clone)
    assert all(line.split()[0] in ("echo", "sed", "awk") for line in would_run.splitlines()), would_run
    listed = _run("make", cwd=clone)
    phony = set()
    for line in (clone / "Makefile").read_text().splitlines():
        if line.startswith(".PHONY:"):
            phony |= set(line.split(":", 1)[1].split())
    shown = set(re.findall(r"^  (\S+) +\S", listed, re.M))
    assert shown == phony - {"help"}, listed
    assert not (clone / ".venv").exists() and not _run("git", "status", "--porcelain", "--ignored", cwd=clone)


def test_make_clean_removes_build_outputs_and_keeps_tracked_files_runs_and_data(clone):
    tracked = _run("git", "ls-files", cwd=clone).splitlines()
    assert any(name.startswith("figures/demo/") for name in tracked)  # what an earlier clean deleted
    for made in (".venv/bin/python", "build/site/index.html", "nbhelpers/__pycache__/x.pyc",
                 "runs/demo/run/config.json", "data/cifar-10-batches-py/batches.meta"):
        (clone / made).parent.mkdir(parents=True, exist_ok=True)
        (clone / made).write_text("made by the test")
    _run("make", "clean", cwd=clone)
    assert not _run("git", "status", "--porcelain", cwd=clone)  # nothing tracked deleted or changed
    assert all((clone / name).exists() for name in tracked)
    assert not any((clone / gone).exists() for gone in (".venv", "build", "nbhelpers/__pycache__"))
    # A user's training runs and downloaded data are not build outputs.
    assert (clone / "runs/demo/run/config.json").exists()
    assert (clone / "data/cifar-10-batches-py/batches.meta").exists()
