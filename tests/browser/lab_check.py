"""JupyterLab as a student sees it: open the notebooks in a real browser, run every cell, check what shows.

    .venv/bin/python tests/browser/lab_check.py        # or: make browser-test

Starts JupyterLab on 127.0.0.1 (a random port, a token, a time limit) with its
own settings (autosave off, so that running a notebook writes nothing into
it), opens it in headless Chromium driven by Playwright, and for
notebooks/01_data_exploration and a reduced copy of notebooks/03_train (the
tests' size, `size=tiny`, injected by papermill):
- checks that the notebook opens unmodified (01; the copy is papermill's);
- waits until the kernel is ready, then runs all cells (Run All any earlier
  opens a kernel dialog);
- waits on the cells' prompts, not on the status bar (that says Idle between
  two queued cells);
- fails on any traceback or error, any cell left unexecuted, any widget left
  unrendered ("Loading widget", "HBox("), any cell that makes a figure but
  shows no image;
- in 03, checks that the training cell shows its progress bar and live curves
  while it runs, and no figure once it is done (the next cell draws the
  final curves);
- checks that no file under figures/ or notebooks/ changed.
Screenshots land in build/browser/ (03_live.png: the training cell mid-run).
Outputs are read with textContent: cells scrolled out of view are not rendered,
so their innerText is empty. Everything it starts is stopped, also on failure.

Needs Chromium at /usr/bin/chromium (or $CHROMIUM) and the `browser` extra
(`pip install -e '.[browser]'`: Playwright, without a browser download).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# A headless browser in a container: no sandbox (often unavailable as root), no GPU, and
# nothing that reaches out to the network on its own.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
REDUCED_03 = dict(size="tiny")  # nbhelpers.config.SIZES: a narrow model, 2 epochs, 1,000 images
# The user settings JupyterLab starts with: no autosave (a run must not write into the
# notebook), no news or update pop-ups over the page.
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}
SERVER_LIMIT_S = 1500      # JupyterLab stops by itself after this, whatever happens here
KERNEL_READY_S = 120
RUN_ALL_S = 900
UNRENDERED = ("Loading widget", "HBox(")
ERROR_LINE = re.compile(r"^\w*(Error|Exception|Interrupt)\b.*:", re.MULTILINE)
MAKES_FIGURE = re.compile(r"^\s*fig\b[\w\s,]*=", re.MULTILINE)


def log(message: str) -> None:
    print(f"[lab_check {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------
# Files: what must not change, and the notebooks to open
# --------------------------------------------------------------------------

def snapshot(*folders: Path) -> dict[str, str]:
    """md5 of every file under `folders`, by path relative to the project."""
    return {str(path.relative_to(ROOT)): hashlib.md5(path.read_bytes()).hexdigest()
            for folder in folders if folder.exists()
            for path in sorted(folder.rglob("*")) if path.is_file()
            and ".ipynb_checkpoints" not in path.parts}


def changed_files(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(name for name in set(before) | set(after) if before.get(name) != after.get(name))


def prepare_reduced_03(notebooks: Path, run_dir: Path) -> Path:
    """03 with reduced parameters injected by papermill, written next to the screenshots."""
    import papermill

    target = BUILD / "03_train_reduced.ipynb"
    papermill.execute_notebook(notebooks / "03_train.ipynb", target, kernel_name="python3",
                               parameters=dict(REDUCED_03, run_dir=str(run_dir)),
                               prepare_only=True, progress_bar=False)
    return target


def data_environment() -> dict[str, str]:
    """CIFAR10_ROOT for the kernels: unset when CIFAR-10 is found, else a small synthetic copy."""
    from nbhelpers.data import CIFAR10DataError, find_cifar10, write_synthetic_cifar10

    try:
        find_cifar10()
        return {}
    except CIFAR10DataError:
        synthetic = BUILD / "synthetic-data"
        log(f"no CIFAR-10 found: the notebooks read a synthetic copy in {synthetic}")
        write_synthetic_cifar10(synthetic, train_per_class=250, test_per_class=50)
        return {"CIFAR10_ROOT": str(synthetic)}


# --------------------------------------------------------------------------
# JupyterLab
# --------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def lab_environment(extra: dict[str, str]) -> dict[str, str]:
    """Jupyter's config, settings, workspaces and runtime files under build/, not the user's."""
    lab = BUILD / "lab"
    for plugin, values in LAB_SETTINGS.items():
        path = lab / "settings" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    return dict(os.environ, JUPYTER_CONFIG_DIR=str(lab / "config"),
                JUPYTERLAB_SETTINGS_DIR=str(lab / "settings"),
                JUPYTERLAB_WORKSPACES_DIR=str(lab / "workspaces"),
                JUPYTER_RUNTIME_DIR=str(lab / "runtime"), **extra)


@contextmanager
def jupyter_lab(env: dict[str, str]):
    """A JupyterLab server on the project; yields (base URL, token); stops it and its kernels."""
    port, token = free_port(), os.urandom(16).hex()
    command = ["timeout", str(SERVER_LIMIT_S), str(Path(sys.executable).parent / "jupyter"), "lab",
               "--no-browser", f"--ServerApp.root_dir={ROOT}", "--ip=127.0.0.1", f"--port={port}",
               f"--IdentityProvider.token={token}"]
    if os.geteuid() == 0:
        command.append("--allow-root")
    base = f"http://127.0.0.1:{port}"
    with open(BUILD / "jupyterlab.log", "w") as server_log:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=server_log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_serving(base, token, server)
        yield base, token
    finally:
        stop_server(server, base, token)


def api(base: str, token: str, path: str, method: str = "GET"):
    request = urllib.request.Request(f"{base}{path}", method=method,
                                     headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


def wait_until_serving(base: str, token: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {server.returncode}: see {BUILD / 'jupyterlab.log'}")
        try:
            api(base, token, "/api/status")
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"JupyterLab did not answer within 120 s: see {BUILD / 'jupyterlab.log'}")


def stop_server(server: subprocess.Popen, base: str, token: str) -> None:
    """Ask the server to shut down (it stops its kernels), then make sure its processes are gone."""
    if server.poll() is None:
        try:
            api(base, token, "/api/shutdown", method="POST")
            server.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if server.poll() is not None:
            break
        os.killpg(server.pid, sig)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


# --------------------------------------------------------------------------
# The browser
# --------------------------------------------------------------------------

# Everything read from the page: code cells in order, each with its prompt, its output
# text (textContent: also for cells out of view), images that loaded, a widget bar.
READ_CELLS = """() => {
  // A highlighted code listing carries its CSS in a <style>, whose comments name
  // "Generic.Traceback": that is no error a student sees, so styles are left out.
  const withoutStyles = output => {
    const copy = output.cloneNode(true);
    copy.querySelectorAll('style, script').forEach(element => element.remove());
    return copy.textContent;
  };
  return [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell')]
  .map(cell => ({
    prompt: (cell.querySelector('.jp-InputPrompt') || {}).textContent || '',
    text: [...cell.querySelectorAll('.jp-OutputArea-output')].map(withoutStyles).join('\\n'),
    images: [...cell.querySelectorAll('.jp-OutputArea-output img')]
              .filter(img => img.complete && img.naturalWidth > 0).length,
    imageKey: [...cell.querySelectorAll('.jp-OutputArea-output img')].map(img => img.src.slice(-64)).join(),
    bars: cell.querySelectorAll('.jp-OutputArea-output .widget-hprogress, .jp-OutputArea-output .progress-bar').length,
  }));
}"""


def open_notebook(page, base: str, token: str, relative: str) -> None:
    """Open one notebook in a fresh workspace and wait until its kernel is idle."""
    page.goto(f"{base}/lab/workspaces/check-{int(time.time() * 1000)}/tree/{relative}?token={token}&reset")
    page.wait_for_selector(".jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status='idle']",
                           timeout=KERNEL_READY_S * 1000)


def opened_modified(page) -> bool:
    """Is the current tab marked modified? Checked after the kernel connected, when Lab fills in metadata."""
    time.sleep(1.0)  # Lab writes the kernel's metadata right after the connection
    return page.locator(".lm-TabBar-tab.jp-mod-current.jp-mod-dirty").count() > 0


def run_all(page) -> None:
    """Run > Run All Cells, until a prompt shows that the kernel took the cells (two tries)."""
    for _ in range(2):
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any(started(cell) for cell in page.evaluate(READ_CELLS)):
                return
            time.sleep(0.5)
        page.keyboard.press("Escape")  # a menu left open
    page.screenshot(path=str(BUILD / "run_all.png"))
    raise RuntimeError("Run All Cells started no cell: see build/browser/run_all.png")


def started(cell: dict) -> bool:
    """Queued, running or done: the prompt is no longer the blank one of a fresh notebook."""
    return cell["prompt"].strip() not in ("", "[ ]:")


def wait_for_cells(page, live_cell: int | None, shots: Path) -> dict:
    """Poll the prompts until no cell runs; meanwhile watch the training cell (if any).

    Returns what was seen while the training cell ran: "bar", whether it showed its
    progress bar, and "curves", how often its live curves were redrawn (each time
    the cell is photographed into `shots`, so the last photo is the latest redraw).
    """
    seen = {"bar": False, "curves": 0}
    deadline = time.monotonic() + RUN_ALL_S
    while time.monotonic() < deadline:
        cells = page.evaluate(READ_CELLS)
        running = [i for i, cell in enumerate(cells) if "*" in cell["prompt"]]
        if live_cell is not None and live_cell in running:
            cell = cells[live_cell]
            seen["bar"] = seen["bar"] or cell["bars"] > 0
            if cell["images"] and cell["imageKey"] != seen.get("last_image"):
                # The curves were redrawn after an epoch: photograph the cell as it is now.
                seen["last_image"] = cell["imageKey"]
                seen["curves"] += 1
                locator = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell").nth(live_cell)
                locator.scroll_into_view_if_needed()
                locator.screenshot(path=str(shots))
        if not running:  # run_all saw the cells start
            return seen
        if page.locator(".jp-Dialog").count():
            page.screenshot(path=str(BUILD / "dialog.png"))
            raise RuntimeError("a dialog opened while the cells ran: see build/browser/dialog.png")
        time.sleep(0.5)
    raise RuntimeError(f"cells still running after {RUN_ALL_S} s")


def problems_in(cells: list[dict], sources: list[str]) -> list[str]:
    """Everything a student should not see, cell by cell."""
    problems = []
    if len(cells) != len(sources):
        problems.append(f"the page shows {len(cells)} code cells, the notebook has {len(sources)}")
    for index, (cell, source) in enumerate(zip(cells, sources)):
        where = f"code cell {index + 1} ({source.strip().splitlines()[0][:50] if source.strip() else 'empty'})"
        if not re.fullmatch(r"\[\d+\]:", cell["prompt"].strip()):
            problems.append(f"{where} was not executed (prompt {cell['prompt']!r})")
        error = re.search(r"Traceback.*", cell["text"]) or ERROR_LINE.search(cell["text"])
        if error:
            problems.append(f"{where} shows an error: {error.group(0)[:300]!r}")
        for marker in UNRENDERED:
            if marker in cell["text"]:
                problems.append(f"{where} shows an unrendered widget ({marker!r})")
        if MAKES_FIGURE.search(source) and cell["images"] == 0:
            problems.append(f"{where} makes a figure but shows no image")
    return problems


def check_notebook(page, base: str, token: str, path: Path, must_open_clean: bool,
                   timings: dict) -> list[str]:
    name = path.stem
    sources = ["".join(c["source"]) for c in json.loads(path.read_text())["cells"]
               if c["cell_type"] == "code"]
    live_cell = next((i for i, s in enumerate(sources) if re.search(r"=\s*fit\(", s)), None)
    tic = time.monotonic()
    open_notebook(page, base, token, str(path.relative_to(ROOT)))
    timings[f"{name}: open until the kernel is ready"] = time.monotonic() - tic
    problems = []
    if must_open_clean and opened_modified(page):
        problems.append(f"{name} shows as modified as soon as it opens (its metadata is not what "
                        "JupyterLab writes: run tests/browser/notebook_metadata.py)")
    tic = time.monotonic()
    run_all(page)
    seen = wait_for_cells(page, live_cell, BUILD / f"{name}_live.png")
    timings[f"{name}: run all cells"] = time.monotonic() - tic
    page.screenshot(path=str(BUILD / f"{name}.png"), full_page=True)
    cells = page.evaluate(READ_CELLS)
    problems += [f"{name}: {p}" for p in problems_in(cells, sources)]
    if live_cell is not None:
        if not seen["bar"]:
            problems.append(f"{name}: the training cell showed no progress bar while it ran")
        if not seen["curves"]:
            problems.append(f"{name}: the training cell showed no live curves while it ran")
        if cells[live_cell]["images"]:
            problems.append(f"{name}: the training cell still shows its live curves after training "
                            "(the next cell draws them again)")
    log(f"{name}: {len(cells)} code cells run, {sum(c['images'] for c in cells)} images, "
        f"live curves redrawn {seen['curves']} times while training")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--notebooks", type=Path, default=ROOT / "notebooks",
                        help="the series' folder, inside the project (default: notebooks/)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="another value for a parameter of the reduced 03, as papermill's -p "
                             "(e.g. -p num_epochs 6 for a fuller live screenshot)")
    args = parser.parse_args(argv)
    notebooks = args.notebooks.resolve()
    for name, value in args.parameter:
        REDUCED_03[name] = int(value) if value.isdigit() else value
    if not Path(CHROMIUM).exists():
        log(f"no Chromium at {CHROMIUM}: install Debian's chromium (apt-get install chromium) or set CHROMIUM")
        return 2
    from playwright.sync_api import sync_playwright

    began = time.monotonic()
    timings: dict[str, float] = {}
    shutil.rmtree(BUILD, ignore_errors=True)
    BUILD.mkdir(parents=True)
    guarded = (ROOT / "figures", ROOT / "notebooks")
    before = snapshot(*guarded)
    reduced = prepare_reduced_03(notebooks, BUILD / "run")
    env = lab_environment(data_environment())
    problems: list[str] = []
    try:
        with jupyter_lab(env) as (base, token), sync_playwright() as playwright:
            timings["prepare 03, start JupyterLab"] = time.monotonic() - began
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                problems += check_notebook(page, base, token, notebooks / "01_data_exploration.ipynb",
                                           True, timings)
                problems += check_notebook(page, base, token, reduced, False, timings)
            finally:
                browser.close()
    except Exception as error:  # a timeout or a crash is a failure like any other, after the clean-up
        problems.append(f"{type(error).__name__}: {error}")
    problems += [f"{name} changed while the notebooks ran (interactive runs must not write there)"
                 for name in changed_files(before, snapshot(*guarded))]
    timings["total"] = time.monotonic() - began
    for what, seconds in timings.items():
        log(f"{what}: {seconds:.0f} s")
    for problem in problems:
        log(f"FAIL {problem}")
    log(f"screenshots: {BUILD}")
    log("passed" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
