"""The project's promises about itself: environment files agree, notebooks are clean and parameterized."""
import ast
import importlib.metadata
import importlib.util
import json
import re
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from papermill.translators import PythonTranslator

from nbhelpers.config import TrainConfig
from nbhelpers.series import ALL_NOTEBOOKS, NOTEBOOKS_DIR

ROOT = Path(__file__).resolve().parent.parent
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge's name -> PyPI's


def _requirement(spec: str) -> tuple[str, str]:
    name, _, version = re.match(r"([A-Za-z0-9_.\-]+)(\[.*\])?\s*(.*)", spec).groups()
    return name.lower(), version.replace(" ", "")


def test_environment_yml_describes_the_same_packages_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = dict(_requirement(s) for s in project["dependencies"] + extras["dev"] + extras["site"] + extras["lab"])
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda, pip = {}, []
    for entry in environment["dependencies"]:
        if isinstance(entry, dict):
            pip = entry["pip"]
        else:
            name, version = _requirement(entry)
            conda[CONDA_NAMES.get(name, name)] = version
    assert conda.pop("python") == ">=3.11" and project["requires-python"] == ">=3.11"
    conda.pop("pip")
    listed = dict(conda, **dict(_requirement(s) for s in pip if not s.startswith("-e")))
    assert listed == wanted
    assert "-e .[dev,site,lab]" in pip


def test_pyproject_citation_and_changelog_name_the_same_version():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert yaml.safe_load((ROOT / "CITATION.cff").read_text())["version"] == version
    newest = re.search(r"^## \[(.+?)\]", (ROOT / "CHANGELOG.md").read_text(), re.M).group(1)
    assert newest == version, "CHANGELOG.md's newest release is not pyproject.toml's version"


def _imported_packages(path: Path) -> set[str]:
    """The top-level names of every absolute import in a module, inside functions too."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_every_package_nbhelpers_imports_is_declared():
    """What the package imports at run time is in pyproject's dependencies; the site's, in its extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {canonicalize_name(Requirement(spec).name) for spec in project["dependencies"]}
    site_extra = {canonicalize_name(Requirement(spec).name) for spec in project["optional-dependencies"]["site"]}
    distributions = importlib.metadata.packages_distributions()
    missing = []
    for path in sorted((ROOT / "nbhelpers").rglob("*.py")):
        allowed = declared | (site_extra if path.stem == "site" else set())
        for name in _imported_packages(path) - set(sys.stdlib_module_names) - {"nbhelpers"}:
            provided_by = {canonicalize_name(d) for d in distributions.get(name, [name])}
            if not provided_by & allowed:
                missing.append(f"{path.relative_to(ROOT)} imports {name} ({', '.join(sorted(provided_by))})")
    assert not missing, "not declared in pyproject.toml: " + "; ".join(missing)


def _notebook(name):
    return nbformat.read(NOTEBOOKS_DIR / f"{name}.ipynb", as_version=4)


@pytest.mark.parametrize("name", ALL_NOTEBOOKS)
def test_notebooks_are_committed_without_outputs_but_for_checked_cells(name):
    for cell in _notebook(name).cells:
        if cell.cell_type != "code":
            continue
        if "NBVAL_CHECK_OUTPUT" in cell.source:
            assert cell.outputs and cell.execution_count, "a checked cell needs its expected output committed"
        else:
            assert not cell.outputs and cell.execution_count is None


@pytest.mark.parametrize("name", ALL_NOTEBOOKS)
def test_notebooks_start_with_parameters_then_setup(name):
    notebook = _notebook(name)
    assert notebook.metadata.kernelspec.name == "python3"
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code[0].metadata.get("tags") == ["parameters"]
    assert "device = setup(seed=" in code[1].source  # seeds, picks the device, names the data
    # papermill reads every parameter line (a second "=" on a line hides it)
    names = [p.name for p in PythonTranslator.inspect(code[0])]
    assert len(names) == len([l for l in code[0].source.splitlines() if l.strip()])


def test_the_training_notebook_holds_every_parameter_with_the_config_defaults():
    """Every TrainConfig field, at its default; the five a size sets are None ("the size's")."""
    from nbhelpers.sizes import SIZED
    cell = next(c for c in _notebook("03_train").cells if c.cell_type == "code")
    values = {p.name: ast.literal_eval(p.default) for p in PythonTranslator.inspect(cell)}
    defaults = dict(TrainConfig().to_dict(), size="auto", **dict.fromkeys(SIZED))
    assert {k: values[k] for k in defaults} == defaults
    assert set(values) - set(defaults) == {"figures_dir"}
    assert all(p.help for p in PythonTranslator.inspect(cell)), "each parameter has a comment"


def test_readme_gives_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "papermill notebooks/03_train.ipynb out.ipynb -p num_epochs 60" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def _notebook_metadata_module():
    """tests/browser/notebook_metadata.py, the script that writes the canonical metadata."""
    path = ROOT / "tests" / "browser" / "notebook_metadata.py"
    spec = importlib.util.spec_from_file_location("notebook_metadata", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", sorted(NOTEBOOKS_DIR.glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebooks_hold_the_metadata_jupyterlab_writes_so_they_open_unmodified(path):
    notebook_metadata = _notebook_metadata_module()
    text = path.read_text(encoding="utf-8")
    wanted = notebook_metadata.canonical_metadata()
    # JupyterLab also compares the kernel's Python version, which follows the Python at hand:
    # any version passes here; the script writes the one of the Python that runs it.
    version = json.loads(text)["metadata"].get("language_info", {}).get("version")
    assert isinstance(version, str) and version.count(".") == 2, "language_info lacks the Python version"
    wanted["language_info"]["version"] = version
    assert text == notebook_metadata.normalized(text, wanted), (
        f"{path.name}: metadata or JSON layout differs from what JupyterLab writes; "
        "run .venv/bin/python tests/browser/notebook_metadata.py")


def test_every_notebook_is_run_by_the_tests():
    """nbval runs what the series prepares: a notebook left out of it would never be checked."""
    from nbhelpers.series import series_parameters
    on_disk = sorted(p.stem for p in NOTEBOOKS_DIR.glob("*.ipynb"))
    assert on_disk == sorted(ALL_NOTEBOOKS)
    assert sorted(series_parameters("tiny", Path("run"), Path("figures"))) == on_disk


def test_the_demo_ablates_on_part_of_the_real_test_set_but_never_asks_the_stand_in_for_more():
    """The stand-in has 1,000 test images: asking 04 for 2,000 would stop the synthetic demo."""
    from nbhelpers.series import series_parameters
    real = series_parameters("demo", Path("run"), Path("figures"), data_dir="")
    stand_in = series_parameters("demo", Path("run"), Path("figures"), data_dir="runs/demo/synthetic-data")
    assert real["04_evaluate"]["ablation_images"] == 2000
    assert "ablation_images" not in stand_in["04_evaluate"]
