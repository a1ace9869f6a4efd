"""Host overhead per call: our operators on tiny CPU tensors against torch's
own ops on the same tensors.

With tensors this small the kernels do almost nothing, so a call's time is
what happens around them: the Python wrapper, the dispatcher, the argument
checks, the output allocation. That host time is also what an eager decode
step pays on a GPU before its kernel is launched. torch.add and F.silu are
the floor: the same dispatcher path with torch's own kernels.

  update     x (B, 8), conv_state (B, 8, 3), weight (8, 4), bias (8,), silu,
             for B = 1 and B = 4: functions.causal_conv1d_update and
             ops.update.default (the overload the function calls), each
             against torch.add(x, x) of the same B
  fwd        x (1, 8, 4), weight (8, 4), bias (8,), silu:
             functions.causal_conv1d_fn and ops.fwd, without autograd
             (tensors that do not require grad), and causal_conv1d_fn with
             weight requiring grad (the autograd graph is recorded)

--floor also times a custom operator with update's schema that checks and
computes nothing (it only allocates its output), registered as update is
(Autograd and ADInplaceOrView fall through to a CPU kernel) and called as
ops.update.default is: what any operator with these arguments costs when
called through torch.ops from Python. It is compiled on first use with
torch.utils.cpp_extension (a C++ compiler and ninja, about a minute).

Times are per call in microseconds: the median over repeats of samples of
about 5 ms each (the minimum in parentheses), candidates round-robin; the
ratio is the median's to torch.add's of the same batch.

    python benchmarks/bench.py host                         # 25 repeats
    python benchmarks/bench.py host --floor                 # and the floor
    python benchmarks/bench.py host --quick                 # CI smoke run
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .harness import WIDTH, cpu_arguments, cpu_setting, load_kernel, measure, parse_cpu_arguments

D, L = 8, 4
BATCHES = (1, 4)

_FLOOR_SOURCE = r"""
#include <ATen/ATen.h>
#include <torch/library.h>

namespace {
at::Tensor update(const at::Tensor& x, const at::Tensor&, const at::Tensor&,
                  const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                  const std::optional<at::Tensor>&, bool) {
  return at::empty(x.sizes(), x.options());
}
}  // namespace

TORCH_LIBRARY(causal_conv1d_host_floor, m) {
  m.def("update(Tensor x, Tensor(a!) conv_state, Tensor weight, Tensor? bias, "
        "Tensor? cache_seqlens, Tensor? conv_state_indices, bool silu) -> Tensor");
  m.impl("update", c10::DispatchKey::CPU, &update);
  m.impl("update", c10::DispatchKey::Autograd, torch::CppFunction::makeFallthrough());
  m.impl("update", c10::DispatchKey::ADInplaceOrView, torch::CppFunction::makeFallthrough());
}
"""


def floor_update():
    """The do-nothing operator with update's schema (see the module doc)."""
    from torch.utils.cpp_extension import load_inline

    load_inline("causal_conv1d_host_floor", cpp_sources=[_FLOOR_SOURCE], is_python_module=False,
                extra_cflags=["-O2", "-std=c++20"])
    return torch.ops.causal_conv1d_host_floor.update.default


def candidates(cc, floor=None) -> dict:
    weight = torch.randn(D, WIDTH)
    bias = torch.randn(D)
    update, update_op = cc.causal_conv1d_update, cc.ops.update.default
    fns = {}
    for B in BATCHES:
        x2 = torch.randn(B, D)
        state = torch.randn(B, D, WIDTH - 1)
        fns[f"B={B} torch.add(x, x)"] = lambda x2=x2: torch.add(x2, x2)
        fns[f"B={B} causal_conv1d_update"] = (
            lambda x2=x2, state=state: update(x2, state, weight, bias, "silu"))
        fns[f"B={B} ops.update.default"] = (
            lambda x2=x2, state=state: update_op(x2, state, weight, bias, None, None, True))
        if floor is not None:
            fns[f"B={B} floor (empty op)"] = (
                lambda x2=x2, state=state: floor(x2, state, weight, bias, None, None, True))
    x2 = torch.randn(4, D)
    x3 = torch.randn(1, D, L)
    weight_grad = weight.clone().requires_grad_(True)
    ops, fn = cc.ops, cc.causal_conv1d_fn
    fns.update({
        "B=4 F.silu(x)": lambda: F.silu(x2),
        "ops.fwd": lambda: ops.fwd(x3, weight, bias, None, None, False, True),
        "causal_conv1d_fn": lambda: fn(x3, weight, bias, activation="silu"),
        "causal_conv1d_fn (grad)": lambda: fn(x3, weight_grad, bias, activation="silu"),
    })
    return fns


def main():
    ap = cpu_arguments(__doc__, {"fp32": torch.float32}, default_repeats=25, default_warmup=2000,
                       layouts=False)
    ap.add_argument("--floor", action="store_true",
                    help="also time a do-nothing operator with update's schema (compiles it)")
    args = parse_cpu_arguments(ap)
    cc = load_kernel()
    fns = candidates(cc, floor_update() if args.floor else None)
    sample_s = 1e-3 if args.quick else 5e-3
    warmup = 200 if args.quick else args.warmup
    times = measure(fns, args.repeats, warmup, min_sample_s=sample_s)
    print(f"host overhead per call, fp32, {cpu_setting(cc)}, median of {args.repeats}")
    for name, (median, best) in times.items():
        batch = name.split()[0] if name.startswith("B=") else "B=4"
        floor = times[f"{batch} torch.add(x, x)"][0]
        print(f"  {name:<28} {median * 1e6:7.2f} us  ({best * 1e6:.2f})  "
              f"{median / floor:5.2f}x torch.add")
