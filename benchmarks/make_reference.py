"""Summarize a finished series run as benchmarks/reference.json.

    python benchmarks/make_reference.py RUN_FOLDER [TRAIN_STEP_JSON] > benchmarks/reference.json

RUN_FOLDER is what `python -m nbhelpers.jobs.reference --size full --name NAME` leaves in
runs/reference-NAME: the executed notebooks in notebooks/ and the training run in run/.
TRAIN_STEP_JSON is the output of benchmarks/train_step.py on the same machine.
"""
import json
import sys
from pathlib import Path

import nbformat

from nbhelpers.runs.folder import read_history


def reference(series: Path, benchmark: Path | None) -> dict:
    run = series / "run"
    info = json.loads((run / "config.json").read_text())
    history = read_history(run)
    training = nbformat.read(series / "notebooks" / "03_train.ipynb", as_version=4)
    data = info["data"]
    summary = {
        "gpu": info["device"],
        "torch": info["torch"],
        "data": ("official CIFAR-10" if data["official"] else "JPEG-derived CIFAR-10 copy")
                + f" (fingerprint {data['fingerprint']}, {data['train']} train / {data['test']} test)",
        "epochs": len(history),
        "final_test_acc": history[-1]["test_acc"],
        "best_test_acc": max(row["test_acc"] for row in history),
        "seconds_per_epoch": sum(row["seconds"] for row in history) / len(history),
        "wall_seconds": training.metadata["papermill"]["duration"],
        "config": info["config"],
        "resolved": info["resolved"],
    }
    if benchmark is not None:
        measured = json.loads(benchmark.read_text())
        summary["speedup_vs_seed"] = measured.get("speedup_vs_seed")
        summary["benchmark"] = {k: measured[k] for k in ("seed", "nbhelpers", "matmul_tflops") if k in measured}
    return summary


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    print(json.dumps(reference(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) == 3 else None), indent=2))
