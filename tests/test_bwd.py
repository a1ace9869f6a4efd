"""Backward of causal_conv1d_fn: the registered autograd (ops.bwd) against
torch.autograd through the float64 reference, on every backend.

- float64 gradcheck on small shapes over every option: bias, silu, seq_idx
  with padding, initial_states, return_final_states (a gradient flows in
  through final_states), widths 1, 2, 4, 7, contiguous and channel-last x;
- one grid (every x/weight dtype pairing x the widths the kernels template
  or bucket x every layout helpers.py knows) and one grid of options
  (bias, silu, seq_idx, initial and final states) at lengths 1, 2, 3, 129
  and 300, against the reference's gradients within helpers.TOLERANCES;
- wide kernels, lengths long enough for several chunks, strided and
  expanded dout;
- bitwise determinism across torch.set_num_threads and runs;
- the public API's corners: final_states_out, a loss on final_states alone,
  L == 0;
- the CUDA kernels' own paths: tiled rows, tile groups, both reductions,
  agreement with the CPU backend.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from helpers import randn_layout, random_seq_idx, tolerance
from helpers import (  # the kernel-path grids below
    CUDA_DTYPE_PAIRS,
    DTYPE_PAIRS,
    LAYOUTS,
    pair_id,
    close,
    exact,
    fwd_case,
    bwd_case,
    to_cpu,
    skip_unimplemented,
    dtype_name,
    dev,
    FLOAT64_CASES,
    assert_float64_refused,
)

F64 = torch.float64
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def make_inputs(B, D, L, W, xdt, wdt, layout="contiguous", bias=True, seq=False, init=False):
    x = randn_layout(B, D, L, layout, xdt)
    w = (torch.randn(D, W, dtype=F64) / W**0.5).to(wdt)  # pre-activations of order 1
    b = torch.randn(D, dtype=F64).to(wdt) if bias else None
    s = random_seq_idx(B, L) if seq else None
    ini = torch.randn(B, D, W - 1, dtype=F64).to(xdt) if init else None
    return x, w, b, s, ini


def grads(fn, x, w, b, s, ini, silu, fin, dout, dfin, cast):
    """Gradients of fn's outputs against (dout, dfin) for (x, w, b, ini)."""
    leaves = [cast(t).detach().requires_grad_() if t is not None else None for t in (x, w, b, ini)]
    res = fn(leaves[0], leaves[1], leaves[2], seq_idx=s, initial_states=leaves[3],
             return_final_states=fin, activation="silu" if silu else None)
    outs, gouts = (res, (dout, dfin)) if fin else ((res,), (dout,))
    torch.autograd.backward(outs, [cast(g) for g in gouts])
    return [t.grad if t is not None else None for t in leaves]


def check_against_reference(kernel, x, w, b, s, ini, silu=True, fin=True, dout=None, dfin=None,
                            what=""):
    B, D, L = x.shape
    W = w.shape[1]
    if dout is None:
        dout = torch.randn(B, D, L, dtype=F64).to(x.dtype)
    if dfin is None:
        dfin = torch.randn(B, D, W - 1, dtype=F64).to(x.dtype)
    got = grads(kernel.causal_conv1d_fn, x, w, b, s, ini, silu, fin, dout, dfin, lambda t: t)
    want = grads(kernel.causal_conv1d_ref, x, w, b, s, ini, silu, fin, dout, dfin, lambda t: t.double())
    x_tol, w_tol = tolerance(x.dtype, w.dtype), tolerance(w.dtype, sums=True)
    for name, g, r, dt, tol in (
        ("dx", got[0], want[0], x.dtype, x_tol),
        ("dweight", got[1], want[1], w.dtype, w_tol),
        ("dbias", got[2], want[2], w.dtype, w_tol),
        ("dinitial_states", got[3], want[3], x.dtype, x_tol),
    ):
        if r is None:
            assert g is None, f"{what} {name}: unexpected gradient"
            continue
        assert g.dtype == dt and g.shape == r.shape, f"{what} {name}: {g.dtype} {g.shape}"
        torch.testing.assert_close(g.double(), r, rtol=tol[0], atol=tol[1],
                                   msg=lambda m: f"{what} {name}: {m}")
    return got


# ---------------------------------------------------------------------------
# float64 gradcheck

# (bias, silu, seq_idx, initial_states, return_final_states)
OPTIONS = {
    "all": (True, True, True, True, True),
    "none": (False, False, False, False, False),
    "bias_silu_seq": (True, True, True, False, False),
    "states": (False, True, False, True, True),
    "seq_final_nobias": (False, False, True, True, True),
}


