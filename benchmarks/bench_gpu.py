#!/usr/bin/env python3
"""GPU benchmark: the CUDA kernels against the PyTorch reference, and against
a device-to-device copy of the same bytes, measured in the same run.

At W = 4 with bias and silu, bf16 and fp32:

  forward   B=4, D=4096, L=4096, x contiguous and channel-last
            ref  F.silu(F.conv1d(x, w[:, None], b, padding=W-1, groups=D)[..., :L])
            ours causal_conv1d_fn(x, w, b, activation="silu")
  backward  same shapes, gradients of x, weight and bias for a given dout
            ref  torch.autograd.grad of the reference forward (graph built
                 outside the timed region)
            ours ops.bwd (silu recomputed), default and deterministic mode
  decode    B=256, D=8192, state (B, D, 3), one token
            ref  cat / conv1d / silu / copy back (the PyTorch fallback)
            ours causal_conv1d_update(x, state, w, b, "silu")

Times are CUDA-event medians over repeats after warmup. Bandwidth counts the
bytes an op must move (forward: read x, write out; backward: read x and
dout, write dx; decode: read and write the state, read x, write out) and is
compared with `dst.copy_(src)` moving the same number of bytes (half read,
half written). Decode is also timed inside a CUDA graph, which removes the
host's per-launch cost from both sides.

    python benchmarks/bench_gpu.py                    # table
    python benchmarks/bench_gpu.py --json out.json    # also write the numbers
    python benchmarks/bench_gpu.py --quick            # small shapes, smoke test

Targets (H100): forward >= 85 % and backward >= 60 % of copy bandwidth,
decode >= 10x the reference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from harness import load_kernel

W = 4
TARGET_FWD_COPY, TARGET_BWD_COPY, TARGET_DECODE_SPEEDUP = 0.85, 0.60, 10.0


def cuda_time(fn, repeats: int, warmup: int) -> float:
    """Median seconds of fn() between CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events) * 1e-3


def graph_time(fn, repeats: int, calls: int = 20) -> float | None:
    """Median seconds per fn() when `calls` of them replay as one CUDA graph
    (None if fn cannot be captured)."""
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
    except Exception:
        return None
    return cuda_time(graph.replay, repeats, 3) / calls


def copy_time(nbytes: int, repeats: int, warmup: int) -> float:
    """A device-to-device copy moving nbytes in total (nbytes/2 read, nbytes/2 written)."""
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return cuda_time(lambda: dst.copy_(src), repeats, warmup)


def make_x(B, D, L, dtype, layout):
    if layout == "channel_last":
        return torch.randn(B, L, D, dtype=dtype, device="cuda").transpose(1, 2)
    return torch.randn(B, D, L, dtype=dtype, device="cuda")


def ref_fwd(x, w, b):
    L = x.shape[-1]
    return F.silu(F.conv1d(x, w.unsqueeze(1), b, padding=w.shape[1] - 1, groups=x.shape[1])[..., :L])


def bench_fwd(cc, B, D, L, dtype, layout, repeats, warmup):
    x = make_x(B, D, L, dtype, layout)
    w = torch.randn(D, W, dtype=dtype, device="cuda") / W
    b = torch.randn(D, dtype=dtype, device="cuda")
    ours = cuda_time(lambda: cc.causal_conv1d_fn(x, w, b, activation="silu"), repeats, warmup)
    ref = cuda_time(lambda: ref_fwd(x, w, b), repeats, warmup)
    nbytes = 2 * x.numel() * x.element_size()
    copy = copy_time(nbytes, repeats, warmup)
    return dict(op="forward", dtype=str(dtype)[6:], layout=layout, shape=f"B={B} D={D} L={L}",
                ours_us=ours * 1e6, ref_us=ref * 1e6, speedup=ref / ours,
                gbps=nbytes / ours / 1e9, copy_gbps=nbytes / copy / 1e9, of_copy=copy / ours,
                target=f">= {TARGET_FWD_COPY:.0%} of copy", ok=copy / ours >= TARGET_FWD_COPY)


