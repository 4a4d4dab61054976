"""The published reference run and its website: tables from the run's numbers, pages that work offline."""
import base64
import io
import json
import re

import matplotlib
import nbformat
import pytest

from nbhelpers.jobs import reference as REF
from nbhelpers.jobs import site as SITE

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _png() -> str:
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1], [0, 1])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _reference(root, results):
    """reference/<name>/ with one executed notebook: math in its prose, a figure in its output."""
    run = root / results["name"]
    run.mkdir(parents=True)
    cell = nbformat.v4.new_code_cell("fig = plot()", execution_count=1, outputs=[
        nbformat.v4.new_output("display_data", data={"image/png": _png(), "text/plain": "<Figure>"})])
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("Adam: $m_t = \\beta_1 m_{t-1}$, and `$not math$` in code.\n\n"
                                      "$$r_t = \\sqrt{\\frac{a}{b}}$$"), cell])
    nbformat.write(notebook, run / "03_train.ipynb")
    (run / "results.json").write_text(json.dumps(results))


RESULTS = {"name": "cpu-demo", "size": "demo", "device": "cpu (a CPU, 2 threads)", "data": "a copy",
           "epochs": 5, "final_test_acc": 65.97, "best_test_acc": 65.97, "best_epoch": 5,
           "seconds_per_epoch": 44.0, "series_seconds": 291.0}


def test_the_results_table_holds_each_run_and_the_seed_beside_it(tmp_path, monkeypatch):
    monkeypatch.setattr(REF, "REFERENCE_DIR", tmp_path)
    _reference(tmp_path, RESULTS)
    rows = REF.results_table(REF.reference_results()).splitlines()
    assert rows[2] == ("| [cpu-demo](reference/cpu-demo/) (demo size; a copy) | cpu (a CPU, 2 threads) | 5 | "
                       "65.97% | 65.97% (5) | 44.0 s | 4.8 min |")
    assert rows[3].startswith("| the seed (its Colab notebook) |") and "| 88.39% | 89.21% (55) |" in rows[3]


def _published_run(records, sweep, run, device, seconds):
    folder = records / sweep / run
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"device": device, "config": {}}))
    (folder / "history.csv").write_text("epoch,test_acc,seconds\n" + "".join(
        f"{k + 1},50.0,{s}\n" for k, s in enumerate(seconds)))


def test_the_published_sweeps_table_says_what_their_runs_cost(tmp_path):
    _published_run(tmp_path, "schedule-long", "ranger-batch", "cpu (a CPU, 1 threads)", [900.0, 900.0])
    _published_run(tmp_path, "schedule-long", "ranger-epoch", "cpu (a CPU, 1 threads)", [600.0, 600.0])
    (tmp_path / "schedule-long" / "unfinished").mkdir()  # no config.json: not a run, not counted
    rows = REF.sweeps_table(REF.published_sweeps(tmp_path)).splitlines()
    assert rows[2] == ("| schedule-long | 2 | 2 | 25.0 min (20.0 min to 30.0 min) | 50.0 min | "
                       "cpu (a CPU, 1 threads) |")
    assert len(rows) == 3


def test_the_readme_table_is_rewritten_between_its_markers_only(tmp_path, monkeypatch):
    monkeypatch.setattr(REF, "REFERENCE_DIR", tmp_path / "reference")
    _reference(tmp_path / "reference", RESULTS)
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n## Results\n{REF.RESULTS_START}\nold table\n{REF.RESULTS_END}\n\nafter\n")
    _published_run(tmp_path / "records", "parts-small", "ranger", "cpu (a CPU, 2 threads)", [30.0])
    REF.write_readme_results(readme, tmp_path / "records")
    text = readme.read_text()
    assert "old table" not in text and "| 65.97% |" in text and text.endswith("\n\nafter\n")
    assert "| parts-small | 1 | 1 | 30.0 s (30.0 s to 30.0 s) | 30.0 s | cpu (a CPU, 2 threads) |" in text
    readme.write_text("no markers")
    with pytest.raises(SystemExit, match="has no Results markers"):
        REF.write_readme_results(readme)
    readme.write_text(f"{REF.RESULTS_END}\nold table\n{REF.RESULTS_START}\n")
    with pytest.raises(SystemExit, match="Results markers are in the wrong order"):
        REF.write_readme_results(readme)
    assert readme.read_text() == f"{REF.RESULTS_END}\nold table\n{REF.RESULTS_START}\n"