def fixed_seq_idx(L: int) -> torch.Tensor:
    """Two rows: segments with padding inside, a segment id that comes back
    after another (ids compare for equality, not as runs), and a row that
    starts with padding (so its initial states feed nothing)."""
    r0 = [0, 0, 0, 1, 1, -1, 1, 2, 2, 2, 2]
    r1 = [-1, 0, 0, 0, 0, 0, 3, 3, 5, 3, 3]
    return torch.tensor([r0[:L], r1[:L]], dtype=torch.int32)


@pytest.mark.backends("cpu")  # float64 gradcheck: the CUDA kernels refuse float64
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("layout", ["contiguous", "channel_last"])
@pytest.mark.parametrize("W", [1, 2, 4, 7])
def test_gradcheck(kernel, seeded, W, layout, option):
    bias, silu, seq, init, fin = OPTIONS[option]
    B, D, L = 2, 3, 11
    x, w, b, _, ini = make_inputs(B, D, L, W, F64, F64, layout, bias, False, init)
    s = fixed_seq_idx(L) if seq else None
    names = ["x", "weight", "bias", "initial_states"]
    given = [(n, t) for n, t in zip(names, (x, w, b, ini)) if t is not None]
    leaves = tuple(t.detach().requires_grad_() for _, t in given)
    assert leaves[0].stride() == x.stride()

    def fn(*ts):
        kw = dict(zip((n for n, _ in given), ts))
        return kernel.causal_conv1d_fn(kw["x"], kw["weight"], kw.get("bias"), seq_idx=s,
                                   initial_states=kw.get("initial_states"),
                                   return_final_states=fin, activation="silu" if silu else None)

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-8, rtol=1e-6)


# ---------------------------------------------------------------------------
# every pairing, width and layout; every option at short lengths

# Every width the CUDA kernels template or bucket and the CPU kernels' per-width
# code; kernel-builder's quick subset (kernels_ci) takes these four.
GRID_WIDTHS = [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 32]
CI_WIDTHS = [2, 4, 7, 32]


# 10 dtype pairs x 11 widths x 5 layouts = 550 cases (float64 skips on CUDA);
# seq_idx at even widths: random segments, and on proj_slice x the
# alternating ids (equal ids that are not adjacent, at every distance)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    "W", [pytest.param(w, marks=pytest.mark.kernels_ci) if w in CI_WIDTHS else w
          for w in GRID_WIDTHS])
@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=pair_id)
def test_bwd_grid(kernel, seeded, dtypes, W, layout):
    seq = W % 2 == 0 and ("alternating" if layout == "proj_slice" else True)
    bwd_case(kernel, seeded, W=W, xdt=dtypes[0], wdt=dtypes[1], layout=layout, seq=seq)


BWD_OPTIONS = list(itertools.product([False, True], [None, "silu"], [False, True], [False, True],
                                     [False, True]))
# (L, W, layout, bias, act, seq, init, final). kernel-builder's quick subset
# (kernels_ci): every option on at lengths 1, 2, 3 and 129 in two layouts,
# with seq_idx at W = 4 and without it at W = 5 (a width without unrolled
# code), 16 cases; then every other option combination at W = 4 and lengths
# 1, 3 (shorter than the window's history, and equal to it) and 300 (bf16 x)
# in three layouts, 284 cases.
SHORT_CASES = [(L, 4 if seq else 5, layout, True, "silu", seq, True, True)
               for L in (1, 2, 3, 129) for layout in ("contiguous", "channel_last")
               for seq in (False, True)]
OPTION_CASES = [pytest.param(*c, marks=pytest.mark.kernels_ci) for c in SHORT_CASES]
OPTION_CASES += [c for L in (1, 3, 300) for layout in ("contiguous", "channel_last", "strided")
                 for c in [(L, 4, layout, *o) for o in BWD_OPTIONS] if c not in SHORT_CASES]


def _option_id(case) -> str:
    L, W, layout, bias, act, seq, init, final = getattr(case, "values", case)
    return f"L{L}-W{W}-{layout}-b{int(bias)}-{act}-s{int(seq)}-i{int(init)}-f{int(final)}"


@pytest.mark.parametrize("L,W,layout,bias,act,seq,init,final", OPTION_CASES,
                         ids=[_option_id(c) for c in OPTION_CASES])
def test_bwd_options(kernel, seeded, L, W, layout, bias, act, seq, init, final):
    bwd_case(kernel, seeded, L=L, W=W, layout=layout, bias=bias, act=act, seq=seq, init=init,
             final=final, xdt=torch.bfloat16 if L == 300 else torch.float32)


