"""Notebook metadata as JupyterLab writes it, so that a notebook opens without a modified marker.

As soon as its kernel connects, JupyterLab copies the kernel's `kernelspec`
and `language_info` into the notebook's metadata. When they differ from what
the file holds, the notebook shows as modified before anything has run, and
the next Ctrl+S writes that difference into a diff. Committing the metadata
JupyterLab would write avoids both. Nothing else belongs there: widget state
and papermill's bookkeeping describe one execution, and the notebooks are
committed without outputs.

    python tests/browser/notebook_metadata.py             # rewrite notebooks/*.ipynb in place
    python tests/browser/notebook_metadata.py --check     # list the ones that differ; exit 1 if any

Run it with the project's Python (.venv/bin/python): `language_info` holds the
kernel's Python version, and JupyterLab compares it too, so a notebook opens
clean on the Python it was normalized with; on another version the first
save changes that one line.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
KERNEL = "python3"  # the kernel papermill, the tests and `make lab` use


def canonical_metadata() -> dict:
    """The notebook metadata JupyterLab writes for the project's kernel."""
    from ipykernel.ipkernel import IPythonKernel
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec(KERNEL)
    return {
        "kernelspec": {"display_name": spec.display_name, "language": spec.language, "name": KERNEL},
        # What the kernel answers to JupyterLab's kernel_info request.
        "language_info": dict(IPythonKernel.language_info),
    }


def notebook_text(notebook: dict) -> str:
    """The JSON layout of nbformat and JupyterLab: sorted keys, one-space indent, UTF-8, final newline."""
    return json.dumps(notebook, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def normalized(text: str, metadata: dict) -> str:
    """A notebook's text with `metadata` as its metadata, everything else unchanged."""
    notebook = json.loads(text)
    notebook["metadata"] = metadata
    return notebook_text(notebook)


def normalize(paths: list[Path], check: bool) -> list[Path]:
    """The notebooks whose text differs from the normalized one; rewritten unless `check`."""
    metadata = canonical_metadata()
    differing = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        wanted = normalized(text, metadata)
        if text != wanted:
            differing.append(path)
            if not check:
                path.write_text(wanted, encoding="utf-8")
    return differing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help=f"notebooks to normalize (default: {NOTEBOOKS_DIR}/*.ipynb)")
    parser.add_argument("--check", action="store_true", help="only list the notebooks that differ")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
    differing = normalize(paths, args.check)
    for path in differing:
        print(f"{'differs' if args.check else 'normalized'}: {path}")
    return 1 if args.check and differing else 0


if __name__ == "__main__":
    sys.exit(main())
