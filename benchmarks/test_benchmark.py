"""benchmarks/benchmark.py, the `kernels benchmark` workloads, run here the
way the runner runs them (setup, one benchmark call, verify) on the small
sizes: they pass on the built kernel and refuse a kernel that is wrong."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

WORKLOADS = ["Forward", "Backward", "Decode", "SpecDecode", "PackedPrefill"]


@pytest.fixture(scope="module")
def workloads():
    pytest.importorskip("kernels.benchmark")
    import benchmark

    return benchmark


def run_small(cls, kernel):
    """What kernels' runner does for one workload, with warmup 1."""
    bench = cls()
    bench.kernel, bench.device = kernel, "cpu"
    torch.manual_seed(cls.seed)
    bench.setup_small()
    bench.benchmark_small()
    bench.verify_small()
    want = bench.verify_small()  # the timed call
    assert torch.allclose(bench.out, want, atol=1e-2)
    bench.benchmark_small()


def test_every_op_has_a_small_and_a_large_workload(workloads):
    from kernels.benchmark import Benchmark

    found = sorted(name for name, obj in vars(workloads).items()
                   if isinstance(obj, type) and issubclass(obj, Benchmark) and obj is not Benchmark)
    assert found == sorted(WORKLOADS)
    for name in WORKLOADS:
        for hook in ("setup", "benchmark", "verify"):
            for size in ("small", "large"):
                assert callable(getattr(getattr(workloads, name), f"{hook}_{size}"))


@pytest.mark.parametrize("name", WORKLOADS)
def test_workload_verifies_the_kernel(workloads, cc, name):
    run_small(getattr(workloads, name), cc)


def _scaled(fn, factor):
    def wrong(*args, **kwargs):
        return fn(*args, **kwargs) * factor  # scaled: its gradients are too
    return wrong


@pytest.mark.parametrize("name", WORKLOADS)
def test_workload_refuses_a_wrong_kernel(workloads, cc, name):
    # Each op's output 0.2% off: mostly inside the runner's own allclose
    # (atol 1e-2), outside the ratio tables' tolerances the workloads check.
    wrong = SimpleNamespace(
        causal_conv1d_fn=_scaled(cc.causal_conv1d_fn, 1.002),
        causal_conv1d_update=_scaled(cc.causal_conv1d_update, 1.002),
        causal_conv1d_packed_fwd=_scaled(cc.causal_conv1d_packed_fwd, 1.002),
    )
    with pytest.raises(RuntimeError, match="differ"):
        run_small(getattr(workloads, name), wrong)
