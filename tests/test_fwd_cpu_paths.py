"""The CPU forward's internal paths (causal_conv1d/cpu/fwd.h), in every tier.

The forward picks a path from the strides of x and out:

  rows      contiguous along L: SIMD along t, in blocks of 4096 tokens, a
            row's last partial vector masked; short rows (without seq_idx;
            up to 14 tokens where the row kernel slides, else up to 16)
            copied through tiles of 64 channels into the channels path
  channels  contiguous along D (y.transpose(1, 2), slices of a projection):
            SIMD across channels, 4 tokens per register pass
  generic   anything else (scalar)

and, inside rows and channels, an unrolled kernel for widths 1-4 and a
runtime-width one for the others. Each instruction-set tier (default, avx2,
avx512, avx512_bf16) is a separate compilation of those kernels, chosen when
the first op runs, so the whole grid runs once per tier, in a subprocess
with CAUSAL_CONV1D_CPU_TIER set. Everything is compared with the
float64 reference (tolerance of x's dtype: weights and bias are exact in
float64). The grid aims at the places where fast paths go wrong: the first
W-1 outputs (initial states or zeros), tails shorter than a vector, lengths
1, 2, 3, W-1, 129 and 4097 (two row blocks), D not a multiple of any vector
width, seq_idx boundaries and padding inside vector chunks, final states,
every x/weight dtype pairing, and thread counts (results must be bitwise
identical for 1, 2 and 3 threads).

The backward's channel-last path (cpu/bwd.h run_channel_last, a fused pass
for widths 1-4 and a buffered one for everything else) is compiled per tier
too, so its grid runs in the same workers: gradients against autograd
through the float64 reference, and bitwise across thread counts.

Run directly, this file is the worker: `python test_fwd_cpu_paths.py SEED`
prints a JSON report for the tier its environment selects.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from helpers import random_seq_idx, randn_layout, tolerance  # noqa: E402

I32 = torch.int32
F16, BF16, F32, F64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
TIERS = ["default", "avx2", "avx512", "avx512_bf16"]
LAYOUTS = ["contiguous", "channel_last", "proj_slice"]  # rows, channels, channels with s2 > D


# ---------------------------------------------------------------------------
# worker: runs the grid in this process and reports the failures


class Checker:
    def __init__(self, cc):
        self.cc = cc
        self.cases = 0
        self.failures: list[str] = []

    def run(self, what, x, w, b=None, seq=None, init=None, final=False, silu=False):
        """One call against the reference; records a failure instead of raising."""
        self.cases += 1
        act = "silu" if silu else None
        try:
            got = self.cc.causal_conv1d_fn(x, w, b, seq_idx=seq, initial_states=init,
                                           return_final_states=final, activation=act)
            want = self.cc.causal_conv1d_ref(
                x.double(), w.double(), None if b is None else b.double(), seq_idx=seq,
                initial_states=None if init is None else init.double(),
                return_final_states=final, activation=act)
            got, want = (got, want) if final else ((got,), (want,))
            for dim in (1, 2):  # out keeps x's layout, so it takes the same path
                if x.stride(dim) == 1 and x.shape[1] > 1 and x.shape[2] > 1:
                    assert got[0].stride(dim) == 1, f"out strides {got[0].stride()}, x {x.stride()}"
            rtol, atol = tolerance(x.dtype)
            for name, g, e in zip(("out", "final_states"), got, want):
                assert g.dtype == x.dtype, f"{name} dtype {g.dtype}"
                torch.testing.assert_close(g.double(), e, rtol=rtol, atol=atol,
                                           msg=lambda m: f"{name}: {m}")
        except Exception as e:  # noqa: BLE001 (collected, reported by the parent)
            shape = f"x {tuple(x.shape)} {x.dtype} strides {x.stride()}, w {tuple(w.shape)} {w.dtype}"
            opts = f"seq={seq is not None} init={init is not None} final={final} silu={silu}"
            self.failures.append(f"{what}: {shape}; {opts}: {str(e)[:600]}")


def inputs(B, D, L, W, layout, xdt, wdt, seq=False, init=False, padding=True):
    x = randn_layout(B, D, L, layout, xdt)
    w = torch.randn(D, W).to(wdt)
    b = torch.randn(D).to(wdt)
    s = random_seq_idx(B, L, padding=padding) if seq else None
    i = torch.randn(B, D, W - 1).to(xdt) if init else None
    return x, w, b, s, i


def grid_pairings(ck: Checker):
    """Every x/weight dtype pairing, in both fast layouts, unrolled and runtime widths."""
    pairs = [(a, c) for a in (F32, F16, BF16) for c in (F32, F16, BF16)] + [(F64, F64)]
    for xdt, wdt in pairs:
        for layout in ("contiguous", "channel_last"):
            for W, L in ((4, 129), (7, 70)):
                x, w, b, s, i = inputs(2, 37, L, W, layout, xdt, wdt, seq=True, init=True)
                ck.run(f"pairing {layout} W={W}", x, w, b, s, i, final=True, silu=True)
            x, w, _, _, _ = inputs(1, 37, 33, 3, layout, xdt, wdt)
            ck.run(f"pairing {layout} no bias", x, w)


def grid_widths(ck: Checker):
    """Widths 1..32 x lengths 1, 2, 3, W-1, 129 (and 4097 for some widths) x
    layouts; the options and x's dtype rotate so that every combination
    appears across the grid."""
    xdts = [F32, BF16, F16, F64]
    n = 0
    for W in range(1, 33):
        lengths = {1, 2, 3, max(W - 1, 1), 129}
        if W in (1, 2, 3, 4, 5, 8, 13, 32):  # two row blocks (kept to a few widths: time)
            lengths.add(4097)
        for L in sorted(lengths):
            for layout in LAYOUTS:
                n += 1
                xdt = xdts[n % 4]
                wdt = F64 if xdt == F64 else [F32, BF16, F16][n % 3]
                seq, init, final, silu = (bool(n >> k & 1) for k in range(4))
                # the channels path vectorizes over D: more than two vectors
                # and a ragged end; rows: a few rows
                B, D = (2, 3) if layout == "contiguous" else (1, 37)
                if L == 4097:
                    B = 1
                x, w, b, s, i = inputs(B, D, L, W, layout, xdt, wdt, seq=seq, init=init)
                ck.run(f"width W={W} L={L} {layout}", x, w, b, s, i, final=final, silu=silu)


def segment_patterns(L):
    """Named (2, L) seq_idx patterns with boundaries at every offset inside
    vector chunks (16 and 8 lanes), padding runs short and long, leading
    padding, ids that come back, and a single segment."""
    cuts = [1, 5, 7, 8, 9, 15, 16, 17, 23, 31, 32, 33, 47, 63, 64, 65, 100, 101, 150, 151]
    base = torch.zeros(L, dtype=I32)
    for k, c in enumerate(c for c in cuts if c < L):
        base[c:] = k + 1
    pad = base.clone()
    pad[40:42] = -1     # short run
    pad[110:143] = -1   # longer than two 16-lane chunks
    pad[L - 5:] = -1    # trailing: the last segment is padding
    lead = base.clone()
    lead[:20] = -1      # the first segment (owner of the initial state) is padding
    back = base.clone() % 3  # ids that come back: 0 1 2 0 1 2 ... (equality, not order)
    return {
        "boundaries": torch.stack([base, pad]),
        "leading_padding": torch.stack([lead, base]),
        "reused_ids": torch.stack([back, pad]),
        "one_segment": torch.zeros(2, L, dtype=I32),
        "all_padding": torch.full((2, L), -1, dtype=I32),
    }


def grid_rows_first_vector(ck: Checker):
    """The rows path's first vector of a row, which looks back into the
    initial state (or zeros) without staging, and its last, a masked partial
    vector: widths 1-4 (the in-place kernels), lengths around one and two
    vectors and with every tail length of an 8-lane vector, every x dtype
    with taps of its own dtype (bf16 pairs in the avx512_bf16 tier) and
    fp32; initial states contiguous and, for odd L, a channel-last view
    (its columns D apart)."""
    for W in (1, 2, 3, 4):
        for L in (15, 16, 17, 18, 19, 20, 21, 22, 23, 32, 33, 47, 64):
            for xdt in (F32, BF16, F16):
                for wdt in {xdt, F32}:
                    x, w, b, _, i = inputs(2, 5, L, W, "contiguous", xdt, wdt, init=True)
                    if L % 2:
                        i = torch.randn(2, W - 1, 5).to(xdt).transpose(1, 2)
                    ck.run(f"rows first vector W={W} L={L}", x, w, b, None, i, silu=L % 2 == 0)
                    ck.run(f"rows first vector W={W} L={L} zeros", x, w, None, silu=L % 2 == 1)


def grid_short_rows(ck: Checker):
    """Short rows, which go through channels tiles of 64: two whole tiles
    and a ragged one, rows that are slices of longer ones (x's channel
    stride above L), lengths around the cuts at 14 (widths 1-4, where the
    row kernel slides) and 16, initial and final states, unrolled and
    runtime widths, every 16-bit x dtype."""
    n = 0
    for W in (2, 4, 7):
        for L in (1, 4, 5, 14, 15, 16, 17):
            for sliced in (False, True):
                n += 1
                xdt = [F32, BF16, F16][n % 3]
                x, w, b, _, i = inputs(2, 2 * 64 + 7, L, W, "contiguous", xdt, F32, init=n % 2 == 0)
                if sliced:
                    x = torch.randn(2, 2 * 64 + 7, L + 3).to(xdt)[:, :, 2 : 2 + L]
                ck.run(f"short rows W={W} L={L} sliced={sliced}", x, w, b, None, i, final=True,
                       silu=n % 2 == 1)


def grid_segments(ck: Checker):
    L = 200
    for name, s in segment_patterns(L).items():
        for layout in ("contiguous", "channel_last"):
            for W in (2, 4, 6, 17):
                for xdt in (F32, BF16):
                    x, w, b, _, i = inputs(2, 21, L, W, layout, xdt, F32, init=True)
                    ck.run(f"segments {name} W={W} {layout}", x, w, b, s, i, final=True,
                           silu=W % 4 == 0)
                    # long rows: a boundary pattern crossing the 4096-token block edge
                    if name == "boundaries" and layout == "contiguous" and xdt == F32:
                        LL = 4097 + 40
                        s2 = torch.zeros(1, LL, dtype=I32)
                        s2[:, 4090:] = 1
                        s2[:, 4095:4099] = -1
                        s2[:, 4100:] = 2
                        x, w, b, _, i = inputs(1, 3, LL, W, layout, xdt, F32, init=True)
                        ck.run(f"segments block edge W={W}", x, w, b, s2, i, final=True)


def grid_generic(ck: Checker):
    """Strides the fast paths do not take: both strides > 1, and an out whose
    layout differs from x's (fwd_out into a channel-last out)."""
    for W in (1, 4, 9):
        x, w, b, s, i = inputs(2, 9, 50, W, "strided", BF16, F32, seq=True, init=True)
        ck.run(f"generic strided W={W}", x, w, b, s, i, final=True, silu=True)
        ck.cases += 1
        x, w, b, s, i = inputs(2, 9, 50, W, "contiguous", F32, F32, seq=True, init=True)
        out = torch.empty(2, 50, 9).transpose(1, 2)
        fin = torch.empty(2, 9, W - 1)
        ck.cc.ops.fwd_out(x, w, b, s, i, out, fin, True)
        want, want_fin = ck.cc.causal_conv1d_ref(x.double(), w.double(), b.double(), seq_idx=s,
                                                 initial_states=i.double(),
                                                 return_final_states=True, activation="silu")
        for name, g, e in (("out", out, want), ("final_states", fin, want_fin)):
            if not torch.allclose(g.double(), e, rtol=3e-4, atol=1e-3):
                ck.failures.append(f"generic mixed layouts W={W}: {name} differs by "
                                   f"{(g.double() - e).abs().max().item():.3g}")


