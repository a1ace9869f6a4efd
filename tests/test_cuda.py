"""The CUDA backend: every op against the float64 reference and against the
CPU backend, on the GPU.

Skipped, with the reason, where torch.cuda.is_available() is False. Two ways
to run it:

  on a GPU      the CUDA variant is the default `cc` (CAUSAL_CONV1D_KERNEL_ROOT,
                as for every test); the CPU variant for the comparisons is
                loaded from CAUSAL_CONV1D_CPU_KERNEL_ROOT (default: this
                checkout) with backend="cpu" -- build both (tools/gpu_check.sh).
  emulated      CAUSAL_CONV1D_CUDA_EMU=1 with `cc` pointing at a build of
                causal_conv1d/cuda/emu/build_emu.py: the same grids run the
                CUDA kernels on CPU tensors (checks indexing, masks, states,
                reductions; not timing, memory model or device-side guards).

Tests whose name contains "sanitizer" form the small grid that
tools/gpu_check.sh runs under compute-sanitizer (pytest -k sanitizer), with
test_rows_more_tiles_than_warps (-k more_tiles) for the kernels that loop.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
import torch

from conftest import ROOT, load_kernel
from helpers import DTYPE_PAIRS as CPU_DTYPE_PAIRS
from helpers import random_seq_idx, tolerance

EMU = os.environ.get("CAUSAL_CONV1D_CUDA_EMU") == "1"
DEV = "cpu" if EMU else "cuda"
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not EMU and not torch.cuda.is_available(),
        reason="needs an NVIDIA GPU (torch.cuda.is_available() is False); "
        "CAUSAL_CONV1D_CUDA_EMU=1 runs these grids against the CPU-emulated CUDA kernels",
    ),
]
gpu_only = pytest.mark.skipif(EMU, reason="needs a real GPU (device-side behaviour)")
# Repeats of the bitwise-repeatability tests (emulation is deterministic anyway).
REPEATS = 3 if EMU else 1000

# CUDA refuses fp64: every CPU pairing but the fp64 one.
DTYPE_PAIRS = [p for p in CPU_DTYPE_PAIRS if p[0] != torch.float64]
# contiguous -> rows kernels; channel_last / proj_slice -> chanlast kernels
# (widths <= 8); strided -> generic; unaligned -> rows without vector loads.
LAYOUTS = ["contiguous", "channel_last", "proj_slice", "strided", "unaligned"]


def _name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


def _pair_id(p) -> str:
    return f"x{_name(p[0])}-w{_name(p[1])}"


@pytest.fixture(scope="session")
def cu(cc):
    """The module under test; refuses to silently test the CPU variant."""
    ns = cc.ops.name if hasattr(cc.ops, "name") else str(cc.ops)
    want = "_cudaemu_" if EMU else "_cuda_"
    assert want in ns, f"expected the {'emulated ' if EMU else ''}CUDA variant, loaded {ns}"
    return cc


@pytest.fixture(scope="session")
def cpu_cc():
    """The CPU variant, for backend-vs-backend comparisons (skips if not built)."""
    root = Path(os.environ.get("CAUSAL_CONV1D_CPU_KERNEL_ROOT", ROOT))
    try:
        return load_kernel(root, backend="cpu")
    except Exception as e:  # not built here
        pytest.skip(f"CPU variant not loadable from {root}: {e}")


def make_x(B: int, D: int, L: int, layout: str, dtype: torch.dtype) -> torch.Tensor:
    g = dict(dtype=dtype, device=DEV)
    if layout == "contiguous":
        return torch.randn(B, D, L, **g)
    if layout == "channel_last":
        return torch.randn(B, L, D, **g).transpose(1, 2)
    if layout == "proj_slice":
        return torch.randn(B, L, 3 * D, **g)[..., D : 2 * D].transpose(1, 2)
    if layout == "strided":
        return torch.randn(B, 2 * D, 2 * L, **g)[:, ::2, ::2]
    if layout == "unaligned":  # L-contiguous, rows start at odd element offsets
        return torch.randn(B, D, L + 1, **g)[..., 1:]
    raise ValueError(layout)


def close(got, want, dtypes, msg, scaled=False):
    """assert_close at the dtypes' tolerance; `scaled` makes atol relative to
    the largest reference value (sums over B * L terms, e.g. dweight)."""
    rtol, atol = tolerance(*dtypes)
    want = want.detach().double().cpu()
    if scaled:
        rtol, atol = max(rtol, 1e-3), max(atol, 1e-3) * max(1.0, want.abs().max().item())
    torch.testing.assert_close(
        got.detach().double().cpu(), want, rtol=rtol, atol=atol, msg=lambda m: f"{msg}\n{m}"
    )


def exact(got, want, msg):
    assert torch.equal(got.detach().double().cpu(), want.detach().double().cpu()), msg


def _d(t):
    return None if t is None else t.double()


# ---------------------------------------------------------------------------
# forward


def fwd_case(cc, seed, *, B=2, D=40, L=70, W=4, xdt=torch.float32, wdt=torch.float32,
             layout="contiguous", bias=True, act="silu", seq=False, init=True, final=True,
             state_layout="contiguous"):
    x = make_x(B, D, L, layout, xdt)
    w = torch.randn(D, W, dtype=wdt, device=DEV)
    b = torch.randn(D, dtype=wdt, device=DEV) if bias else None
    s = random_seq_idx(B, L, device=DEV) if seq else None
    ini = make_x(B, D, W - 1, state_layout, xdt) if init else None
    got = cc.causal_conv1d_fn(x, w, b, seq_idx=s, initial_states=ini,
                              return_final_states=final, activation=act)
    want = cc.causal_conv1d_ref(x.double(), w.double(), _d(b), seq_idx=s,
                                initial_states=_d(ini), return_final_states=final,
                                activation=act)
    msg = (f"seed={seed} B={B} D={D} L={L} W={W} x={xdt} w={wdt} layout={layout} bias={bias} "
           f"act={act} seq={seq} init={init} final={final} states={state_layout}")
    out, ref = (got[0], want[0]) if final else (got, want)
    assert out.dtype == xdt and out.shape == (B, D, L) and out.device.type == DEV, msg
    close(out, ref, (xdt, wdt), msg)
    if final:
        exact(got[1], want[1], "final_states must be exact copies: " + msg)
    return x, w, b, s, ini


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("W", range(1, 33))
@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=_pair_id)
def test_fwd_grid(cu, seeded, dtypes, W, layout):
    fwd_case(cu, seeded, W=W, xdt=dtypes[0], wdt=dtypes[1], layout=layout, seq=W % 2 == 0)


FWD_OPTIONS = list(itertools.product([False, True], [None, "silu"], [False, True], [False, True],
                                     [False, True]))


@pytest.mark.parametrize("L", [1, 2, 5, 300])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("bias,act,seq,init,final", FWD_OPTIONS,
                         ids=[f"b{int(o[0])}-{o[1]}-s{int(o[2])}-i{int(o[3])}-f{int(o[4])}"
                              for o in FWD_OPTIONS])
def test_fwd_options(cu, seeded, L, layout, bias, act, seq, init, final):
    fwd_case(cu, seeded, L=L, W=4 if L != 5 else 6, layout=layout, bias=bias, act=act, seq=seq,
             init=init, final=final,
             state_layout="channel_last" if layout != "contiguous" else "contiguous")


@pytest.mark.parametrize("layout", ["contiguous", "channel_last", "strided"])
@pytest.mark.parametrize("B,D,L", [(1, 1, 9), (3, 3, 40), (2, 7, 257), (5, 33, 65), (1, 300, 130),
                                   (64, 8, 3), (2, 520, 20)])
def test_fwd_sizes(cu, seeded, B, D, L, layout):
    for W in (2, 4, 5):
        fwd_case(cu, seeded, B=B, D=D, L=L, W=W, xdt=torch.bfloat16, wdt=torch.float32,
                 layout=layout, seq=True)


@pytest.mark.parametrize("W", [1, 2, 4, 7])
def test_fwd_empty_sequence_with_states(cu, seeded, W):
    """L == 0: final_states are the initial states (and zeros without them)."""
    x = torch.randn(3, 16, 0, device=DEV)
    w = torch.randn(16, W, device=DEV)
    ini = torch.randn(3, 16, W - 1, device=DEV)
    out, fin = cu.causal_conv1d_fn(x, w, initial_states=ini, return_final_states=True)
    assert out.shape == (3, 16, 0)
    exact(fin, ini, f"seed={seeded}")
    _, fin = cu.causal_conv1d_fn(x, w, return_final_states=True)
    assert fin.shape == (3, 16, W - 1) and not fin.any()


def test_fwd_out_preallocated_any_layout(cu, seeded):
    x = make_x(3, 24, 77, "contiguous", torch.float16)
    w = torch.randn(24, 4, device=DEV)
    for out in (torch.empty(3, 77, 24, device=DEV, dtype=torch.float16).transpose(1, 2),
                torch.empty(3, 48, 154, device=DEV, dtype=torch.float16)[:, ::2, ::2]):
        cu.ops.fwd_out(x, w, None, None, None, out, None, True)
        close(out, cu.causal_conv1d_ref(x.double(), w.double(), activation="silu"),
              (torch.float16,), f"seed={seeded}")


# ---------------------------------------------------------------------------
# backward


def bwd_case(cc, seed, *, B=2, D=40, L=70, W=4, xdt=torch.float32, wdt=torch.float32,
             layout="contiguous", bias=True, act="silu", seq=False, init=True, final=True,
             dout_layout=None, deterministic=False):
    x = make_x(B, D, L, layout, xdt).detach().requires_grad_()
    w = torch.randn(D, W, dtype=wdt, device=DEV, requires_grad=True)
    b = torch.randn(D, dtype=wdt, device=DEV, requires_grad=True) if bias else None
    s = random_seq_idx(B, L, device=DEV) if seq else None
    ini = torch.randn(B, D, W - 1, dtype=xdt, device=DEV, requires_grad=True) if init else None
    dout = make_x(B, D, L, dout_layout or layout, xdt)
    dfin = torch.randn(B, D, W - 1, dtype=xdt, device=DEV) if final else None
    inputs = [t for t in (x, w, b, ini) if t is not None]

    def run(fn, conv):
        ins = [conv(t).detach().requires_grad_() for t in inputs]
        xx, ww = ins[0], ins[1]
        bb = ins[2] if bias else None
        ii = ins[-1] if init else None
        res = fn(xx, ww, bb, seq_idx=s, initial_states=ii, return_final_states=final,
                 activation=act)
        outs, grads = ([res[0], res[1]], [conv(dout), conv(dfin)]) if final else ([res], [conv(dout)])
        return torch.autograd.grad(outs, ins, grads)

    saved = os.environ.get("CAUSAL_CONV1D_DETERMINISTIC")
    os.environ["CAUSAL_CONV1D_DETERMINISTIC"] = "1" if deterministic else "0"
    try:
        got = run(cc.causal_conv1d_fn, lambda t: t)
    finally:
        if saved is None:
            os.environ.pop("CAUSAL_CONV1D_DETERMINISTIC")
        else:
            os.environ["CAUSAL_CONV1D_DETERMINISTIC"] = saved
    want = run(cc.causal_conv1d_ref, lambda t: t.double())
    names = ["dx", "dweight"] + (["dbias"] if bias else []) + (["dinitial_states"] if init else [])
    msg = (f"seed={seed} B={B} D={D} L={L} W={W} x={xdt} w={wdt} layout={layout} "
           f"dout={dout_layout or layout} bias={bias} act={act} seq={seq} init={init} "
           f"final={final} det={deterministic}")
    for name, g, r in zip(names, got, want):
        assert g.dtype == (wdt if name in ("dweight", "dbias") else xdt), f"{name}: {msg}"
        close(g, r, (xdt, wdt), f"{name}: {msg}", scaled=name in ("dweight", "dbias"))
    if layout in ("channel_last", "proj_slice") and D > 1 and L > 1:
        assert got[0].stride(1) == 1, f"dx keeps x's layout: {msg}"
    return got


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("W", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 32])
@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=_pair_id)
def test_bwd_grid(cu, seeded, dtypes, W, layout):
    bwd_case(cu, seeded, W=W, xdt=dtypes[0], wdt=dtypes[1], layout=layout, seq=W % 2 == 0)


BWD_OPTIONS = list(itertools.product([False, True], [None, "silu"], [False, True], [False, True],
                                     [False, True]))


@pytest.mark.parametrize("L", [1, 3, 300])
@pytest.mark.parametrize("layout", ["contiguous", "channel_last", "strided"])
@pytest.mark.parametrize("bias,act,seq,init,final", BWD_OPTIONS,
                         ids=[f"b{int(o[0])}-{o[1]}-s{int(o[2])}-i{int(o[3])}-f{int(o[4])}"
                              for o in BWD_OPTIONS])
def test_bwd_options(cu, seeded, L, layout, bias, act, seq, init, final):
    bwd_case(cu, seeded, L=L, layout=layout, bias=bias, act=act, seq=seq, init=init, final=final,
             xdt=torch.bfloat16 if L == 300 else torch.float32)


@pytest.mark.parametrize("layout,dout_layout", [("contiguous", "channel_last"),
                                                ("channel_last", "contiguous"),
                                                ("contiguous", "unaligned"),
                                                ("proj_slice", "strided")])
@pytest.mark.parametrize("W", [3, 4, 6])
def test_bwd_dout_layout_differs(cu, seeded, layout, dout_layout, W):
    bwd_case(cu, seeded, L=150, W=W, layout=layout, dout_layout=dout_layout, seq=True,
             xdt=torch.float16, wdt=torch.float16)


@pytest.mark.parametrize("layout", ["contiguous", "channel_last", "strided"])
@pytest.mark.parametrize("B,D,L", [(1, 1, 9), (3, 5, 600), (2, 130, 70), (33, 3, 17), (1, 257, 300)])
def test_bwd_sizes(cu, seeded, B, D, L, layout):
    for W in (2, 4, 8):
        bwd_case(cu, seeded, B=B, D=D, L=L, W=W, xdt=torch.bfloat16, wdt=torch.bfloat16,
                 layout=layout, seq=True)


LONG_ROW_DTYPES = [DTYPE_PAIRS[0], (torch.bfloat16, torch.float32), (torch.float16, torch.bfloat16)]


@pytest.mark.parametrize("init", [False, True])
@pytest.mark.parametrize("L", [264, 1032, 2056])
@pytest.mark.parametrize("W", [2, 3, 4])
@pytest.mark.parametrize("dtypes", LONG_ROW_DTYPES, ids=_pair_id)
@pytest.mark.parametrize("layout", ["contiguous", "channel_last"])
def test_long_rows(cu, seeded, layout, dtypes, W, L, init):
    """Rows of one or more warp tiles (the tiled fast paths: W <= 4, no
    seq_idx, 16-byte aligned rows, so L is a multiple of 8), with a partial
    last tile; forward and backward, silu or not."""
    act = "silu" if L != 1032 else None
    fwd_case(cu, seeded, B=2, D=3, L=L, W=W, xdt=dtypes[0], wdt=dtypes[1], layout=layout,
             act=act, init=init, final=True)
    bwd_case(cu, seeded, B=2, D=3, L=L, W=W, xdt=dtypes[0], wdt=dtypes[1], layout=layout,
             act=act, init=init, final=init, deterministic=L == 2056)


@pytest.mark.parametrize("dtypes", LONG_ROW_DTYPES[:2], ids=_pair_id)
def test_rows_more_tiles_than_warps(cu, seeded, dtypes):
    """More warp tiles in the forward (6,300, the last of each row partial)
    than an H100 holds warps at once, so that kernels walking tiles in a
    loop (one resident wave: rows_piped) take several turns, and the
    emulator's three blocks many; the backward on a tenth of the rows (630
    tiles: its kernels take one tile per warp), in both reductions."""
    fwd_case(cu, seeded, B=3, D=700, L=1032, W=4, xdt=dtypes[0], wdt=dtypes[1], init=True)
    for det in (False, True):
        bwd_case(cu, seeded, B=3, D=70, L=1032, W=4, xdt=dtypes[0], wdt=dtypes[1], init=True,
                 final=True, deterministic=det)


@pytest.mark.parametrize("W", [2, 4, 6])
def test_bwd_empty_sequence_with_states(cu, seeded, W):
    """L == 0: dinitial_states receive dfinal_states; dweight is zero."""
    x = torch.randn(2, 8, 0, device=DEV)
    w = torch.randn(8, W, device=DEV)
    ini = torch.randn(2, 8, W - 1, device=DEV)
    dout = torch.randn(2, 8, 0, device=DEV)
    dfin = torch.randn(2, 8, W - 1, device=DEV)
    dx, dw, db, dini = cu.ops.bwd(x, w, None, None, ini, dout, dfin, True, False)
    exact(dini, dfin, f"seed={seeded}")
    assert dx.shape == (2, 8, 0) and not dw.any()


@pytest.mark.parametrize("layout", ["contiguous", "channel_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=_name)
def test_bwd_deterministic_matches_atomic(cu, seeded, layout, dtype):
    """Both reductions agree (to fp32 rounding); the deterministic one is the same every run."""
    B, D, L, W = 3, 72, 600, 4
    x, dout = make_x(B, D, L, layout, dtype), make_x(B, D, L, layout, dtype)
    w, b = torch.randn(D, W, device=DEV), torch.randn(D, device=DEV)
    s = random_seq_idx(B, L, device=DEV)
    ini = torch.randn(B, D, W - 1, device=DEV, dtype=dtype)
    det = cu.ops.bwd(x, w, b, s, ini, dout, None, True, True)
    fast = cu.ops.bwd(x, w, b, s, ini, dout, None, True, False)
    for name, a, f in zip(("dx", "dweight", "dbias", "dinit"), det, fast):
        close(f, a, (torch.float32,), f"{name} seed={seeded}", scaled=True)
    again = cu.ops.bwd(x, w, b, s, ini, dout, None, True, True)
    for name, a, c in zip(("dx", "dweight", "dbias", "dinit"), det, again):
        assert torch.equal(a, c), f"deterministic {name} differs between runs, seed={seeded}"


# Channel-last backward shapes whose block iterations own several time tiles
# (cuda/bwd.cu make_plan: group = clamp(B * tiles * cblocks // 528, 1, 4),
# tiles of 32 steps for fp32 and 64 for 16-bit x, cblocks = ceil(D / 128)),
# each with a partial last group and a partial last tile:
#   xdt, B, D, L, W, layout, seq        tiles  group  groups (last)  last tile
CHANLAST_GROUP_CASES = [
    (torch.float32, 2, 131, 16935, 4, "channel_last", True),  # 530  4  133 (2)  7 steps
    (torch.bfloat16, 1, 5, 102401, 6, "proj_slice", True),    # 1601 3  534 (2)  1
    (torch.bfloat16, 4, 8, 33800, 4, "channel_last", False),  # 529  4  133 (1)  8, full tiles
    (torch.float16, 3, 3, 22719, 8, "channel_last", True),    # 355  2  178 (1)  63
    (torch.float32, 4, 40, 8450, 1, "proj_slice", False),     # 265  2  133 (1)  2
]


@pytest.mark.parametrize("xdt,B,D,L,W,layout,seq", CHANLAST_GROUP_CASES,
                         ids=[f"{_name(c[0])}-B{c[1]}-D{c[2]}-L{c[3]}-W{c[4]}-{c[5]}-s{int(c[6])}"
                              for c in CHANLAST_GROUP_CASES])
def test_bwd_chanlast_tile_groups(cu, seeded, xdt, B, D, L, W, layout, seq):
    """Tile groups of the channel-last backward: both reductions against the
    float64 reference (with initial and final states), and the deterministic
    one bitwise the same on a repeat."""
    for det in (False, True):
        bwd_case(cu, seeded, B=B, D=D, L=L, W=W, xdt=xdt, wdt=torch.float32, layout=layout,
                 seq=seq, init=True, final=True, deterministic=det)
    x, dout = make_x(B, D, L, layout, xdt), make_x(B, D, L, layout, xdt)
    w, b = torch.randn(D, W, device=DEV), torch.randn(D, device=DEV)
    s = random_seq_idx(B, L, device=DEV) if seq else None
    ini = torch.randn(B, D, W - 1, device=DEV, dtype=xdt)
    dfin = torch.randn(B, D, W - 1, device=DEV, dtype=xdt)
    first = cu.ops.bwd(x, w, b, s, ini, dout, dfin, True, True)
    again = cu.ops.bwd(x, w, b, s, ini, dout, dfin, True, True)
    for name, a, c in zip(("dx", "dweight", "dbias", "dinit"), first, again):
        assert torch.equal(a, c), f"deterministic {name} differs between runs, seed={seeded}"


@pytest.mark.parametrize("mode", ["use_deterministic_algorithms", "env"])
@pytest.mark.parametrize("layout", ["contiguous", "channel_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=_name)
def test_bitwise_repeatable(cu, seeded, monkeypatch, mode, layout, dtype):
    """Forward and backward (through autograd, deterministic mode) give
    bit-identical results on every one of REPEATS runs."""
    B, D, L, W = 2, 256, 1024 if not EMU else 200, 4
    x = make_x(B, D, L, layout, dtype).detach().requires_grad_()
    w = torch.randn(D, W, device=DEV, requires_grad=True)
    b = torch.randn(D, device=DEV, requires_grad=True)
    s = random_seq_idx(B, L, device=DEV)
    dout = make_x(B, D, L, layout, dtype)

    def once():
        y = cu.causal_conv1d_fn(x, w, b, seq_idx=s, activation="silu")
        gx, gw, gb = torch.autograd.grad(y, (x, w, b), dout)
        return [y.detach(), gx, gw, gb]

    if mode == "env":
        monkeypatch.setenv("CAUSAL_CONV1D_DETERMINISTIC", "1")
        first = once()
        runs = (once() for _ in range(REPEATS))
    else:
        prev = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        try:
            first = once()
            runs = [once() for _ in range(REPEATS)]
        finally:
            torch.use_deterministic_algorithms(prev)
    for i, r in enumerate(runs):
        for name, a, c in zip(("out", "dx", "dweight", "dbias"), first, r):
            assert torch.equal(a, c), f"run {i}: {name} not bitwise equal (seed={seeded})"


# ---------------------------------------------------------------------------
# decode


def make_state(N, D, S, dtype, layout):
    g = dict(dtype=dtype, device=DEV)
    if layout == "contiguous":
        return torch.randn(N, D, S, **g)
    if layout == "channel_last":
        return torch.randn(N, S, D, **g).transpose(1, 2)
    if layout == "slice":  # every other pool row, a column window
        return torch.randn(2 * N, D, S + 3, **g)[::2, :, 2 : 2 + S]
    raise ValueError(layout)


def pool_indices(B, N, pad_frac=0.25, pad=-1):
    idx = torch.randperm(N)[:B].to(torch.int32)
    idx[torch.rand(B) < pad_frac] = pad
    return idx.to(DEV)


def update_case(cc, seed, *, B=5, D=40, W=4, S=None, L=None, xdt=torch.float32,
                wdt=torch.float32, circular=False, pool=False, act="silu", bias=True,
                x_layout="contiguous", state_layout="contiguous"):
    S = W - 1 if S is None else S
    N = B + 4 if pool else B
    state = make_state(N, D, S, xdt, state_layout)
    x = make_x(B, D, 1 if L is None else L, x_layout, xdt)
    if L is None:
        x = x[..., 0]
    w = torch.randn(D, W, dtype=wdt, device=DEV)
    b = torch.randn(D, dtype=wdt, device=DEV) if bias else None
    idx = pool_indices(B, N) if pool else None
    cs = torch.randint(0, 3 * max(S, 1), (B,), dtype=torch.int32, device=DEV) if circular else None
    ref_state = state.double()
    want = cc.causal_conv1d_update_ref(x.double(), ref_state, w.double(), _d(b), act, cs, idx)
    before = state.clone()
    got = cc.causal_conv1d_update(x, state, w, b, act, cs, idx)
    msg = (f"seed={seed} B={B} D={D} W={W} S={S} L={L} x={xdt} w={wdt} circular={circular} "
           f"pool={pool} x_layout={x_layout} state_layout={state_layout}")
    assert got.shape == x.shape and got.dtype == xdt, msg
    close(got, want, (xdt, wdt), msg)
    exact(state, ref_state, "conv_state must be bit-exact: " + msg)
    if pool:
        untouched = torch.ones(N, dtype=torch.bool)
        untouched[idx[idx >= 0].long().cpu()] = False
        exact(state[untouched.to(DEV)], before[untouched.to(DEV)], "unused pool rows: " + msg)
        assert not got[idx < 0].any(), "padding rows must output 0: " + msg


@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize("circular", [False, True])
@pytest.mark.parametrize("S_extra", [0, 3])
@pytest.mark.parametrize("W", [1, 2, 3, 4, 5, 8, 16, 32])
@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=_pair_id)
def test_update_grid(cu, seeded, dtypes, W, S_extra, circular, pool):
    if W == 1 and S_extra == 0 and circular:
        pytest.skip("a circular buffer needs state_len >= 1 (checks.cpp refuses it)")
    update_case(cu, seeded, W=W, S=W - 1 + S_extra, xdt=dtypes[0], wdt=dtypes[1],
                circular=circular, pool=pool)


@pytest.mark.parametrize("x_layout", ["contiguous", "channel_last", "strided"])
@pytest.mark.parametrize("state_layout", ["contiguous", "channel_last", "slice"])
@pytest.mark.parametrize("L", [None, 1, 3, 9])
@pytest.mark.parametrize("circular", [False, True])
def test_update_layouts_and_lengths(cu, seeded, x_layout, state_layout, L, circular):
    update_case(cu, seeded, W=4, S=5, L=L, circular=circular, pool=True, x_layout=x_layout,
                state_layout=state_layout, xdt=torch.bfloat16, wdt=torch.float32)


@pytest.mark.parametrize("act", ["silu", None])
@pytest.mark.parametrize("x_layout", ["contiguous", "proj_slice", "strided"])
@pytest.mark.parametrize("state_layout", ["contiguous", "channel_last", "slice"])
@pytest.mark.parametrize("W", [2, 3, 4])
def test_update_decode_layouts(cu, seeded, W, state_layout, x_layout, act):
    """One token with state_len W - 1, the decode kernel's case where the
    state's columns are contiguous: batch rows not a multiple of the rows a
    thread takes, partial warps of channels, strided tokens and state rows,
    padding rows; without the activation also without bias."""
    update_case(cu, seeded, B=9, D=70, W=W, pool=True, act=act, bias=act is not None,
                x_layout=x_layout, state_layout=state_layout, xdt=torch.float16,
                wdt=torch.bfloat16)


@pytest.mark.parametrize("circular", [False, True])
def test_update_race_pool(cu, seeded, circular):
    """Many rows of a large pool, distinct random indices with padding rows,
    repeated: every step must equal a vectorised reference exactly (states)
    and within tolerance (outputs); nothing outside the live rows moves."""
    B, D, S, W, N = (96, 32, 3, 4, 300) if EMU else (2048, 256, 3, 4, 6000)
    dtype = torch.bfloat16
    pool = torch.randn(N, D, S, dtype=dtype, device=DEV)
    w = torch.randn(D, W, device=DEV)
    b = torch.randn(D, device=DEV)
    for step in range(3 if EMU else 25):
        idx = pool_indices(B, N, pad_frac=0.3)
        cs = torch.randint(0, 1000, (B,), dtype=torch.int32, device=DEV) if circular else None
        x = torch.randn(B, D, dtype=dtype, device=DEV)
        live = idx >= 0
        rows = idx[live].long()
        expect_pool = pool.clone()
        st = pool[rows]  # (n, D, S)
        if circular:
            order = (torch.arange(S, device=DEV)[None, :] + (cs[live].long() % S)[:, None]) % S
            hist = torch.gather(st, 2, order[:, None, :].expand(-1, D, -1))
        else:
            hist = st
        stream = torch.cat([hist, x[live][..., None]], dim=-1)  # (n, D, S + 1)
        y = torch.nn.functional.silu(
            (stream[..., S + 1 - W :].double() * w.double()).sum(-1) + b.double())
        want = torch.zeros(B, D, dtype=torch.float64, device=DEV)
        want[live] = y
        if circular:
            new = st.clone()
            new.scatter_(2, (cs[live].long() % S)[:, None, None].expand(-1, D, 1), x[live][..., None])
            expect_pool[rows] = new
        else:
            expect_pool[rows] = stream[..., 1:]
        got = cu.causal_conv1d_update(x, pool, w, b, "silu", cs, idx)
        assert torch.equal(pool, expect_pool), f"step {step}: pool differs (seed={seeded})"
        close(got, want, (dtype,), f"step {step} seed={seeded}")
        assert not got[~live].any(), f"step {step}: padding rows must output 0"


# ---------------------------------------------------------------------------
# packed sequences


def packed_inputs(lengths, D, dtype, layout, lead=2, tail=3):
    cu = [lead]
    for n in lengths:
        cu.append(cu[-1] + n)
    T = cu[-1] + tail  # tokens outside every sequence, before and after
    cu = torch.tensor(cu, dtype=torch.int32, device=DEV)
    g = dict(dtype=dtype, device=DEV)
    if layout == "contiguous":
        x = torch.randn(T, D, **g)
    elif layout == "proj_slice":
        x = torch.randn(T, 3 * D, **g)[:, D : 2 * D]
    elif layout == "channels_first":
        x = torch.randn(D, T, **g).t()
    else:
        raise ValueError(layout)
    return x, cu


@pytest.mark.parametrize("layout", ["contiguous", "proj_slice", "channels_first"])
@pytest.mark.parametrize("state_len", [1, 3, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=_name)
def test_varlen_states_grid(cu, seeded, dtype, state_len, layout):
    x, cus = packed_inputs([5, 0, 1, 12, 3, 8, 2], 37, dtype, layout)
    got = cu.causal_conv1d_varlen_states(x, cus, state_len)
    exact(got, cu.causal_conv1d_varlen_states_ref(x, cus, state_len), f"seed={seeded}")


def packed_case(cc, seed, *, W=4, S=None, D=37, xdt=torch.float32, wdt=torch.float32,
                layout="contiguous", channels_first=False, pad_slot_id=-1, act="silu",
                lengths=(5, 0, 1, 12, 3, 70, 2), bias=True):
    S = W - 1 if S is None else S
    B = len(lengths)
    x, cus = packed_inputs(list(lengths), D, xdt, layout)
    N = B + 3
    pool = torch.randn(N, D, S, dtype=xdt, device=DEV)
    idx = torch.randperm(N)[:B].to(torch.int32)
    idx[torch.rand(B) < 0.25] = pad_slot_id
    idx = idx.to(DEV)
    has_init = (torch.rand(B) < 0.6).to(DEV)
    w = torch.randn(D, W, dtype=wdt, device=DEV)
    b = torch.randn(D, dtype=wdt, device=DEV) if bias else None
    ref_pool = pool.double()
    want = cc.causal_conv1d_packed_fwd_ref(x.double(), w.double(), _d(b), cus, ref_pool, idx,
                                           has_init, act, pad_slot_id)
    xin = x.t() if channels_first else x
    got = cc.causal_conv1d_packed_fwd(xin, w, b, cus, pool, idx, has_init, act, pad_slot_id,
                                      channels_first)
    if channels_first:
        got = got.t()
    msg = (f"seed={seed} W={W} S={S} x={xdt} w={wdt} layout={layout} cf={channels_first} "
           f"pad={pad_slot_id} lengths={lengths}")
    close(got, want, (xdt, wdt), msg)
    exact(pool, ref_pool, "conv_states must be bit-exact: " + msg)


@pytest.mark.parametrize("S_extra", [0, 3])
@pytest.mark.parametrize("W", [1, 2, 3, 4, 6, 16, 32])
@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=_pair_id)
def test_packed_grid(cu, seeded, dtypes, W, S_extra):
    packed_case(cu, seeded, W=W, S=W - 1 + S_extra, xdt=dtypes[0], wdt=dtypes[1])


@pytest.mark.parametrize("pad_slot_id", [-1, 5])
@pytest.mark.parametrize("channels_first", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "proj_slice", "channels_first"])
def test_packed_layouts(cu, seeded, layout, channels_first, pad_slot_id):
    packed_case(cu, seeded, layout=layout, channels_first=channels_first,
                pad_slot_id=pad_slot_id, xdt=torch.bfloat16)


def test_packed_many_sequences(cu, seeded):
    lengths = torch.randint(0, 9, (300 if not EMU else 40,)).tolist()
    packed_case(cu, seeded, lengths=lengths, W=4, S=6, D=64)


# ---------------------------------------------------------------------------
# against the CPU backend (the same inputs on both devices)


def _cpu(t):
    return None if t is None else t.cpu()


def _skip_unimplemented(fn):
    try:
        return fn()
    except NotImplementedError as e:
        pytest.skip(f"CPU backend: {e}")


@pytest.mark.parametrize("layout", ["contiguous", "channel_last", "strided"])
@pytest.mark.parametrize("W", [1, 2, 3, 4, 6, 9, 32])
@pytest.mark.parametrize("dtypes", [DTYPE_PAIRS[0], DTYPE_PAIRS[2], DTYPE_PAIRS[5]], ids=_pair_id)
def test_fwd_bwd_vs_cpu(cu, cpu_cc, seeded, dtypes, W, layout):
    xdt, wdt = dtypes
    B, D, L = 2, 40, 90
    x, dout = make_x(B, D, L, layout, xdt), make_x(B, D, L, layout, xdt)
    w, b = torch.randn(D, W, dtype=wdt, device=DEV), torch.randn(D, dtype=wdt, device=DEV)
    s = random_seq_idx(B, L, device=DEV)
    ini = torch.randn(B, D, W - 1, dtype=xdt, device=DEV)
    dfin = torch.randn(B, D, W - 1, dtype=xdt, device=DEV)
    msg = f"seed={seeded} W={W} {dtypes} {layout}"
    g = cu.ops.fwd(x, w, b, s, ini, True, True)
    c = _skip_unimplemented(lambda: cpu_cc.ops.fwd(*map(_cpu, (x, w, b, s, ini)), True, True))
    close(g[0], c[0], dtypes, "out " + msg)
    exact(g[1], c[1], "final " + msg)
    g = cu.ops.bwd(x, w, b, s, ini, dout, dfin, True, True)
    c = _skip_unimplemented(
        lambda: cpu_cc.ops.bwd(*map(_cpu, (x, w, b, s, ini, dout, dfin)), True, True))
    for name, a, e in zip(("dx", "dweight", "dbias", "dinit"), g, c):
        close(a, e, dtypes, f"{name} {msg}", scaled=name in ("dweight", "dbias"))


@pytest.mark.parametrize("circular", [False, True])
@pytest.mark.parametrize("W", [2, 4, 6])
def test_update_vs_cpu(cu, cpu_cc, seeded, W, circular):
    B, D, S, N = 6, 40, W + 1, 10
    pool = torch.randn(N, D, S, device=DEV, dtype=torch.float16)
    x = torch.randn(B, D, 3, device=DEV, dtype=torch.float16)
    w, b = torch.randn(D, W, device=DEV), torch.randn(D, device=DEV)
    idx = pool_indices(B, N)
    cs = torch.randint(0, 20, (B,), dtype=torch.int32, device=DEV) if circular else None
    pool_c = pool.to("cpu", copy=True)  # a copy even when DEV is the CPU (emulation)
    c = _skip_unimplemented(lambda: cpu_cc.ops.update(x.cpu(), pool_c, w.cpu(), b.cpu(), _cpu(cs),
                                                      idx.cpu(), True))
    g = cu.ops.update(x, pool, w, b, cs, idx, True)
    close(g, c, (torch.float16,), f"seed={seeded}")
    exact(pool, pool_c, f"pool seed={seeded}")


def test_packed_vs_cpu(cu, cpu_cc, seeded):
    x, cus = packed_inputs([4, 0, 9, 1, 30], 40, torch.bfloat16, "contiguous")
    w, b = torch.randn(40, 4, device=DEV), torch.randn(40, device=DEV)
    pool = torch.randn(8, 40, 5, device=DEV, dtype=torch.bfloat16)
    idx = torch.tensor([3, -1, 0, 6, 2], dtype=torch.int32, device=DEV)
    hi = torch.tensor([True, True, False, True, True], device=DEV)
    pool_c = pool.to("cpu", copy=True)  # a copy even when DEV is the CPU (emulation)
    c = _skip_unimplemented(lambda: cpu_cc.ops.fwd_packed(x.t().cpu(), w.cpu(), b.cpu(), cus.cpu(),
                                                          pool_c, idx.cpu(), hi.cpu(), -1, True))
    g = cu.ops.fwd_packed(x.t(), w, b, cus, pool, idx, hi, -1, True)
    close(g, c, (torch.bfloat16,), f"seed={seeded}")
    exact(pool, pool_c, f"pool seed={seeded}")
    gs = cu.causal_conv1d_varlen_states(x, cus, 6)
    cs = _skip_unimplemented(lambda: cpu_cc.causal_conv1d_varlen_states(x.cpu(), cus.cpu(), 6))
    exact(gs, cs, f"varlen seed={seeded}")


# ---------------------------------------------------------------------------
# device-side behaviour (real GPU only)


@gpu_only
def test_invalid_device_indices_stay_in_bounds(cu):
    """Index tensors on the device are not validated on the host (that would
    need a sync): garbage must neither fault nor touch memory it should not.
    Pool indices outside [0, N) act as padding; cu_seqlens are clamped."""
    D, W, S, N = 32, 4, 3, 5
    w = torch.randn(D, W, device=DEV)
    pool = torch.randn(N, D, S, device=DEV)
    before = pool.clone()
    x = torch.randn(4, D, device=DEV)
    idx = torch.tensor([N, 1 << 30, -7, N + 100], dtype=torch.int32, device=DEV)
    out = cu.causal_conv1d_update(x, pool, w, None, None, None, idx)
    torch.cuda.synchronize()
    assert not out.any() and torch.equal(pool, before)
    cs = torch.tensor([-5, -(1 << 31), 7, 1 << 30], dtype=torch.int32, device=DEV)
    cu.causal_conv1d_update(x, pool[:4], w, None, None, cs, None)
    torch.cuda.synchronize()
    before = pool.clone()
    T = 20
    xt = torch.randn(T, D, device=DEV)
    for cus in ([0, 50, 3, -4, 20], [-(1 << 31), (1 << 31) - 1, 5, 6, 2], [19, 0, 0, 25, 99]):
        cus = torch.tensor(cus, dtype=torch.int32, device=DEV)
        cu.causal_conv1d_varlen_states(xt, cus, 6)
        idx = torch.tensor([0, N, 2, -3], dtype=torch.int32, device=DEV)
        cu.causal_conv1d_packed_fwd(xt, w, None, cus, pool, idx, None, "silu")
        torch.cuda.synchronize()
    assert torch.equal(pool[[1, 3, 4]], before[[1, 3, 4]]), "rows no sequence uses stay as they were"


@gpu_only
def test_current_stream_and_device(cu, seeded):
    x = make_x(2, 64, 300, "channel_last", torch.bfloat16)
    w = torch.randn(64, 4, device=DEV)
    want = cu.causal_conv1d_fn(x, w, activation="silu")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(20):
            got = cu.causal_conv1d_fn(x, w, activation="silu")
    torch.cuda.current_stream().wait_stream(s)
    assert torch.equal(got, want)
    if torch.cuda.device_count() > 1:
        x1, w1 = x.to("cuda:1"), w.to("cuda:1")
        got1 = cu.causal_conv1d_fn(x1, w1, activation="silu")  # current device stays cuda:0
        assert got1.device == x1.device and torch.equal(got1.cpu(), want.cpu())


@gpu_only
@pytest.mark.slow
def test_64bit_indexing(cu):
    """More than 2**31 elements: offsets must be 64-bit everywhere."""
    free, _ = torch.cuda.mem_get_info()
    n = (1 << 31) + 4096
    if free < 4 * n * 2 + (1 << 30):
        pytest.skip(f"needs ~{4 * n * 2 >> 30} GiB free GPU memory")
    D, L = 2, n // 2
    x = torch.randn(1, D, L, device=DEV, dtype=torch.bfloat16)
    w = torch.randn(D, 4, device=DEV)
    out = cu.causal_conv1d_fn(x, w, activation="silu")
    for lo in (0, (1 << 30) - 5, L - 100):
        seg = x[..., max(lo - 3, 0) : lo + 100]
        ref = cu.causal_conv1d_ref(seg.double(), w.double(), activation="silu")[..., lo - max(lo - 3, 0) :]
        close(out[..., lo : lo + 100], ref, (torch.bfloat16,), f"window at {lo}")
    xt = x.transpose(1, 2).contiguous().transpose(1, 2)  # channel-last, same values
    del out
    out = cu.causal_conv1d_fn(xt, w, activation="silu")
    close(out[..., L - 100 :], cu.causal_conv1d_ref(x[..., L - 103 :].double(), w.double(),
                                                    activation="silu")[..., 3:],
          (torch.bfloat16,), "channel-last tail")


def test_opcheck_cuda(cu, seeded):
    B, D, L, W = 2, 16, 40, 4
    x = make_x(B, D, L, "channel_last", torch.float32)
    w, b = torch.randn(D, W, device=DEV), torch.randn(D, device=DEV)
    s = random_seq_idx(B, L, device=DEV)
    ini = torch.randn(B, D, W - 1, device=DEV)
    torch.library.opcheck(cu.ops.fwd.default, (x, w, b, s, ini, True, True))
    dout = torch.randn_like(x)
    torch.library.opcheck(cu.ops.bwd.default, (x, w, b, s, ini, dout, None, True, True))
    pool = torch.randn(6, D, 3, device=DEV)
    torch.library.opcheck(cu.ops.update.default,
                          (torch.randn(3, D, 1, device=DEV), pool, w, b, None,
                           torch.tensor([4, -1, 0], dtype=torch.int32, device=DEV), True))
    xt, cus = packed_inputs([3, 0, 9], D, torch.float32, "contiguous")
    torch.library.opcheck(cu.ops.varlen_states.default, (xt, cus, 5))
    torch.library.opcheck(cu.ops.fwd_packed.default,
                          (xt.t(), w, b, cus, pool, None, None, -1, True))


# ---------------------------------------------------------------------------
# the compute-sanitizer grid: one small case through every kernel


@pytest.mark.parametrize("layout", ["contiguous", "channel_last", "strided", "unaligned"])
@pytest.mark.parametrize("W", [1, 3, 4, 6, 12, 20])
def test_sanitizer_fwd_bwd(cu, layout, W):
    torch.manual_seed(W)
    for det in (False, True):
        bwd_case(cu, 0, B=2, D=37, L=75, W=W, xdt=torch.float16, wdt=torch.float32,
                 layout=layout, seq=W % 2 == 1, deterministic=det)
    fwd_case(cu, 0, B=3, D=37, L=1, W=W, xdt=torch.bfloat16, layout=layout, seq=True)


@pytest.mark.parametrize("circular", [False, True])
def test_sanitizer_update_packed(cu, circular):
    torch.manual_seed(1)
    update_case(cu, 0, B=7, D=37, W=4, S=5, L=3, pool=True, circular=circular,
                xdt=torch.bfloat16, state_layout="channel_last")
    packed_case(cu, 0, W=4, S=5, D=37, xdt=torch.float16, layout="channels_first")
    x, cus = packed_inputs([3, 0, 7], 37, torch.float32, "proj_slice")
    cu.causal_conv1d_varlen_states(x, cus, 4)


@gpu_only
def test_sanitizer_invalid_indices(cu):
    test_invalid_device_indices_stay_in_bounds(cu)
