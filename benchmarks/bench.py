#!/usr/bin/env python3
"""The ratio tables: this kernel against PyTorch, a copy of the same bytes
and, on a GPU, the kernels a user could pick instead.

    python benchmarks/bench.py SUITE [options]
    python benchmarks/bench.py SUITE --help      # the suite's options
    python benchmarks/bench.py SUITE --quick     # tiny shapes (CI smoke run)

Each suite is a module of benchmarks/suites/ whose docstring says what it
times and against which targets. benchmark.py beside this file is another
thing: the `kernels benchmark` workloads, published with the kernel.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# suite: (module of suites/, what it times). One line each, here rather
# than read from the modules, so that --help imports nothing.
SUITES = {
    "fwd": ("cpu_fwd", "CPU forward against PyTorch's conv1d and against a copy"),
    "bwd": ("cpu_bwd", "CPU backward against PyTorch autograd"),
    "decode": ("cpu_decode", "CPU decode, speculative decode and packed prefill against PyTorch"),
    "peers": ("cpu_peers", "CPU serving ops against vLLM's and SGLang's CPU kernels"),
    "host": ("cpu_host", "CPU host time per call on tiny tensors, against torch.add"),
    "e2e": ("cpu_e2e", "whole transformers models on CPU, kernelized against their fallback"),
    "gpu": ("gpu", "CUDA kernels against upstream, FLA, PyTorch and a copy (needs a GPU)"),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="bench.py", usage="%(prog)s [-h] SUITE [the suite's options]",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="suites:\n" + "\n".join(f"  {name:8} {what}" for name, (_, what) in SUITES.items()))
    ap.add_argument("suite", metavar="SUITE", choices=SUITES, help="the suite to run (listed below)")
    ap.add_argument("options", nargs=argparse.REMAINDER, metavar="...",
                    help="the suite's own options (bench.py SUITE --help lists them)")
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        ap.error("no SUITE: one of " + ", ".join(SUITES))
    args = ap.parse_args(argv)
    module = importlib.import_module(f"suites.{SUITES[args.suite][0]}")
    # The suites parse sys.argv themselves; their usage line then reads
    # "bench.py SUITE [options]".
    sys.argv = [f"{ap.prog} {args.suite}", *args.options]
    return module.main() or 0


if __name__ == "__main__":
    raise SystemExit(main())
