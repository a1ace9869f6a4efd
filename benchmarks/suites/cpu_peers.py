"""CPU serving ops against the CPU kernels a serving engine ships instead:
vLLM's CPU backend, whose Mamba layers call its own causal_conv1d_update
(peers.VllmCpu) and whose gated delta-net layers call SGLang's CPU kernels
(peers.SglCpu). tools/peers.sh cpu builds both from vLLM's sdist.

At W = 4 with silu, the pool of states in the engines' layout (stride 1
along D), each candidate first checked against our float64 reference on
the same inputs:

  decode   one token a sequence: x (B, D), pool (B, D, 3)
  spec     speculative decoding, k = 3 drafts: x (B, D, 4) a view of a
           (B, 4, D) projection, pool (B, D, 6), num_accepted_tokens in 1..4
  prefill  packed sequences of mixed lengths, x (T, D), final states into a
           pool without initial states: ours causal_conv1d_packed_fwd, the
           peer its prefill kernel (vLLM's CPU prefill for Mamba layers is
           F.conv1d in a Python loop: `bench.py decode`'s packed rows)
  copy     dst.copy_(src) of the bytes the op must move: x and the state
           read, y and the state written (prefill: x read, y written)

A peer's column is its median time, then peer / ours (above 1x: ours is
faster); a dtype or width a peer lacks is named instead. Medians over
repeats (minimum in parentheses), candidates run round-robin.

    python benchmarks/bench.py peers                  # all threads
    python benchmarks/bench.py peers --threads 1 --clock cpu
    python benchmarks/bench.py peers --threads 1 --clock cpu --cold   # bytes from memory
    python benchmarks/bench.py peers --quick          # CI smoke run
"""

from __future__ import annotations

import torch

from . import harness, peers
from .harness import DTYPES, WIDTH, cpu_arguments, cpu_setting, load_kernel, parse_cpu_arguments

DECODE = dict(B=[1, 8, 64, 256], D=[8192])
SPEC = dict(B=[1, 64], D=[8192], drafts=3)
PREFILL = dict(lengths=[1, 17, 1000, 3000, 64, 500, 2000, 1610], D=[4096])
QUICK = dict(B=[1, 8], D=[256], lengths=[1, 17, 70, 40])


def dim_minor(B, D, S, dtype):
    """A (B, D, S) pool with stride 1 along D, as vLLM and SGLang allocate it."""
    return torch.randn(B, S, D, dtype=dtype).transpose(1, 2)


def decode_case(cc, B, D, dtype):
    x = torch.randn(B, D, dtype=dtype)
    state = dim_minor(B, D, WIDTH - 1, dtype)
    kw = dict(state=state)
    return (x, kw), peers.reference(cc, "decode", x, *weights(D, dtype), **kw), B * D * 2 * WIDTH


def spec_case(cc, B, D, k, dtype):
    x = torch.randn(B, k + 1, D, dtype=dtype).transpose(1, 2)
    state = dim_minor(B, D, WIDTH - 1 + k, dtype)
    # Every count from 1 on in turn, shuffled (as gpu.make_case): random
    # draws could make all of them k + 1, where counts are not needed.
    kw = dict(state=state, accepted=(torch.randperm(B) % (k + 1) + 1).to(torch.int32))
    return (x, kw), peers.reference(cc, "spec", x, *weights(D, dtype), **kw), \
        B * D * 2 * (k + 1 + WIDTH - 1 + k)


def prefill_case(cc, lengths, D, dtype):
    T = sum(lengths)
    x = torch.randn(1, T, D, dtype=dtype).transpose(1, 2)  # a (T, D) projection
    cu = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0).to(torch.int32)
    seq_idx = torch.repeat_interleave(torch.arange(len(lengths), dtype=torch.int32),
                                      torch.tensor(lengths)).unsqueeze(0)
    kw = dict(cu_seqlens=cu, seq_idx=seq_idx)
    return (x, kw), peers.reference(cc, "varlen", x, *weights(D, dtype), seq_idx=seq_idx), \
        T * D * 2


_weights = {}


def weights(D, dtype):
    """One (weight, bias) per (D, dtype), so reference and candidates agree."""
    if (D, dtype) not in _weights:
        g = torch.Generator().manual_seed(D)
        _weights[D, dtype] = (torch.randn(D, WIDTH, generator=g).div(WIDTH).to(dtype),
                              torch.randn(D, generator=g).to(dtype))
    return _weights[D, dtype]


