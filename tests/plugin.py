"""The test suite's pytest plugin: markers, the backends every op's tests
run on, fixtures. The machinery lives in helpers.py (the test-support
module), which tests import. No test imports this file: the root
conftest.py registers it for tests/, benchmarks/ and tools/ alike, and
where tests/ is alone (kernel-builder's Nix source set) tests/conftest.py
does.

- `cc`: the host's kernel module, loaded through the `kernels` loader
  (helpers.load_kernel: LOCAL_KERNELS=<repo-id>=<build> as kernel-builder's
  ci-test sets it, else build/<variant>/ of CAUSAL_CONV1D_KERNEL_ROOT).
- `backend`: each backend of helpers.backend_specs() in turn (the host's by
  default; CAUSAL_CONV1D_TEST_BACKENDS adds the emulated CUDA kernels, a
  CUDA or an aarch64 variant), so one grid tests every backend. A test marked
  `backends("cpu")` or `backends("cuda")` runs only on backends of that kind
  (the kind of kernels: "cuda" covers the GPU and the emulator); `gpu` ones
  only on a real GPU. Parameters holding float64 are skipped on CUDA kernels,
  which refuse it. While the test runs, torch's default device is the
  backend's, so tensors made without a device land where its kernels run.
- `seeded`: a fresh, reported seed per test.

Under pytest-xdist (tools/dev.sh runs `-n 2`) each worker runs torch on one
thread, so that the workers do not compete for the cores with torch's own
threads; tests marked `serial` (threads used concurrently) run in a plain
pytest run instead. A module's tests that share a module-scoped fixture (a
Hub server, a published repository) go to one worker, which sets it up once.
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

from helpers import (
    BackendSpec,
    backend_specs,
    has_float64,
    host_backend_name,
    load_backend,
    load_kernel,
)

MARKERS = {
    "kernels_ci": "the quick subset kernel-builder's ci-test runs (pytest -m kernels_ci): "
                  "every op, dtype pairing and layout on the host backend",
    "slow": "long-running (tensors past 2**31 elements); selected explicitly in CI",
    "sanitizer": "the small grid through every CUDA kernel that tools/gpu.sh check runs "
                 "under compute-sanitizer",
    "gpu": "needs a real NVIDIA GPU (device-side behaviour); skipped elsewhere",
    "backends(kind, ...)": "run only on backends of these kinds (cpu, cuda)",
    "serial": "needs torch's intra-op threads as a whole process has them: runs outside "
              "pytest-xdist's single-threaded workers (tools/dev.sh)",
}

XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")


def pytest_configure(config):
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    if XDIST_WORKER:
        torch.set_num_threads(1)


def pytest_generate_tests(metafunc):
    if "backend" not in metafunc.fixturenames:
        return
    specs = backend_specs()
    kinds = metafunc.definition.get_closest_marker("backends")
    if kinds is not None:
        specs = [s for s in specs if s.kind in kinds.args]
    if metafunc.definition.get_closest_marker("gpu") is not None:
        specs = [s for s in specs if s.device == "cuda"]
    metafunc.parametrize("backend", specs, ids=[s.name for s in specs], indirect=True)


@pytest.hookimpl(tryfirst=True)  # before xdist's worker reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    """Deselected, not reported as skips: tests for a kind of backend that is
    not under test (the CUDA paths on a CPU-only run), and, where
    CAUSAL_CONV1D_TEST_BACKENDS leaves the host's kernel out (a run for the
    emulator alone), the tests that only use `cc`, which test the host."""
    host = "host" in os.environ.get("CAUSAL_CONV1D_TEST_BACKENDS", "host").split(":")
    keep, drop = [], []
    for item in items:
        params = getattr(item, "callspec", None)
        spec = params.params.get("backend") if params else None
        uses_backend = "backend" in getattr(item, "fixturenames", ())
        unbacked = not isinstance(spec, BackendSpec) if uses_backend else not host
        (drop if unbacked else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    if XDIST_WORKER:  # --dist loadgroup keeps an xdist_group on one worker
        for item in items:
            defs = getattr(item, "_fixtureinfo", None)
            defs = defs.name2fixturedefs.values() if defs else ()
            if any(d.scope == "module" for ds in defs for d in ds):
                item.add_marker(pytest.mark.xdist_group(item.module.__name__))


_loaded: dict = {}


@pytest.fixture(scope="session")
def cc():
    """The host's kernel module (helpers.load_kernel)."""
    return load_kernel(backend=os.environ.get("CAUSAL_CONV1D_TEST_BACKEND"))


@pytest.fixture
def backend(request, cc):
    """The backend under test (helpers.Backend: .module, .name, .kind,
    .device, .emulated, .float64), with torch's default device set to its."""
    spec = request.param
    node = request.node
    if not spec.float64 and hasattr(node, "callspec"):
        if any(has_float64(v) for v in node.callspec.params.values()):
            pytest.skip(f"{spec.name}: the CUDA kernels refuse float64")
    if spec not in _loaded:
        try:
            _loaded[spec] = load_backend(spec, cc)
        except Exception as e:  # a build that is not there: say so once per test
            _loaded[spec] = e
    loaded = _loaded[spec]
    if isinstance(loaded, Exception):
        pytest.fail(f"backend {spec.name} did not load from {spec.path}: {loaded}")
    with torch.device(spec.device) if spec.device != "cpu" else contextlib.nullcontext():
        yield loaded


@pytest.fixture
def kernel(backend):
    """The module of the backend under test (what `cc` is for the host)."""
    return backend.module


@pytest.fixture
def cpu_kernel(backend, cc):
    """The CPU backend's module, for comparing another backend against it."""
    if backend.kind == "cpu":
        return backend.module
    if host_backend_name() == "cpu":
        return cc
    for spec in backend_specs():
        if spec.kind == "cpu":
            return load_backend(spec, cc).module
    pytest.skip("no CPU variant among the backends under test")


@pytest.fixture
def seeded():
    """A fresh, reported seed per test: inputs are random but reproducible."""
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    return seed
