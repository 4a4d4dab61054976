"""What drives papermill: each module is a command (`python -m nbhelpers.jobs.NAME`).

- `series`: the notebook series, the main job (`make demo`; `make test` prepares its notebooks)
- `sweep`: a sweep of runs of notebook 03, resumable, one task per run on a cluster
  (`make sweep`; notebooks 05 and 06 run what is missing of theirs)
- `reference`: the published reference run (`make reference`)
- `site`: the reference runs as a static website (`make site`)
"""
__all__: list[str] = []