@pytest.mark.parametrize("layout", ["contiguous", "channel_last", "strided"])
@pytest.mark.parametrize("W", [3, 16, 31, 32])
def test_wide_kernels(kernel, seeded, W, layout):
    x, w, b, s, ini = make_inputs(2, 37, 300, W, torch.float32, torch.float32, layout, True, True,
                                  True)
    check_against_reference(kernel, x, w, b, s, ini, what=f"W={W}")


@pytest.mark.parametrize("W", [5, 6, 7, 8])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_fused_channel_last_widths(kernel, seeded, W, dtype):
    """Channel-last x over several chunks of tokens without seq_idx: the
    CPU backward's fused tiles, whose unrolled widths go to 8, with and
    without the first and last tiles' initial and final states, silu or
    none, and a length that ends a chunk inside a token group."""
    for init_final, act in ((False, "silu"), (True, None)):
        bwd_case(kernel, seeded, B=2, D=37, L=301, W=W, xdt=DTYPES[dtype], wdt=DTYPES[dtype],
                 layout="channel_last", act=act, init=init_final, final=init_final)


# (L, bias, silu, initial_states, return_final_states)
ROW_PASS_CASES = [(2100, True, True, False, False), (1030, False, False, False, True),
                  (2100, True, True, True, True), (13, True, True, False, False),
                  (1, False, True, False, False)]


@pytest.mark.parametrize("W", [1, 2, 3, 4, 5, 6, 7, 8, 9])
@pytest.mark.parametrize("dtypes", [(torch.float32,) * 2, (torch.bfloat16,) * 2,
                                    (torch.float16, torch.float32), (F64, F64)], ids=pair_id)
def test_rows_single_pass(kernel, seeded, dtypes, W):
    """x contiguous along L over several chunks of tokens, without seq_idx:
    the CPU backward's single-pass rows (widths to 8; every chunk but the
    first with initial states and the last with final states) beside its
    buffered ones (those chunks, W = 9). D = 13 crosses a block of
    channels; lengths end a chunk inside a vector, or are shorter than one."""
    xdt, wdt = dtypes
    for L, bias, silu, init, fin in ROW_PASS_CASES:
        x, w, b, s, ini = make_inputs(2, 13, L, W, xdt, wdt, "contiguous", bias, False, init)
        check_against_reference(kernel, x, w, b, s, ini, silu=silu, fin=fin,
                                what=f"W={W} L={L} bias={bias} silu={silu} init={init} fin={fin}")


# (x layout, dout layout): dout laid out against x's compute layout (x
# contiguous along L and a gradient back through a (B * L, D) projection of
# the output, channel-last; or the reverse), then strided and unaligned
# views of either.
OTHER_DOUT_LAYOUTS = [("contiguous", "channel_last"), ("channel_last", "contiguous"),
                      ("proj_slice", "unaligned"), ("contiguous", "strided"),
                      ("channel_last", "strided")]