def grid_silu_extremes(ck: Checker):
    """silu over its whole range, -200..200, +-inf and NaN, against F.silu in
    float64 (the kernels use their own exp and reciprocal): W = 1 passes
    every value through, W = 4 with taps (0, 0, 0, 1) the finite ones."""
    import math

    import torch.nn.functional as F

    finite = torch.linspace(-200, 200, 801)
    specials = torch.tensor([math.inf, -math.inf, math.nan, 0.0, -0.0, 1e-30, -1e-30, 87.5, -87.5])
    for W, vals in ((1, torch.cat([finite, specials])), (4, finite)):
        vals = vals[torch.randperm(len(vals))]
        D = 9 if W == 1 else 3
        L = len(vals) // D
        for layout in ("contiguous", "channel_last"):
            for xdt in (F32, BF16, F16, F64):
                x = vals[: D * L].reshape(1, D, L).to(xdt)
                if layout == "channel_last":
                    x = x.transpose(1, 2).contiguous().transpose(1, 2)
                w = torch.zeros(D, W, dtype=F64 if xdt == F64 else F32)
                w[:, -1] = 1
                ck.cases += 1
                got = ck.cc.causal_conv1d_fn(x, w, activation="silu").double()
                want = F.silu(x.double())
                rtol = tolerance(xdt)[0]
                if not torch.allclose(got, want, rtol=rtol, atol=1e-6, equal_nan=True):
                    bad = ~torch.isclose(got, want, rtol=rtol, atol=1e-6, equal_nan=True)
                    ck.failures.append(f"silu extremes W={W} {layout} {xdt}: x={x[bad][:4].tolist()} "
                                       f"got {got[bad][:4].tolist()} want {want[bad][:4].tolist()}")