def test_the_site_has_its_figures_inside_its_math_as_mathml_and_nothing_remote(tmp_path, monkeypatch):
    monkeypatch.setattr(REF, "REFERENCE_DIR", tmp_path / "reference")
    _reference(tmp_path / "reference", RESULTS)
    pages = SITE.build_site(tmp_path / "site", tmp_path / "reference")
    assert sorted(p.relative_to(tmp_path / "site").as_posix() for p in pages) == \
        ["cpu-demo/03_train.html", "index.html"]
    page = (tmp_path / "site" / "cpu-demo" / "03_train.html").read_text()
    assert page.count("<math") == 2 and "$not math$" in page and "\\beta_1" not in page
    assert 'src="data:image/png;base64,' in page
    # Output lines wrap between words: the rule comes after the template's own, so it wins.
    assert page.index(".jp-OutputArea-output pre {") < page.index(SITE.WRAP_OUTPUT)
    for text in (page, (tmp_path / "site" / "index.html").read_text()):
        assert not re.findall(r'(?:src|href)="https?://', text), "the site must need no network"
    index = (tmp_path / "site" / "index.html").read_text()
    assert 'href="cpu-demo/03_train.html"' in index and "65.97%" in index and "88.39%" in index


def test_a_site_without_a_reference_run_says_how_to_make_one(tmp_path):
    with pytest.raises(SystemExit, match="python -m nbhelpers.jobs.reference"):
        SITE.build_site(tmp_path / "site", tmp_path / "nothing")


# What a published notebook must not name: a folder of the machine it ran on.
MACHINE_PATH = re.compile(r"(?<![\w.])(/work/|/root/|/home/|/tmp/|/content/|/Users/|[A-Z]:\\\\)")


def test_the_reference_run_injects_paths_relative_to_the_project_root(tmp_path, monkeypatch):
    """Every notebook of a reference run, the series' and 05's and 06's, gets relative paths only."""
    from nbhelpers import runtime
    from nbhelpers.jobs import series as SERIES
    project = tmp_path / "project"
    monkeypatch.setattr(runtime, "PROJECT_ROOT", project)
    monkeypatch.setattr(SERIES, "RUNS_DIR", project / "runs")
    monkeypatch.setattr(REF, "figures_dir_for", lambda size: project / "figures" / size)

    def no_cifar10(scratch):  # as without data and network: a stand-in inside the run's folder
        scratch.mkdir(parents=True)
        return str(scratch)
    monkeypatch.setattr(SERIES, "demo_data_dir", no_cifar10)
    injected = {}
    monkeypatch.setattr(SERIES, "run_notebook", lambda notebook, output, parameters, prepare_only=False:
                        injected.setdefault(output.stem, parameters))
    monkeypatch.setattr(REF, "publish", lambda name, size, base: base)
    REF.run_reference("test", "tiny")
    assert {"01_data_exploration", "03_train", "04_evaluate", "05_compare-parts", "06_branch_mixing"} <= set(injected)
    paths = {f"{notebook}: {name}": value for notebook, parameters in injected.items()
             for name, value in parameters.items() if name.endswith("_dir")}
    assert paths["03_train: run_dir"] == "runs/reference-test/run"
    assert paths["05_compare: figures_dir"] == "figures/tiny"
    assert paths["06_branch_mixing: data_dir"] == "runs/reference-test/synthetic-data"
    assert paths["05_compare-parts: records_dir"] == "reference/records"
    assert not [f"{where} = {value}" for where, value in paths.items() if value.startswith("/")]


