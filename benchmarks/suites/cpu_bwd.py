"""CPU backward benchmark: gradients of causal_conv1d_fn against PyTorch autograd.

Loads the built kernel the way users do (kernels.get_local_kernel on
$CAUSAL_CONV1D_KERNEL_ROOT, default: this checkout) and measures, at W = 4
with silu, for fp32 and bf16 inputs of each (B, D, L), the backward pass
alone (the forward graph is built once and kept with retain_graph):

  ref      torch.autograd.grad of
           silu(F.conv1d(x, weight.unsqueeze(1), bias, padding=W-1, groups=D)[..., :L])
           for (x, weight, bias): what transformers trains with without a kernel
  kernel   torch.autograd.grad of causal_conv1d_fn(x, weight, bias, activation="silu")
           for (x, weight, bias): the registered autograd, which calls ops.bwd

Both receive the same random dout. Before timing, the kernel's gradients are
checked against the reference's. Prints times (median over repeats, after
warmup; the minimum too, since other processes share the machine) and
speedup = ref / kernel.

    python benchmarks/bench.py bwd                      # full table
    python benchmarks/bench.py bwd --quick              # CI smoke run: tiny shapes
    python benchmarks/bench.py bwd --channel-last       # x as (B, L, D).transpose(1, 2)
    python benchmarks/bench.py bwd --dout-other-layout  # dout laid out against x
    python benchmarks/bench.py bwd --layout-ratio       # channel-last / rows, same values

--layout-ratio times ops.bwd itself (dx, dweight, dbias with silu) for x
and dout channel-last (the layout autograd hands back for a channel-last
x) against x and dout contiguous along L holding the same values, at the
(B, L, D) of harness.LAYOUT_SHAPES (issue 21).
"""

from __future__ import annotations

import torch

from .harness import (
    DTYPES, QUICK_SHAPES, SHAPES, WIDTH, conv_silu_ref, cpu_arguments, cpu_setting, load_kernel,
    LAYOUT_QUICK_SHAPES, LAYOUT_SHAPES, add_layout_ratio_argument, layout_pair,
    layout_clock, layout_ratio_table, make_inputs, measure, parse_cpu_arguments,
)

TARGET_SPEEDUP = 5.0  # issue "Training on CPU": >= 5x in fp32 and bf16 at every shape
# dx against the reference (x's dtype on both sides); dweight / dbias relative
# to their largest magnitude (the reference accumulates bf16 in bf16).
TOL_DX = {"fp32": (3e-4, 1e-3), "bf16": (1e-2, 5e-2)}
TOL_PARAM = {"fp32": 1e-4, "bf16": 5e-2}


def check(name, got, want):
    rtol, atol = TOL_DX[name]
    torch.testing.assert_close(got[0].float(), want[0].float(), rtol=rtol, atol=atol)
    for g, w in zip(got[1:], want[1:]):
        err = (g.float() - w.float()).abs().max() / w.float().abs().max().clamp_min(1e-6)
        assert err <= TOL_PARAM[name], f"{name}: dweight/dbias differ by {err:.2e} (relative)"


def bench_case(cc, name, B, D, L, channel_last, dout_other, repeats, warmup):
    x, weight, bias = make_inputs(B, D, L, WIDTH, DTYPES[name], channel_last, requires_grad=True)
    inputs = (x, weight, bias)
    y_ref = conv_silu_ref(x, weight, bias)
    y_ker = cc.causal_conv1d_fn(x, weight, bias, activation="silu")
    # dout in the kernel output's layout (channel-last with --channel-last),
    # as a model's next layer hands it back; PyTorch's conv output is
    # contiguous whatever x is, and a dout in that layout would time the
    # mixed-layout backward instead.
    dout = torch.randn_like(y_ker)
    if dout_other:
        # The other layout: what a gradient that comes back through a
        # transpose (e.g. a (B * L, D) projection of the output) looks like.
        dout = (dout.contiguous() if channel_last
                else dout.transpose(1, 2).contiguous().transpose(1, 2))

    def ref():
        return torch.autograd.grad(y_ref, inputs, dout, retain_graph=True)

    def kernel():
        return torch.autograd.grad(y_ker, inputs, dout, retain_graph=True)

    check(name, kernel(), ref())
    return measure({"ref": ref, "kernel": kernel}, repeats, warmup)