def grid_threads(ck: Checker):
    """Bitwise the same for 1, 2 and 3 threads, on shapes that split into
    many tasks (two row blocks; several channel tiles and a ragged D)."""
    before = torch.get_num_threads()
    for layout, (B, D, L) in (("contiguous", (2, 5, 4097 + 33)), ("channel_last", (2, 67, 300))):
        for W in (4, 6):
            x, w, b, s, i = inputs(B, D, L, W, layout, BF16, F32, seq=True, init=True)
            results = []
            for n in (1, 2, 3):
                torch.set_num_threads(n)
                results.append(ck.cc.causal_conv1d_fn(x, w, b, seq_idx=s, initial_states=i,
                                                      return_final_states=True, activation="silu"))
            torch.set_num_threads(before)
            ck.cases += 1
            for n, (out, fin) in zip((2, 3), results[1:]):
                same = torch.equal(out.view(torch.int16), results[0][0].view(torch.int16)) and \
                    torch.equal(fin.view(torch.int16), results[0][1].view(torch.int16))
                if not same:
                    ck.failures.append(f"threads {layout} W={W}: {n} threads differ from 1")


# ---------------------------------------------------------------------------
# the channel-last backward (cpu/bwd.h run_channel_last): a fused pass for
# widths 1-4 (tiles of 128 tokens, groups of 4 tokens, the H tokens after a
# tile recomputed), the buffered one for wider windows and for the tiles that
# meet seq_idx cuts, dinitial_states or dfinal_states; both in one call.

