"""Shared fixtures: a synthetic CIFAR-10 written by the tests, and the real copy if present."""
import warnings
from pathlib import Path

import pytest
import torch

from nbhelpers.data import FOLDER, UnofficialCopyWarning, load_cifar10, write_synthetic_cifar10
from nbhelpers.runtime import DATA_DIR


@pytest.fixture
def threads():
    """Set torch's thread count inside a test (call it with a count); restored afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A learnable 2,000 / 200 image CIFAR-10 look-alike in the official layout."""
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_cifar10(root, train_per_class=200, test_per_class=20, seed=1)
    return root


@pytest.fixture(scope="session")
def synthetic_data(synthetic_root):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnofficialCopyWarning)
        return load_cifar10(synthetic_root)


@pytest.fixture(scope="session")
def real_root() -> Path:
    """The CIFAR-10 copy in data/ (CI builds the JPEG-derived one there)."""
    if not (DATA_DIR / FOLDER).is_dir():
        pytest.skip(f"no CIFAR-10 in {DATA_DIR}; .ci/run builds it from ../shared")
    return DATA_DIR


@pytest.fixture
def after_step(monkeypatch):
    """after_step(n, action): call action(optimizer) right after Ranger's n-th step in this test."""
    from nbhelpers.ranger import Ranger
    original, count = Ranger.step, {"steps": 0}

    def arm(step: int, action) -> None:
        def counting_step(self, closure=None):
            result = original(self, closure)
            count["steps"] += 1
            if count["steps"] == step:
                action(self)
            return result
        monkeypatch.setattr(Ranger, "step", counting_step)
    return arm