def in_layout_of(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """t's values in x's compute layout: contiguous along L or along D."""
    if x.stride(1) == 1 and x.stride(2) != 1:
        return t.transpose(1, 2).contiguous().transpose(1, 2)
    return t.contiguous()


@pytest.mark.backends("cpu")  # the CPU backward's staging; CUDA: test_bwd_dout_layout_differs
@pytest.mark.parametrize("W", [1, 4, 8])
@pytest.mark.parametrize("dtypes", [(torch.float32,) * 2, (torch.bfloat16,) * 2,
                                    (torch.float16, torch.float32), (F64, F64)], ids=pair_id)
@pytest.mark.parametrize("layouts", OTHER_DOUT_LAYOUTS, ids="-".join)
def test_bwd_dout_other_layout(kernel, seeded, layouts, dtypes, W):
    """dout laid out against x, over several chunks of tokens and blocks of
    channels (D = 300 crosses both layouts' blocks), without seq_idx: the
    CPU backward's fused tiles copy their dout into x's layout first. The
    reference's gradients within tolerance, and bit for bit the gradients
    of the same dout in x's layout; every chunk but the first with initial
    states and the last with final states."""
    x_layout, dout_layout = layouts
    xdt, wdt = dtypes
    B, D = 1, 300
    for L, bias, silu, init, fin in ((2100, True, True, False, False),
                                     (1030, False, False, False, True),
                                     (2100, True, True, True, True), (13, True, True, False, False)):
        x, w, b, s, ini = make_inputs(B, D, L, W, xdt, wdt, x_layout, bias, False, init)
        dout = randn_layout(B, D, L, dout_layout, xdt)
        dfin = torch.randn(B, D, W - 1, dtype=F64).to(xdt)
        what = f"W={W} L={L} bias={bias} silu={silu} init={init} fin={fin}"
        got = check_against_reference(kernel, x, w, b, s, ini, silu=silu, fin=fin, dout=dout,
                                      dfin=dfin, what=what)
        same = grads(kernel.causal_conv1d_fn, x, w, b, s, ini, silu, fin, in_layout_of(x, dout),
                     dfin, lambda t: t)
        for name, g, r in zip(("dx", "dweight", "dbias", "dinitial_states"), got, same):
            assert (g is None) == (r is None), f"{what} {name}"
            if g is not None:
                assert torch.equal(g, r), f"{what} {name}: differs from dout in x's layout"


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("layout", ["contiguous", "channel_last", "proj_slice"])
def test_long_sequences(kernel, seeded, layout, dtype):
    """Several chunks per row (the CPU kernel cuts L into fixed chunks) and
    channel blocks that do not divide D; with and without seq_idx."""
    dt = DTYPES[dtype]
    for seq, silu in ((True, True), (False, False)):
        x, w, b, s, ini = make_inputs(2, 35, 2100, 4, dt, dt, layout, True, seq, True)
        check_against_reference(kernel, x, w, b, s, ini, silu=silu, what=f"seq={seq} silu={silu}")


def test_dout_layouts(kernel, seeded):
    """dout need not share x's layout: transposed, sliced and expanded
    (stride 0, what out.sum().backward() sends)."""
    B, D, L, W = 2, 6, 70, 4
    for layout in ("contiguous", "channel_last"):
        x, w, b, s, ini = make_inputs(B, D, L, W, torch.float32, torch.float32, layout, True, True,
                                      True)
        douts = {
            "transposed": torch.randn(B, L, D).transpose(1, 2),
            "sliced": torch.randn(B, D, 2 * L)[..., ::2],
            "expanded": torch.randn(1, D, 1).expand(B, D, L),
        }
        for name, dout in douts.items():
            dfin = torch.randn(B, W - 1, D).transpose(1, 2)
            check_against_reference(kernel, x, w, b, s, ini, dout=dout, dfin=dfin,
                                    what=f"{layout} dout {name}")


def test_sum_backward(kernel, seeded):
    x, w, b, s, ini = make_inputs(2, 8, 40, 4, torch.float32, torch.float32, "channel_last", True,
                                  True, True)
    leaves = [t.detach().requires_grad_() for t in (x, w, b)]
    refs = [t.detach().double().requires_grad_() for t in (x, w, b)]
    kernel.causal_conv1d_fn(*leaves, seq_idx=s, activation="silu").sum().backward()
    kernel.causal_conv1d_ref(*refs, seq_idx=s, activation="silu").sum().backward()
    for g, r in zip(leaves, refs):
        torch.testing.assert_close(g.grad.double(), r.grad, rtol=1e-3, atol=1e-3)
    assert leaves[0].grad.stride() == x.stride()  # dx keeps x's layout


# ---------------------------------------------------------------------------
# determinism


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.uint8)


