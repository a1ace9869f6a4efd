"""CPU forward benchmark: causal_conv1d_fn against PyTorch, and against a copy.

Loads the built kernel the way users do (kernels.get_local_kernel on
$CAUSAL_CONV1D_KERNEL_ROOT, default: this checkout) and measures, at W = 4
with silu, for fp32 and bf16 inputs of each (B, D, L):

  ref      F.conv1d(x, weight.unsqueeze(1), bias, padding=W-1, groups=D)[..., :L]
           then silu, allocating its output (x's dtype): what transformers
           falls back to without a kernel
  kernel   causal_conv1d_fn(x, weight, bias, activation="silu"), allocating
  copy     out.copy_(x) into a preallocated tensor of x's size
  out/act  ops.fwd_out(x, weight, bias, None, None, out, None, silu) into a
           preallocated out, with silu and without activation

and prints times (median over repeats, after warmup; the minimum too, since
other processes share the machine) with the ratios the targets are stated in:
speedup = ref / kernel, and fwd_out / copy with and without silu. On a busy
machine multi-threaded medians jump in scheduler ticks (4 ms steps when a
thread loses its core); the minimum then shows the uncontended cost. The
"kernel" column includes allocating the output (from the block cache of
output_memory.cpp); the reference's time depends on whether glibc hands it
recycled heap memory or fresh pages, whose faults can dominate it.

    python benchmarks/bench.py fwd                      # full table
    python benchmarks/bench.py fwd --short              # rows of 2 to 128 tokens (no targets)
    python benchmarks/bench.py fwd --quick              # CI smoke run: tiny shapes
    python benchmarks/bench.py fwd --channel-last       # x as (B, L, D).transpose(1, 2)
    python benchmarks/bench.py fwd --layout-ratio       # channel-last / rows, same values

--layout-ratio times fwd_out with silu into a preallocated out of x's
layout, for x channel-last and x contiguous along L holding the same
values, at the (B, L, D) of harness.LAYOUT_SHAPES (issue 21).
"""

from __future__ import annotations

import torch

from .harness import (
    DTYPES, QUICK_SHAPES, SHAPES, WIDTH, conv_silu_ref, cpu_arguments, cpu_setting, load_kernel,
    LAYOUT_QUICK_SHAPES, LAYOUT_SHAPES, add_layout_ratio_argument, layout_pair,
    layout_clock, layout_ratio_table, make_inputs, measure, parse_cpu_arguments,
)

# Targets (issue 2): speedup over ref per dtype; fwd_out / copy per activation.
TARGET_SPEEDUP = {"fp32": 4.0, "bf16": 10.0}
# Short prompts: a row's fixed cost against its few tokens (cpu/fwd.h's
# short rows); the targets above are stated for the long shapes only.
SHORT_SHAPES = [(1, 8192, 2), (1, 8192, 8), (4, 4096, 16), (1, 8192, 17), (1, 8192, 32), (2, 4096, 128)]
TARGET_VS_COPY = {"silu": 1.5, "none": 1.15}


def bench_case(cc, B, D, L, dtype, channel_last, repeats, warmup):
    x, weight, bias = make_inputs(B, D, L, WIDTH, dtype, channel_last)
    out = torch.empty_like(x)  # same layout as x, like the kernel's own output
    fns = {
        "ref": lambda: conv_silu_ref(x, weight, bias),
        "kernel": lambda: cc.causal_conv1d_fn(x, weight, bias, activation="silu"),
        "copy": lambda: out.copy_(x),
        "out_silu": lambda: cc.ops.fwd_out(x, weight, bias, None, None, out, None, True),
        "out_none": lambda: cc.ops.fwd_out(x, weight, bias, None, None, out, None, False),
    }
    # The comparison is only meaningful if the kernel computes the same thing.
    torch.testing.assert_close(
        fns["kernel"]().float(), fns["ref"]().float(),
        **({"rtol": 1e-2, "atol": 5e-2} if dtype == torch.bfloat16 else {"rtol": 3e-4, "atol": 1e-3}),
    )
    return measure(fns, repeats, warmup)


