"""nbhelpers: the library behind the CIFAR-10 Ranger notebook series (notebooks 01-06).

The teaching core, flat: each step of the pipeline in one module, each saying
which notebooks use it.
- `config`: every training parameter, the named sizes, the model they describe (all notebooks)
- `data`: find, fetch and load CIFAR-10; augmented batches on the device (01, and every run)
- `model`: the seed's network (`Model`), its layer table and FLOPs (02)
- `ranger`: the Ranger optimizer (RAdam + Lookahead + GC); `ranger_parts`: each part made concrete (03)
- `train`: the training loop and its pieces (03)
- `evaluation`: logits, accuracy, calibration, branch weights, the paired bootstrap (04)
- `branches`: what the branch mixing learned, and its ablation (04, 06)
- `compare`: runs compared over seeds (05, 06)
- `plots`, `analysis_plots`: the figures; `progress`: what a run shows while it trains
- `notebook`: every notebook's first cell; `runtime`: seeding, the device, where things go
- `errors`, `seed_reference`: the project's errors; the seed's own code, the tests' oracle

Around it, imports running one way (jobs -> runs -> the core):
- `nbhelpers.runs`: a run on disk: its folder, its lock, `fit` into it, loading it (03-06)
- `nbhelpers.jobs`: what drives papermill: the series, sweeps, the reference run, the site
"""
from .model import Model
from .ranger import Ranger
from .runtime import pick_device, seed_everything

__all__ = ["Model", "Ranger", "pick_device", "seed_everything"]
