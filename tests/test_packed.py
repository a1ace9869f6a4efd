"""Packed sequences: causal_conv1d_varlen_states and the packed prefill
causal_conv1d_packed_fwd against the float64 reference (every dtype pairing,
widths 1..32, S = W-1 and S > W-1, layouts, pools with padded slots,
zero-length sequences, tokens outside every sequence), and packed prefill
against causal_conv1d_fn run per sequence with initial and final states.
States must come out bit-exact."""

from __future__ import annotations

import pytest
import torch

from helpers import (
    DTYPE_PAIRS,
    FLOAT64_CASES,
    assert_close,
    assert_float64_refused,
    close,
    dev,
    dtype_name,
    exact,
    packed_case,
    packed_inputs,
    pair_id,
    skip_unimplemented,
    update_case,
)

WIDTHS = [1, 2, 3, 4, 6, 16, 32]
D = 77  # two full channel blocks and a partial one on every tier


def random_cu_seqlens(lengths: list[int], lead: int = 0) -> torch.Tensor:
    """Offsets of sequences of the given lengths starting at token `lead`."""
    cu = [lead]
    for n in lengths:
        cu.append(cu[-1] + n)
    return torch.tensor(cu, dtype=torch.int32)


def make_tokens(T: int, d: int, dtype: torch.dtype, layout: str) -> torch.Tensor:
    """(T, d) packed tokens: "contiguous" (channel-contiguous rows),
    "proj_slice" (a channel slice of a wider projection), "channels_first"
    ((d, T) storage viewed as (T, d): token-contiguous channels)."""
    if layout == "contiguous":
        return torch.randn(T, d, dtype=dtype)
    if layout == "proj_slice":
        return torch.randn(T, 3 * d, dtype=dtype)[:, d : 2 * d]
    if layout == "channels_first":
        return torch.randn(d, T, dtype=dtype).t()
    raise ValueError(layout)


# ---------------------------------------------------------------------------
# varlen_states


@pytest.mark.kernels_ci
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "proj_slice", "channels_first"])
@pytest.mark.parametrize("state_len", [1, 3, 8])
def test_varlen_states(kernel, seeded, dtype, layout, state_len):
    lengths = [5, 0, 1, 12, 3, 8, 2]
    cu = random_cu_seqlens(lengths, lead=2)
    T = int(cu[-1]) + 4  # tokens before cu[0] and after cu[-1] belong to no sequence
    x = make_tokens(T, D, dtype, layout)
    got = kernel.causal_conv1d_varlen_states(x, cu, state_len)
    want = kernel.causal_conv1d_varlen_states_ref(x, cu, state_len)
    assert got.shape == (len(lengths), D, state_len) and got.dtype == dtype
    assert torch.equal(got, want), f"seed={seeded}"
    # spot-check the reference's meaning on one sequence: right-aligned, zero-filled
    b, n = 0, min(lengths[0], state_len)
    assert torch.equal(want[b, :, state_len - n :], x[int(cu[1]) - n : int(cu[1])].t())
    assert torch.count_nonzero(want[b, :, : state_len - n]) == 0


def test_varlen_states_many_sequences(kernel, seeded):
    """Enough work to split across threads."""
    lengths = torch.randint(0, 40, (64,)).tolist()
    cu = random_cu_seqlens(lengths)
    x = torch.randn(int(cu[-1]), 1030, dtype=torch.bfloat16)
    assert torch.equal(kernel.causal_conv1d_varlen_states(x, cu, 4),
                       kernel.causal_conv1d_varlen_states_ref(x, cu, 4)), f"seed={seeded}"


# ---------------------------------------------------------------------------
# packed prefill


