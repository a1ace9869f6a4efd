"""Large tensors: element offsets past 2^31 (64-bit indexing everywhere).

Every test builds a tensor with more than 2^31 elements and checks outputs
whose inputs live past element 2^31 against the float64 reference computed
on small slices. Inputs are allocated with torch.empty: pages that are never
written cost no memory, and the regions the checked outputs read are filled
with fresh random values (an offset computed modulo 2^31 or 2^32 would read
another region and disagree with the reference). Peak memory is one output
of about 4.5 GiB per test.

Run with `pytest -m slow tests/test_large.py` (CI does).
"""

from __future__ import annotations

import pytest
import torch

from helpers import tolerance

pytestmark = pytest.mark.slow

I32 = torch.int32
BIG = 2**31 + 2**28  # elements: past 2^31 by 1/8


def _rand_(t: torch.Tensor) -> torch.Tensor:
    """Fill a view with fresh random values."""
    return t.copy_(torch.randn(t.shape).to(t.dtype))


def _close(got, want, dtype, what):
    rtol, atol = tolerance(dtype)
    torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=atol,
                               msg=lambda m: f"{what}: {m}")


def _offset(t: torch.Tensor, *idx: int) -> int:
    return sum(i * s for i, s in zip(idx, t.stride()))


def _check_fwd_window(cc, x, w, b, out, bi, d0, d1, t0, t1, seq_idx=None, activation="silu"):
    """out[bi, d0:d1, t0:t1] against the reference on the inputs it reads."""
    W = w.shape[1]
    lo = t0 - (W - 1)
    assert lo >= 0
    xs = x[bi : bi + 1, d0:d1, lo:t1]
    ss = None if seq_idx is None else seq_idx[bi : bi + 1, lo:t1]
    ref = cc.causal_conv1d_ref(xs.double(), w[d0:d1].double(), b[d0:d1].double(), seq_idx=ss,
                               activation=activation)[..., W - 1 :]
    _close(out[bi : bi + 1, d0:d1, t0:t1], ref, x.dtype, f"out[{bi}, {d0}:{d1}, {t0}:{t1}]")


def test_fwd_contiguous(cc, seeded):
    """x (B, D, L) contiguous bf16, seq_idx, initial and final states."""
    B, D, W = 2, 1024, 4
    L = BIG // (B * D) + 1
    x = torch.empty(B, D, L, dtype=torch.bfloat16)
    assert x.numel() > 2**31
    w, b = torch.randn(D, W).bfloat16(), torch.randn(D).bfloat16()
    init = torch.randn(B, D, W - 1).bfloat16()
    seq = torch.zeros(B, L, dtype=I32)
    seq[1, L - 200 :] = 1  # a segment boundary past 2^31
    seq[1, L - 120 : L - 110] = -1  # and padding
    # regions read by the checked outputs
    _rand_(x[0, :4, :300])
    _rand_(x[1, D - 4 :, L - 600 :])
    # the row in which element offset 2^31 falls, around that offset
    d_mid, t_mid = divmod(2**31 - _offset(x, 1, 0, 0), L)
    _rand_(x[1, d_mid, max(0, t_mid - 300) : t_mid + 300])

    out, fin = cc.causal_conv1d_fn(x, w, b, seq_idx=seq, initial_states=init,
                                   return_final_states=True, activation="silu")
    # the start (reads initial_states)
    ref = cc.causal_conv1d_ref(x[:1, :4, :300].double(), w[:4].double(), b[:4].double(),
                               seq_idx=seq[:1, :300], initial_states=init[:1, :4].double(),
                               activation="silu")
    _close(out[:1, :4, :300], ref, x.dtype, "start")
    # across offset 2^31, and the end: segments, padding (offsets > 2^31)
    t0 = max(W - 1, t_mid - 290)
    _check_fwd_window(cc, x, w, b, out, 1, d_mid, d_mid + 1, t0, t_mid + 300, seq)
    _check_fwd_window(cc, x, w, b, out, 1, D - 4, D, L - 590, L, seq)
    assert _offset(out, 1, D - 4, L - 590) > 2**31
    # final states: the last W-1 inputs of the last segment
    assert torch.equal(fin[1, D - 4 :], x[1, D - 4 :, L - (W - 1) :])


def test_fwd_channel_last(cc, seeded):
    """x a (B, L, D) fp16 tensor seen as (B, D, L): offsets t * D + d."""
    B, D, W = 1, 2048, 7
    L = BIG // D + 1
    storage = torch.empty(B, L, D, dtype=torch.float16)
    x = storage.transpose(1, 2)
    w, b = torch.randn(D, W).half(), torch.randn(D).half()
    _rand_(storage[0, L - 400 :])
    _rand_(storage[0, :300])
    out = cc.causal_conv1d_fn(x, w, b, activation="silu")
    assert out.stride(1) == 1  # channel-last like x
    _check_fwd_window(cc, x, w, b, out, 0, 0, 64, W - 1, 300)
    _check_fwd_window(cc, x, w, b, out, 0, D - 64, D, L - 390, L)
    _check_fwd_window(cc, x, w, b, out, 0, 1000, 1100, L - 390, L)
    assert _offset(out, 0, D - 64, L - 390) > 2**31