@pytest.mark.backends("cpu")  # the CPU backend's threads (torch.set_num_threads)
@pytest.mark.parametrize("seq", [True, False])
@pytest.mark.parametrize("dout_layout", ["contiguous", "channel_last"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("layout", ["contiguous", "channel_last"])
def test_deterministic_across_threads(kernel, seeded, layout, dtype, dout_layout, seq):
    """Bitwise the same gradients at 1, the default and 3 threads and run
    again: with seq_idx (buffered tasks) and without (fused tasks, staged
    where dout is laid out against x)."""
    dt = DTYPES[dtype]
    B, D, L, W = 3, 70, 2100, 4
    x, w, b, s, ini = make_inputs(B, D, L, W, dt, dt, layout, True, seq, True)
    dout = randn_layout(B, D, L, dout_layout, dt)
    dfin = torch.randn(B, D, W - 1).to(dt)

    def run():
        return grads(kernel.causal_conv1d_fn, x, w, b, s, ini, True, True, dout, dfin, lambda t: t)

    default = torch.get_num_threads()
    try:
        results = {}
        for n in (1, default, 3):
            torch.set_num_threads(n)
            results[n] = run()
        results["again"] = run()
    finally:
        torch.set_num_threads(default)
    first = results[1]
    for key, res in results.items():
        for name, g, g1 in zip(("dx", "dweight", "dbias", "dinitial_states"), res, first):
            assert torch.equal(_bits(g), _bits(g1)), f"{name} differs bitwise ({key} vs 1 thread)"


# ---------------------------------------------------------------------------
# the public function's corners


def test_final_states_out_carries_gradient(kernel, seeded):
    """return_final_states with final_states_out: the returned buffer is the
    final states, and its gradient reaches x and initial_states."""
    B, D, L, W = 2, 5, 6, 4
    x, w, b, s, ini = make_inputs(B, D, L, W, torch.float32, torch.float32, "contiguous", True,
                                  False, True)
    leaves = [t.detach().requires_grad_() for t in (x, w, b, ini)]
    buf = torch.empty(B, D, W - 1)
    out, fin = kernel.causal_conv1d_fn(leaves[0], leaves[1], leaves[2], initial_states=leaves[3],
                                   return_final_states=True, final_states_out=buf,
                                   activation="silu")
    assert fin.data_ptr() == buf.data_ptr()
    dout, dfin = torch.randn_like(out), torch.randn_like(fin)
    torch.autograd.backward([out, fin], [dout, dfin])
    want = grads(kernel.causal_conv1d_ref, x, w, b, None, ini, True, True, dout, dfin,
                 lambda t: t.double())
    for g, r in zip(leaves, want):
        torch.testing.assert_close(g.grad.double(), r, rtol=1e-3, atol=1e-3)


def test_loss_on_final_states_only(kernel, seeded):
    """No gradient reaches out (autograd passes None for it): dx is dfinal_states
    at the positions final_states were copied from, and zero elsewhere."""
    B, D, L, W = 2, 4, 9, 5
    x, w, b, _, ini = make_inputs(B, D, L, W, torch.float32, torch.float32, "contiguous", True,
                                  False, True)
    s = torch.tensor([[0] * 6 + [1] * 3, [0] * 9], dtype=torch.int32)
    leaves = [t.detach().requires_grad_() for t in (x, w, b, ini)]
    _, fin = kernel.causal_conv1d_fn(leaves[0], leaves[1], leaves[2], seq_idx=s,
                                 initial_states=leaves[3], return_final_states=True,
                                 activation="silu")
    dfin = torch.randn_like(fin)
    fin.backward(dfin)
    dx = leaves[0].grad
    want = torch.zeros(B, D, L)
    want[0, :, 6:] = dfin[0, :, 1:]  # row 0: the last segment has 3 tokens
    want[1, :, 5:] = dfin[1]
    assert torch.equal(dx, want)
    assert torch.equal(leaves[1].grad, torch.zeros(D, W))
    assert torch.equal(leaves[2].grad, torch.zeros(D))
    assert torch.equal(leaves[3].grad, torch.zeros(B, D, W - 1))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_empty_sequence(kernel, seeded, dtype):
    """L == 0: final_states are the initial states, so dinitial_states is
    dfinal_states; nothing else receives a gradient."""
    dt = DTYPES[dtype]
    B, D, W = 2, 5, 4
    x, w, b, _, ini = make_inputs(B, D, 0, W, dt, dt, "contiguous", True, False, True)
    leaves = [t.detach().requires_grad_() for t in (x, w, b, ini)]
    out, fin = kernel.causal_conv1d_fn(*leaves[:3], initial_states=leaves[3],
                                   return_final_states=True, activation="silu")
    dfin = torch.randn_like(fin)
    torch.autograd.backward([out, fin], [torch.zeros_like(out), dfin])
    assert torch.equal(leaves[3].grad, dfin)
    assert leaves[0].grad.shape == (B, D, 0)
    assert torch.equal(leaves[1].grad, torch.zeros(D, W, dtype=dt))
    assert torch.equal(leaves[2].grad, torch.zeros(D, dtype=dt))
    # without a gradient into final_states, dinitial_states is zero
    for t in leaves:
        t.grad = None
    out, fin = kernel.causal_conv1d_fn(*leaves[:3], initial_states=leaves[3],
                                   return_final_states=True, activation="silu")
    (out.sum() + fin.sum() * 0).backward()
    assert torch.equal(leaves[3].grad, torch.zeros(B, D, W - 1, dtype=dt))


@pytest.mark.backends("cpu")  # float64 inputs, for an exact comparison
@pytest.mark.parametrize("layout", ["contiguous", "channel_last"])
def test_output_modified_in_place(kernel, seeded, layout):
    """The output is a fresh tensor, not a view of one the operator made, so
    autograd lets callers modify it in place (y.mul_(gate), y += residual)."""
    x, w, b, _, ini = make_inputs(2, 5, 9, 4, F64, F64, layout, init=True)
    leaves = [t.detach().requires_grad_() for t in (x, w, b, ini)]
    out, fin = kernel.causal_conv1d_fn(*leaves[:3], initial_states=leaves[3],
                                   return_final_states=True, activation="silu")
    assert out._base is None and fin._base is None
    out.mul_(3)
    fin.add_(1)
    (out.sum() + fin.sum()).backward()
    grads = [t.grad for t in leaves]
    for t in leaves:
        t.grad = None
    out, fin = kernel.causal_conv1d_ref(*leaves[:3], initial_states=leaves[3],
                                    return_final_states=True, activation="silu")
    (3 * out.sum() + fin.sum()).backward()
    for got, t in zip(grads, leaves):
        torch.testing.assert_close(got, t.grad)


@pytest.mark.backends("cpu")  # float64 inputs
def test_forward_mode_ad_refused(kernel, seeded):
    """Dual tensors would pass through without a tangent: a clear error
    instead (jvp included); without tangents the call works as usual."""
    import torch.autograd.forward_ad as fwAD

    x, w, b, _, _ = make_inputs(2, 5, 9, 4, F64, F64, "contiguous")
    with fwAD.dual_level():
        dual = fwAD.make_dual(x, torch.randn_like(x))
        with pytest.raises(NotImplementedError, match="forward-mode AD"):
            kernel.causal_conv1d_fn(dual, w, b, activation="silu")
        torch.testing.assert_close(kernel.causal_conv1d_fn(x, w, b, activation="silu"),
                                   kernel.causal_conv1d_ref(x, w, b, activation="silu"))
    with pytest.raises(NotImplementedError, match="forward-mode AD"):
        torch.func.jvp(lambda t: kernel.causal_conv1d_fn(t, w, b), (x,), (torch.randn_like(x),))


# ---------------------------------------------------------------------------
# the CUDA kernels' paths: the rows, tiled and channel-last backward kernels, both
# reductions (atomic and deterministic), tile groups, agreement with the CPU backend


@pytest.mark.backends("cuda")
@pytest.mark.parametrize("layout,dout_layout", [("contiguous", "channel_last"),
                                                ("channel_last", "contiguous"),
                                                ("contiguous", "unaligned"),
                                                ("proj_slice", "strided")])
@pytest.mark.parametrize("W", [3, 4, 6])
def test_bwd_dout_layout_differs(kernel, seeded, layout, dout_layout, W):
    bwd_case(kernel, seeded, L=150, W=W, layout=layout, dout_layout=dout_layout, seq=True,
             xdt=torch.float16, wdt=torch.float16)


@pytest.mark.backends("cuda")
@pytest.mark.parametrize("layout", ["contiguous", "channel_last", "strided"])
@pytest.mark.parametrize("B,D,L", [(1, 1, 9), (3, 5, 600), (2, 130, 70), (33, 3, 17), (1, 257, 300)])
def test_bwd_sizes(kernel, seeded, B, D, L, layout):
    for W in (2, 4, 8):
        bwd_case(kernel, seeded, B=B, D=D, L=L, W=W, xdt=torch.bfloat16, wdt=torch.bfloat16,
                 layout=layout, seq=True)


LONG_ROW_DTYPES = [CUDA_DTYPE_PAIRS[0], (torch.bfloat16, torch.float32), (torch.float16, torch.bfloat16)]


@pytest.mark.backends("cuda")
@pytest.mark.parametrize("init", [False, True])
@pytest.mark.parametrize("L", [264, 1032, 2056])
@pytest.mark.parametrize("W", [2, 3, 4])
@pytest.mark.parametrize("dtypes", LONG_ROW_DTYPES, ids=pair_id)
@pytest.mark.parametrize("layout", ["contiguous", "channel_last"])
def test_long_rows(kernel, seeded, layout, dtypes, W, L, init):
    """Rows of one or more warp tiles (the tiled fast paths: W <= 4, no
    seq_idx, 16-byte aligned rows, so L is a multiple of 8), with a partial
    last tile; forward and backward, silu or not."""
    act = "silu" if L != 1032 else None
    fwd_case(kernel, seeded, B=2, D=3, L=L, W=W, xdt=dtypes[0], wdt=dtypes[1], layout=layout,
             act=act, init=init, final=True)
    bwd_case(kernel, seeded, B=2, D=3, L=L, W=W, xdt=dtypes[0], wdt=dtypes[1], layout=layout,
             act=act, init=init, final=init, deterministic=L == 2056)


@pytest.mark.sanitizer
@pytest.mark.backends("cuda")
@pytest.mark.parametrize("dtypes", LONG_ROW_DTYPES[:2], ids=pair_id)
def test_rows_more_tiles_than_warps(kernel, seeded, dtypes):
    """More warp tiles in the forward (6,300, the last of each row partial)
    than an H100 holds warps at once, so that kernels walking tiles in a
    loop (one resident wave: rows_piped) take several turns, and the
    emulator's three blocks many; the backward on a tenth of the rows (630
    tiles: its kernels take one tile per warp), in both reductions."""
    fwd_case(kernel, seeded, B=3, D=700, L=1032, W=4, xdt=dtypes[0], wdt=dtypes[1], init=True)
    for det in (False, True):
        bwd_case(kernel, seeded, B=3, D=70, L=1032, W=4, xdt=dtypes[0], wdt=dtypes[1], init=True,
                 final=True, deterministic=det)


@pytest.mark.backends("cuda")
@pytest.mark.parametrize("W", [2, 4, 6])
def test_bwd_empty_sequence_with_states(kernel, seeded, W):
    """L == 0: dinitial_states receive dfinal_states; dweight is zero."""
    x = torch.randn(2, 8, 0, device=dev())
    w = torch.randn(8, W, device=dev())
    ini = torch.randn(2, 8, W - 1, device=dev())
    dout = torch.randn(2, 8, 0, device=dev())
    dfin = torch.randn(2, 8, W - 1, device=dev())
    dx, dw, db, dini = kernel.ops.bwd(x, w, None, None, ini, dout, dfin, True, False)
    exact(dini, dfin, f"seed={seeded}")
    assert dx.shape == (2, 8, 0) and not dw.any()


@pytest.mark.backends("cuda")
@pytest.mark.parametrize("layout", ["contiguous", "channel_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_name)
def test_bwd_deterministic_matches_atomic(kernel, seeded, layout, dtype):
    """Both reductions agree (to fp32 rounding); the deterministic one is the same every run."""
    B, D, L, W = 3, 72, 600, 4
    x, dout = randn_layout(B, D, L, layout, dtype), randn_layout(B, D, L, layout, dtype)
    w, b = torch.randn(D, W, device=dev()), torch.randn(D, device=dev())
    s = random_seq_idx(B, L, device=dev())
    ini = torch.randn(B, D, W - 1, device=dev(), dtype=dtype)
    det = kernel.ops.bwd(x, w, b, s, ini, dout, None, True, True)
    fast = kernel.ops.bwd(x, w, b, s, ini, dout, None, True, False)
    for name, a, f in zip(("dx", "dweight", "dbias", "dinit"), det, fast):
        close(f, a, (torch.float32,), f"{name} seed={seeded}", scaled=True)
    again = kernel.ops.bwd(x, w, b, s, ini, dout, None, True, True)
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


@pytest.mark.backends("cuda")
@pytest.mark.parametrize("xdt,B,D,L,W,layout,seq", CHANLAST_GROUP_CASES,
                         ids=[f"{dtype_name(c[0])}-B{c[1]}-D{c[2]}-L{c[3]}-W{c[4]}-{c[5]}-s{int(c[6])}"
                              for c in CHANLAST_GROUP_CASES])
def test_bwd_chanlast_tile_groups(kernel, seeded, xdt, B, D, L, W, layout, seq):
    """Tile groups of the channel-last backward: both reductions against the
    float64 reference (with initial and final states), and the deterministic
    one bitwise the same on a repeat."""
    for det in (False, True):
        bwd_case(kernel, seeded, B=B, D=D, L=L, W=W, xdt=xdt, wdt=torch.float32, layout=layout,
                 seq=seq, init=True, final=True, deterministic=det)
    x, dout = randn_layout(B, D, L, layout, xdt), randn_layout(B, D, L, layout, xdt)
    w, b = torch.randn(D, W, device=dev()), torch.randn(D, device=dev())
    s = random_seq_idx(B, L, device=dev()) if seq else None
    ini = torch.randn(B, D, W - 1, device=dev(), dtype=xdt)
    dfin = torch.randn(B, D, W - 1, device=dev(), dtype=xdt)
    first = kernel.ops.bwd(x, w, b, s, ini, dout, dfin, True, True)
    again = kernel.ops.bwd(x, w, b, s, ini, dout, dfin, True, True)
    for name, a, c in zip(("dx", "dweight", "dbias", "dinit"), first, again):
        assert torch.equal(a, c), f"deterministic {name} differs between runs, seed={seeded}"


@pytest.mark.backends("cuda")
@pytest.mark.parametrize("mode", ["use_deterministic_algorithms", "env"])
@pytest.mark.parametrize("layout", ["contiguous", "channel_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_name)
def test_bitwise_repeatable(kernel, backend, seeded, monkeypatch, mode, layout, dtype):
    """Forward and backward (through autograd, deterministic mode) give
    bit-identical results on every one of (3 if backend.emulated else 1000) runs."""
    B, D, L, W = 2, 256, 1024 if not backend.emulated else 200, 4
    x = randn_layout(B, D, L, layout, dtype).detach().requires_grad_()
    w = torch.randn(D, W, device=dev(), requires_grad=True)
    b = torch.randn(D, device=dev(), requires_grad=True)
    s = random_seq_idx(B, L, device=dev())
    dout = randn_layout(B, D, L, layout, dtype)

    def once():
        y = kernel.causal_conv1d_fn(x, w, b, seq_idx=s, activation="silu")
        gx, gw, gb = torch.autograd.grad(y, (x, w, b), dout)
        return [y.detach(), gx, gw, gb]

    if mode == "env":
        monkeypatch.setenv("CAUSAL_CONV1D_DETERMINISTIC", "1")
        first = once()
        runs = (once() for _ in range((3 if backend.emulated else 1000)))
    else:
        prev = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        try:
            first = once()
            runs = [once() for _ in range((3 if backend.emulated else 1000))]
        finally:
            torch.use_deterministic_algorithms(prev)
    for i, r in enumerate(runs):
        for name, a, c in zip(("out", "dx", "dweight", "dbias"), first, r):
            assert torch.equal(a, c), f"run {i}: {name} not bitwise equal (seed={seeded})"


@pytest.mark.backends("cuda")
@pytest.mark.parametrize("layout", ["contiguous", "channel_last", "strided"])
@pytest.mark.parametrize("W", [1, 2, 3, 4, 6, 9, 32])
@pytest.mark.parametrize("dtypes", [CUDA_DTYPE_PAIRS[0], CUDA_DTYPE_PAIRS[2], CUDA_DTYPE_PAIRS[5]], ids=pair_id)
def test_fwd_bwd_vs_cpu(kernel, cpu_kernel, seeded, dtypes, W, layout):
    xdt, wdt = dtypes
    B, D, L = 2, 40, 90
    x, dout = randn_layout(B, D, L, layout, xdt), randn_layout(B, D, L, layout, xdt)
    w, b = torch.randn(D, W, dtype=wdt, device=dev()), torch.randn(D, dtype=wdt, device=dev())
    s = random_seq_idx(B, L, device=dev())
    ini = torch.randn(B, D, W - 1, dtype=xdt, device=dev())
    dfin = torch.randn(B, D, W - 1, dtype=xdt, device=dev())
    msg = f"seed={seeded} W={W} {dtypes} {layout}"
    g = kernel.ops.fwd(x, w, b, s, ini, True, True)
    c = skip_unimplemented(lambda: cpu_kernel.ops.fwd(*map(to_cpu, (x, w, b, s, ini)), True, True))
    close(g[0], c[0], dtypes, "out " + msg)
    exact(g[1], c[1], "final " + msg)
    g = kernel.ops.bwd(x, w, b, s, ini, dout, dfin, True, True)
    c = skip_unimplemented(
        lambda: cpu_kernel.ops.bwd(*map(to_cpu, (x, w, b, s, ini, dout, dfin)), True, True))
    for name, a, e in zip(("dx", "dweight", "dbias", "dinit"), g, c):
        close(a, e, dtypes, f"{name} {msg}", scaled=name in ("dweight", "dbias"))


# ---------------------------------------------------------------------------
# the compute-sanitizer grid: one small case through every kernel


@pytest.mark.sanitizer
@pytest.mark.backends("cuda")
@pytest.mark.parametrize("layout", ["contiguous", "channel_last", "strided", "unaligned"])
@pytest.mark.parametrize("W", [1, 3, 4, 6, 12, 20])
def test_sanitizer_fwd_bwd(kernel, layout, W):
    torch.manual_seed(W)
    for det in (False, True):
        bwd_case(kernel, 0, B=2, D=37, L=75, W=W, xdt=torch.float16, wdt=torch.float32,
                 layout=layout, seq=W % 2 == 1, deterministic=det)
    fwd_case(kernel, 0, B=3, D=37, L=1, W=W, xdt=torch.bfloat16, layout=layout, seq=True)


@pytest.mark.backends("cuda")
@pytest.mark.parametrize("f64", list(FLOAT64_CASES))
def test_float64_refused(kernel, cc, f64):
    """The CUDA kernels have no float64: refused with checks.cpp's error, the
    emulator's CPU tensors included."""
    xdt, wdt = FLOAT64_CASES[f64]
    x, w = torch.randn(2, 8, 12, dtype=xdt, device=dev()), torch.randn(8, 4, dtype=wdt, device=dev())
    dout = torch.randn_like(x)
    assert_float64_refused(kernel, cc, "bwd", x, w, None, None, None, dout, None, True, False)
