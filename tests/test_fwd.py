"""Forward (causal_conv1d_fn) against the float64 reference, across dtypes,
widths, layouts, options and lengths, on fresh random inputs."""

from __future__ import annotations

import itertools

import pytest
import torch

from helpers import DTYPE_PAIRS, LAYOUTS, assert_close, randn_layout, random_seq_idx
from helpers import dtype_name as _name
from helpers import (  # the kernel-path grids below
    CUDA_DTYPE_PAIRS,
    CUDA_LAYOUTS,
    pair_id,
    close,
    exact,
    fwd_case,
    dev,
    FLOAT64_CASES,
    assert_float64_refused,
)

WIDTHS = [1, 2, 3, 4, 5, 8, 16, 32]


def run_case(
    kernel,
    seed,
    *,
    B=2,
    D=24,
    L=37,
    W=4,
    x_dtype=torch.float32,
    w_dtype=torch.float32,
    layout="contiguous",
    bias=True,
    activation="silu",
    seq_idx=False,
    initial_states=False,
    final_states=False,
    state_layout="contiguous",
):
    x = randn_layout(B, D, L, layout, x_dtype)
    weight = torch.randn(D, W, dtype=w_dtype)
    b = torch.randn(D, dtype=w_dtype) if bias else None
    s = random_seq_idx(B, L) if seq_idx else None
    init = randn_layout(B, D, W - 1, state_layout, x_dtype) if initial_states else None
    got = kernel.causal_conv1d_fn(
        x, weight, b, seq_idx=s, initial_states=init, return_final_states=final_states,
        activation=activation,
    )
    want = kernel.causal_conv1d_ref(
        x.double(), weight.double(), None if b is None else b.double(), seq_idx=s,
        initial_states=None if init is None else init.double(),
        return_final_states=final_states, activation=activation,
    )
    msg = (
        f"seed={seed} B={B} D={D} L={L} W={W} x={x_dtype} w={w_dtype} layout={layout} "
        f"bias={bias} act={activation} seq_idx={seq_idx} init={initial_states} final={final_states}"
    )
    out, ref = (got[0], want[0]) if final_states else (got, want)
    assert out.dtype == x_dtype and out.shape == (B, D, L), msg
    if layout in ("channel_last", "proj_slice") and D > 1 and L > 1:
        assert out.stride(1) == 1, f"channel-last x must give channel-last out: {msg}"
    if layout == "contiguous":
        assert out.is_contiguous(), msg
    assert_close(out, ref, (x_dtype, w_dtype), msg)
    if final_states:
        # final states only move inputs: exact
        assert got[1].dtype == x_dtype and got[1].shape == (B, D, W - 1), msg
        torch.testing.assert_close(got[1].double(), want[1], rtol=0, atol=0, msg=lambda m: f"{msg}\n{m}")


# 10 dtype pairs x 8 widths x 4 layouts = 320 cases
@pytest.mark.kernels_ci
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("W", WIDTHS)
@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=lambda p: f"x{_name(p[0])}-w{_name(p[1])}")
def test_dtypes_widths_layouts(kernel, seeded, dtypes, W, layout):
    run_case(kernel, seeded, W=W, x_dtype=dtypes[0], w_dtype=dtypes[1], layout=layout, L=41,
             initial_states=True, final_states=True)


OPTIONS = list(itertools.product([False, True], [None, "silu"], [False, True], [False, True], [False, True]))


# 32 option combinations x 4 layouts x 4 lengths = 512 cases
@pytest.mark.parametrize("L", [1, 2, 3, 129])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    "bias,activation,seq_idx,initial_states,final_states",
    OPTIONS,
    ids=[f"b{int(o[0])}-{o[1]}-s{int(o[2])}-i{int(o[3])}-f{int(o[4])}" for o in OPTIONS],
)
def test_options(kernel, seeded, L, layout, bias, activation, seq_idx, initial_states, final_states):
    run_case(kernel, seeded, L=L, W=4, layout=layout, bias=bias, activation=activation,
             seq_idx=seq_idx, initial_states=initial_states, final_states=final_states,
             state_layout="channel_last" if layout != "contiguous" else "contiguous")


# long sequences: 3 widths x 4 layouts x 2 dtypes = 24 cases
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=_name)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("W", [2, 4, 16])
def test_long(kernel, seeded, W, layout, dtype):
    run_case(kernel, seeded, B=1, D=20, L=4097, W=W, x_dtype=dtype, w_dtype=dtype, layout=layout,
             seq_idx=True, initial_states=True, final_states=True)