def run_packed(kernel, x, weight, bias, cu, pool, indices, has_init, activation, pad_slot_id=-1,
               channels_first=False):
    """Kernel on (x, pool) and the float64 reference on copies:
    returns (out, out_ref, pool after, reference pool after)."""
    x_tokens = x.t() if channels_first else x  # the reference takes (T, D)
    pool_ref = pool.to(torch.float64, copy=True)
    out_ref = kernel.causal_conv1d_packed_fwd_ref(
        x_tokens.double(), weight.double(), None if bias is None else bias.double(), cu, pool_ref,
        cache_indices=indices, has_initial_state=has_init, activation=activation,
        pad_slot_id=pad_slot_id,
    )
    out = kernel.causal_conv1d_packed_fwd(
        x, weight, bias, cu, pool, cache_indices=indices, has_initial_state=has_init,
        activation=activation, pad_slot_id=pad_slot_id, channels_first=channels_first,
    )
    if channels_first:
        out_ref = out_ref.t()
    return out, out_ref, pool, pool_ref


def check(out, out_ref, pool, pool_ref, x_dtype, w_dtype, msg):
    assert out.shape == out_ref.shape and out.dtype == x_dtype, msg
    assert_close(out, out_ref, (x_dtype, w_dtype), msg)
    assert torch.equal(pool.double(), pool_ref), f"{msg}: conv_states differ"


@pytest.mark.kernels_ci
@pytest.mark.parametrize("S_extra", [0, 3])
@pytest.mark.parametrize("W", WIDTHS)
@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=pair_id)
def test_grid(kernel, seeded, dtypes, W, S_extra):
    """Every dtype pair and width, S = W-1 and S > W-1; sequences shorter and
    longer than the state, of length 0, with and without initial states, in a
    shuffled pool with a padded slot. (T, D) tokens take the row-streaming
    path, channels_first (D, T) the channel-block path: both see every dtype
    pair and width."""
    for act, bias, channels_first in (("silu", True, False), (None, False, True)):
        packed_case(kernel, seeded, W=W, S=W - 1 + S_extra, D=D, xdt=dtypes[0], wdt=dtypes[1],
                    act=act, bias=bias, channels_first=channels_first,
                    lengths=(7, 0, 1, 40, 3, 0, 2 * W + 1))


@pytest.mark.kernels_ci
@pytest.mark.parametrize("pad_slot_id", [-1, 5])
@pytest.mark.parametrize("layout", ["contiguous", "proj_slice", "channels_first"])
@pytest.mark.parametrize("channels_first", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_name)
def test_layouts(kernel, seeded, dtype, channels_first, layout, pad_slot_id):
    """x as (T, D) or (D, T) (channels_first=True), in any memory layout; the
    pool as a strided view; pad_slot_id -1 or a pool row. The output keeps
    x's layout."""
    out = packed_case(kernel, seeded, W=4, S=5, D=D, xdt=dtype, wdt=dtype, layout=layout,
                      channels_first=channels_first, pad_slot_id=pad_slot_id,
                      lengths=(9, 33, 0, 4, 70), pool_layout="channel_last")
    x, _ = packed_inputs([1], 3, dtype, layout)  # the layout's stride order
    if channels_first:
        x = x.t()
    assert (out.stride(0) > out.stride(1)) == (x.stride(0) > x.stride(1))


@pytest.mark.parametrize("pad_slot_id", [-1, 5])
def test_packed_pad_slot_id(kernel, seeded, pad_slot_id):
    """A sequence whose cache index is pad_slot_id (or negative) outputs 0 and
    leaves the pool as it was; other rows receive their final states."""
    W, S = 4, 3
    weight, bias = torch.randn(D, W), torch.randn(D)
    lengths = [6, 5, 8, 2]
    cu = random_cu_seqlens(lengths)
    x = make_tokens(int(cu[-1]), D, torch.float32, "contiguous")
    pool = torch.randn(8, D, S)
    indices = torch.tensor([2, pad_slot_id, 0, -3], dtype=torch.int32)
    has_init = torch.tensor([True, True, False, True])
    before = pool.clone()
    res = run_packed(kernel, x, weight, bias, cu, pool, indices, has_init, "silu", pad_slot_id)
    check(*res, torch.float32, torch.float32, f"seed={seeded}")
    out = res[0]
    assert torch.count_nonzero(out[int(cu[1]) : int(cu[2])]) == 0
    assert torch.count_nonzero(out[int(cu[3]) : int(cu[4])]) == 0
    assert torch.equal(pool[2], x[int(cu[1]) - S : int(cu[1])].t())
    assert torch.equal(pool[0], x[int(cu[3]) - S : int(cu[3])].t())
    for n in (1, 3, 4, 5, 6, 7):
        assert torch.equal(pool[n], before[n]), f"pool row {n} was touched"