def layout_cases(cc):
    def cases(B, L, D, dtype):
        xr, xc = layout_pair(B, L, D, dtype)
        weight = torch.randn(D, WIDTH, dtype=dtype) / WIDTH
        bias = torch.randn(D, dtype=dtype)
        out_r, out_c = torch.empty_like(xr), torch.empty_like(xc)
        fns = {
            "chan": lambda: cc.ops.fwd_out(xc, weight, bias, None, None, out_c, None, True),
            "rows": lambda: cc.ops.fwd_out(xr, weight, bias, None, None, out_r, None, True),
        }
        fns["chan"]()
        fns["rows"]()
        assert out_c.stride(1) == 1 and out_r.stride(2) == 1
        torch.testing.assert_close(out_c, out_r)  # same values; the sums' order may differ
        return fns
    return cases


def main() -> int:
    ap = cpu_arguments(__doc__, DTYPES, default_repeats=25, default_warmup=3)
    add_layout_ratio_argument(ap)
    ap.add_argument("--short", action="store_true", help="SHORT_SHAPES instead, without targets")
    args = parse_cpu_arguments(ap)
    repeats, dtypes = args.repeats, args.dtype
    shapes = QUICK_SHAPES if args.quick else SHORT_SHAPES if args.short else SHAPES

    cc = load_kernel()
    if args.layout_ratio:
        return layout_ratio_table(
            f"causal_conv1d CPU forward (fwd_out), W={WIDTH}, silu, channel-last vs rows; "
            f"{cpu_setting(cc)}", layout_cases(cc), dtypes, repeats, args.warmup,
            LAYOUT_QUICK_SHAPES if args.quick else LAYOUT_SHAPES, layout_clock(args))
    layout = "channel-last" if args.channel_last else "contiguous"
    print(f"causal_conv1d CPU forward, W={WIDTH}, silu, x {layout}; {cpu_setting(cc)}; "
          f"{repeats} repeats, median (min) in ms")
    head = (f"{'dtype':5} {'B':>2} {'D':>5} {'L':>5} | {'ref':>16} {'kernel':>16} {'speedup':>13} | "
            f"{'copy':>16} {'out+silu':>16} {'/copy':>11} {'out':>16} {'/copy':>11}")
    print(head)
    print("-" * len(head))
    misses = []
    for name in dtypes:
        dtype = DTYPES[name]
        for B, D, L in shapes:
            r = bench_case(cc, B, D, L, dtype, args.channel_last, repeats, args.warmup)
            med = {k: v[0] * 1e3 for k, v in r.items()}
            mn = {k: v[1] * 1e3 for k, v in r.items()}

            def cell(k):
                return f"{med[k]:7.3f} ({mn[k]:6.3f})"

            def ratio(a, b):
                return f"{med[a] / med[b]:5.2f} ({mn[a] / mn[b]:4.2f})"

            speed = f"{med['ref'] / med['kernel']:5.1f}x ({mn['ref'] / mn['kernel']:4.1f}x)"
            print(f"{name:5} {B:>2} {D:>5} {L:>5} | {med['ref']:7.3f} ({mn['ref']:6.3f}) "
                  f"{cell('kernel')} {speed:>13} | {cell('copy')} {cell('out_silu')} "
                  f"{ratio('out_silu', 'copy')} {cell('out_none')} {ratio('out_none', 'copy')}")
            if not args.quick and not args.short:
                if med["ref"] / med["kernel"] < TARGET_SPEEDUP[name]:
                    misses.append(f"{name} {B}x{D}x{L}: speedup below {TARGET_SPEEDUP[name]}x")
                if med["out_silu"] / med["copy"] > TARGET_VS_COPY["silu"]:
                    misses.append(f"{name} {B}x{D}x{L}: fwd_out+silu above "
                                  f"{TARGET_VS_COPY['silu']}x copy")
                if name == "fp32" and med["out_none"] / med["copy"] > TARGET_VS_COPY["none"]:
                    misses.append(f"{name} {B}x{D}x{L}: fwd_out above {TARGET_VS_COPY['none']}x copy")
    if not args.quick and not args.short:
        print("targets (medians): speedup >= 4x fp32 / 10x bf16; fwd_out+silu <= 1.5x copy; "
              "fwd_out <= 1.15x copy (fp32)")
        print("all met" if not misses else "missed:\n  " + "\n  ".join(misses))
    return 0
