"""Forward (causal_conv1d_fn) against the float64 reference, across dtypes,
widths, layouts, options and lengths, on fresh random inputs."""

from __future__ import annotations

import itertools

import pytest
import torch

from helpers import (
    DTYPE_PAIRS,
    FLOAT64_CASES,
    LAYOUTS,
    assert_float64_refused,
    close,
    dev,
    exact,
    fwd_case,
    pair_id,
    randn_layout,
    random_seq_idx,
)
from helpers import dtype_name as _name

# Every width the CUDA kernels template or bucket (exact 2..4, runtime
# widths up to 8, 16 and 32) and the CPU kernels' per-width code.
WIDTHS = list(range(1, 33))


# kernel-builder's quick subset (kernels_ci) takes the grid at these widths
CI_WIDTHS = [1, 2, 3, 4, 5, 8, 16, 32]


# 10 dtype pairs x 32 widths x 5 layouts = 1600 cases (float64 skips on CUDA)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    "W", [pytest.param(w, marks=pytest.mark.kernels_ci) if w in CI_WIDTHS else w for w in WIDTHS])
@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=pair_id)
def test_grid(kernel, seeded, dtypes, W, layout):
    fwd_case(kernel, seeded, W=W, xdt=dtypes[0], wdt=dtypes[1], layout=layout, seq=W % 2 == 0)


OPTIONS = list(itertools.product([False, True], [None, "silu"], [False, True], [False, True], [False, True]))


# 32 option combinations x 5 layouts x 6 lengths = 960 cases; W = 6 at L = 5
# (a sequence shorter than the window's history), else 4
@pytest.mark.parametrize("L", [1, 2, 3, 5, 129, 300])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    "bias,act,seq,init,final",
    OPTIONS,
    ids=[f"b{int(o[0])}-{o[1]}-s{int(o[2])}-i{int(o[3])}-f{int(o[4])}" for o in OPTIONS],
)
def test_options(kernel, seeded, L, layout, bias, act, seq, init, final):
    fwd_case(kernel, seeded, L=L, W=6 if L == 5 else 4, layout=layout, bias=bias, act=act,
             seq=seq, init=init, final=final,
             state_layout="channel_last" if layout != "contiguous" else "contiguous")


# long sequences: 3 widths x 5 layouts x 2 dtypes = 30 cases
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=_name)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("W", [2, 4, 16])
def test_long(kernel, seeded, W, layout, dtype):
    fwd_case(kernel, seeded, B=1, D=20, L=4097, W=W, xdt=dtype, wdt=dtype, layout=layout, seq=True)


# Odd channel counts, batch sizes and lengths (around the CUDA kernels' tile
# and block boundaries), seq_idx and states in every layout: 13 x 4 x 2 =
# 104 cases, each at widths 2 to 5 (width 3 with fp32 x, the others bf16 x).
SIZES = [(1, 1, 67), (3, 3, 67), (2, 7, 67), (5, 33, 67), (1, 100, 67), (4, 17, 67),
         (1, 1, 9), (3, 3, 40), (2, 7, 257), (5, 33, 65), (1, 300, 130), (64, 8, 3), (2, 520, 20)]


@pytest.mark.kernels_ci
@pytest.mark.parametrize("state_layout", ["contiguous", "channel_last"])
@pytest.mark.parametrize("layout", ["contiguous", "channel_last", "proj_slice", "strided"])
@pytest.mark.parametrize("B,D,L", SIZES)
def test_sizes(kernel, seeded, B, D, L, layout, state_layout):
    for W, xdt in ((2, torch.bfloat16), (3, torch.float32), (4, torch.bfloat16), (5, torch.bfloat16)):
        fwd_case(kernel, seeded, B=B, D=D, L=L, W=W, xdt=xdt, wdt=torch.float32, layout=layout,
                 seq=True, state_layout=state_layout)


@pytest.mark.parametrize("W", [1, 3, 4])
@pytest.mark.parametrize("L", [1, 2])
def test_sequence_shorter_than_window(kernel, seeded, W, L):
    """final_states keep initial-state columns when L < W - 1."""
    fwd_case(kernel, seeded, L=L, W=W, init=True, final=True)