def test_fwd_one_row_longer_than_int32(cc, seeded):
    """A single sequence with more than 2^31 tokens: the position itself
    does not fit in int32."""
    W = 4
    L = 2**31 + 4096
    x = torch.empty(1, 1, L, dtype=torch.bfloat16)
    w, b = torch.randn(1, W).bfloat16(), torch.randn(1).bfloat16()
    _rand_(x[0, 0, :200])
    _rand_(x[0, 0, 2**31 - 300 : 2**31 + 300])
    _rand_(x[0, 0, L - 300 :])
    out, fin = cc.causal_conv1d_fn(x, w, b, return_final_states=True)
    _check_fwd_window(cc, x, w, b, out, 0, 0, 1, W - 1, 200, activation=None)
    _check_fwd_window(cc, x, w, b, out, 0, 0, 1, 2**31 - 290, 2**31 + 300, activation=None)
    _check_fwd_window(cc, x, w, b, out, 0, 0, 1, L - 290, L, activation=None)
    assert torch.equal(fin[0, 0], x[0, 0, L - (W - 1) :])


def test_update_pool(cc, seeded):
    """A state pool with more than 2^31 elements; rows past offset 2^31."""
    D, S, W, B = 4096, 8, 4, 6
    N = BIG // (D * S) + 1
    pool = torch.empty(N, D, S, dtype=torch.bfloat16)
    assert pool.numel() > 2**31
    rows = torch.tensor([N - 1, 3, N - 7, -1, N // 2, N - 2], dtype=I32)
    for r in rows.tolist() + [N - 3]:  # N - 3: a neighbour nobody uses
        if r >= 0:
            _rand_(pool[r])
    before = pool[rows[rows >= 0].long()].clone()
    neighbour = pool[N - 3].clone()
    x = torch.randn(B, D, 2).bfloat16()
    w, b = torch.randn(D, W).bfloat16(), torch.randn(D).bfloat16()
    cache = torch.tensor([0, 5, 13, 2, 7, 1000], dtype=I32)
    for cache_seqlens in (None, cache):
        state_ref = torch.zeros(B, D, S, dtype=torch.float64)
        live = rows >= 0
        state_ref[live] = pool[rows[live].long()].double()
        ref_idx = torch.where(live, torch.arange(B, dtype=I32), -1)
        out = cc.causal_conv1d_update(x, pool, w, b, activation="silu",
                                      cache_seqlens=cache_seqlens, conv_state_indices=rows)
        out_ref = cc.causal_conv1d_update_ref(x.double(), state_ref, w.double(), b.double(),
                                              activation="silu", cache_seqlens=cache_seqlens,
                                              conv_state_indices=ref_idx)
        _close(out, out_ref, torch.bfloat16, "out")
        assert torch.equal(pool[rows[live].long()].double(), state_ref[live]), "pool rows"
    assert not torch.equal(pool[rows[rows >= 0].long()], before), "the pool was not written"
    assert torch.equal(pool[N - 3], neighbour), "an unused row changed"


def test_packed_and_varlen_states(cc, seeded):
    """Packed tokens x (T, D) with T * D > 2^31; the sequences lie past
    offset 2^31 (tokens outside every sequence output 0)."""
    D, W, S = 2048, 4, 6
    T = BIG // D + 1
    x = torch.empty(T, D, dtype=torch.bfloat16)
    assert x.numel() > 2**31
    starts = [T - 9000, T - 5000, T - 4999, T - 4999, T - 300, T]
    cu = torch.tensor(starts, dtype=I32)
    _rand_(x[starts[0] :])
    _rand_(x[:50])  # outside every sequence
    w, b = torch.randn(D, W).bfloat16(), torch.randn(D).bfloat16()
    N = 7
    pool = torch.randn(N, D, S).bfloat16()
    idx = torch.tensor([6, 0, 3, -1, 2], dtype=I32)
    has_init = torch.tensor([True, False, True, True, True])
    pool_ref = pool.double()
    out = cc.causal_conv1d_packed_fwd(x, w, b, cu, pool, idx, has_init, activation="silu")
    assert _offset(x, starts[0], 0) > 2**31
    tail = slice(starts[0], T)
    cu_tail = cu - starts[0]
    out_ref = cc.causal_conv1d_packed_fwd_ref(x[tail].double(), w.double(), b.double(), cu_tail,
                                              pool_ref, idx, has_init, activation="silu")
    _close(out[tail], out_ref, torch.bfloat16, "packed out")
    assert torch.equal(pool.double(), pool_ref), "pool"
    assert torch.equal(out[:50], torch.zeros(50, D, dtype=torch.bfloat16)), "tokens outside sequences"
    del out

    states = cc.causal_conv1d_varlen_states(x, cu, 5)
    want = cc.causal_conv1d_varlen_states_ref(x[tail], cu_tail, 5)
    assert torch.equal(states, want), "varlen states"
