"""nbhelpers: the library behind the CIFAR-10 Ranger notebook series.

Each step of the pipeline lives in one module:
- `nbhelpers.data`: find, fetch and load CIFAR-10; augmented batches on the device
- `nbhelpers.model`: the seed's network (`Model`), its layer table and FLOPs
- `nbhelpers.ranger`: the Ranger optimizer (RAdam + Lookahead + GC)
- `nbhelpers.train`: the configuration, `fit`, run folders, resume, `infer`
- `nbhelpers.branches`: each block's per-image branch weights over a split, and the
  ablation (weights fixed to their mean, a branch removed) that notebook 04 shows
- `nbhelpers.plots`: the figures the notebooks show
- `nbhelpers.runtime`: seeding, the device, where data, runs and figures go
"""
from .model import Model
from .ranger import Ranger
from .runtime import pick_device, seed_everything

__all__ = ["Model", "Ranger", "pick_device", "seed_everything"]