PARAM_TOL = {F32: (1e-3, 1e-3), F16: (3e-3, 5e-3), BF16: (1e-2, 5e-2), F64: (1e-9, 1e-9)}


def check_bwd(ck: Checker, what, x, w, b=None, seq=None, init=None, dfin=False, silu=True,
              dout_layout="channel_last"):
    """ops.bwd against torch.autograd through the float64 reference."""
    ck.cases += 1
    B, D, L = x.shape
    W = w.shape[1]
    try:
        dout = randn_layout(B, D, L, dout_layout, x.dtype)
        dfs = torch.randn(B, D, W - 1).to(x.dtype) if dfin else None
        got = ck.cc.ops.bwd(x, w, b, seq, init, dout, dfs, silu, False)
        leaves = [t.double().requires_grad_() if t is not None else None for t in (x, w, b, init)]
        out = ck.cc.causal_conv1d_ref(leaves[0], leaves[1], leaves[2], seq_idx=seq,
                                      initial_states=leaves[3], return_final_states=dfin,
                                      activation="silu" if silu else None)
        outs, gouts = (out, (dout, dfs)) if dfin else ((out,), (dout,))
        torch.autograd.backward(outs, [g.double() for g in gouts])
        xtol = tolerance(x.dtype, w.dtype)
        checks = [("dx", got[0], leaves[0].grad, xtol), ("dweight", got[1], leaves[1].grad,
                                                           PARAM_TOL[w.dtype])]
        if b is not None:
            checks.append(("dbias", got[2], leaves[2].grad, PARAM_TOL[w.dtype]))
        if init is not None:
            checks.append(("dinitial_states", got[3], leaves[3].grad, xtol))
        for name, g, r, (rtol, atol) in checks:
            torch.testing.assert_close(g.double(), r, rtol=rtol, atol=atol,
                                       msg=lambda m: f"{name}: {m}")
    except Exception as e:  # noqa: BLE001 (collected, reported by the parent)
        opts = (f"bias={b is not None} seq={seq is not None} init={init is not None} "
                f"dfinal={dfin} silu={silu} dout {dout_layout}")
        ck.failures.append(f"bwd {what}: x {tuple(x.shape)} {x.dtype}, w {w.dtype}; {opts}: "
                           f"{str(e)[:600]}")