def bench_bwd(cc, B, D, L, dtype, layout, repeats, warmup, deterministic):
    x = make_x(B, D, L, dtype, layout)
    dout = make_x(B, D, L, dtype, layout)
    w = torch.randn(D, W, dtype=dtype, device="cuda") / W
    b = torch.randn(D, dtype=dtype, device="cuda")
    ours = cuda_time(lambda: cc.ops.bwd(x, w, b, None, None, dout, None, True, deterministic),
                     repeats, warmup)
    xr, wr, br = (t.detach().requires_grad_() for t in (x, w, b))
    y = ref_fwd(xr, wr, br)
    ref = cuda_time(lambda: torch.autograd.grad(y, (xr, wr, br), dout, retain_graph=True),
                    repeats, warmup)
    nbytes = 3 * x.numel() * x.element_size()
    copy = copy_time(nbytes, repeats, warmup)
    return dict(op="backward" + (" (deterministic)" if deterministic else ""),
                dtype=str(dtype)[6:], layout=layout, shape=f"B={B} D={D} L={L}",
                ours_us=ours * 1e6, ref_us=ref * 1e6, speedup=ref / ours,
                gbps=nbytes / ours / 1e9, copy_gbps=nbytes / copy / 1e9, of_copy=copy / ours,
                target=f">= {TARGET_BWD_COPY:.0%} of copy", ok=copy / ours >= TARGET_BWD_COPY)


def bench_decode(cc, B, D, dtype, repeats, warmup):
    S = W - 1
    state = torch.randn(B, D, S, dtype=dtype, device="cuda")
    ref_state = state.clone()
    x = torch.randn(B, D, dtype=dtype, device="cuda")
    w = torch.randn(D, W, dtype=dtype, device="cuda") / W
    b = torch.randn(D, dtype=dtype, device="cuda")

    def ours_fn():
        return cc.causal_conv1d_update(x, state, w, b, "silu")

    def ref_fn():
        xs = torch.cat([ref_state, x.unsqueeze(-1)], dim=-1)
        y = F.silu(F.conv1d(xs, w.unsqueeze(1), b, groups=D)[..., -1])
        ref_state.copy_(xs[..., 1:])
        return y

    ours = cuda_time(ours_fn, repeats, warmup)
    ref = cuda_time(ref_fn, repeats, warmup)
    ours_g, ref_g = graph_time(ours_fn, repeats), graph_time(ref_fn, repeats)
    nbytes = (2 * state.numel() + 2 * x.numel()) * x.element_size()
    copy = copy_time(nbytes, repeats, warmup)
    row = dict(op="decode", dtype=str(dtype)[6:], layout="-", shape=f"B={B} D={D} S={S}",
               ours_us=ours * 1e6, ref_us=ref * 1e6, speedup=ref / ours,
               gbps=nbytes / ours / 1e9, copy_gbps=nbytes / copy / 1e9, of_copy=copy / ours,
               target=f">= {TARGET_DECODE_SPEEDUP:.0f}x ref", ok=ref / ours >= TARGET_DECODE_SPEEDUP)
    if ours_g and ref_g:
        row.update(graph_ours_us=ours_g * 1e6, graph_ref_us=ref_g * 1e6, graph_speedup=ref_g / ours_g)
    return row


def table(rows) -> str:
    head = ("| op | dtype | layout | shape | ours (us) | ref (us) | speedup | GB/s | copy GB/s "
            "| % of copy | target | met |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        extra = ""
        if "graph_speedup" in r:
            extra = f" (graph: {r['graph_ours_us']:.1f} vs {r['graph_ref_us']:.1f} us, {r['graph_speedup']:.1f}x)"
        lines.append(
            f"| {r['op']} | {r['dtype']} | {r['layout']} | {r['shape']} | {r['ours_us']:.1f} | "
            f"{r['ref_us']:.1f} | {r['speedup']:.1f}x{extra} | {r['gbps']:.0f} | {r['copy_gbps']:.0f} | "
            f"{r['of_copy']:.0%} | {r['target']} | {'yes' if r['ok'] else 'NO'} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small shapes and few repeats")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_gpu: no GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 1
    cc = load_kernel()
    repeats, warmup = (5, 2) if args.quick else (args.repeats, 10)
    B, D, L = (2, 256, 512) if args.quick else (4, 4096, 4096)
    Bd, Dd = (16, 512) if args.quick else (256, 8192)
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        for layout in ("contiguous", "channel_last"):
            rows.append(bench_fwd(cc, B, D, L, dtype, layout, repeats, warmup))
        for layout in ("contiguous", "channel_last"):
            for det in (False, True):
                rows.append(bench_bwd(cc, B, D, L, dtype, layout, repeats, warmup, det))
        rows.append(bench_decode(cc, Bd, Dd, dtype, repeats, warmup))
    device = torch.cuda.get_device_name()
    print(f"device: {device}, torch {torch.__version__}, kernel {cc.ops.name}")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(device=device, torch=torch.__version__, rows=rows),
                                              indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
