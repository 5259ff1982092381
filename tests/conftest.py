import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def repo_root():
    return ROOT


@pytest.fixture(scope="session")
def tiny_glas(tmp_path_factory):
    """A tiny synthetic GlaS-layout folder (10 train, 3 testA images of 64 x 96)."""
    from mdm_med.data.synthetic import generate_glas_demo

    return str(generate_glas_demo(tmp_path_factory.mktemp("glas") / "data", num_train=10, num_test=3,
                                  size=(64, 96), seed=1))


@pytest.fixture(autouse=True)
def _run_from_repo_root(monkeypatch):
    """Bundle configs include the shared recipe with MONAI macros (``%bundles/recipe/...``), which MONAI resolves
    from the current directory: every test runs from the repository root, as users do."""
    monkeypatch.chdir(ROOT)