@pytest.mark.parametrize("W", [1, 2, 4, 7])
def test_empty_sequence_with_states(kernel, seeded, W):
    """L == 0: final_states are the initial states (and zeros without them)."""
    x = torch.randn(3, 16, 0, device=dev())
    w = torch.randn(16, W, device=dev())
    ini = torch.randn(3, 16, W - 1, device=dev())
    out, fin = kernel.causal_conv1d_fn(x, w, initial_states=ini, return_final_states=True)
    assert out.shape == (3, 16, 0)
    exact(fin, ini, f"seed={seeded}")
    _, fin = kernel.causal_conv1d_fn(x, w, return_final_states=True)
    assert fin.shape == (3, 16, W - 1) and not fin.any()


def test_final_states_out(kernel, seeded):
    x = torch.randn(2, 16, 50)
    w = torch.randn(16, 4)
    buf = torch.full((2, 16, 3), 7.0)
    out, fs = kernel.causal_conv1d_fn(x, w, return_final_states=True, final_states_out=buf)
    assert fs.data_ptr() == buf.data_ptr()
    torch.testing.assert_close(buf, x[..., -3:], rtol=0, atol=0)
    # Without return_final_states upstream ignores final_states_out: so do we.
    untouched = torch.full((2, 16, 3), 7.0)
    alone = kernel.causal_conv1d_fn(x, w, final_states_out=untouched)
    torch.testing.assert_close(alone, out, rtol=0, atol=0)
    assert torch.equal(untouched, torch.full((2, 16, 3), 7.0))


def test_swish_equals_silu(kernel, seeded):
    x = torch.randn(2, 8, 33)
    w = torch.randn(8, 4)
    a = kernel.causal_conv1d_fn(x, w, activation="silu")
    b = kernel.causal_conv1d_fn(x, w, activation="swish")
    assert torch.equal(a, b)


def test_seq_idx_strided_view(kernel, seeded):
    """seq_idx may be a non-contiguous view."""
    B, D, L = 2, 12, 40
    wide = random_seq_idx(B, 2 * L)
    s = wide[:, ::2]
    x = torch.randn(B, D, L)
    w = torch.randn(D, 4)
    got = kernel.causal_conv1d_fn(x, w, seq_idx=s)
    want = kernel.causal_conv1d_ref(x.double(), w.double(), seq_idx=s.contiguous())
    close(got, want, (torch.float32,), f"seed={seeded}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=_name)
def test_preallocated_out(kernel, seeded, dtype):
    """ops.fwd_out writes any destination layout: channel-last, strided."""
    x = randn_layout(3, 24, 77, "contiguous", dtype)
    w = torch.randn(24, 4, device=dev())
    b = torch.randn(24, device=dev())
    want = kernel.causal_conv1d_ref(x.double(), w.double(), b.double(), activation="silu")
    for out in (torch.empty(3, 77, 24, device=dev(), dtype=dtype).transpose(1, 2),
                torch.empty(3, 48, 154, device=dev(), dtype=dtype)[:, ::2, ::2]):
        kernel.ops.fwd_out(x, w, b, None, None, out, None, True)
        close(out, want, (dtype,), f"seed={seeded} out strides {out.stride()}")


def test_upstream_signature(kernel):
    import inspect

    params = list(inspect.signature(kernel.causal_conv1d_fn).parameters.items())
    assert [(n, p.default) for n, p in params] == [
        ("x", inspect.Parameter.empty),
        ("weight", inspect.Parameter.empty),
        ("bias", None),
        ("seq_idx", None),
        ("initial_states", None),
        ("return_final_states", False),
        ("final_states_out", None),
        ("activation", None),
    ]


@pytest.mark.backends("cuda")
@pytest.mark.parametrize("f64", list(FLOAT64_CASES))
def test_float64_refused(kernel, cc, f64):
    """The CUDA kernels have no float64: refused with checks.cpp's error, the
    emulator's CPU tensors included."""
    xdt, wdt = FLOAT64_CASES[f64]
    x, w = torch.randn(2, 8, 12, dtype=xdt, device=dev()), torch.randn(8, 4, dtype=wdt, device=dev())
    assert_float64_refused(kernel, cc, "fwd", x, w, None, None, None, True, True)
    out = torch.empty_like(x)
    assert_float64_refused(kernel, cc, "fwd_out", x, w, None, None, None, out, None, True)
    with pytest.raises(TypeError, match="is float64, which is supported on CPU only"):
        kernel.causal_conv1d_fn(x, w, activation="silu")
