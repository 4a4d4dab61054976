"""No run's number is typed into a notebook's prose (DESIGN.md, "Evidence").

An accuracy, a difference, a time, r_t at a step or a count that a run
produces goes stale on the next machine, so the notebooks print such numbers
from code or write them into a Markdown output from the run's values. Their
markdown cells may hold only the constants below, each with the reason it
may be typed. What is not prose is not scanned: code blocks and `code`
(commands and parameter values are inputs, not results), link targets, and
the years of citations such as "(Krizhevsky, 2009)" or "ICML 2017".

Small whole numbers (0 to 10) pass as counting words (three blocks, k = 6,
step 1), unless a unit follows them (%, points, s, minutes): "5 points" is a
result. Two-digit numbers with a leading zero are notebook numbers (03).
"""
import re

import nbformat
import pytest

from nbhelpers.jobs.series import NOTEBOOKS_DIR

# Every number the prose may hold, as typed without thousands separators, with why.
ALLOWED = {
    # The seed's published results
    "88.39%": "the seed's final test accuracy, published in its notebook",
    "89.21%": "the seed's best-epoch test accuracy, published in its notebook",
    # The seed's recipe
    "60": "the seed's number of epochs",
    "128": "the seed's batch size",
    "1024": "the seed's channels per branch",
    "1e-3": "Ranger's lr in the seed (which OneCycleLR overrides)",
    "1e-2": "the seed's weight decay",
    "0.1": "the seed's max_lr",
    "25": "OneCycleLR's div_factor: it starts at max_lr / 25",
    "0.004": "max_lr / 25, where the seed's schedule starts and stays",
    "30%": "OneCycleLR's pct_start: the warm-up's share of the steps",
    "70%": "the annealing's share, 1 - pct_start",
    "0.95": "Ranger's beta1, the top of OneCycleLR's momentum cycle",
    "0.85": "OneCycleLR's base_momentum, the bottom of beta1's cycle",
    "0.999": "Ranger's beta2",
    "1e-5": "Ranger's eps",
    "0.5": "Lookahead's alpha; the seed's normalization mean and std; dropout",
    "0.01": "LeakyReLU's negative slope (PyTorch's default, the seed's)",
    # How results are stated
    "95%": "the confidence level of the intervals: a choice of method, not a result",
    "0%": "the bottom of a percentage scale",
    "5%": "1 - 95%: how often a 95% interval excludes 0 when nothing is there, by construction",
    "100": "what percentages sum to",
    # CIFAR-10 itself
    "32": "the images' side in pixels",
    "16": "the feature maps' side after the first block halves the image (32 / 2)",
    "255": "the largest pixel value of an 8-bit image",
    "50000": "CIFAR-10's training images",
    "10000": "CIFAR-10's test images",
    "60000": "CIFAR-10's images in all",
    "10%": "chance on CIFAR-10's ten classes",
    "23460": "the seed's training steps: 60 epochs of 391 batches of 128",
    "391": "batches of 128 in CIFAR-10's 50,000 training images",
    # Published results of others, each cited where it is typed (03)
    "93.57%": "ResNet-110 on CIFAR-10, He et al. (2016), Table 6",
    "93.02%": "ResNet-18 on CIFAR-10, kuangliu/pytorch-cifar's README",
    "94.01%": "airbench94, Jordan (2024)",
    "94%": "the title of Jordan (2024)",
    "3.29": "airbench94's training time in seconds on an A100, Jordan (2024)",
}

