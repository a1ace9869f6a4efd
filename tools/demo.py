#!/usr/bin/env python3
"""Load the freshly built variant through `kernels`, as users do, and show
that it computes what the reference computes, and how fast, on this host.

    python tools/demo.py            (after python tools/build_variant.py)
"""

from __future__ import annotations

import os
import statistics
import time
import tomllib
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent


def median_time(fn, repeats: int = 15, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    import kernels

    repo_id = tomllib.loads((ROOT / "build.toml").read_text())["general"]["hub"]["repo-id"]
    # LOCAL_KERNELS makes get_kernel(repo_id, version=1) resolve to this checkout.
    os.environ["LOCAL_KERNELS"] = f"{repo_id}={ROOT}"
    cc = kernels.get_kernel(repo_id, version=1)
    print(f"loaded {repo_id} v1 -> {Path(cc.__file__).parent.relative_to(ROOT)} (ops namespace {cc.ops.name})")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}")

    print("\nmax |kernel - float64 reference|")
    torch.manual_seed(0)
    cases = [
        ("fp32 contiguous, W=4, silu", torch.float32, False, 4, {}),
        ("bf16 channel-last, W=4, silu", torch.bfloat16, True, 4, {}),
        ("fp16 contiguous, W=7, initial states", torch.float16, False, 7, {"initial_states": True}),
        ("fp32 channel-last, W=4, seq_idx", torch.float32, True, 4, {"seq_idx": True}),
    ]
    B, D, L = 2, 64, 257
    for name, dtype, channel_last, W, opts in cases:
        x = torch.randn(B, L, D, dtype=dtype).transpose(1, 2) if channel_last else torch.randn(B, D, L, dtype=dtype)
        w = torch.randn(D, W, dtype=dtype)
        b = torch.randn(D, dtype=dtype)
        init = torch.randn(B, D, W - 1, dtype=dtype) if opts.get("initial_states") else None
        seq = (torch.arange(L) >= L // 3).int().expand(B, L).contiguous() if opts.get("seq_idx") else None
        y = cc.causal_conv1d_fn(x, w, b, seq_idx=seq, initial_states=init, activation="silu")
        ref = cc.causal_conv1d_ref(x.double(), w.double(), b.double(), seq_idx=seq,
                                   initial_states=None if init is None else init.double(), activation="silu")
        print(f"  {name:40s} {float((y.double() - ref).abs().max()):.2e}")

    print("\nspeed vs PyTorch (F.conv1d depthwise + silu), median time")
    B, D, L, W = 2, 2048, 2048, 4
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(B, D, L, dtype=dtype)
        w = torch.randn(D, W, dtype=dtype)
        b = torch.randn(D, dtype=dtype)
        t_ref = median_time(lambda: F.silu(F.conv1d(x, w.unsqueeze(1), b, padding=W - 1, groups=D)[..., :L]))
        t_ker = median_time(lambda: cc.causal_conv1d_fn(x, w, b, activation="silu"))
        print(f"  ({B}, {D}, {L}) {str(dtype)[6:]:9s} kernel {t_ker * 1e3:7.2f} ms   "
              f"reference {t_ref * 1e3:7.2f} ms   {t_ref / t_ker:5.1f}x")


if __name__ == "__main__":
    main()
