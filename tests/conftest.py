"""Load the built kernel the way users do: through the `kernels` loader.

The variant for this host must have been built first (README: the test
command builds it). Every test gets the loaded module as the `cc` fixture.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
# The folder whose build/<variant>/ the tests load (default: this checkout).
KERNEL_ROOT = Path(os.environ.get("CAUSAL_CONV1D_KERNEL_ROOT", ROOT))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running; selected explicitly in CI")
    config.addinivalue_line("markers", "cuda: needs an NVIDIA GPU")


@pytest.fixture(scope="session")
def cc():
    """The kernel module for this host, loaded with kernels.get_local_kernel."""
    import kernels

    backend = os.environ.get("CAUSAL_CONV1D_TEST_BACKEND")  # e.g. "cpu" with a CUDA torch
    return kernels.get_local_kernel(KERNEL_ROOT, backend=backend)


@pytest.fixture
def seeded():
    """A fresh, reported seed per test: inputs are random but reproducible."""
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    return seed