_FENCED = re.compile(r"```.*?```", re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK_TARGET = re.compile(r"\]\([^)]*\)")
_URL = re.compile(r"https?://\S+")
_HTML_TAG = re.compile(r"</?[A-Za-z][^>]*>")
# (Krizhevsky, 2009), (2016), ICML 2017: the year a cited work appeared
_CITATION_YEAR = re.compile(r"\((?:[^()]*,\s*)?(?:19|20)\d{2}[a-z]?\)|(?<=[A-Z][A-Za-z] )(?:19|20)\d{2}\b")
# A number (1,024  0.004  1e-5  88.39  57.5M  2.6x) with the letters stuck to it and an
# optional percent sign, never the tail of a name: not after a letter, a digit, an
# underscore or a letter's hyphen (CIFAR-10, bf16, H100, r_t). Its value is what counts:
# 3x3 is a 3, 5th a 5, 01_data a notebook's number, 57.5M a 57.5.
_NUMBER = re.compile(r"(?<![\w.])(?<![A-Za-z]-)(\d[\d,]*(?:\.\d+)?(?:e-?\d+)?)([A-Za-z_]\w*)?(\s?%)?")
_UNIT_AFTER = re.compile(r"\s*(?:%|points?\b|pp\b|s\b|ms\b|seconds?\b|minutes?\b|hours?\b)")


def prose_of(markdown: str) -> str:
    """The text a reader reads as statements: without code, link targets, tags and citation years."""
    for pattern in (_FENCED, _INLINE_CODE, _LINK_TARGET, _URL, _HTML_TAG, _CITATION_YEAR):
        markdown = pattern.sub(" ", markdown)
    return markdown


def typed_numbers(markdown: str) -> list[str]:
    """The numbers in a markdown cell's prose that the allowlist does not cover, as typed."""
    prose, found = prose_of(markdown), []
    for match in _NUMBER.finditer(prose):
        number, percent = match.group(1).rstrip(","), bool(match.group(3))
        key = number.replace(",", "") + ("%" if percent else "")
        if key in ALLOWED:
            continue
        if re.fullmatch(r"0\d", number):
            continue  # a notebook's number
        small = re.fullmatch(r"\d+", number) and int(number) <= 10
        if small and not percent and not _UNIT_AFTER.match(prose, match.end(1)):
            continue
        found.append(match.group(0).strip().rstrip(",."))
    return found


def _markdown_cells(path):
    notebook = nbformat.read(path, as_version=4)
    return [(index, cell.source) for index, cell in enumerate(notebook.cells) if cell.cell_type == "markdown"]


NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_markdown_cell_holds_a_number_a_run_produces(path):
    offending = {}
    for index, source in _markdown_cells(path):
        numbers = typed_numbers(source)
        if numbers:
            offending[f"cell {index}"] = numbers
    assert not offending, (
        f"{path.name}: numbers typed into markdown that are not recipe constants or published "
        f"results: {offending}. Print them from the run's values (or a Markdown output), or, if "
        "one is a constant, add it to ALLOWED with the reason.")


def test_a_planted_result_is_found_and_the_constants_pass():
    planted = ("In the demo per batch won by 14.1 points, 33.6% against 28.4%, "
               "in 27 s per epoch, 2.6x faster; r_t reaches 0.5 around step 500 (1,955 steps) "
               "of a model with 57.5M parameters.")
    assert typed_numbers(planted) == ["14.1", "33.6%", "28.4%", "27", "2.6x", "500", "1,955", "57.5M"]
    constants = ("The seed reached **88.39%** after 60 epochs of batches of 128 at max_lr 0.1 "
                 "(max_lr / 25 = 0.004, the first 30% warm-up), $\\beta_1$ = 0.95, CIFAR-10's "
                 "50,000 images of 32×32 pixels in notebook 03 (02_model), 3x3 convs, k = 6, the 5th step, "
                 "bf16 on an H100.")
    assert typed_numbers(constants) == []


def test_code_links_tags_and_citation_years_are_not_prose_but_small_counts_with_a_unit_are():
    assert typed_numbers("Run `-p train_subset 5000` and see [the paper](https://arxiv.org/abs/2404.00498).") == []
    assert typed_numbers("```\npython -m nbhelpers.jobs.sweep --seeds 3 --size 17\n```") == []
    assert typed_numbers("CIFAR-10 (Krizhevsky, 2009); He et al. (2016); ICML 2017; "
                         "<details><summary>x</summary>") == []
    assert typed_numbers("It took 3 s and gained 2 points, a 7% lead; but 1999 steps.") == ["3", "2", "7%", "1999"]


def test_every_allowed_constant_says_why_and_is_used_by_some_notebook():
    prose = " ".join(prose_of(source) for path in NOTEBOOKS for _, source in _markdown_cells(path))
    typed = {match.group(1).rstrip(",").replace(",", "") + ("%" if match.group(3) else "")
             for match in _NUMBER.finditer(prose)}
    assert all(why.strip() for why in ALLOWED.values())
    assert sorted(set(ALLOWED) - typed) == [], "allowed but typed nowhere: remove it from ALLOWED"
