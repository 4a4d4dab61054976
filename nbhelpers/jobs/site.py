"""A static website of the reference runs, readable offline: `make site` writes build/site/.

    python -m nbhelpers.jobs.site              # from reference/*/ into build/site/

Built from the committed executed notebooks (reference/<name>/*.ipynb, see
nbhelpers.jobs.reference) without running or training anything:

    build/site/index.html                the Results table of the README, and every notebook
    build/site/<name>/<notebook>.html    one page per notebook, its figures inline

Nothing on a page is fetched from the network. The figures are inside the
pages (nbconvert writes them as data URIs); the equations are turned into
MathML here, which browsers draw without a script; and the scripts nbconvert's
template would load from a CDN (MathJax, RequireJS for widgets) are left out,
since the pages need neither.
"""
from __future__ import annotations

import argparse
import html
import re
import shutil
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

import nbformat
from latex2mathml.converter import convert as tex_to_mathml
from nbconvert import HTMLExporter
from nbconvert.filters import markdown2html_mistune

from .reference import REFERENCE_DIR, published_sweeps, reference_results, results_table, sweeps_table
from ..runtime import PROJECT_ROOT

__all__ = ["SITE_DIR", "SITE_MARKER", "math_as_mathml", "notebook_page", "index_page", "build_site", "main"]

SITE_DIR = PROJECT_ROOT / "build" / "site"
# Written into every site built here: a rebuild replaces only a folder that holds it,
# so `--out` pointed at a folder of the user's (or at `.`) deletes nothing.
SITE_MARKER = ".nbhelpers-site"
# $$display$$ or $inline$ math, outside `code`: what the notebooks' Markdown cells hold.
_CODE_OR_MATH = re.compile(r"(```.*?```|`[^`\n]*`)|\$\$(.+?)\$\$|\$([^$\n]+?)\$", re.S)
# <script src="http..."> tags: what would need a network.
_REMOTE_SCRIPT = re.compile(r"<script[^>]*\bsrc=\"https?://[^\"]*\"[^>]*>\s*</script>\s*")
# Long output lines (a warning, a path) wrap inside the page, between words where they can:
# the lab template's own rule (word-break: break-all) cuts words anywhere ("data_ba / tch_3").
WRAP_OUTPUT = ("<style>.jp-OutputArea-output pre "
               "{ white-space: pre-wrap; word-break: normal; overflow-wrap: anywhere; }</style>")


def math_as_mathml(markdown: str) -> str:
    """Markdown with every $...$ and $$...$$ outside code replaced by MathML."""
    def replace(match: re.Match) -> str:
        code, display, inline = match.groups()
        if code is not None:
            return code
        if display is not None:
            return tex_to_mathml(display.strip(), display="block")
        return tex_to_mathml(inline.strip())
    return _CODE_OR_MATH.sub(replace, markdown)


def notebook_page(path: Path) -> str:
    """One executed notebook as a standalone HTML page."""
    try:
        notebook = nbformat.read(path, as_version=4)
    except (ValueError, nbformat.ValidationError) as error:  # NotJSONError and UnicodeDecodeError are ValueErrors
        raise SystemExit(f"{path} is not a readable notebook ({type(error).__name__}); "
                         "the site was left as it was") from None
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            cell.source = math_as_mathml(cell.source)
    page, _ = HTMLExporter(template_name="lab").from_notebook_node(notebook)
    return _REMOTE_SCRIPT.sub("", page).replace("</head>", f"{WRAP_OUTPUT}\n</head>", 1)


