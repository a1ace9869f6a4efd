"""What every benchmark here shares: loading the built kernel, timing, inputs.

Not a suite itself (benchmarks/bench.py runs the suites beside it). The
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

from benchmark import (  # noqa: F401  (re-exported for the suites)
    conv_silu_ref, make_inputs, packed_inputs, packed_ref, update_ref,
)

ROOT = Path(__file__).resolve().parents[2]

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
            min_sample_s: float = 0.0, clock: Callable[[], float] = time.perf_counter,
            cold: bool = False) -> dict:
    """Times each candidate and returns {name: (median_s, min_s)} per call.

    The candidates run round-robin, so drift in machine load hits them all
    alike. With min_sample_s, each sample times enough back-to-back calls to
    last about that long (microsecond calls are otherwise timer noise).
    With cold, each sample is one call after evict_caches(), untimed: what
    a call costs in a model, whose other layers evict its bytes between two
    of its steps (min_sample_s is then ignored).
    """
    inner = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        inner[name] = 1
        if min_sample_s > 0 and not cold:
            t0 = time.perf_counter()
            fn()
            inner[name] = max(1, int(min_sample_s / max(time.perf_counter() - t0, 1e-7)))
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            n = inner[name]
            if cold:
                evict_caches()
            t0 = clock()
            for _ in range(n):
                fn()
            times[name].append((clock() - t0) / n)
    return {name: (statistics.median(ts), min(ts)) for name, ts in times.items()}


def largest_cache_bytes(cpu_caches: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int:
    """The largest cache Linux reports for the first CPU ("32768K" in
    index3/size), or 0 where it reports none."""
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    sizes = []
    for f in cpu_caches.glob("index*/size"):
        text = f.read_text().strip()
        if text[:-1].isdigit() and text[-1] in scale:
            sizes.append(int(text[:-1]) * scale[text[-1]])
        elif text.isdigit():
            sizes.append(int(text))
    return max(sizes, default=0)


# What evict_caches writes: twice this machine's largest cache, and at least
# twice the 32 MiB L3 of the machine the README's CPU figures come from.
EVICT_BYTES = max(64 << 20, 2 * largest_cache_bytes())
_evict_buffer: list[torch.Tensor] = []


def evict_caches() -> None:
    """Writes EVICT_BYTES, so no earlier call's bytes stay in the caches."""
    if not _evict_buffer:
        _evict_buffer.append(torch.zeros(EVICT_BYTES, dtype=torch.uint8))
    _evict_buffer[0].add_(1)


# --clock: what a timed sample measures
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def cpu_arguments(doc: str, dtypes, default_repeats: int, default_warmup: int,
                  layouts: bool = True, clock: bool = False) -> argparse.ArgumentParser:
    """The options every CPU benchmark takes (--quick, --repeats, --warmup,
    --threads, --dtype, with layouts --channel-last and with clock --clock,
    a key of CLOCKS, and --cold, measure's cold); add more, then call
    parse_cpu_arguments."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes, few repeats (CI smoke run)")
    ap.add_argument("--repeats", type=int, default=None,
                    help=f"timed samples per candidate (default {default_repeats}; 3 with --quick)")
    ap.add_argument("--warmup", type=int, default=default_warmup)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    if layouts:
        ap.add_argument("--channel-last", action="store_true",
                        help="x as a (B, L, D) tensor transposed to (B, D, L) instead of contiguous")
    if clock:
        ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall: elapsed time; cpu: the process's CPU time, all threads summed")
        ap.add_argument("--cold", action="store_true",
                        help="evict the caches before each timed call, as a model's other layers "
                             "do between two steps of one layer (each sample is then one call)")
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


def cpu_timing(args) -> str:
    """How the samples were taken (--clock, --cold, --repeats), for a
    benchmark's header."""
    cold = ", caches evicted before each call" if args.cold else ""
    return f"{args.clock} clock{cold}, {args.repeats} samples, median (min)"


# --layout-ratio (issue 21): the channel-last path against the rows path on
# the same values, as (B, L, D) the way transformers hands x over.
LAYOUT_SHAPES = [(1, 2048, 5376), (4, 1024, 2304), (8, 512, 1536)] + \
    [(4, 1024, D) for D in (256, 512, 1024, 2048, 4096, 8192)]
LAYOUT_QUICK_SHAPES = [(1, 129, 96), (2, 64, 40)]
LAYOUT_TARGET = 1.1


def layout_pair(B: int, L: int, D: int, dtype: torch.dtype):
    """The same random (B, D, L) values twice: contiguous along L ("rows")
    and as a (B, L, D) tensor transposed ("channel-last")."""
    rows = torch.randn(B, D, L, dtype=dtype)
    return rows, rows.transpose(1, 2).contiguous().transpose(1, 2)


def add_layout_ratio_argument(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--layout-ratio", action="store_true",
                    help="time channel-last against rows on the same values (LAYOUT_SHAPES, "
                         "(B, L, D)); prints channel-last / rows per element")
    ap.add_argument("--cpu-time", action="store_true",
                    help="with --layout-ratio and --threads 1: time the calling thread's CPU "
                         "time instead of the wall clock (what other processes on the same "
                         "cores take is then left out)")


def layout_clock(args) -> Callable[[], float]:
    """The clock --layout-ratio times with: the thread's CPU time with
    --cpu-time (one thread only: the other threads' work would be missing),
    else the wall clock."""
    if not args.cpu_time:
        return time.perf_counter
    if torch.get_num_threads() != 1:
        raise SystemExit("--cpu-time needs --threads 1")
    return time.thread_time


def layout_ratio_table(title: str, cases, dtypes, repeats: int, warmup: int,
                       shapes=LAYOUT_SHAPES, clock: Callable[[], float] = time.perf_counter) -> int:
    """cases(B, L, D, dtype) -> {"rows": fn, "chan": fn}, both computing the
    same values; prints median (min) ms and chan / rows of the medians (and
    of the minima), one row per (dtype, shape), and what misses the target."""
    what = "thread CPU time" if clock is time.thread_time else "wall clock"
    print(f"{title}; {repeats} repeats, median (min) in ms, {what}")
    head = (f"{'dtype':5} {'B':>2} {'L':>5} {'D':>5} | {'channel-last':>15} {'rows':>15} | "
            f"{'ratio':>13}")
    print(head)
    print("-" * len(head))
    misses = []
    for name in dtypes:
        for B, L, D in shapes:
            r = measure(cases(B, L, D, DTYPES[name]), repeats, warmup, clock=clock)
            (cm, cn), (rm, rn) = r["chan"], r["rows"]
            print(f"{name:5} {B:>2} {L:>5} {D:>5} | {cm * 1e3:7.3f} ({cn * 1e3:6.3f}) "
                  f"{rm * 1e3:7.3f} ({rn * 1e3:6.3f}) | {cm / rm:5.2f} ({cn / rn:5.2f})",
                  flush=True)
            if cm / rm > LAYOUT_TARGET:
                misses.append(f"{name} ({B}, {L}, {D}): {cm / rm:.2f}")
    print(f"target (medians): channel-last <= {LAYOUT_TARGET}x rows")
    print("all met" if not misses else "missed:\n  " + "\n  ".join(misses))
    return 0