def test_a_path_inside_the_project_is_shown_relative_and_one_outside_as_it_is():
    from nbhelpers.runtime import PROJECT_ROOT, project_path, shown_path
    assert shown_path(PROJECT_ROOT / "data" / "cifar-10-batches-py") == "data/cifar-10-batches-py"
    assert project_path(shown_path(PROJECT_ROOT / "runs" / "x")) == PROJECT_ROOT / "runs" / "x"
    assert shown_path("/elsewhere/data") == "/elsewhere/data" and shown_path("runs/x") == "runs/x"


@pytest.mark.parametrize("path", sorted(REF.REFERENCE_DIR.glob("*/*.ipynb")), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_the_published_notebooks_name_no_folder_of_the_machine_they_ran_on(path):
    found = [(index, match.group(0)) for index, cell in enumerate(nbformat.read(path, as_version=4).cells)
             for match in MACHINE_PATH.finditer(json.dumps(cell))]
    assert not found, f"cells {sorted({index for index, _ in found})} name {found[0][1]}..."


@pytest.mark.parametrize("sweep", sorted(p for p in (REF.REFERENCE_DIR / "records").glob("*") if p.is_dir()),
                         ids=lambda p: p.name)
def test_the_published_records_name_no_folder_of_the_machine_they_ran_on(sweep):
    found = [f"{path.parent.name}: {match.group(0)}" for path in sorted(sweep.glob("*/config.json"))
             for match in MACHINE_PATH.finditer(path.read_text())]
    assert not found, f"{len(found)} config.json name a folder of the machine, e.g. {found[0]}"


def test_a_site_replaces_only_a_folder_a_previous_build_made(tmp_path, monkeypatch):
    monkeypatch.setattr(REF, "REFERENCE_DIR", tmp_path / "reference")
    _reference(tmp_path / "reference", RESULTS)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(SystemExit, match=f"not a site built here.*{SITE.SITE_MARKER}"):
        SITE.build_site(mine, tmp_path / "reference")
    assert (mine / "thesis.tex").read_text() == "years of work"
    site = tmp_path / "site"
    SITE.build_site(site, tmp_path / "reference")
    (site / "stale.html").write_text("from an older build")
    SITE.build_site(site, tmp_path / "reference")  # its marker says it may be replaced
    assert (site / SITE.SITE_MARKER).is_file() and not (site / "stale.html").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".site")] == [], "no staging folder left"


def test_a_notebook_that_does_not_parse_is_named_and_the_old_site_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(REF, "REFERENCE_DIR", tmp_path / "reference")
    _reference(tmp_path / "reference", RESULTS)
    site = tmp_path / "site"
    SITE.build_site(site, tmp_path / "reference")
    before = (site / "index.html").read_text()
    (tmp_path / "reference" / "cpu-demo" / "04_broken.ipynb").write_text('{"cells": [')
    with pytest.raises(SystemExit, match="04_broken.ipynb is not a readable notebook"):
        SITE.build_site(site, tmp_path / "reference")
    assert (site / "index.html").read_text() == before and (site / "cpu-demo" / "03_train.html").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".site")] == [], "no staging folder left"


def test_folder_names_and_results_text_are_escaped_in_the_index(tmp_path, monkeypatch):
    monkeypatch.setattr(REF, "REFERENCE_DIR", tmp_path / "reference")
    hostile = 'x" onmouseover="alert(1)'
    _reference(tmp_path / "reference", dict(RESULTS, name=hostile, device="<script>alert(2)</script>"))
    (tmp_path / "reference" / hostile / "results.json").write_text(json.dumps(
        dict(RESULTS, name="<img src=x onerror=alert(3)>", device="<script>alert(2)</script>")))
    SITE.build_site(tmp_path / "site", tmp_path / "reference")
    index = (tmp_path / "site" / "index.html").read_text()
    assert '" onmouseover="' not in index and "<script>alert" not in index and "<img src=x" not in index
    assert 'id="x&quot; onmouseover=&quot;alert(1)"' in index and "&lt;script&gt;alert(2)" in index