class OursServing(peers.Ours):
    """Ours, with the prefill an engine calls: causal_conv1d_packed_fwd on
    x (T, D) into a pool, as SglCpu's prefill does."""

    def varlen(self, x, w, b, cu_seqlens, seq_idx):
        n, D = cu_seqlens.numel() - 1, x.shape[1]
        pool = torch.empty(n, WIDTH - 1, D, dtype=x.dtype).transpose(1, 2)
        rows, fresh = torch.arange(n, dtype=torch.int32), torch.zeros(n, dtype=torch.bool)
        xt = x[0].t()  # (T, D), contiguous
        f = self.cc.causal_conv1d_packed_fwd
        return lambda: f(xt, w, b, cu_seqlens, pool, rows, fresh, "silu").t().unsqueeze(0)


def step_of(adapter, op, x, w, b, kw):
    """The adapter's timed callable for op on these inputs."""
    if op == "decode":
        return adapter.decode(x, kw["state"], w, b)[0]
    if op == "spec":
        return adapter.spec(x, kw["state"], w, b, kw["accepted"])[0]
    return adapter.varlen(x, w, b, kw["cu_seqlens"], kw["seq_idx"])


def run_row(cc, impls, op, case, dtype, repeats, warmup, clock, cold):
    """{name: (median_s, min_s) or a reason} for ours, every peer and the copy."""
    (x, kw), want, values = case
    w, b = weights(x.shape[1], dtype)
    fns, out = {}, {}
    for name, adapter in impls.items():
        why = peers.supports(adapter, op, WIDTH, dtype, dim=x.shape[1])
        if why:
            out[name] = why
            continue
        ok, detail = peers.verify(adapter, op, want, x, w, b, **kw)
        if not ok:
            if name == "ours":
                raise AssertionError(f"ours {op} {dtype}: {detail}")
            out[name] = f"WRONG ({detail})"
            continue
        fns[name] = step_of(adapter, op, x, w, b, kw)
    src = torch.zeros(values // 2, dtype=dtype)  # half the values read, half written
    dst = torch.empty_like(src)
    fns["copy"] = lambda: dst.copy_(src)
    out.update(harness.measure(fns, repeats, warmup, min_sample_s=2e-3, clock=clock, cold=cold))
    return out


def cell(r, ours) -> str:
    if isinstance(r, str):
        return f"{r[:26]:>26}"
    return f"{r[0] * 1e6:9.1f} ({r[1] * 1e6:8.1f}) {r[0] / ours:5.2f}x"


def main() -> int:
    ap = cpu_arguments(__doc__, DTYPES, default_repeats=15, default_warmup=3, layouts=False,
                       clock=True)
    args = parse_cpu_arguments(ap)
    cc = load_kernel()
    found, missing = peers.detect_cpu()
    impls = {"ours": OursServing(cc), **found}
    names = [n for n in impls if n != "ours"]
    print(f"causal_conv1d CPU serving ops against the CPU peers, W={WIDTH}, silu; {cpu_setting(cc)}; "
          f"{harness.cpu_timing(args)}")
    for name, why in missing.items():
        print(f"{name}: {why}")
    Bs, Ds = (QUICK["B"], QUICK["D"]) if args.quick else (DECODE["B"], DECODE["D"])
    rows = []
    for dname in args.dtype:
        dtype = DTYPES[dname]
        for D in Ds:
            for B in Bs:
                rows.append(("decode", dname, f"B={B} D={D}", decode_case(cc, B, D, dtype)))
        for D in (QUICK["D"] if args.quick else SPEC["D"]):
            for B in (QUICK["B"] if args.quick else SPEC["B"]):
                rows.append(("spec", dname, f"B={B} D={D} k=3", spec_case(cc, B, D, 3, dtype)))
        lengths = QUICK["lengths"] if args.quick else PREFILL["lengths"]
        for D in (QUICK["D"] if args.quick else PREFILL["D"]):
            rows.append(("prefill", dname, f"T={sum(lengths)} D={D}",
                         prefill_case(cc, lengths, D, dtype)))
    head = (f"{'op':7} {'dtype':5} {'shape':15} | {'ours us':>19} {'copy us':>19} {'ours/copy':>9} | "
            + " | ".join(f"{n + ' us, /ours':>26}" for n in names))
    print(head)
    print("-" * len(head))
    for op, dname, shape, case in rows:
        r = run_row(cc, impls, "varlen" if op == "prefill" else op, case, DTYPES[dname],
                    args.repeats, args.warmup, harness.CLOCKS[args.clock], args.cold)
        ours = r["ours"][0]
        print(f"{op:7} {dname:5} {shape:15} | {r['ours'][0] * 1e6:9.1f} ({r['ours'][1] * 1e6:8.1f}) "
              f"{r['copy'][0] * 1e6:9.1f} ({r['copy'][1] * 1e6:8.1f}) {ours / r['copy'][0]:8.2f}x | "
              + " | ".join(cell(r[n], ours) for n in names))
    return 0
