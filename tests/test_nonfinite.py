"""Non-finite values.

- NaN/+Inf/-Inf in the inputs propagate as in the float64 reference: the
  output has NaN, +Inf and -Inf at exactly the reference's positions, and the
  finite elements agree within the dtype's tolerance.
- They never poison what they must not reach: other seq_idx segments,
  padding tokens, other sequences of a packed batch (prefill and varlen
  states) and other rows of a state pool. Those results are compared
  bitwise with a run whose poisoned values were replaced by finite ones.
"""

from __future__ import annotations

import math

import pytest
import torch

from helpers import randn_layout, tolerance

I32 = torch.int32
SPECIALS = [math.nan, math.inf, -math.inf]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _dt(dt):
    return str(dt).replace("torch.", "")


def poison(t: torch.Tensor, n: int, values=SPECIALS) -> torch.Tensor:
    """Write n non-finite values at random positions of t (in place); an
    empty t (initial states of width 1) stays as it is."""
    if t.numel() == 0:
        return t
    flat = t.view(-1) if t.is_contiguous() else None
    for i in range(n):
        pos = [int(torch.randint(0, s, ())) for s in t.shape]
        v = values[i % len(values)]
        if flat is not None:
            flat[sum(p * s for p, s in zip(pos, t.stride()))] = v
        else:
            t[tuple(pos)] = v
    return t


def assert_nonfinite_like(got: torch.Tensor, want: torch.Tensor, dtypes, what: str) -> None:
    got, want = got.detach().double(), want.detach().double()
    assert got.shape == want.shape, what
    for name, f in (("NaN", torch.isnan), ("+Inf", torch.isposinf), ("-Inf", torch.isneginf)):
        g, w = f(got), f(want)
        assert torch.equal(g, w), (
            f"{what}: {name} positions differ; only in result: {(g & ~w).nonzero()[:5].tolist()}, "
            f"only in reference: {(w & ~g).nonzero()[:5].tolist()}"
        )
    finite = torch.isfinite(want)
    rtol, atol = tolerance(*dtypes)
    torch.testing.assert_close(got[finite], want[finite], rtol=rtol, atol=atol,
                               msg=lambda m: f"{what} (finite part): {m}")


