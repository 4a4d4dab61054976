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
from nbhelpers.jobs.series import ALL_NOTEBOOKS, NOTEBOOKS_DIR

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
    # Keep a Changelog: an [Unreleased] section on top gathers what the next release will say
    newest = re.search(r"^## \[(?!Unreleased\])(.+?)\]", (ROOT / "CHANGELOG.md").read_text(), re.M).group(1)
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
    from nbhelpers.config import SIZED
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
    from nbhelpers.jobs.series import series_parameters
    on_disk = sorted(p.stem for p in NOTEBOOKS_DIR.glob("*.ipynb"))
    assert on_disk == sorted(ALL_NOTEBOOKS)
    assert sorted(series_parameters("tiny", Path("run"), Path("figures"))) == on_disk


def test_the_demo_ablates_on_part_of_the_real_test_set_but_never_asks_the_stand_in_for_more():
    """The stand-in has 1,000 test images: asking 04 for 2,000 would stop the synthetic demo."""
    from nbhelpers.jobs.series import series_parameters
    real = series_parameters("demo", Path("run"), Path("figures"), data_dir="")
    stand_in = series_parameters("demo", Path("run"), Path("figures"), data_dir="runs/demo/synthetic-data")
    assert real["04_evaluate"]["ablation_images"] == 2000
    assert "ablation_images" not in stand_in["04_evaluate"]


def _import_graph_module():
    """tests/import_graph.py, the script that reports the package's imports."""
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tests" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_imports_run_one_way_jobs_then_runs_then_the_core_without_circles():
    graph_module = _import_graph_module()
    graph = graph_module.import_graph()
    assert "nbhelpers.runs.training" in graph and "nbhelpers.train" in graph["nbhelpers.runs.training"]
    assert graph_module.circles(graph) == [], "modules that import each other (inside functions too)"
    assert graph_module.upward_imports(graph) == [], "a module importing one of a layer above it"


def test_the_import_check_sees_a_circle_closed_inside_a_function_and_an_upward_import(tmp_path):
    graph_module = _import_graph_module()
    package = tmp_path / "nbhelpers"
    (package / "runs").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "runs" / "__init__.py").write_text("")
    (package / "model.py").write_text("def build():\n    from .train import fit  # lazy, still a circle\n")
    (package / "train.py").write_text("from .model import build\nfrom .runs.folder import CONFIG\n")
    (package / "runs" / "folder.py").write_text("import json\nCONFIG = 1\n")
    graph = graph_module.import_graph(package)
    assert graph_module.circles(graph) == [["nbhelpers.model", "nbhelpers.train"]]
    assert graph_module.upward_imports(graph) == [("nbhelpers.train", "nbhelpers.runs.folder")]


def _module_trees():
    graph_module = _import_graph_module()
    return {name: ast.parse(path.read_text()) for name, path in graph_module.modules().items()}


def _defined_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names |= {t.id for t in ast.walk(target) if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return names


def test_every_module_says_what_it_is_for_and_lists_its_public_names():
    for name, tree in _module_trees().items():
        docstring = ast.get_docstring(tree) or ""
        # what it is for, and who uses it: a notebook (by number or by name), the tests, a job
        assert re.search(r"\b0[1-6]\b|notebook|tests|python -m|make ", docstring, re.I), \
            f"{name}: its docstring should say what it is for and which notebooks use it"
        assigned = [node.value for node in tree.body
                    if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets)
                    or isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "__all__"]
        assert assigned, f"{name}: no __all__"
        public = ast.literal_eval(assigned[0])
        missing = set(public) - _defined_names(tree)
        assert not missing, f"{name}: __all__ names {sorted(missing)}, which it does not define"
        assert len(public) == len(set(public)), f"{name}: a name twice in __all__"


def test_no_two_classes_of_the_package_share_a_name():
    seen: dict[str, str] = {}
    for name, tree in _module_trees().items():
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                assert node.name not in seen, f"class {node.name} in {seen[node.name]} and in {name}"
                seen[node.name] = name


def test_pyproject_installs_every_sub_package():
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    on_disk = [".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "nbhelpers").rglob("__init__.py")]
    assert sorted(packages) == sorted(on_disk)