# odd channel counts and batch sizes, seq_idx/states in every layout: 6 x 4 x 2 = 48
@pytest.mark.kernels_ci
@pytest.mark.parametrize("state_layout", ["contiguous", "channel_last"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("B,D", [(1, 1), (3, 3), (2, 7), (5, 33), (1, 100), (4, 17)])
def test_odd_sizes(kernel, seeded, B, D, layout, state_layout):
    run_case(kernel, seeded, B=B, D=D, L=67, W=3, layout=layout, seq_idx=True,
             initial_states=True, final_states=True, state_layout=state_layout)


@pytest.mark.parametrize("W", [1, 3, 4])
@pytest.mark.parametrize("L", [1, 2])
def test_sequence_shorter_than_window(kernel, seeded, W, L):
    """final_states keep initial-state columns when L < W - 1."""
    run_case(kernel, seeded, L=L, W=W, initial_states=True, final_states=True)


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
    assert_close(got, want, (torch.float32,), f"seed={seeded}")


def test_preallocated_out(kernel, seeded):
    x = torch.randn(3, 10, 77)
    w = torch.randn(10, 4)
    b = torch.randn(10)
    out = torch.empty(3, 77, 10).transpose(1, 2)  # channel-last destination
    kernel.ops.fwd_out(x, w, b, None, None, out, None, True)
    want = kernel.causal_conv1d_ref(x.double(), w.double(), b.double(), activation="silu")
    assert_close(out, want, (torch.float32,), f"seed={seeded}")


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


# ---------------------------------------------------------------------------
# the CUDA kernels' paths: every width to 32, the unaligned layout, sizes around the
# kernels' tile and block boundaries


@pytest.mark.backends("cuda")
@pytest.mark.parametrize("layout", CUDA_LAYOUTS)
@pytest.mark.parametrize("W", range(1, 33))
@pytest.mark.parametrize("dtypes", CUDA_DTYPE_PAIRS, ids=pair_id)
def test_fwd_grid(kernel, seeded, dtypes, W, layout):
    fwd_case(kernel, seeded, W=W, xdt=dtypes[0], wdt=dtypes[1], layout=layout, seq=W % 2 == 0)


FWD_OPTIONS = list(itertools.product([False, True], [None, "silu"], [False, True], [False, True],
                                     [False, True]))


@pytest.mark.backends("cuda")
@pytest.mark.parametrize("L", [1, 2, 5, 300])
@pytest.mark.parametrize("layout", CUDA_LAYOUTS)
@pytest.mark.parametrize("bias,act,seq,init,final", FWD_OPTIONS,
                         ids=[f"b{int(o[0])}-{o[1]}-s{int(o[2])}-i{int(o[3])}-f{int(o[4])}"
                              for o in FWD_OPTIONS])
def test_fwd_options(kernel, seeded, L, layout, bias, act, seq, init, final):
    fwd_case(kernel, seeded, L=L, W=4 if L != 5 else 6, layout=layout, bias=bias, act=act, seq=seq,
             init=init, final=final,
             state_layout="channel_last" if layout != "contiguous" else "contiguous")


@pytest.mark.backends("cuda")
@pytest.mark.parametrize("layout", ["contiguous", "channel_last", "strided"])
@pytest.mark.parametrize("B,D,L", [(1, 1, 9), (3, 3, 40), (2, 7, 257), (5, 33, 65), (1, 300, 130),
                                   (64, 8, 3), (2, 520, 20)])
def test_fwd_sizes(kernel, seeded, B, D, L, layout):
    for W in (2, 4, 5):
        fwd_case(kernel, seeded, B=B, D=D, L=L, W=W, xdt=torch.bfloat16, wdt=torch.float32,
                 layout=layout, seq=True)


@pytest.mark.backends("cuda")
@pytest.mark.parametrize("W", [1, 2, 4, 7])
def test_fwd_empty_sequence_with_states(kernel, seeded, W):
    """L == 0: final_states are the initial states (and zeros without them)."""
    x = torch.randn(3, 16, 0, device=dev())
    w = torch.randn(16, W, device=dev())
    ini = torch.randn(3, 16, W - 1, device=dev())
    out, fin = kernel.causal_conv1d_fn(x, w, initial_states=ini, return_final_states=True)
    assert out.shape == (3, 16, 0)
    exact(fin, ini, f"seed={seeded}")
    _, fin = kernel.causal_conv1d_fn(x, w, return_final_states=True)
    assert fin.shape == (3, 16, W - 1) and not fin.any()


@pytest.mark.backends("cuda")
def test_fwd_out_preallocated_any_layout(kernel, seeded):
    x = randn_layout(3, 24, 77, "contiguous", torch.float16)
    w = torch.randn(24, 4, device=dev())
    for out in (torch.empty(3, 77, 24, device=dev(), dtype=torch.float16).transpose(1, 2),
                torch.empty(3, 48, 154, device=dev(), dtype=torch.float16)[:, ::2, ::2]):
        kernel.ops.fwd_out(x, w, None, None, None, out, None, True)
        close(out, kernel.causal_conv1d_ref(x.double(), w.double(), activation="silu"),
              (torch.float16,), f"seed={seeded}")


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
