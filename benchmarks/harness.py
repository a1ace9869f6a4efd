"""What every benchmark here shares: loading the built kernel, timing, inputs.

Not a benchmark itself (tools/dev.sh runs benchmarks/bench_*.py).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parent.parent


def load_kernel():
    """kernels.get_local_kernel on $CAUSAL_CONV1D_KERNEL_ROOT (default: this
    checkout), or the same import by hand where `kernels` is not installed
    (a GPU machine without network)."""
    root = Path(os.environ.get("CAUSAL_CONV1D_KERNEL_ROOT", ROOT))
    try:
        import kernels
    except ImportError:
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import load_kernel as by_hand

        return by_hand(root)
    return kernels.get_local_kernel(root)


def measure(fns: dict[str, Callable[[], object]], repeats: int, warmup: int,
            min_sample_s: float = 0.0, clock: Callable[[], float] = time.perf_counter) -> dict:
    """Times each candidate and returns {name: (median_s, min_s)} per call.

    The candidates run round-robin, so drift in machine load hits them all
    alike. With min_sample_s, each sample times enough back-to-back calls to
    last about that long (microsecond calls are otherwise timer noise).
    """
    inner = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        inner[name] = 1
        if min_sample_s > 0:
            t0 = time.perf_counter()
            fn()
            inner[name] = max(1, int(min_sample_s / max(time.perf_counter() - t0, 1e-7)))
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            n = inner[name]
            t0 = clock()
            for _ in range(n):
                fn()
            times[name].append((clock() - t0) / n)
    return {name: (statistics.median(ts), min(ts)) for name, ts in times.items()}


def make_inputs(B: int, D: int, L: int, width: int, dtype: torch.dtype, channel_last: bool,
                device: str = "cpu", requires_grad: bool = False):
    """x (B, D, L) (contiguous, or a (B, L, D) tensor transposed), weight
    (D, width) scaled by 1/width, bias (D,): fresh random values."""
    if channel_last:
        x = torch.randn(B, L, D, dtype=dtype, device=device).transpose(1, 2)
    else:
        x = torch.randn(B, D, L, dtype=dtype, device=device)
    weight = torch.randn(D, width, dtype=dtype, device=device) / width
    bias = torch.randn(D, dtype=dtype, device=device)
    return tuple(t.requires_grad_(requires_grad) for t in (x, weight, bias))