def bits(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().contiguous()
    return t.view(torch.uint8) if t.element_size() > 1 and t.dim() > 0 else t


def assert_bitwise(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.shape == want.shape, what
    assert torch.equal(bits(got), bits(want)), f"{what}: differs bitwise"


def dbl(t):
    return None if t is None else t.detach().double()


def segments(B: int, L: int) -> torch.Tensor:
    """(B, L) ids: 3 segments per row and a padding run in the middle one."""
    s = torch.zeros(B, L, dtype=I32)
    s[:, L // 3 :] = 1
    s[:, 2 * L // 3 :] = 2
    s[:, L // 3 + 1 : L // 3 + 3] = -1
    return s


# ---------------------------------------------------------------------------
# causal_conv1d_fn: propagation


WHERE = ["x", "initial_states", "bias", "weight_nan", "weight_inf"]


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("W", [1, 4, 9])
@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@pytest.mark.parametrize("seq", [False, True], ids=["noseq", "seq_idx"])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("layout", ["contiguous", "channel_last"])
def test_fwd_propagates_like_reference(cc, seeded, where, W, dtype, seq, activation, layout):
    # L = 40: the rows path's staged head, in-place body (VALIGND windows)
    # and staged tail all see the poisoned values.
    B, D, L = 2, 6, 40
    x = randn_layout(B, D, L, layout, dtype)
    w, b = torch.randn(D, W).to(dtype), torch.randn(D).to(dtype)
    init = torch.randn(B, D, W - 1).to(dtype)
    if where == "x":
        poison(x, 6)
    elif where == "initial_states":
        poison(init, 3)
    elif where == "bias":
        poison(b, 3)
    elif where == "weight_nan":
        poison(w, 2, [math.nan])
    else:  # Inf in weight: Inf * (zero padding) is NaN, as in F.conv1d
        poison(w, 2, [math.inf, -math.inf])
    s = segments(B, L) if seq else None
    out, fin = cc.causal_conv1d_fn(x, w, b, seq_idx=s, initial_states=init,
                                   return_final_states=True, activation=activation)
    out_ref, fin_ref = cc.causal_conv1d_ref(dbl(x), dbl(w), dbl(b), seq_idx=s,
                                            initial_states=dbl(init), return_final_states=True,
                                            activation=activation)
    assert_nonfinite_like(out, out_ref, (dtype,), "out")
    assert_nonfinite_like(fin, fin_ref, (dtype,), "final_states")


@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
def test_fwd_zero_padding_with_inf_weight(cc, seeded, dtype):
    """Without initial states the positions before the sequence are zeros:
    an Inf weight tap over them gives NaN (Inf * 0), as in F.conv1d."""
    D, L, W = 3, 6, 4
    x = torch.randn(1, D, L).to(dtype)
    w = torch.randn(D, W).to(dtype)
    w[1, 0] = math.inf
    out = cc.causal_conv1d_fn(x, w)
    ref = torch.nn.functional.conv1d(x.double(), w.double()[:, None, :], padding=W - 1,
                                     groups=D)[..., :L]
    assert_nonfinite_like(out, ref, (dtype,), "out")
    assert torch.isnan(out[0, 1, : W - 1]).all()


# ---------------------------------------------------------------------------
# causal_conv1d_fn: segments, padding tokens and other rows stay clean


@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@pytest.mark.parametrize("W", [2, 4, 7])
@pytest.mark.parametrize("value", SPECIALS, ids=["nan", "inf", "-inf"])
def test_fwd_segments_not_poisoned(cc, seeded, dtype, W, value):
    B, D, L = 3, 10, 30
    x = randn_layout(B, D, L, "channel_last", dtype)
    w, b = torch.randn(D, W).to(dtype), torch.randn(D).to(dtype)
    init = torch.randn(B, D, W - 1).to(dtype)
    s = segments(B, L)
    s[2, :10], s[2, 10:13], s[2, 13:] = 5, -1, 6  # row 2: clean segments around padding
    x_bad, init_bad = x.clone(), init.clone()
    x_bad[0][:, s[0] == 1] = value  # row 0, the middle segment
    x_bad[2][:, s[2] < 0] = value  # row 2, the padding tokens (garbage in padded slots)
    init_bad[1] = value  # row 1's initial state feeds only its first segment
    kw = dict(seq_idx=s, return_final_states=True, activation="silu")
    clean_out, clean_fin = cc.causal_conv1d_fn(x, w, b, initial_states=init, **kw)
    out, fin = cc.causal_conv1d_fn(x_bad, w, b, initial_states=init_bad, **kw)
    # row 0: segments 0 and 2 and the padding tokens are untouched
    keep0 = (s[0] != 1)
    assert_bitwise(out[0][:, keep0], clean_out[0][:, keep0], "row 0 outside the poisoned segment")
    assert torch.equal(out[0][:, s[0] < 0], torch.zeros(D, 2, dtype=dtype)), "padding tokens output 0"
    # row 1: everything after its first segment is untouched
    keep1 = s[1] != 0
    assert_bitwise(out[1][:, keep1], clean_out[1][:, keep1], "row 1 after its first segment")
    keep2 = s[2] >= 0
    assert_bitwise(out[2][:, keep2], clean_out[2][:, keep2], "row 2 around its padding")
    assert torch.equal(out[2][:, ~keep2], torch.zeros(D, 3, dtype=dtype)), "padding tokens output 0"
    # final states come from the (clean) last segments
    assert_bitwise(fin, clean_fin, "final_states")
    # and the poisoned parts agree with the reference
    out_ref = cc.causal_conv1d_ref(dbl(x_bad), dbl(w), dbl(b), initial_states=dbl(init_bad), **kw)[0]
    assert_nonfinite_like(out, out_ref, (dtype,), "out")


# ---------------------------------------------------------------------------
# backward


def _bwd(fn, x, w, b, s, dout, cast):
    leaves = [t.detach().requires_grad_() for t in (cast(x), cast(w), cast(b))]
    fn(*leaves, seq_idx=s, activation="silu").backward(cast(dout))
    return [t.grad for t in leaves]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=_dt)
@pytest.mark.parametrize("value", SPECIALS, ids=["nan", "inf", "-inf"])
def test_bwd_propagates_like_reference(cc, seeded, dtype, value):
    """A non-finite x inside a segment: the gradients agree with the reference
    and stay finite in other rows and other segments."""
    B, D, L, W = 2, 5, 24, 4
    x = torch.randn(B, D, L).to(dtype)
    w, b = torch.randn(D, W).to(dtype), torch.randn(D).to(dtype)
    dout = torch.randn(B, D, L).to(dtype)
    s = segments(B, L)  # segments [0, 8) [8, 16) [16, 24), padding at 9 and 10
    x[1, 2, 12] = value
    got = _bwd(cc.causal_conv1d_fn, x, w, b, s, dout, lambda t: t)
    want = _bwd(cc.causal_conv1d_ref, x, w, b, s, dout, lambda t: t.double())
    for name, g, r in zip(("dx", "dweight", "dbias"), got, want):
        assert_nonfinite_like(g, r, (dtype,), name)
    dx = got[0]
    assert torch.isfinite(dx[0]).all() and torch.isfinite(dx[1, :, :8]).all()
    assert torch.isfinite(dx[1, :, 16:]).all() and torch.isfinite(dx[1, [0, 1, 3, 4]]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=_dt)
@pytest.mark.parametrize("L", [13, 2100])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_bwd_last_token_nonfinite(cc, seeded, dtype, L, activation):
    """A non-finite x at the last position of contiguous rows without
    seq_idx, at lengths that end inside a vector: no token past the end may
    take part (without silu, dweight's taps before the last keep finite)."""
    B, D, W = 2, 5, 4
    x = torch.randn(B, D, L).to(dtype)
    x[1, 3, L - 1] = math.inf
    w, b = torch.randn(D, W).to(dtype), torch.randn(D).to(dtype)
    dout = torch.randn(B, D, L).to(dtype)

    def run(fn, cast):
        leaves = [t.detach().requires_grad_() for t in (cast(x), cast(w), cast(b))]
        fn(*leaves, activation=activation).backward(cast(dout))
        return [t.grad for t in leaves]

    got = run(cc.causal_conv1d_fn, lambda t: t)
    want = run(cc.causal_conv1d_ref, lambda t: t.double())
    for name, g, r in zip(("dx", "dweight", "dbias"), got, want):
        assert_nonfinite_like(g, r, (dtype,), name)
    if activation is None:
        assert torch.isfinite(got[1][3, : W - 1]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=_dt)
@pytest.mark.parametrize("value", SPECIALS, ids=["nan", "inf", "-inf"])
def test_bwd_padding_tokens_do_not_matter(cc, seeded, dtype, value):
    """Padding tokens (seq_idx < 0) output a constant 0, so whatever their x
    holds (garbage, NaN) no gradient may change: every gradient equals the
    one with finite values there."""
    B, D, L, W = 2, 5, 24, 4
    x = torch.randn(B, D, L).to(dtype)
    w, b = torch.randn(D, W).to(dtype), torch.randn(D).to(dtype)
    dout = torch.randn(B, D, L).to(dtype)
    s = segments(B, L)
    x_bad = x.clone()
    x_bad[:, :, s[0] < 0] = value
    clean = _bwd(cc.causal_conv1d_fn, x, w, b, s, dout, lambda t: t)
    got = _bwd(cc.causal_conv1d_fn, x_bad, w, b, s, dout, lambda t: t)
    for name, g, c in zip(("dx", "dweight", "dbias"), got, clean):
        assert torch.isfinite(g).all(), f"{name}: padding tokens leaked non-finite values"
        torch.testing.assert_close(g, c, rtol=0, atol=0, msg=lambda m: f"{name}: {m}")


# ---------------------------------------------------------------------------
# causal_conv1d_update: pool rows


@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@pytest.mark.parametrize("circular", [False, True], ids=["shift", "cache_seqlens"])
@pytest.mark.parametrize("value", SPECIALS, ids=["nan", "inf", "-inf"])
def test_update_pool_rows_not_poisoned(cc, seeded, dtype, circular, value):
    B, D, W, S, N, L = 4, 12, 4, 6, 9, 2
    x = torch.randn(B, D, L).to(dtype)
    w, b = torch.randn(D, W).to(dtype), torch.randn(D).to(dtype)
    pool = torch.randn(N, D, S).to(dtype)
    idx = torch.tensor([6, 1, -1, 3], dtype=I32)  # row 2 is padding
    cache = torch.tensor([5, 0, 2, 9], dtype=I32) if circular else None
    clean = pool.clone()
    pool[1] = value  # used by batch row 1
    pool[0] = value  # used by nobody
    x[3, 4, 1] = value  # batch row 3's newest token
    clean_x = x.clone()
    clean_x[3, 4, 1] = 0.5
    bad_pool = pool.clone()
    out = cc.causal_conv1d_update(x, pool, w, b, activation="silu", cache_seqlens=cache,
                                  conv_state_indices=idx)
    clean_out = cc.causal_conv1d_update(clean_x, clean, w, b, activation="silu",
                                        cache_seqlens=cache, conv_state_indices=idx)
    # batch row 0 (pool row 6) is untouched by any poison
    assert_bitwise(out[0], clean_out[0], "batch row 0")
    assert_bitwise(pool[6], clean[6], "pool row 6")
    # the padding batch row outputs 0; unused rows keep their values bit for bit
    assert torch.equal(out[2], torch.zeros(D, L, dtype=dtype))
    for r in (0, 2, 4, 5, 7, 8):
        assert_bitwise(pool[r], bad_pool[r], f"unused pool row {r}")
    # batch row 3: only channel 4 sees the poisoned token
    others = [d for d in range(D) if d != 4]
    assert_bitwise(out[3, others], clean_out[3, others], "batch row 3, other channels")
    assert_bitwise(pool[3, others], clean[3, others], "pool row 3, other channels")
    # all of it as the reference says
    ref_pool = bad_pool.double()
    out_ref = cc.causal_conv1d_update_ref(dbl(x), ref_pool, dbl(w), dbl(b), activation="silu",
                                          cache_seqlens=cache, conv_state_indices=idx)
    assert_nonfinite_like(out, out_ref, (dtype,), "out")
    assert_nonfinite_like(pool, ref_pool, (dtype,), "pool")


# ---------------------------------------------------------------------------
# packed sequences: varlen states and packed prefill


def _cu():
    return torch.tensor([0, 7, 7, 20, 21, 40], dtype=I32)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@pytest.mark.parametrize("value", SPECIALS, ids=["nan", "inf", "-inf"])
def test_varlen_states_not_poisoned(cc, seeded, dtype, value):
    T, D, n = 42, 9, 5
    cu = _cu()
    x = torch.randn(T, D).to(dtype)
    clean = cc.causal_conv1d_varlen_states(x, cu, n)
    x_bad = x.clone()
    x_bad[7:20] = value  # sequence 2, entirely
    x_bad[40:] = value  # tokens after the last sequence
    got = cc.causal_conv1d_varlen_states(x_bad, cu, n)
    for seq in (0, 1, 3, 4):
        assert_bitwise(got[seq], clean[seq], f"sequence {seq}")
    torch.testing.assert_close(got, cc.causal_conv1d_varlen_states_ref(x_bad, cu, n), rtol=0,
                               atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@pytest.mark.parametrize("W", [2, 4, 6])
@pytest.mark.parametrize("value", SPECIALS, ids=["nan", "inf", "-inf"])
def test_packed_fwd_not_poisoned(cc, seeded, dtype, W, value):
    T, D, S, N = 40, 9, W + 1, 8
    cu = _cu()  # sequences: [0,7) [7,7) [7,20) [20,21) [21,40)
    x = torch.randn(T, D).to(dtype)
    w, b = torch.randn(D, W).to(dtype), torch.randn(D).to(dtype)
    pool = torch.randn(N, D, S).to(dtype)
    idx = torch.tensor([5, 0, 2, -1, 7], dtype=I32)
    has_init = torch.tensor([True, True, True, True, False])
    x_bad, pool_bad = x.clone(), pool.clone()
    x_bad[7:20] = value  # sequence 2
    x_bad[20] = value  # sequence 3 is padding (index -1): output 0
    pool_bad[5] = value  # sequence 0's initial state
    pool_bad[4] = value  # a row nobody uses
    pool_bad[7] = value  # sequence 4's row, not read (has_initial_state False)
    kw = dict(activation="silu")
    clean_pool, bad_pool = pool.clone(), pool_bad.clone()
    clean = cc.causal_conv1d_packed_fwd(x, w, b, cu, clean_pool, idx, has_init, **kw)
    got = cc.causal_conv1d_packed_fwd(x_bad, w, b, cu, bad_pool, idx, has_init, **kw)
    assert_bitwise(got[21:], clean[21:], "sequence 4")
    assert_bitwise(bad_pool[7], clean_pool[7], "sequence 4's row, overwritten without reading")
    assert torch.equal(got[20], torch.zeros(D, dtype=dtype)), "padding sequence outputs 0"
    assert_bitwise(bad_pool[4], pool_bad[4], "unused pool row")
    assert_bitwise(bad_pool[0], clean_pool[0], "the empty sequence's row")
    # sequence 0 started from a poisoned state: its last tokens no longer see it
    if 7 >= W:
        assert_bitwise(got[W - 1 : 7], clean[W - 1 : 7], "sequence 0 past the initial state")
    ref_pool = pool_bad.double()
    out_ref = cc.causal_conv1d_packed_fwd_ref(dbl(x_bad), dbl(w), dbl(b), cu, ref_pool, idx,
                                              has_init, **kw)
    assert_nonfinite_like(got, out_ref, (dtype,), "out")
    assert_nonfinite_like(bad_pool, ref_pool, (dtype,), "pool")
