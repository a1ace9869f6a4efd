"""What every benchmark here shares: loading the built kernel, timing, inputs.

Not a benchmark itself (tools/dev.sh runs benchmarks/bench_*.py). The
inputs and the PyTorch baselines come from benchmark.py (the `kernels
benchmark` workloads), which must stay self-contained for the Hub.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from benchmark import (  # noqa: F401  (re-exported for the bench_*.py scripts)
    conv_silu_ref, make_inputs, packed_inputs, packed_ref, update_ref,
)

ROOT = Path(__file__).resolve().parent.parent

# What the CPU targets are stated in (issues 2-4): W = 4, fp32 and bf16, and
# for the forward and backward these (B, D, L); QUICK_SHAPES for smoke runs.
WIDTH = 4
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SHAPES = [(2, 2048, 2048), (4, 4096, 1024), (1, 5120, 4096), (8, 1024, 512)]
QUICK_SHAPES = [(2, 64, 256), (1, 128, 129)]


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


def cpu_arguments(doc: str, dtypes, default_repeats: int, default_warmup: int,
                  layouts: bool = True) -> argparse.ArgumentParser:
    """The options every CPU benchmark takes (--quick, --repeats, --warmup,
    --threads, --dtype and, with layouts, --channel-last); add more, then
    call parse_cpu_arguments."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes, few repeats (CI smoke run)")
    ap.add_argument("--repeats", type=int, default=None,
                    help=f"timed samples per candidate (default {default_repeats}; 3 with --quick)")
    ap.add_argument("--warmup", type=int, default=default_warmup)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    if layouts:
        ap.add_argument("--channel-last", action="store_true",
                        help="x as a (B, L, D) tensor transposed to (B, D, L) instead of contiguous")
    ap.add_argument("--dtype", choices=sorted(dtypes), action="append",
                    help="restrict to these dtypes (repeatable)")
    ap.set_defaults(default_repeats=default_repeats, all_dtypes=list(dtypes))
    return ap


def parse_cpu_arguments(ap: argparse.ArgumentParser) -> argparse.Namespace:
    """Parses, applies --threads, and fills in repeats and dtypes."""
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.repeats = args.repeats or (3 if args.quick else args.default_repeats)
    args.dtype = args.dtype or args.all_dtypes
    return args


def cpu_setting(cc) -> str:
    """torch version, threads and the kernel tier, for a benchmark's header."""
    return (f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"kernel tier {cc.kernel_tier()}")
