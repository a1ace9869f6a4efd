"""GPU benchmark: our CUDA kernels side by side with the kernels a user could
pick instead (suites/peers.py: upstream causal-conv1d, flash-linear-
attention's Triton kernels, PyTorch's conv1d), on the same tensors in the same
run, and against a device-to-device copy of the same bytes.

Bias and silu throughout; widths 4 (every peer) and 8 (those that take it);
bf16 and fp32:

  forward   B=4 D=4096 L=4096, x contiguous and channel-last
  backward  same shapes: dx, dweight, dbias for a given dout
            (ours also in deterministic mode)
  decode    B = 1, 64, 256, D=8192, one token against a (B, D, W-1) state;
            eager and replayed from a CUDA graph (no host cost per call)
  spec      a speculative-decoding step, B = 64, D = 8192, k = 3 drafts:
            x (B, D, 4) against a (B, D, W-1+3) state and random accepted
            counts, the state in our default layout and in vLLM's (stride
            1 along D, x then (B, 4, D) transposed); eager and in a graph
  varlen    8 packed sequences of random lengths, T=16384 tokens, D=4096,
            x channel-last (the layout packed prefill comes in)

Before a candidate is timed, its result on those tensors is compared with our
float64 reference (torch-ext/causal_conv1d/reference.py); one that differs is
reported WRONG and not timed. Times are CUDA-event medians. Bandwidth counts
the bytes an op must move (forward: read x, write y; backward: read x and
dout, write dx; decode: read and write the state, read x, write y; spec:
read x and the W-1 window columns, write y and the W-2+1+k state columns)
against `dst.copy_(src)` moving as many bytes (half read, half written). A peer
column shows its time and peer/ours (above 1x: ours is faster).

Targets (issue 20, H200 and H100 alike): at least as fast as the fastest
peer on every row; forward >= 90 % of copy (bf16 and fp32); backward >= 75 %
of copy in bf16; decode within 5 % of the copy of its bytes, in a CUDA graph;
spec (issue 17) >= 90 % of the copy of its bytes, in a CUDA graph.

    python benchmarks/bench.py gpu                     # table
    python benchmarks/bench.py gpu --json out.json     # also write the numbers
    python benchmarks/bench.py gpu --quick             # small shapes, smoke test
    python benchmarks/bench.py gpu --peers none        # ours and the copy only
    python benchmarks/bench.py gpu --budget-s 200      # peers not started after 200 s are skipped
    python benchmarks/bench.py gpu --ops spec,decode   # those rows only

Peers are found by import (tools/peers.sh builds and stages their wheels);
the first line says which are missing and why. Triton peers compile and
autotune on first use, which is most of a run's time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from . import peers
from .harness import load_kernel

W = 4  # the width the earlier tables and tools/gpu_profile.py use
WIDTHS = (4, 8)
TARGET_FWD_COPY, TARGET_BWD_COPY_BF16, TARGET_DECODE_GRAPH_COPY = 0.90, 0.75, 0.95
TARGET_SPEC_GRAPH_COPY = 0.90
SPEC_DRAFTS = 3
DEVICE = "cuda"  # "cpu" with --cpu-smoke: the whole flow on CPU (emulator), wall-clock timed


def cuda_time(fn, repeats: int, warmup: int) -> float:
    """Median seconds of fn() between CUDA events."""
    for _ in range(warmup):
        fn()
    if DEVICE == "cpu":
        return statistics.median(_wall(fn) for _ in range(repeats))
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
    if DEVICE == "cpu":
        return None
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


def _wall(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


_copy_cache: dict = {}


def copy_time(nbytes: int, repeats: int, warmup: int, graph: bool = False) -> float:
    """A device-to-device copy moving nbytes in total (nbytes/2 read, nbytes/2
    written); in a CUDA graph with graph=True (the bound for graph-replayed ops)."""
    key = (nbytes, graph)
    if key not in _copy_cache:
        src = torch.empty(nbytes // 2, dtype=torch.uint8, device=DEVICE)
        dst = torch.empty_like(src)
        fn = lambda: dst.copy_(src)  # noqa: E731
        t = graph_time(fn, repeats) if graph else None
        _copy_cache[key] = t if t is not None else cuda_time(fn, repeats, warmup)
    return _copy_cache[key]


def make_x(B, D, L, dtype, layout):
    if layout == "channel_last":
        return torch.randn(B, L, D, dtype=dtype, device="cuda").transpose(1, 2)
    return torch.randn(B, D, L, dtype=dtype, device="cuda")


def make_case(op, dtype, layout, B, D, L, width, device=None, n_seqs=8):
    """Fresh random inputs for one row: dict of the tensors verify() and the
    adapters take. weight is scaled by 1/width so pre-activations stay of order 1."""
    device = device or DEVICE
    g = dict(dtype=dtype, device=device)
    w = torch.randn(D, width, **g) / width
    b = torch.randn(D, **g)
    case = dict(w=w, b=b)
    if op in ("fwd", "bwd"):
        xs = (torch.randn(B, L, D, **g).transpose(1, 2) if layout == "channel_last"
              else torch.randn(B, D, L, **g))
        case["x"] = xs
        if op == "bwd":
            case["dout"] = (torch.randn(B, L, D, **g).transpose(1, 2) if layout == "channel_last"
                            else torch.randn(B, D, L, **g))
    elif op == "decode":
        case["x"] = torch.randn(B, D, **g)
        case["state"] = torch.randn(B, D, width - 1, **g)
    elif op == "spec":  # L = 1 + k tokens per sequence
        S = width - 2 + L
        if layout == "vllm":  # stride 1 along D, as vLLM allocates x and its states
            case["x"] = torch.randn(B, L, D, **g).transpose(1, 2)
            case["state"] = torch.randn(B, S, D, **g).transpose(1, 2)
        else:
            case["x"] = torch.randn(B, D, L, **g)
            case["state"] = torch.randn(B, D, S, **g)
        # every count from 1 to 1 + k as evenly as B allows, in random order
        case["accepted"] = (torch.randperm(B) % L + 1).to(device, torch.int32)
    elif op == "varlen":
        T = L
        cuts = torch.sort(torch.randperm(T - 1)[: n_seqs - 1] + 1).values.tolist()
        bounds = [0] + cuts + [T]
        case["cu_seqlens"] = torch.tensor(bounds, dtype=torch.int32, device=device)
        seq = torch.zeros(T, dtype=torch.int32)
        for i in range(n_seqs):
            seq[bounds[i]:bounds[i + 1]] = i
        case["seq_idx"] = seq[None].to(device)
        case["x"] = torch.randn(1, T, D, **g).transpose(1, 2)
    return case


def op_bytes(op, case) -> int:
    x = case["x"]
    n = x.numel() * x.element_size()
    if op == "bwd":
        return 3 * n
    if op == "decode":
        return 2 * case["state"].numel() * x.element_size() + 2 * n
    if op == "spec":
        B, D, S = case["state"].shape
        window = B * D * (case["w"].shape[1] - 1)
        return (window + B * D * S) * x.element_size() + 2 * n
    return 2 * n


def candidate(adapter, op, case):
    """The zero-argument callable to time (a decode step for decode)."""
    if op == "fwd":
        return adapter.fwd(case["x"], case["w"], case["b"])
    if op == "bwd":
        return adapter.bwd(case["x"], case["w"], case["b"], case["dout"])
    if op == "decode":
        return adapter.decode(case["x"], case["state"], case["w"], case["b"])[0]
    if op == "spec":
        return adapter.spec(case["x"], case["state"], case["w"], case["b"], case["accepted"])[0]
    return adapter.varlen(case["x"], case["w"], case["b"], case["cu_seqlens"], case["seq_idx"])


def measure(cc, impls, op, dtype, layout, B, D, L, width, repeats, warmup, deadline) -> dict:
    """One row: every implementation verified, then timed."""
    case = make_case(op, dtype, layout, B, D, L, width)
    want = peers.reference(cc, op, case["x"], case["w"], case["b"], dout=case.get("dout"),
                           state=case.get("state"), seq_idx=case.get("seq_idx"),
                           accepted=case.get("accepted"))
    nbytes = op_bytes(op, case)
    res = {}
    for name, adapter in impls.items():
        why = peers.supports(adapter, op, width)
        if why is None and name != "ours" and time.monotonic() > deadline:
            why = "skipped (time budget)"
        if why is not None:
            res[name] = dict(status=why)
            continue
        try:
            ok, detail = peers.verify(adapter, op, want, case["x"], case["w"], case["b"],
                                      dout=case.get("dout"), state=case.get("state"),
                                      cu_seqlens=case.get("cu_seqlens"), seq_idx=case.get("seq_idx"),
                                      accepted=case.get("accepted"))
            if not ok:
                res[name] = dict(status=f"WRONG ({detail})")
                continue
            fn = candidate(adapter, op, case)
            r = dict(status="ok", us=cuda_time(fn, repeats, warmup) * 1e6)
            if op in ("decode", "spec"):
                gt = graph_time(candidate(adapter, op, case), repeats)
                if gt is not None:
                    r["graph_us"] = gt * 1e6
            res[name] = r
        except Exception as e:  # a peer's failure is a cell, not the end of the run
            msg = (str(e).splitlines() or [""])[0][:80].replace("|", "/")
            res[name] = dict(status=f"error ({type(e).__name__}: {msg})")
        if name == "ours" and res[name]["status"] == "ok" and op == "bwd":
            det = peers.Ours(cc, deterministic=True)
            res[name]["det_us"] = cuda_time(det.bwd(case["x"], case["w"], case["b"], case["dout"]),
                                            repeats, warmup) * 1e6
    shape = (f"B={B} D={D} S={width - 1}" if op == "decode"
             else f"B={B} D={D} k={L - 1} S={case['state'].shape[-1]}" if op == "spec"
             else f"T={L} D={D} ({len(case['cu_seqlens']) - 1} seqs)" if op == "varlen"
             else f"B={B} D={D} L={L}")
    row = dict(op={"fwd": "forward", "bwd": "backward"}.get(op, op), dtype=str(dtype)[6:],
               layout=layout, width=width, shape=shape, bytes=nbytes, results=res)
    ours = res.get("ours", {})
    if ours.get("status") != "ok":
        row.update(met=False, target="ours verified")
        return row
    copy = copy_time(nbytes, repeats, warmup)
    row.update(copy_us=copy * 1e6, of_copy=copy * 1e6 / ours["us"])
    key = "us"
    checks = []
    if op in ("fwd", "varlen"):
        checks.append(("of_copy", row["of_copy"] >= TARGET_FWD_COPY))
        row["target"] = f">= {TARGET_FWD_COPY:.0%} of copy, fastest"
    elif op == "bwd":
        if dtype == torch.bfloat16:
            checks.append(("of_copy", row["of_copy"] >= TARGET_BWD_COPY_BF16))
            row["target"] = f">= {TARGET_BWD_COPY_BF16:.0%} of copy, fastest"
        else:
            row["target"] = "fastest"
    else:
        target = TARGET_DECODE_GRAPH_COPY if op == "decode" else TARGET_SPEC_GRAPH_COPY
        gcopy = copy_time(nbytes, repeats, warmup, graph=True)
        row["graph_copy_us"] = gcopy * 1e6
        if "graph_us" in ours:
            key = "graph_us"
            row["graph_of_copy"] = gcopy * 1e6 / ours["graph_us"]
            checks.append(("graph_of_copy", row["graph_of_copy"] >= target))
        else:
            checks.append(("graph", False))
        row["target"] = f"graph >= {target:.0%} of copy, fastest"
    for name, r in res.items():
        if name != "ours" and r.get("status") == "ok":
            # like for like: graph vs graph where both captured, else eager vs eager
            k = key if key in r else "us"
            r["ratio"] = r[k] / ours[k]
            checks.append((name, r["ratio"] >= 1.0))
    row["met"] = all(ok for _, ok in checks)
    return row


def cell(r: dict, decode: bool) -> str:
    if r.get("status") != "ok":
        return r.get("status", "-")
    s = f"{r['us']:.1f}"
    if decode and "graph_us" in r:
        s += f" (graph {r['graph_us']:.1f})"
    if "det_us" in r:
        s += f" (det {r['det_us']:.1f})"
    if "ratio" in r:
        s += f", {r['ratio']:.2f}x"
    return s


def table(rows, names) -> str:
    head = ["op", "dtype", "layout", "W", "shape", "ours (us)", "% of copy"] + \
           [f"{n} (us, vs ours)" for n in names if n != "ours"] + ["target", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        dec = r["op"] in ("decode", "spec")
        pct = (f"{r['of_copy']:.0%}" + (f" (graph {r['graph_of_copy']:.0%})" if "graph_of_copy" in r else "")
               if "of_copy" in r else "-")
        cols = [r["op"], r["dtype"], r["layout"], str(r["width"]), r["shape"],
                cell(r["results"]["ours"], dec), pct]
        cols += [cell(r["results"].get(n, {}), dec) for n in names if n != "ours"]
        cols += [r["target"], "yes" if r["met"] else "NO"]
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def plan(quick: bool):
    """(op, dtype, layout, B, D, L, width) rows, width 4 first: with a time
    budget the peers drop out of the width-8 rows before the width-4 ones."""
    B, D, L = (2, 256, 512) if quick else (4, 4096, 4096)
    Dd, Bds = (512, (1, 16)) if quick else (8192, (1, 64, 256))
    Bs = 16 if quick else 64  # the speculative step's batch (issue 17's shape)
    T = 512 if quick else 16384
    rows = []
    for width in WIDTHS:
        for dtype in (torch.bfloat16, torch.float32):
            for layout in ("contiguous", "channel_last"):
                rows.append(("fwd", dtype, layout, B, D, L, width))
            for layout in ("contiguous", "channel_last"):
                rows.append(("bwd", dtype, layout, B, D, L, width))
            for Bd in Bds:
                rows.append(("decode", dtype, "-", Bd, Dd, 1, width))
            for layout in ("default", "vllm"):
                rows.append(("spec", dtype, layout, Bs, Dd, 1 + SPEC_DRAFTS, width))
            rows.append(("varlen", dtype, "channel_last", 1, D, T, width))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small shapes and few repeats")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--peers", default="all", help="all, none, or a comma list of: torch,upstream,fla")
    ap.add_argument("--ops", default="all",
                    help="all, or a comma list of: fwd,bwd,decode,spec,varlen (the rows to run)")
    ap.add_argument("--budget-s", type=float, default=0,
                    help="no peer is started after this many seconds (0: no limit)")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="run the whole flow on CPU tensors (with CAUSAL_CONV1D_CUDA_EMU=1 and an "
                         "emulator build: the CUDA kernels); times mean nothing")
    args = ap.parse_args()
    global DEVICE
    if args.cpu_smoke:
        DEVICE = "cpu"
    elif not torch.cuda.is_available():
        print("bench.py gpu: no GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 1
    # fp32 rows compare fp32 arithmetic: cuDNN may otherwise run PyTorch's
    # fp32 conv1d in TF32, which fails the fp32 tolerance before being timed.
    torch.backends.cudnn.allow_tf32 = False
    t0 = time.monotonic()
    deadline = t0 + args.budget_s if args.budget_s > 0 else float("inf")
    cc = load_kernel()
    found, missing = peers.detect()
    impls = {"ours": peers.Ours(cc), "torch": peers.Torch(), **found}
    wanted = None if args.peers == "all" else set() if args.peers == "none" else set(args.peers.split(","))
    if wanted is not None:
        impls = {n: a for n, a in impls.items() if n == "ours" or n in wanted}
    names = list(impls) + [n for n in missing if wanted is None or n in wanted]
    repeats, warmup = (5, 2) if args.quick else (args.repeats, 5)
    ops = None if args.ops == "all" else set(args.ops.split(","))
    unknown = (ops or set()) - {r[0] for r in plan(True)}
    if unknown:
        ap.error(f"--ops: unknown {', '.join(sorted(unknown))}")
    rows = []
    for op, dtype, layout, B, D, L, width in plan(args.quick):
        if ops is not None and op not in ops:
            continue
        row = measure(cc, impls, op, dtype, layout, B, D, L, width, repeats, warmup, deadline)
        for n in missing:
            row["results"][n] = dict(status="not installed" if n != "vllm" else "not installable standalone")
        rows.append(row)
        print(f"  {row['op']} {row['dtype']} {row['layout']} W={width} {row['shape']}: "
              f"{time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    device = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (smoke run, times mean nothing)"
    print(f"device: {device}, torch {torch.__version__}, kernel {cc.ops.name}, "
          f"{time.monotonic() - t0:.0f} s")
    for n, why in missing.items():
        print(f"peer {n}: {why}")
    print(table(rows, names))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(device=device, torch=torch.__version__,
                                                   missing=missing, rows=rows), indent=2) + "\n")
    return 0 if all(r["results"]["ours"].get("status") == "ok" for r in rows) else 1