def grid_bwd_channel_last(ck: Checker):
    """Lengths around the 128-token tiles and the 4-token groups (the last
    tile's recomputed tokens running past L), D around the vector widths and
    split into several tasks, every width of the fused pass and one beyond,
    the options rotating so that each meets every layout of dout and dtype."""
    xdts = [F32, BF16, F16, F64]
    n = 0
    for W in (1, 2, 3, 4, 5):
        for L in (1, 2, 3, 5, 127, 128, 130, 133, 259):
            for D in (7, 37, 600):
                if D == 600 and L not in (3, 130, 259):
                    continue  # (1, 600, L): split into two tasks of channels (time)
                n += 1
                xdt = xdts[n % 4]
                wdt = F64 if xdt == F64 else [F32, BF16, F32][n % 3]
                bias, init, dfin, silu = (bool(n >> k & 1) for k in range(4))
                B = 1 if D == 600 else 2
                x, w, b, _, i = inputs(B, D, L, W, "channel_last", xdt, wdt, init=init)
                check_bwd(ck, f"W={W} L={L} D={D}", x, w, b if bias else None, None, i, dfin,
                          silu)
    # seq_idx: uniform tiles (fused) next to tiles with a cut or padding
    # (buffered) in one call; and dout in another layout (buffered throughout).
    for W in (2, 4):
        for xdt in (F32, BF16):
            seq = torch.zeros(2, 400, dtype=I32)
            seq[:, 200:] = 1
            seq[1, 300:310] = -1
            seq[1, 384:] = -1  # the last tile is all padding
            x, w, b, _, i = inputs(2, 37, 400, W, "channel_last", xdt, F32, init=True)
            check_bwd(ck, f"segments W={W}", x, w, b, seq, i, dfin=True)
            check_bwd(ck, f"dout contiguous W={W}", x, w, b, None, None, dout_layout="contiguous")


def grid_bwd_threads(ck: Checker):
    """The channel-last backward bitwise the same for 1, 2 and 3 threads, on
    shapes with many tiles and with D split among tasks."""
    before = torch.get_num_threads()
    for B, D, L in ((2, 67, 300), (1, 700, 200)):
        x, w, b, _, i = inputs(B, D, L, 4, "channel_last", BF16, F32, init=True)
        dout = randn_layout(B, D, L, "channel_last", BF16)
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(ck.cc.ops.bwd(x, w, b, None, i, dout, None, True, False))
        torch.set_num_threads(before)
        ck.cases += 1
        for n, res in zip((2, 3), results[1:]):
            if not all(torch.equal(g, r) for g, r in zip(res, results[0])):
                ck.failures.append(f"bwd threads ({B}, {D}, {L}): {n} threads differ from 1")


def worker(seed: int) -> dict:
    import kernels

    root = Path(os.environ.get("CAUSAL_CONV1D_KERNEL_ROOT", HERE.parent))
    cc = kernels.get_local_kernel(root, backend=os.environ.get("CAUSAL_CONV1D_TEST_BACKEND"))
    torch.manual_seed(seed)
    ck = Checker(cc)
    for grid in (grid_pairings, grid_widths, grid_rows_first_vector, grid_short_rows,
                 grid_segments, grid_generic,
                 grid_silu_extremes, grid_threads, grid_bwd_channel_last, grid_bwd_threads):
        grid(ck)
    return {"tier": cc.kernel_tier(), "cases": ck.cases, "failures": ck.failures}


# ---------------------------------------------------------------------------
# the test: one worker per tier


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def tier_supported(tier: str) -> bool:
    if tier == "default":
        return True
    flags = cpu_flags()
    if tier == "avx2":
        return {"avx2", "fma", "f16c"} <= flags
    avx512 = {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags
    return avx512 if tier == "avx512" else avx512 and "avx512_bf16" in flags


@pytest.mark.parametrize("tier", TIERS)
def test_fwd_paths_in_tier(tier, seeded):
    if not tier_supported(tier):
        pytest.skip(f"this CPU cannot run the {tier} tier")
    env = dict(os.environ, CAUSAL_CONV1D_CPU_TIER=tier)
    proc = subprocess.run([sys.executable, __file__, str(seeded)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"worker crashed (seed {seeded}):\n{proc.stderr[-3000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["tier"] == tier, f"asked for {tier}, ran {report['tier']}"
    assert report["cases"] >= 600, report["cases"]  # the grid really ran
    failures = report["failures"]
    assert not failures, (f"{len(failures)} of {report['cases']} cases failed in tier {tier} "
                          f"(seed {seeded}):\n" + "\n".join(failures[:15]))


if __name__ == "__main__":
    print(json.dumps(worker(int(sys.argv[1]) if len(sys.argv) > 1 else 0)))
