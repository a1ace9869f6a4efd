"""Backward of causal_conv1d_fn on CPU: the registered autograd (ops.bwd,
cpu/bwd.h) against torch.autograd through the float64 reference.

- float64 gradcheck on small shapes over every option: bias, silu, seq_idx
  with padding, initial_states, return_final_states (a gradient flows in
  through final_states), widths 1, 2, 4, 7, contiguous and channel-last x;
- fp32 / fp16 / bf16 in all nine x/weight pairings against the reference's
  gradients within the spec's tolerances, widths up to 32, lengths 1, 2, 3,
  129 and long enough for several chunks, every layout helpers.py knows,
  strided and expanded dout;
- bitwise determinism across torch.set_num_threads and runs;
- the public API's corners: final_states_out, a loss on final_states alone,
  L == 0.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from helpers import randn_layout, random_seq_idx, tolerance

F64 = torch.float64
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PAIRS = list(itertools.product(DTYPES, DTYPES))  # (x, weight) names
# dweight / dbias: accumulated in fp32 and returned in weight's dtype.
PARAM_TOL = {torch.float32: (1e-3, 1e-3), torch.float16: (3e-3, 5e-3), torch.bfloat16: (1e-2, 5e-2),
             F64: (1e-9, 1e-9)}


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


def check_against_reference(cc, x, w, b, s, ini, silu=True, fin=True, dout=None, dfin=None,
                            what=""):
    B, D, L = x.shape
    W = w.shape[1]
    if dout is None:
        dout = torch.randn(B, D, L, dtype=F64).to(x.dtype)
    if dfin is None:
        dfin = torch.randn(B, D, W - 1, dtype=F64).to(x.dtype)
    got = grads(cc.causal_conv1d_fn, x, w, b, s, ini, silu, fin, dout, dfin, lambda t: t)
    want = grads(cc.causal_conv1d_ref, x, w, b, s, ini, silu, fin, dout, dfin, lambda t: t.double())
    x_tol = tolerance(x.dtype, w.dtype)
    for name, g, r, dt, tol in (
        ("dx", got[0], want[0], x.dtype, x_tol),
        ("dweight", got[1], want[1], w.dtype, PARAM_TOL[w.dtype]),
        ("dbias", got[2], want[2], w.dtype, PARAM_TOL[w.dtype]),
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


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("layout", ["contiguous", "channel_last"])
@pytest.mark.parametrize("W", [1, 2, 4, 7])
def test_gradcheck(cc, seeded, W, layout, option):
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
        return cc.causal_conv1d_fn(kw["x"], kw["weight"], kw.get("bias"), seq_idx=s,
                                   initial_states=kw.get("initial_states"),
                                   return_final_states=fin, activation="silu" if silu else None)

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-8, rtol=1e-6)


# ---------------------------------------------------------------------------
# low precision, every pairing, against the reference's gradients

PAIR_CASES = [  # (B, D, L, W, layout, seq pattern)
    (2, 5, 129, 4, "contiguous", "random"),
    (2, 40, 3, 7, "channel_last", "random"),
    (1, 3, 1, 2, "strided", None),
    (2, 9, 66, 32, "proj_slice", "alternating"),
]


def seq_for(pattern, B, L):
    if pattern is None:
        return None
    if pattern == "random":
        return random_seq_idx(B, L)
    # ids 0 1 0 1 ... with padding every 7th token: pairs of equal ids that
    # are not adjacent, at every distance the width reaches
    s = (torch.arange(L) // 2 % 2).int().repeat(B, 1)
    s[:, 3::7] = -1
    return s


@pytest.mark.parametrize("case", range(len(PAIR_CASES)))
@pytest.mark.parametrize("pair", PAIRS, ids=[f"x_{a}-w_{b}" for a, b in PAIRS])
def test_dtype_pairings(cc, seeded, pair, case):
    B, D, L, W, layout, pattern = PAIR_CASES[case]
    xdt, wdt = DTYPES[pair[0]], DTYPES[pair[1]]
    x, w, b, _, ini = make_inputs(B, D, L, W, xdt, wdt, layout, True, False, True)
    s = seq_for(pattern, B, L)
    check_against_reference(cc, x, w, b, s, ini, what=f"{pair} case {case}")


@pytest.mark.parametrize("layout", ["contiguous", "channel_last"])
@pytest.mark.parametrize("L", [1, 2, 3, 129])
def test_short_and_odd_lengths(cc, seeded, L, layout):
    for W, seq in ((4, True), (5, False)):
        x, w, b, s, ini = make_inputs(2, 7, L, W, torch.float32, torch.float32, layout, True, seq,
                                      True)
        check_against_reference(cc, x, w, b, s, ini, what=f"L={L} W={W} seq={seq}")


@pytest.mark.parametrize("layout", ["contiguous", "channel_last", "strided"])
@pytest.mark.parametrize("W", [3, 16, 31, 32])
def test_wide_kernels(cc, seeded, W, layout):
    x, w, b, s, ini = make_inputs(2, 37, 300, W, torch.float32, torch.float32, layout, True, True,
                                  True)
    check_against_reference(cc, x, w, b, s, ini, what=f"W={W}")


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("layout", ["contiguous", "channel_last", "proj_slice"])
def test_long_sequences(cc, seeded, layout, dtype):
    """Several chunks per row (the CPU kernel cuts L into fixed chunks) and
    channel blocks that do not divide D; with and without seq_idx."""
    dt = DTYPES[dtype]
    for seq, silu in ((True, True), (False, False)):
        x, w, b, s, ini = make_inputs(2, 35, 2100, 4, dt, dt, layout, True, seq, True)
        check_against_reference(cc, x, w, b, s, ini, silu=silu, what=f"seq={seq} silu={silu}")


@pytest.mark.parametrize("option", ["nobias_none", "bias_silu"])
def test_options_low_precision(cc, seeded, option):
    bias, silu = option == "bias_silu", option == "bias_silu"
    for fin, init, seq in ((False, False, False), (True, False, True), (False, True, True)):
        x, w, b, s, ini = make_inputs(2, 6, 50, 4, torch.bfloat16, torch.float32, "channel_last",
                                      bias, seq, init)
        check_against_reference(cc, x, w, b, s, ini, silu=silu, fin=fin,
                                what=f"fin={fin} init={init} seq={seq}")


def test_dout_layouts(cc, seeded):
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
            check_against_reference(cc, x, w, b, s, ini, dout=dout, dfin=dfin,
                                    what=f"{layout} dout {name}")


def test_sum_backward(cc, seeded):
    x, w, b, s, ini = make_inputs(2, 8, 40, 4, torch.float32, torch.float32, "channel_last", True,
                                  True, True)
    leaves = [t.detach().requires_grad_() for t in (x, w, b)]
    refs = [t.detach().double().requires_grad_() for t in (x, w, b)]
    cc.causal_conv1d_fn(*leaves, seq_idx=s, activation="silu").sum().backward()
    cc.causal_conv1d_ref(*refs, seq_idx=s, activation="silu").sum().backward()
    for g, r in zip(leaves, refs):
        torch.testing.assert_close(g.grad.double(), r.grad, rtol=1e-3, atol=1e-3)
    assert leaves[0].grad.stride() == x.stride()  # dx keeps x's layout


# ---------------------------------------------------------------------------
# determinism


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.uint8)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("layout", ["contiguous", "channel_last"])
def test_deterministic_across_threads(cc, seeded, layout, dtype):
    dt = DTYPES[dtype]
    B, D, L, W = 3, 70, 2100, 4
    x, w, b, s, ini = make_inputs(B, D, L, W, dt, dt, layout, True, True, True)
    dout = torch.randn(B, D, L).to(dt)
    dfin = torch.randn(B, D, W - 1).to(dt)

    def run():
        return grads(cc.causal_conv1d_fn, x, w, b, s, ini, True, True, dout, dfin, lambda t: t)

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


def test_final_states_out_carries_gradient(cc, seeded):
    """return_final_states with final_states_out: the returned buffer is the
    final states, and its gradient reaches x and initial_states."""
    B, D, L, W = 2, 5, 6, 4
    x, w, b, s, ini = make_inputs(B, D, L, W, torch.float32, torch.float32, "contiguous", True,
                                  False, True)
    leaves = [t.detach().requires_grad_() for t in (x, w, b, ini)]
    buf = torch.empty(B, D, W - 1)
    out, fin = cc.causal_conv1d_fn(leaves[0], leaves[1], leaves[2], initial_states=leaves[3],
                                   return_final_states=True, final_states_out=buf,
                                   activation="silu")
    assert fin.data_ptr() == buf.data_ptr()
    dout, dfin = torch.randn_like(out), torch.randn_like(fin)
    torch.autograd.backward([out, fin], [dout, dfin])
    want = grads(cc.causal_conv1d_ref, x, w, b, None, ini, True, True, dout, dfin,
                 lambda t: t.double())
    for g, r in zip(leaves, want):
        torch.testing.assert_close(g.grad.double(), r, rtol=1e-3, atol=1e-3)


def test_loss_on_final_states_only(cc, seeded):
    """No gradient reaches out (autograd passes None for it): dx is dfinal_states
    at the positions final_states were copied from, and zero elsewhere."""
    B, D, L, W = 2, 4, 9, 5
    x, w, b, _, ini = make_inputs(B, D, L, W, torch.float32, torch.float32, "contiguous", True,
                                  False, True)
    s = torch.tensor([[0] * 6 + [1] * 3, [0] * 9], dtype=torch.int32)
    leaves = [t.detach().requires_grad_() for t in (x, w, b, ini)]
    _, fin = cc.causal_conv1d_fn(leaves[0], leaves[1], leaves[2], seq_idx=s,
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
def test_empty_sequence(cc, seeded, dtype):
    """L == 0: final_states are the initial states, so dinitial_states is
    dfinal_states; nothing else receives a gradient."""
    dt = DTYPES[dtype]
    B, D, W = 2, 5, 4
    x, w, b, _, ini = make_inputs(B, D, 0, W, dt, dt, "contiguous", True, False, True)
    leaves = [t.detach().requires_grad_() for t in (x, w, b, ini)]
    out, fin = cc.causal_conv1d_fn(*leaves[:3], initial_states=leaves[3],
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
    out, fin = cc.causal_conv1d_fn(*leaves[:3], initial_states=leaves[3],
                                   return_final_states=True, activation="silu")
    (out.sum() + fin.sum() * 0).backward()
    assert torch.equal(leaves[3].grad, torch.zeros(B, D, W - 1, dtype=dt))


@pytest.mark.parametrize("layout", ["contiguous", "channel_last"])
def test_output_modified_in_place(cc, seeded, layout):
    """The output is a fresh tensor, not a view of one the operator made, so
    autograd lets callers modify it in place (y.mul_(gate), y += residual)."""
    x, w, b, _, ini = make_inputs(2, 5, 9, 4, F64, F64, layout, init=True)
    leaves = [t.detach().requires_grad_() for t in (x, w, b, ini)]
    out, fin = cc.causal_conv1d_fn(*leaves[:3], initial_states=leaves[3],
                                   return_final_states=True, activation="silu")
    assert out._base is None and fin._base is None
    out.mul_(3)
    fin.add_(1)
    (out.sum() + fin.sum()).backward()
    grads = [t.grad for t in leaves]
    for t in leaves:
        t.grad = None
    out, fin = cc.causal_conv1d_ref(*leaves[:3], initial_states=leaves[3],
                                    return_final_states=True, activation="silu")
    (3 * out.sum() + fin.sum()).backward()
    for got, t in zip(grads, leaves):
        torch.testing.assert_close(got, t.grad)


def test_forward_mode_ad_refused(cc, seeded):
    """Dual tensors would pass through without a tangent: a clear error
    instead (jvp included); without tangents the call works as usual."""
    import torch.autograd.forward_ad as fwAD

    x, w, b, _, _ = make_inputs(2, 5, 9, 4, F64, F64, "contiguous")
    with fwAD.dual_level():
        dual = fwAD.make_dual(x, torch.randn_like(x))
        with pytest.raises(NotImplementedError, match="forward-mode AD"):
            cc.causal_conv1d_fn(dual, w, b, activation="silu")
        torch.testing.assert_close(cc.causal_conv1d_fn(x, w, b, activation="silu"),
                                   cc.causal_conv1d_ref(x, w, b, activation="silu"))
    with pytest.raises(NotImplementedError, match="forward-mode AD"):
        torch.func.jvp(lambda t: cc.causal_conv1d_fn(t, w, b), (x,), (torch.randn_like(x),))
