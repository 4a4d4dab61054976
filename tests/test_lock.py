"""requirements.lock, the exact versions `make install` puts in .venv, against the files it locks
(pyproject.toml, environment.yml) and against the environment the tests run in."""
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge's name -> PyPI's
FIX_LOCK = "run `make lock` to bring requirements.lock up to date"


def read_lock(path: Path = LOCK) -> list[Requirement]:
    """The lock's pins, `name==version ; marker`; comments and `# via` lines skipped."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line and not line.startswith("#")]


def version_of(pin: Requirement) -> str:
    (exact,) = pin.specifier  # uv writes one `==` per pin
    assert exact.operator == "==", f"{pin} is not an exact pin"
    return exact.version


def locked_versions() -> dict[str, set[str]]:
    """Every version the lock names for a package, on any platform or Python."""
    versions: dict[str, set[str]] = {}
    for pin in read_lock():
        versions.setdefault(canonicalize_name(pin.name), set()).add(version_of(pin))
    return versions


def pins_that_apply_here() -> dict[str, str]:
    """The lock as pip reads it on this machine: the pins whose marker holds here."""
    return {canonicalize_name(pin.name): version_of(pin) for pin in read_lock()
            if pin.marker is None or pin.marker.evaluate()}


def disagreements(requirements: list[str], versions: dict[str, set[str]]) -> list[str]:
    """Each requirement the lock leaves out, or locks at a version the requirement refuses."""
    problems = []
    for requirement in map(Requirement, requirements):
        name = canonicalize_name(requirement.name)
        if name not in versions:
            problems.append(f"{requirement} is not locked")
        for version in sorted(versions.get(name, ())):
            if not requirement.specifier.contains(version, prereleases=True):
                problems.append(f"{requirement} is locked at {version}")
    return problems


def test_the_lock_pins_every_package_exactly():
    pins = read_lock()
    assert len(pins) > 100  # torch, Jupyter and the test tools with all they need
    assert all(version_of(pin) for pin in pins)


def test_every_dependency_of_pyproject_is_locked_at_a_version_it_allows():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [spec for extra in project["optional-dependencies"].values() for spec in extra]
    problems = disagreements(wanted, locked_versions())
    assert not problems, f"{'; '.join(problems)}: {FIX_LOCK}"


def test_the_locked_versions_satisfy_environment_yml():
    wanted = []
    for entry in yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]:
        if isinstance(entry, dict):  # the pip: section; `-e .[dev]` is the project itself
            wanted += [spec for spec in entry["pip"] if not spec.startswith("-e")]
        else:
            requirement = Requirement(entry)
            if requirement.name not in ("python", "pip"):  # the interpreter and pip are not locked
                requirement.name = CONDA_NAMES.get(requirement.name, requirement.name)
                wanted.append(str(requirement))
    assert len(wanted) > 10
    problems = disagreements(wanted, locked_versions())
    assert not problems, f"{'; '.join(problems)}: {FIX_LOCK}"


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def needed_by_the_project(extras: set[str]) -> set[str]:
    """Every package `pip install -e '.[extras]'` installs here: the project's requirements, followed
    through each installed package's own metadata (markers and extras evaluated on this machine)."""
    needed, seen, todo = set(), set(), [("nbhelpers", frozenset(extras))]
    while todo:
        name, wanted_extras = todo.pop()
        if (name, wanted_extras) in seen or installed_version(name) is None:
            continue  # a package that is missing is reported by the caller
        seen.add((name, wanted_extras))
        for requirement in map(Requirement, metadata.requires(name) or []):
            marker = requirement.marker
            if marker is None or any(marker.evaluate({"extra": e}) for e in wanted_extras | {""}):
                dependency = canonicalize_name(requirement.name)
                needed.add(dependency)
                todo.append((dependency, frozenset(requirement.extras)))
    return needed


def test_this_environment_holds_the_locked_versions():
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        pytest.skip(f"checks this checkout's .venv only (`make install`, then .venv/bin/python -m pytest), "
                    f"not {sys.prefix}")
    pins = pins_that_apply_here()
    # make install's extras; `lab` and `browser` come with `make lab` and `make browser-test`.
    extras = {"dev", "site"} | {extra for extra, package in (("lab", "jupyterlab"), ("browser", "playwright"))
                                if installed_version(package)}
    needed = needed_by_the_project(extras)
    assert {"torch", "numpy", "papermill", "pytest", "latex2mathml"} <= needed
    unlocked = sorted(needed - set(pins))
    assert not unlocked, f"{', '.join(unlocked)}: installed, but not locked for this machine: {FIX_LOCK}"
    wrong = [f"{name} locked at {version}, installed {installed_version(name) or 'not at all'}"
             for name, version in sorted(pins.items())
             if (name in needed or installed_version(name)) and installed_version(name) != version]
    assert not wrong, f"{'; '.join(wrong)}: run `make install` to install the locked versions"