def layout_cases(cc):
    def cases(B, L, D, dtype):
        xr, xc = layout_pair(B, L, D, dtype)
        dr, dc = layout_pair(B, L, D, dtype)
        weight = torch.randn(D, WIDTH, dtype=dtype) / WIDTH
        bias = torch.randn(D, dtype=dtype)
        fns = {
            "chan": lambda: cc.ops.bwd(xc, weight, bias, None, None, dc, None, True, False),
            "rows": lambda: cc.ops.bwd(xr, weight, bias, None, None, dr, None, True, False),
        }
        gc, gr = fns["chan"](), fns["rows"]()
        assert gc[0].stride(1) == 1 and gr[0].stride(2) == 1
        name = "bf16" if dtype == torch.bfloat16 else "fp32"
        check(name, gc[:3], gr[:3])  # same values; the sums' order differs
        return fns
    return cases


def main() -> int:
    ap = cpu_arguments(__doc__, DTYPES, default_repeats=7, default_warmup=1)
    add_layout_ratio_argument(ap)
    ap.add_argument("--dout-other-layout", action="store_true",
                    help="dout laid out against x: contiguous along L for a channel-last x, "
                         "channel-last for a contiguous one")
    args = parse_cpu_arguments(ap)
    repeats, dtypes = args.repeats, args.dtype
    shapes = QUICK_SHAPES if args.quick else SHAPES

    cc = load_kernel()
    if args.layout_ratio:
        return layout_ratio_table(
            f"causal_conv1d CPU backward (ops.bwd: dx, dweight, dbias), W={WIDTH}, silu, "
            f"x and dout channel-last vs rows; {cpu_setting(cc)}", layout_cases(cc), dtypes,
            repeats, args.warmup, LAYOUT_QUICK_SHAPES if args.quick else LAYOUT_SHAPES,
            layout_clock(args))
    layout = "channel-last" if args.channel_last else "contiguous"
    if args.dout_other_layout:
        layout += ", dout " + ("contiguous" if args.channel_last else "channel-last")
    print(f"causal_conv1d CPU backward (dx, dweight, dbias), W={WIDTH}, silu, x {layout}; "
          f"{cpu_setting(cc)}; {repeats} repeats, median (min) in ms")
    head = (f"{'dtype':5} {'B':>2} {'D':>5} {'L':>5} | {'ref autograd':>19} "
            f"{'kernel':>17} | {'speedup':>14}")
    print(head)
    print("-" * len(head))
    misses = []
    for name in dtypes:
        for B, D, L in shapes:
            r = bench_case(cc, name, B, D, L, args.channel_last, args.dout_other_layout, repeats,
                           args.warmup)
            med = {k: v[0] * 1e3 for k, v in r.items()}
            mn = {k: v[1] * 1e3 for k, v in r.items()}
            speed = med["ref"] / med["kernel"]
            print(f"{name:5} {B:>2} {D:>5} {L:>5} | {med['ref']:9.2f} ({mn['ref']:8.2f}) "
                  f"{med['kernel']:8.2f} ({mn['kernel']:7.2f}) | "
                  f"{speed:6.1f}x ({mn['ref'] / mn['kernel']:5.1f}x)", flush=True)
            if not args.quick and speed < TARGET_SPEEDUP:
                misses.append(f"{name} {B}x{D}x{L}: speedup {speed:.1f}x below {TARGET_SPEEDUP}x")
    if not args.quick:
        print(f"target (medians): speedup >= {TARGET_SPEEDUP:g}x in every row")
        print("all met" if not misses else "missed:\n  " + "\n  ".join(misses))
    return 0
