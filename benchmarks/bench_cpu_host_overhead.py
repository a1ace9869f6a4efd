#!/usr/bin/env python3
"""Host overhead per call: our operators on tiny CPU tensors against torch's
own ops on the same tensors.

With tensors this small the kernels do almost nothing, so a call's time is
what happens around them: the Python wrapper, the dispatcher, the argument
checks, the output allocation. That host time is also what an eager decode
step pays on a GPU before its kernel is launched. torch.add and F.silu are
the floor: the same dispatcher path with torch's own kernels.

  update     x (4, 8), conv_state (4, 8, 3), weight (8, 4), bias (8,), silu:
             functions.causal_conv1d_update and ops.update
  fwd        x (1, 8, 4), weight (8, 4), bias (8,), silu:
             functions.causal_conv1d_fn and ops.fwd, without autograd
             (tensors that do not require grad), and causal_conv1d_fn with
             weight requiring grad (the autograd graph is recorded)

Times are per call in microseconds: the median over repeats of samples of
about 5 ms each (the minimum in parentheses), candidates round-robin.

    python benchmarks/bench_cpu_host_overhead.py            # 25 repeats
    python benchmarks/bench_cpu_host_overhead.py --quick    # CI smoke run
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness import WIDTH, cpu_arguments, cpu_setting, load_kernel, measure, parse_cpu_arguments

B, D, L = 4, 8, 4


def candidates(cc) -> dict:
    x2 = torch.randn(B, D)
    state = torch.randn(B, D, WIDTH - 1)
    weight = torch.randn(D, WIDTH)
    bias = torch.randn(D)
    x3 = torch.randn(1, D, L)
    weight_grad = weight.clone().requires_grad_(True)
    ops, fn, update = cc.ops, cc.causal_conv1d_fn, cc.causal_conv1d_update
    return {
        "torch.add(x, x)": lambda: torch.add(x2, x2),
        "F.silu(x)": lambda: F.silu(x2),
        "ops.update": lambda: ops.update(x2, state, weight, bias, None, None, True),
        "causal_conv1d_update": lambda: update(x2, state, weight, bias, "silu"),
        "ops.fwd": lambda: ops.fwd(x3, weight, bias, None, None, False, True),
        "causal_conv1d_fn": lambda: fn(x3, weight, bias, activation="silu"),
        "causal_conv1d_fn (grad)": lambda: fn(x3, weight_grad, bias, activation="silu"),
    }


def main():
    ap = cpu_arguments(__doc__, {"fp32": torch.float32}, default_repeats=25, default_warmup=2000,
                       layouts=False)
    args = parse_cpu_arguments(ap)
    cc = load_kernel()
    fns = candidates(cc)
    sample_s = 1e-3 if args.quick else 5e-3
    warmup = 200 if args.quick else args.warmup
    times = measure(fns, args.repeats, warmup, min_sample_s=sample_s)
    print(f"host overhead per call, fp32, {cpu_setting(cc)}, median of {args.repeats}")
    floor = times["torch.add(x, x)"][0]
    for name, (median, best) in times.items():
        print(f"  {name:<26} {median * 1e6:7.2f} us  ({best * 1e6:.2f})  "
              f"{median / floor:5.2f}x torch.add")


if __name__ == "__main__":
    main()