def test_packed_many_sequences(kernel, seeded):
    """16 sequences of mixed lengths over enough channels to use threads."""
    W, S, Dl = 4, 3, 1030
    dtype = torch.bfloat16
    weight, bias = torch.randn(Dl, W, dtype=dtype), torch.randn(Dl, dtype=dtype)
    lengths = torch.randint(0, 90, (16,)).tolist()
    cu = random_cu_seqlens(lengths)
    x = torch.randn(int(cu[-1]), Dl, dtype=dtype)
    pool = torch.randn(20, Dl, S, dtype=dtype)
    indices = torch.randperm(20)[:16].to(torch.int32)
    has_init = torch.rand(16) < 0.5
    res = run_packed(kernel, x, weight, bias, cu, pool, indices, has_init, "silu")
    check(*res, dtype, dtype, f"seed={seeded}")


@pytest.mark.parametrize("W", [4, 6])
def test_packed_many_short_sequences(kernel, seeded, W):
    """Many sequences shorter than the window, so work split across threads
    starts inside sequences' first W-1 tokens."""
    S, Dl = W - 1, 1100
    weight, bias = torch.randn(Dl, W), torch.randn(Dl)
    lengths = torch.randint(0, W + 2, (96,)).tolist()
    cu = random_cu_seqlens(lengths)
    x = torch.randn(int(cu[-1]), Dl)
    pool = torch.randn(96, Dl, S)
    has_init = torch.rand(96) < 0.7
    indices = torch.arange(96, dtype=torch.int32)
    indices[::7] = -1
    res = run_packed(kernel, x, weight, bias, cu, pool, indices, has_init, "silu")
    check(*res, torch.float32, torch.float32, f"seed={seeded}")


@pytest.mark.parametrize("W", [2, 4, 6])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_packed_matches_forward_per_sequence(kernel, seeded, dtype, W):
    """Packed prefill equals causal_conv1d_fn on each sequence with its
    initial state (the pool row, or zeros) and final state (written back)."""
    S = W - 1
    weight, bias = torch.randn(D, W, dtype=dtype), torch.randn(D, dtype=dtype)
    lengths = [11, 1, 0, 29, W - 2 if W > 2 else 1]
    B = len(lengths)
    cu = random_cu_seqlens(lengths)
    x = torch.randn(int(cu[-1]), D, dtype=dtype)
    pool = torch.randn(B, D, S, dtype=dtype)
    has_init = torch.tensor([True, False, True, True, True])
    pool_in = pool.clone()
    out = kernel.causal_conv1d_packed_fwd(x, weight, bias, cu, pool, has_initial_state=has_init,
                                      activation="silu")
    for b in range(B):
        seq = x[int(cu[b]) : int(cu[b + 1])].t()[None]
        init = pool_in[b : b + 1] if has_init[b] else torch.zeros_like(pool_in[b : b + 1])
        want, final = kernel.causal_conv1d_fn(seq, weight, bias, initial_states=init,
                                          return_final_states=True, activation="silu")
        msg = f"seed={seeded} W={W} seq={b}"
        assert_close(out[int(cu[b]) : int(cu[b + 1])].t(), want[0], (dtype,), msg)
        assert torch.equal(pool[b], final[0]), msg