def index_page(names: list[str], pages: dict[str, list[Path]]) -> str:
    """The site's first page: the Results tables (runs, published sweeps), then every notebook of every run."""
    # The Markdown renderer passes raw HTML through: results.json's text is escaped before it.
    results = [{key: html.escape(value) if isinstance(value, str) else value for key, value in row.items()}
               for row in reference_results()]
    table = markdown2html_mistune(results_table(results, link="#{name}"))
    sweeps = [dict(sweep, sweep=html.escape(sweep["sweep"]), devices=[html.escape(d) for d in sweep["devices"]])
              for sweep in published_sweeps()]
    if sweeps:  # what the runs the notebooks compare from cost to train
        table += markdown2html_mistune(sweeps_table(sweeps))
    sections = []
    for name in names:
        items = "".join(f'<li><a href="{_attribute(quote(f"{name}/{page.stem}.html"))}">'
                        f'{html.escape(page.stem)}</a></li>' for page in pages[name])
        sections.append(f'<h2 id="{_attribute(name)}">{html.escape(name)}</h2><ul>{items}</ul>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>CIFAR-10 with Ranger and one cycle: the reference runs</title>
<style>body {{ font-family: sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 0.3rem 0.6rem; }}</style>
</head><body>
<h1>CIFAR-10 with Ranger and one cycle: the reference runs</h1>
<p>The notebook series run once and published with its outputs: nothing here was
trained to build this page. Each run's notebooks follow its row.</p>
{table}
{''.join(sections)}
</body></html>
"""


def _attribute(text: str) -> str:
    """Text safe inside a double-quoted HTML attribute (a folder name may hold quotes)."""
    return html.escape(text, quote=True)


def _refuse_unless_a_previous_site(out: Path) -> None:
    """Stop unless `out` is absent, empty, or a site built here (it holds SITE_MARKER)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise SystemExit(f"{out} exists and is not a folder: choose another --out")
    if any(out.iterdir()) and not (out / SITE_MARKER).is_file():
        raise SystemExit(f"{out} is not a site built here (it has no {SITE_MARKER}), so it is not replaced: "
                         "choose another --out, or delete it yourself")


def _move_into_place(staging: Path, out: Path) -> None:
    """Replace `out` by the finished `staging` folder: two renames, so `out` is never half written."""
    if out.exists():
        old = staging.with_name(f"{staging.name}-old")
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old)
    else:
        staging.rename(out)


def build_site(out: Path = SITE_DIR, reference: Path = REFERENCE_DIR) -> list[Path]:
    """Write the site into `out` (replacing a previous one); returns every page written.

    The site is built in a temporary folder beside `out` and renamed into place when
    complete: a notebook that cannot be read leaves the previous site as it was.
    """
    runs = sorted(p for p in reference.iterdir() if p.is_dir() and list(p.glob("*.ipynb"))) \
        if reference.is_dir() else []
    if not runs:
        raise SystemExit(f"No reference run in {reference}: `python -m nbhelpers.jobs.reference` makes one.")
    out = out.resolve()
    _refuse_unless_a_previous_site(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-building-", dir=out.parent))
    try:
        written = _write_site(staging, runs)
        (staging / SITE_MARKER).write_text("built by python -m nbhelpers.jobs.site; a rebuild replaces this folder\n")
        staging.chmod(0o755)  # mkdtemp makes it private; a site is for reading
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _move_into_place(staging, out)
    return [out / page.relative_to(staging) for page in written]


def _write_site(out: Path, runs: list[Path]) -> list[Path]:
    """Every notebook page of every reference run, then index.html, into `out`."""
    written, pages = [], {}
    for run in runs:
        pages[run.name] = sorted(run.glob("*.ipynb"), key=lambda page: page.stem)  # 05_compare before 05_compare-parts
        for notebook in pages[run.name]:
            target = out / run.name / f"{notebook.stem}.html"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(notebook_page(notebook), encoding="utf-8")
            written.append(target)
    (out / "index.html").write_text(index_page([run.name for run in runs], pages), encoding="utf-8")
    written.append(out / "index.html")
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nbhelpers.jobs.site", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=SITE_DIR, help=f"where the site goes (default: {SITE_DIR})")
    args = parser.parse_args(argv)
    pages = build_site(args.out)
    size = sum(p.stat().st_size for p in pages)
    print(f"{len(pages)} pages, {size / 2**20:.1f} MiB, in {args.out}: open {args.out / 'index.html'}")


if __name__ == "__main__":
    sys.exit(main())
