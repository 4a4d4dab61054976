"""A run on disk: its folder, the folder's lock, training into it, and reading it back.

- `folder`: what a run writes (config.json, the tables, checkpoints, model.pt), written
  so that nothing is ever half-written or lost, and how a run is continued
- `lock`: one process at a time in a folder
- `training`: `fit`, the training loop (nbhelpers.train) run epoch by epoch into a
  folder, checkpointed and resumable (notebook 03, and every run of a sweep)
- `load`: one finished run with its model (notebook 04), many runs' tables (05, 06)

Each module is imported by its own name (`from nbhelpers.runs.training import fit`).
"""
__all__: list[str] = []
