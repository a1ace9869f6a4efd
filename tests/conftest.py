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


def load_kernel(root: Path, backend: str | None = None):
    """kernels.get_local_kernel(root, backend=backend); where the `kernels`
    package is not installed (a GPU machine without network), the same import
    by hand, as the loader does it: build/<variant>/__init__.py imported
    under the name metadata.json's "id"."""
    try:
        import kernels
    except ImportError:
        return _load_variant_by_hand(root, backend)
    return kernels.get_local_kernel(root, backend=backend)


def _load_variant_by_hand(root: Path, backend: str | None):
    import importlib.util
    import json
    import platform
    import sys

    backend = backend or ("cuda" if torch.version.cuda else "cpu")
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    tag = f"cu{torch.version.cuda.replace('.', '')}" if backend == "cuda" else "cpu"
    abi = "cxx11" if torch.compiled_with_cxx11_abi() else "cxx98"
    machine = platform.machine().lower().replace("amd64", "x86_64").replace("arm64", "aarch64")
    variant = root / "build" / f"torch{major}{minor}-{abi}-{tag}-{machine}-{sys.platform}"
    name = json.loads((variant / "metadata.json").read_text())["id"]
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, variant / "__init__.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def cc():
    """The kernel module for this host, loaded with kernels.get_local_kernel."""
    backend = os.environ.get("CAUSAL_CONV1D_TEST_BACKEND")  # e.g. "cpu" with a CUDA torch
    return load_kernel(KERNEL_ROOT, backend=backend)


@pytest.fixture
def seeded():
    """A fresh, reported seed per test: inputs are random but reproducible."""
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    return seed
