#!/usr/bin/env python3
"""Where the benchmark kernels spend their time, from Nsight Compute's
hardware counters: the next step when a kernel misses its bandwidth target
and the reason is not clear from timings (`tools/gpu.sh profile` runs it).

    python tools/gpu_profile.py run [--ops spec,decode]
        one call of each op of `benchmarks/bench.py gpu` (same shapes, W = 4,
        bias, silu, bf16 and fp32: forward and backward in both layouts,
        decode, the speculative step in both state layouts), for a profiler
        to watch.
    python tools/gpu_profile.py summarize ncu.csv
        the table of `ncu --csv --page raw --print-units base --metrics
        $(python tools/gpu_profile.py metrics)` output: per
        kernel its time, DRAM and issue utilisation, occupancy and the warp
        stall reasons that cost the most (cycles per issued instruction).

The `summarize` half needs neither a GPU nor ncu (tools/test_gpu_profile.py
checks it on a sample of ncu's CSV).
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from pathlib import Path

# Counter names (Nsight Compute 2023+, sm_70 and newer).
STALL_PREFIX = "smsp__average_warps_issue_stalled_"
STALL_SUFFIX = "_per_issue_active.ratio"
STALLS = ("long_scoreboard", "short_scoreboard", "barrier", "wait", "math_pipe_throttle",
          "mio_throttle", "lg_throttle", "not_selected", "no_instruction", "branch_resolving",
          "dispatch_stall", "drain", "membar", "tex_throttle", "imc_miss", "sleeping")
COLUMNS = {  # column title: counter
    "us": "gpu__time_duration.sum",
    "DRAM %": "dram__throughput.avg.pct_of_peak_sustained_elapsed",
    "issue %": "sm__inst_issued.avg.pct_of_peak_sustained_active",
    "warps/SM": "sm__warps_active.avg.per_cycle_active",
    "regs": "launch__registers_per_thread",
    "blocks/SM limit": "launch__occupancy_limit_registers",
}
METRICS = list(COLUMNS.values()) + [STALL_PREFIX + s + STALL_SUFFIX for s in STALLS]


OPS = ("fwd", "bwd", "decode", "spec")


def run(ops=OPS) -> int:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from suites.gpu import SPEC_DRAFTS, W, make_case, make_x
    from suites.harness import load_kernel

    if not torch.cuda.is_available():
        print("gpu_profile: no GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 1
    cc = load_kernel()
    B, D, L = 4, 4096, 4096
    for dtype in (torch.bfloat16, torch.float32):
        w = torch.randn(D, W, dtype=dtype, device="cuda") / W
        b = torch.randn(D, dtype=dtype, device="cuda")
        for layout in ("contiguous", "channel_last"):
            x = make_x(B, D, L, dtype, layout)
            if "fwd" in ops:
                cc.causal_conv1d_fn(x, w, b, activation="silu")
            if "bwd" in ops:
                cc.ops.bwd(x, w, b, None, None, make_x(B, D, L, dtype, layout), None, True, False)
        if "decode" in ops:
            wd = torch.randn(8192, W, dtype=dtype, device="cuda") / W
            state = torch.randn(256, 8192, W - 1, dtype=dtype, device="cuda")
            cc.causal_conv1d_update(torch.randn(256, 8192, dtype=dtype, device="cuda"), state, wd,
                                    None, "silu")
        if "spec" in ops:  # the benchmark's speculative step, both state layouts
            for layout in ("default", "vllm"):
                c = make_case("spec", dtype, layout, 64, 8192, 1 + SPEC_DRAFTS, W, device="cuda")
                cc.causal_conv1d_update(c["x"], c["state"], c["w"], c["b"], "silu",
                                        num_accepted_tokens=c["accepted"])
    torch.cuda.synchronize()
    return 0


def short_name(demangled: str) -> str:
    """`void causal_conv1d::cuda::(anonymous namespace)::k<__nv_bfloat16, 4>(...)`
    -> `k<bf16, 4>`: the identifier (and template arguments) just before the
    parameter list, whatever the demangler calls the anonymous namespace
    (`(anonymous namespace)`, `<unnamed>`)."""
    m = re.search(r"(\w+)(<[^()]*>)?\s*\(", demangled)
    name = m.group(1) + (m.group(2) or "") if m else demangled.strip()
    return name.replace("__nv_bfloat16", "bf16").replace("__half", "fp16")


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def summarize(csv_text: str) -> str:
    """Markdown table of ncu's raw CSV: one row per profiled kernel launch."""
    # ncu prints its own lines (==PROF== ...) around the CSV: keep from the header on.
    start = csv_text.find('"ID"')
    if start < 0:
        raise ValueError("no ncu CSV header (a line starting with \"ID\") in the input")
    rows = list(csv.DictReader(io.StringIO(csv_text[start:])))
    # launches have a numeric ID; the units row (empty ID) and ncu's own lines do not
    rows = [r for r in rows if (r.get("ID") or "").strip().isdigit()]
    head = ["kernel", "grid x block"] + list(COLUMNS) + ["top stalls (cycles per issue)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [short_name(r.get("Kernel Name", "?")), f"{r.get('Grid Size', '?')} x {r.get('Block Size', '?')}"]
        for title, metric in COLUMNS.items():
            v = _number(r.get(metric, ""))
            if v is None:
                cells.append("-")
            elif title == "us":
                cells.append(f"{v / 1000:.1f}")  # --print-units base: nanoseconds
            else:
                cells.append(f"{v:.0f}" if title in ("regs", "blocks/SM limit") else f"{v:.1f}")
        stalls = []
        for s in STALLS:
            v = _number(r.get(STALL_PREFIX + s + STALL_SUFFIX, ""))
            if v is not None and v > 0:
                stalls.append((v, s))
        stalls.sort(reverse=True)
        cells.append(", ".join(f"{s} {v:.1f}" for v, s in stalls[:3]) or "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="one call of each benchmark op (run it under ncu)")
    r.add_argument("--ops", default=",".join(OPS),
                   help=f"comma list of: {','.join(OPS)} (default: all)")
    s = sub.add_parser("summarize", help="table of ncu's --csv --page raw output")
    s.add_argument("csv", help="the CSV file ('-' for standard input)")
    sub.add_parser("metrics", help="print the --metrics list ncu needs")
    args = ap.parse_args()
    if args.cmd == "run":
        ops = args.ops.split(",")
        if set(ops) - set(OPS):
            ap.error(f"--ops: unknown {', '.join(sorted(set(ops) - set(OPS)))}")
        return run(ops)
    if args.cmd == "metrics":
        print(",".join(METRICS))
        return 0
    text = sys.stdin.read() if args.csv == "-" else Path(args.csv).read_text()
    print(summarize(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
