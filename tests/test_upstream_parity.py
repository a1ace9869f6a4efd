"""Upstream parity, one check per row of tests/upstream_parity.md.

Each check calls the backend under test (the CPU build, the CUDA kernels on
a GPU or under the emulator) the way code written against upstream
causal-conv1d 1.7 calls it, and compares with the float64 reference.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from helpers import assert_close, tolerance

TABLE = Path(__file__).with_name("upstream_parity.md")
if not TABLE.exists():  # kernel-builder's source set carries tests/*.py only
    pytest.skip(f"{TABLE.name} is not in this tree", allow_module_level=True)
F32, F16, BF16, I32, I64 = torch.float32, torch.float16, torch.bfloat16, torch.int32, torch.int64
B, D, L, W = 2, 24, 19, 4
CHECKS = {}


def row(fn):
    CHECKS[fn.__name__] = fn
    return fn


def table_ids() -> list[str]:
    return re.findall(r"^\| (\w+) \|", TABLE.read_text(), flags=re.M)[1:]  # skip the header


def randn(*shape, dtype=F32, dev="cpu"):
    return torch.randn(*shape, dtype=dtype, device=dev)


def channel_last(b, d, l, dtype=F32, dev="cpu"):
    return randn(b, l, d, dtype=dtype, dev=dev).transpose(1, 2)


def ref_fn(cc, x, weight, bias=None, seq_idx=None, initial_states=None, activation=None,
           return_final_states=False):
    d = lambda t: None if t is None else t.double()  # noqa: E731
    return cc.causal_conv1d_ref(d(x), d(weight), d(bias), seq_idx, d(initial_states),
                                return_final_states, None, activation)


def check_fn(cc, out, x, weight, bias=None, **kw):
    assert out.dtype == x.dtype and out.shape == x.shape
    assert_close(out, ref_fn(cc, x, weight, bias, **kw), (x.dtype, weight.dtype))


def segments(b, l, dev):
    """(b, l) int32 ids: two segments per row and a padding run."""
    ids = torch.zeros(b, l, dtype=I32)
    ids[:, l // 2 :] = 1
    ids[:, 2:4] = -1
    return ids.to(dev)


# ---- causal_conv1d_fn ---------------------------------------------------------


@row
def fn_positional(cc, dev):
    x, w, b, init = channel_last(B, D, L, dev=dev), randn(D, W, dev=dev), randn(D, dev=dev), None
    fs = randn(B, D, W - 1, dev=dev)
    out, final = cc.causal_conv1d_fn(x, w, b, None, init, True, fs, "silu")
    out_kw, final_kw = cc.causal_conv1d_fn(x, w, bias=b, return_final_states=True, activation="silu")
    assert final is fs
    torch.testing.assert_close(out, out_kw, rtol=0, atol=0)
    torch.testing.assert_close(final, final_kw, rtol=0, atol=0)
    check_fn(cc, out, x, w, b, activation="silu")


@row
def fn_dtype_pairs(cc, dev):
    for xd in (F32, F16, BF16):
        for wd in (F32, F16, BF16):
            x, w, b = channel_last(B, D, L, xd, dev), randn(D, W, dtype=wd, dev=dev), randn(D, dtype=wd, dev=dev)
            check_fn(cc, cc.causal_conv1d_fn(x, w, b, activation="silu"), x, w, b, activation="silu")


@row
def fn_x_contiguous(cc, dev):
    x, w = randn(B, D, L, dev=dev), randn(D, W, dev=dev)
    check_fn(cc, cc.causal_conv1d_fn(x, w), x, w)


@row
def fn_x_channel_last(cc, dev):
    x, w = channel_last(B, D, L, dev=dev), randn(D, W, dev=dev)
    out = cc.causal_conv1d_fn(x, w)
    assert out.stride(1) == 1  # upstream keeps x's layout
    check_fn(cc, out, x, w)


@row
def fn_x_other_strides(cc, dev):
    x, w = randn(B, 2 * D, 3 * L, dev=dev)[:, ::2, ::3], randn(D, W, dev=dev)
    assert 1 not in x.stride()
    check_fn(cc, cc.causal_conv1d_fn(x, w), x, w)


@row
def fn_bias_none(cc, dev):
    x, w = channel_last(B, D, L, dev=dev), randn(D, W, dev=dev)
    check_fn(cc, cc.causal_conv1d_fn(x, w, None, activation="silu"), x, w, activation="silu")


@row
def fn_bias_strided(cc, dev):
    x, w, b = channel_last(B, D, L, dev=dev), randn(D, W, dev=dev), randn(2 * D, dev=dev)[::2]
    check_fn(cc, cc.causal_conv1d_fn(x, w, b), x, w, b)


@row
def fn_bias_dtype(cc, dev):
    x, w, b = channel_last(B, D, L, dev=dev), randn(D, W, dev=dev), randn(D, dtype=F16, dev=dev)
    with pytest.raises(TypeError, match="bias"):
        cc.causal_conv1d_fn(x, w, b)


@row
def fn_widths_2_to_4(cc, dev):
    for width in (2, 3, 4):
        x, w = channel_last(B, D, L, dev=dev), randn(D, width, dev=dev)
        check_fn(cc, cc.causal_conv1d_fn(x, w), x, w)


@row
def fn_widths_other(cc, dev):
    for width in (1, 5, 8, 17, 32):
        x, w = channel_last(B, D, L, dev=dev), randn(D, width, dev=dev)
        check_fn(cc, cc.causal_conv1d_fn(x, w), x, w)


@row
def fn_seq_idx_channel_last(cc, dev):
    x, w, b = channel_last(B, D, L, dev=dev), randn(D, W, dev=dev), randn(D, dev=dev)
    s = segments(B, L, dev)
    check_fn(cc, cc.causal_conv1d_fn(x, w, b, s, activation="silu"), x, w, b, seq_idx=s,
             activation="silu")


@row
def fn_seq_idx_contiguous_x(cc, dev):
    x, w = randn(B, D, L, dev=dev), randn(D, W, dev=dev)
    s = segments(B, L, dev)
    check_fn(cc, cc.causal_conv1d_fn(x, w, None, s), x, w, seq_idx=s)


@row
def fn_seq_idx_int64(cc, dev):
    x, w = channel_last(B, D, L, dev=dev), randn(D, W, dev=dev)
    with pytest.raises(TypeError, match="seq_idx"):
        cc.causal_conv1d_fn(x, w, None, segments(B, L, dev).long())


@row
def fn_seq_idx_str(cc, dev):
    x, w, b = channel_last(B, D, L, dev=dev), randn(D, W, dev=dev), randn(D, dev=dev)
    with pytest.raises(TypeError, match=r"seq_idx.*activation.*keyword"):
        cc.causal_conv1d_fn(x, w, b, "silu")


@row
def fn_initial_states(cc, dev):
    for x in (channel_last(B, D, L, dev=dev), randn(B, D, L, dev=dev)):
        w, init = randn(D, W, dev=dev), randn(B, D, W - 1, dev=dev)
        check_fn(cc, cc.causal_conv1d_fn(x, w, None, None, init), x, w, initial_states=init)


@row
def fn_initial_states_seq_idx(cc, dev):
    x, w, init = channel_last(B, D, L, dev=dev), randn(D, W, dev=dev), randn(B, D, W - 1, dev=dev)
    s = segments(B, L, dev)
    check_fn(cc, cc.causal_conv1d_fn(x, w, None, s, init), x, w, seq_idx=s, initial_states=init)


@row
def fn_return_final_states(cc, dev):
    for x in (channel_last(B, D, L, dev=dev), randn(B, D, L, dev=dev)):
        w = randn(D, W, dev=dev)
        out, final = cc.causal_conv1d_fn(x, w, return_final_states=True)
        ref_out, ref_final = ref_fn(cc, x, w, return_final_states=True)
        assert final.shape == (B, D, W - 1) and final.dtype == x.dtype
        assert_close(out, ref_out, (F32,))
        torch.testing.assert_close(final.double(), ref_final, rtol=0, atol=0)


@row
def fn_final_states_out(cc, dev):
    x, w = channel_last(B, D, L, dev=dev), randn(D, W, dev=dev)
    fs = randn(B, W - 1, D, dev=dev).transpose(1, 2)  # upstream allocates it channel-last
    out, final = cc.causal_conv1d_fn(x, w, return_final_states=True, final_states_out=fs)
    assert final is fs
    torch.testing.assert_close(fs, x[..., -(W - 1):], rtol=0, atol=0)


@row
def fn_final_states_out_ignored(cc, dev):
    x, w, fs = channel_last(B, D, L, dev=dev), randn(D, W, dev=dev), randn(B, D, W - 1, dev=dev)
    before = fs.clone()
    out = cc.causal_conv1d_fn(x, w, final_states_out=fs)
    assert isinstance(out, torch.Tensor)
    check_fn(cc, out, x, w)
    assert torch.equal(fs, before)


@row
def fn_final_states_out_dtype(cc, dev):
    x, w = channel_last(B, D, L, dev=dev), randn(D, W, dev=dev)
    with pytest.raises(TypeError, match="final_states_out"):
        cc.causal_conv1d_fn(x, w, return_final_states=True,
                            final_states_out=randn(B, D, W - 1, dtype=F16, dev=dev))


@row
def fn_activations(cc, dev):
    x, w = channel_last(B, D, L, dev=dev), randn(D, W, dev=dev)
    silu = cc.causal_conv1d_fn(x, w, activation="silu")
    check_fn(cc, silu, x, w, activation="silu")
    torch.testing.assert_close(cc.causal_conv1d_fn(x, w, activation="swish"), silu, rtol=0, atol=0)
    check_fn(cc, cc.causal_conv1d_fn(x, w, activation=None), x, w)


@row
def fn_activation_other(cc, dev):
    x, w = channel_last(B, D, L, dev=dev), randn(D, W, dev=dev)
    with pytest.raises(ValueError, match="activation"):
        cc.causal_conv1d_fn(x, w, activation="relu")


@row
def fn_autograd(cc, dev):
    x = channel_last(B, D, L, dev=dev).requires_grad_()
    w, b = randn(D, W, dev=dev).requires_grad_(), randn(D, dev=dev).requires_grad_()
    init = randn(B, D, W - 1, dev=dev).requires_grad_()
    dout = randn(B, D, L, dev=dev)
    got = torch.autograd.grad(cc.causal_conv1d_fn(x, w, b, None, init, activation="silu"),
                              (x, w, b, init), dout)
    leaves = [t.detach().double().requires_grad_() for t in (x, w, b, init)]
    ref = cc.causal_conv1d_ref(leaves[0], leaves[1], leaves[2], None, leaves[3], activation="silu")
    want = torch.autograd.grad(ref, leaves, dout.double())
    for g, r in zip(got, want):
        assert_close(g, r, (F32,))


@row
def fn_class_apply(cc, dev):
    x, w, b = channel_last(B, D, L, dev=dev), randn(D, W, dev=dev), randn(D, dev=dev)
    out = cc.CausalConv1dFn.apply(x, w, b, None, None, False, None, "silu")
    check_fn(cc, out, x, w, b, activation="silu")


@row
def fn_ref(cc, dev):
    x, w, b = randn(B, D, L, dtype=torch.float64), randn(D, W, dtype=torch.float64), None
    init = randn(B, D, W - 1, dtype=torch.float64)
    out, final = cc.causal_conv1d_ref(x, w, b, None, init, True, None, "silu")
    full = torch.cat([init, x], -1)
    taps = full.unfold(-1, W, 1)  # (B, D, L, W): the window ending at each position
    torch.testing.assert_close(out, torch.nn.functional.silu((taps * w[:, None, :]).sum(-1)))
    torch.testing.assert_close(final, x[..., -(W - 1):], rtol=0, atol=0)


# ---- causal_conv1d_update -------------------------------------------------------


def ref_update(cc, x, state, w, b=None, activation=None, cache_seqlens=None, indices=None):
    s = state.double()
    out = cc.causal_conv1d_update_ref(x.double(), s, w.double(), None if b is None else b.double(),
                                      activation, cache_seqlens, indices)
    return out, s


@row
def update_positional(cc, dev):
    x, state, w, b = randn(B, D, dev=dev), randn(5, D, W - 1, dev=dev), randn(D, W, dev=dev), randn(D, dev=dev)
    idx = torch.tensor([3, 0], dtype=I32, device=dev)
    want, want_state = ref_update(cc, x, state, w, b, "silu", None, idx)
    out = cc.causal_conv1d_update(x, state, w, b, "silu", None, idx)
    assert_close(out, want, (F32,))
    torch.testing.assert_close(state.double(), want_state, rtol=0, atol=0)


@row
def update_x_2d(cc, dev):
    x, state, w = randn(B, D, dev=dev), randn(B, D, W - 1, dev=dev), randn(D, W, dev=dev)
    want, want_state = ref_update(cc, x, state, w)
    out = cc.causal_conv1d_update(x, state, w)
    assert out.shape == (B, D)
    assert_close(out, want, (F32,))
    torch.testing.assert_close(state.double(), want_state, rtol=0, atol=0)


@row
def update_x_3d(cc, dev):
    x, state, w = randn(B, D, 3, dev=dev), randn(B, D, W - 1, dev=dev), randn(D, W, dev=dev)
    want, want_state = ref_update(cc, x, state, w, activation="silu")
    assert_close(cc.causal_conv1d_update(x, state, w, activation="silu"), want, (F32,))
    torch.testing.assert_close(state.double(), want_state, rtol=0, atol=0)


@row
def update_dtype_pairs(cc, dev):
    for xd in (F32, F16, BF16):
        for wd in (F32, F16, BF16):
            x, state = randn(B, D, dtype=xd, dev=dev), randn(B, D, W - 1, dtype=xd, dev=dev)
            w, b = randn(D, W, dtype=wd, dev=dev), randn(D, dtype=wd, dev=dev)
            want, want_state = ref_update(cc, x, state, w, b, "silu")
            assert_close(cc.causal_conv1d_update(x, state, w, b, "silu"), want, (xd, wd))
            torch.testing.assert_close(state.double(), want_state, rtol=0, atol=0)


@row
def update_long_state(cc, dev):
    x, state, w = randn(B, D, 2, dev=dev), randn(B, D, 7, dev=dev), randn(D, W, dev=dev)
    want, want_state = ref_update(cc, x, state, w)
    assert_close(cc.causal_conv1d_update(x, state, w), want, (F32,))
    torch.testing.assert_close(state.double(), want_state, rtol=0, atol=0)


@row
def update_cache_seqlens(cc, dev):
    x, state, w = randn(B, D, 2, dev=dev), randn(B, D, 5, dev=dev), randn(D, W, dev=dev)
    seqlens = torch.tensor([4, 9], dtype=I32, device=dev)  # the second wraps around
    want, want_state = ref_update(cc, x, state, w, cache_seqlens=seqlens)
    assert_close(cc.causal_conv1d_update(x, state, w, cache_seqlens=seqlens), want, (F32,))
    torch.testing.assert_close(state.double(), want_state, rtol=0, atol=0)


@row
def update_cache_seqlens_int64(cc, dev):
    x, state, w = randn(B, D, dev=dev), randn(B, D, 5, dev=dev), randn(D, W, dev=dev)
    with pytest.raises(TypeError, match="cache_seqlens"):
        cc.causal_conv1d_update(x, state, w, cache_seqlens=torch.tensor([1, 2], device=dev))


@row
def update_state_indices(cc, dev):
    x, pool, w = randn(3, D, dev=dev), randn(6, D, W - 1, dev=dev), randn(D, W, dev=dev)
    idx = torch.tensor([5, -1, 2], dtype=I32, device=dev)
    before = pool.clone()
    want, want_pool = ref_update(cc, x, pool, w, activation="silu", indices=idx)
    out = cc.causal_conv1d_update(x, pool, w, None, "silu", conv_state_indices=idx)
    assert_close(out, want, (F32,))
    assert torch.equal(out[1], torch.zeros_like(out[1]))  # the padding row
    torch.testing.assert_close(pool.double(), want_pool, rtol=0, atol=0)
    assert torch.equal(pool[[0, 1, 3, 4]], before[[0, 1, 3, 4]])


@row
def update_state_indices_int64(cc, dev):
    x, pool, w = randn(B, D, dev=dev), randn(4, D, W - 1, dev=dev), randn(D, W, dev=dev)
    with pytest.raises(TypeError, match="conv_state_indices"):
        cc.causal_conv1d_update(x, pool, w, conv_state_indices=torch.tensor([1, 2], device=dev))


@row
def update_state_dtype(cc, dev):
    x, state, w = randn(B, D, dev=dev), randn(B, D, W - 1, dtype=F16, dev=dev), randn(D, W, dev=dev)
    with pytest.raises(TypeError, match="conv_state"):
        cc.causal_conv1d_update(x, state, w)


@row
def update_ref(cc, dev):
    x, state = randn(B, D, 2, dtype=torch.float64), randn(B, D, W - 1, dtype=torch.float64)
    w, b = randn(D, W, dtype=torch.float64), randn(D, dtype=torch.float64)
    full = torch.cat([state, x], -1)
    out = cc.causal_conv1d_update_ref(x, state, w, b, "silu", None)
    want = torch.nn.functional.silu((full.unfold(-1, W, 1) * w[:, None, :]).sum(-1) + b[:, None])
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(state, full[..., -(W - 1):], rtol=0, atol=0)


# ---- causal_conv1d_varlen_states ------------------------------------------------


def varlen_case(dev, index_dtype, strided=False):
    lengths = torch.tensor([5, 0, 1, 9])
    cu = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lengths, 0)]).to(index_dtype)
    T = int(cu[-1])
    x = randn(T, 2 * D, dev=dev)[:, ::2] if strided else randn(T, D, dev=dev)
    return x, cu.to(dev)


def check_varlen(cc, x, cu, state_len=3):
    got = cc.causal_conv1d_varlen_states(x, cu, state_len)
    want = cc.causal_conv1d_varlen_states_ref(x.double(), cu.long(), state_len)
    assert got.shape == (cu.shape[0] - 1, x.shape[1], state_len) and got.dtype == x.dtype
    torch.testing.assert_close(got.double(), want, rtol=0, atol=0)


@row
def varlen_cu_seqlens_int32(cc, dev):
    check_varlen(cc, *varlen_case(dev, I32))


@row
def varlen_cu_seqlens_int64(cc, dev):
    x, cu = varlen_case(dev, I64)
    assert cu.dtype == torch.int64
    check_varlen(cc, x, cu)
    check_varlen(cc, x, cu, state_len=6)


@row
def varlen_x_strided(cc, dev):
    check_varlen(cc, *varlen_case(dev, I64, strided=True))


@row
def varlen_ref(cc, dev):
    x, cu = varlen_case("cpu", I64)
    states = cc.causal_conv1d_varlen_states_ref(x, cu, 2)
    torch.testing.assert_close(states[0], x[3:5].t(), rtol=0, atol=0)  # the last 2 of sequence 0
    assert torch.equal(states[1], states.new_zeros(D, 2))  # the empty sequence
    torch.testing.assert_close(states[2, :, 1], x[5], rtol=0, atol=0)
    assert torch.equal(states[2, :, 0], states.new_zeros(D))


# ---- cpp_functions (mamba_ssm's entry points) -----------------------------------


@row
def cpp_fwd_function(cc, dev):
    x, w, b = channel_last(B, D, L, dev=dev), randn(D, W, dev=dev), randn(D, dev=dev)
    init, fs = randn(B, D, W - 1, dev=dev), randn(B, W - 1, D, dev=dev).transpose(1, 2)
    out = cc.cpp_functions.causal_conv1d_fwd_function(x, w, b, None, init, fs, True)
    check_fn(cc, out, x, w, b, initial_states=init, activation="silu")
    torch.testing.assert_close(fs, x[..., -(W - 1):], rtol=0, atol=0)


@row
def cpp_bwd_function(cc, dev):
    x, w, b = channel_last(B, D, L, dev=dev), randn(D, W, dev=dev), randn(D, dev=dev)
    init, dout, dfinal = randn(B, D, W - 1, dev=dev), randn(B, D, L, dev=dev), randn(B, D, W - 1, dev=dev)
    dx_buf = torch.empty_like(x)
    dx, dw, db, dinit = cc.cpp_functions.causal_conv1d_bwd_function(
        x, w, b, dout, None, init, dfinal, dx_buf, True, True)
    assert dx is dx_buf and dw.dtype == w.dtype and db.dtype == b.dtype
    leaves = [t.double().requires_grad_() for t in (x, w, b, init)]
    out, final = cc.causal_conv1d_ref(leaves[0], leaves[1], leaves[2], None, leaves[3], True, None, "silu")
    want = torch.autograd.grad((out, final), leaves, (dout.double(), dfinal.double()))
    for g, r in zip((dx, dw, db, dinit), want):
        assert_close(g, r, (F32,))
    _, _, no_db, no_dinit = cc.cpp_functions.causal_conv1d_bwd_function(
        x, w, None, dout, None, None, None, None, False, False)
    assert no_db is None and no_dinit is None


@row
def cpp_update_function(cc, dev):
    x, state, w, b = randn(B, D, 1, dev=dev), randn(B, D, W - 1, dev=dev), randn(D, W, dev=dev), randn(D, dev=dev)
    want, want_state = ref_update(cc, x, state, w, b, "silu")
    out = cc.cpp_functions.causal_conv1d_update_function(x, state, w, b, True, None, None)
    assert_close(out, want, (F32,))
    torch.testing.assert_close(state.double(), want_state, rtol=0, atol=0)


# ---- the table and the checks agree ---------------------------------------------


def test_every_row_has_a_check():
    ids = table_ids()
    assert len(ids) == len(set(ids)), "duplicate ids in upstream_parity.md"
    assert set(ids) == set(CHECKS), (
        f"rows without a check: {sorted(set(ids) - set(CHECKS))}; "
        f"checks without a row: {sorted(set(CHECKS) - set(ids))}"
    )


@pytest.mark.parametrize("row_id", table_ids())
def test_row(backend, seeded, row_id):
    CHECKS[row_id](backend.module, backend.device)