@pytest.mark.parametrize("channels_first", [False, True])
@pytest.mark.parametrize("W", [2, 4, 9])
def test_packed_int64_cu_seqlens(kernel, seeded, channels_first, W):
    """cu_seqlens as torch.cumsum gives it (int64), with an offset stride:
    the same result as the reference, on both token layouts."""
    weight, bias = torch.randn(D, W), torch.randn(D)
    lengths = [5, 0, 1, 3 * W, 2]
    cu = torch.zeros(2 * (len(lengths) + 1), dtype=torch.int64)[::2]  # strided offsets
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0) + 1
    cu[0] = 1
    T = int(cu[-1]) + 1
    x = make_tokens(T, D, torch.float32, "contiguous")
    if channels_first:
        x = x.t().contiguous()
    N = len(lengths) + 2
    pool = torch.randn(N, D, W + 1)
    indices = torch.randperm(N)[: len(lengths)].to(torch.int32)
    has_init = torch.tensor([True, False, True, False, True])
    res = run_packed(kernel, x, weight, bias, cu, pool, indices, has_init, "silu",
                     channels_first=channels_first)
    check(*res, torch.float32, torch.float32, f"seed={seeded} W={W} channels_first={channels_first}")


# ---------------------------------------------------------------------------
# many sequences in a pool; on the CUDA kernels also: agreement with the
# CPU backend


def test_packed_many_sequences_in_a_pool(kernel, backend, seeded):
    lengths = torch.randint(0, 9, (300 if not backend.emulated else 40,)).tolist()
    packed_case(kernel, seeded, lengths=lengths, W=4, S=6, D=64)


@pytest.mark.backends("cuda")
def test_packed_vs_cpu(kernel, cpu_kernel, seeded):
    x, cus = packed_inputs([4, 0, 9, 1, 30], 40, torch.bfloat16, "contiguous")
    w, b = torch.randn(40, 4, device=dev()), torch.randn(40, device=dev())
    pool = torch.randn(8, 40, 5, device=dev(), dtype=torch.bfloat16)
    idx = torch.tensor([3, -1, 0, 6, 2], dtype=torch.int32, device=dev())
    hi = torch.tensor([True, True, False, True, True], device=dev())
    pool_c = pool.to("cpu", copy=True)  # a copy even when dev() is the CPU (emulation)
    c = skip_unimplemented(lambda: cpu_kernel.ops.fwd_packed(x.t().cpu(), w.cpu(), b.cpu(), cus.cpu(),
                                                          pool_c, idx.cpu(), hi.cpu(), -1, True))
    g = kernel.ops.fwd_packed(x.t(), w, b, cus, pool, idx, hi, -1, True)
    close(g, c, (torch.bfloat16,), f"seed={seeded}")
    exact(pool, pool_c, f"pool seed={seeded}")
    gs = kernel.causal_conv1d_varlen_states(x, cus, 6)
    cs = skip_unimplemented(lambda: cpu_kernel.causal_conv1d_varlen_states(x.cpu(), cus.cpu(), 6))
    exact(gs, cs, f"varlen seed={seeded}")



@pytest.mark.sanitizer
@pytest.mark.backends("cuda")
@pytest.mark.parametrize("circular", [False, True])
def test_sanitizer_update_packed(kernel, circular):
    torch.manual_seed(1)
    update_case(kernel, 0, B=7, D=37, W=4, S=5, L=3, pool=True, circular=circular,
                xdt=torch.bfloat16, state_layout="channel_last")
    packed_case(kernel, 0, W=4, S=5, D=37, xdt=torch.float16, layout="channels_first")
    x, cus = packed_inputs([3, 0, 7], 37, torch.float32, "proj_slice")
    kernel.causal_conv1d_varlen_states(x, cus, 4)


@pytest.mark.backends("cuda")
@pytest.mark.parametrize("f64", list(FLOAT64_CASES))
def test_float64_refused(kernel, cc, f64):
    """The CUDA kernels have no float64: refused with checks.cpp's error, the
    emulator's CPU tensors included."""
    xdt, wdt = FLOAT64_CASES[f64]
    x, w = torch.randn(12, 8, dtype=xdt, device=dev()), torch.randn(8, 4, dtype=wdt, device=dev())
    cu = torch.tensor([0, 5, 12], dtype=torch.int32, device=dev())
    pool = torch.randn(3, 8, 3, dtype=xdt, device=dev())
    assert_float64_refused(kernel, cc, "fwd_packed", x.t(), w, None, cu, pool, None, None, -1, True)
    if xdt == torch.float64:
        assert_float64_refused(kernel, cc, "varlen_states", x, cu, 3)
