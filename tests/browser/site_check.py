"""The static site (`make site`) as a reader opens it: every page, every image, every link, offline.

    .venv/bin/python tests/browser/site_check.py        # after `make site`; make browser-test runs both

Opens build/site/index.html from disk in headless Chromium, then every page it
links to, and fails on:
- a link to a local file that does not exist, or a page that does not load;
- an image that does not show (not loaded, or zero pixels wide);
- any request that leaves the machine (the site must work offline);
- a page without a single figure where its notebook made some;
- an output line that runs off the page or is cut inside a word where it could wrap between words.
Screenshots of the index and of the first notebook page land in build/browser/.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

from lab_check import BUILD, CHROMIUM, CHROMIUM_ARGS, ROOT, log

SITE = ROOT / "build" / "site"
BROKEN_IMAGES = "[...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src.slice(0, 80))"
LINKS = "[...document.querySelectorAll('a[href]')].map(a => a.href)"
UNWRAPPED_OUTPUT = ("[...document.querySelectorAll('.jp-OutputArea-output pre')].filter(e => "
                    "e.scrollWidth > e.clientWidth + 1 || getComputedStyle(e).wordBreak !== 'normal')"
                    ".map(e => e.innerText.slice(0, 80))")


def local_path(url: str) -> Path | None:
    """The file a file:// link points to (without its #anchor); None for other links."""
    parsed = urlparse(url)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else None


def check_page(page, url: str) -> tuple[list[str], list[str]]:
    """Problems on one page, and the local pages it links to."""
    problems = []
    response = page.goto(url)
    if response is None or not response.ok:
        return [f"{url} did not load"], []
    page.wait_for_load_state("load")
    for image in page.evaluate(BROKEN_IMAGES):
        problems.append(f"{url}: an image does not show ({image}...)")
    for text in page.evaluate(UNWRAPPED_OUTPUT):
        problems.append(f"{url}: an output does not wrap between words ({text}...)")
    pages = []
    for link in page.evaluate(LINKS):
        path = local_path(link)
        if path is None:
            continue  # an external link: shown, never fetched here
        if not path.exists():
            problems.append(f"{url}: a link leads nowhere ({path})")
        elif path.suffix == ".html":
            pages.append(path.as_uri())
    return problems, pages


def main() -> int:
    if not (SITE / "index.html").is_file():
        log(f"no site in {SITE}: run `make site` first")
        return 2
    from playwright.sync_api import sync_playwright

    began = time.monotonic()
    BUILD.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    remote: list[str] = []
    seen: set[str] = set()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            page.on("request", lambda request: remote.append(request.url)
                    if not request.url.startswith(("file:", "data:", "about:")) else None)
            queue = [(SITE / "index.html").as_uri()]
            while queue:
                url = queue.pop(0).split("#")[0]
                if url in seen:
                    continue
                seen.add(url)
                found, pages = check_page(page, url)
                problems += found
                queue += pages
                if url.endswith("index.html"):
                    page.screenshot(path=str(BUILD / "site_index.png"), full_page=True)
                elif not (BUILD / "site_page.png").exists():
                    page.screenshot(path=str(BUILD / "site_page.png"))
                if not url.endswith("index.html") and page.evaluate("document.images.length") == 0:
                    problems.append(f"{url}: a notebook page without a single figure")
        finally:
            browser.close()
    problems += [f"a request left the machine: {url}" for url in sorted(set(remote))]
    log(f"site: {len(seen)} pages checked in {time.monotonic() - began:.0f} s")
    for problem in problems:
        log(f"FAIL {problem}")
    log("passed" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
