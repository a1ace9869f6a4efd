"""The serving engines' decode step (causal_conv1d_update's keyword-only
arguments) against the float64 reference, on every backend: speculative
decoding (num_accepted_tokens), token trees (retrieve_parent_token) with
intermediate windows, varlen batches (query_start_loc, lengths 0 included,
(T, D) and (D, T)), prefix-cached pools (a block table read and written at
per-sequence columns), padding; every refusal names the argument and writes
nothing; and an engine loop (draft, verify, accept a random prefix) against
plain single-token updates, 50 steps."""

from __future__ import annotations

import pytest
import torch

from helpers import DTYPE_PAIRS, close, exact, pair_id

WIDTHS = [1, 2, 3, 4, 6, 16, 32]
D = 77  # two full channel blocks and a partial one on every tier
PAD = -1


def to_double(t):
    return None if t is None else t.double()


def on_backend(v):
    """A tensor made at import (on the CPU) moved to the backend's device."""
    return v.to(torch.get_default_device()) if isinstance(v, torch.Tensor) else v


def make_pool(n, d, s, dtype, layout):
    if layout == "contiguous":
        return torch.randn(n, d, s, dtype=dtype)
    if layout == "channel_last":  # vLLM's: stride 1 along dim
        return torch.randn(n, s, d, dtype=dtype).transpose(1, 2)
    if layout == "slice":
        return torch.randn(2 * n, d, s + 3, dtype=dtype)[::2, :, 2 : 2 + s]
    raise ValueError(layout)


def make_tokens(b, d, L, dtype, layout):
    if layout == "contiguous":
        return torch.randn(b, d, L, dtype=dtype)
    if layout == "channel_last":  # (B * L, D) projection viewed as (B, D, L)
        return torch.randn(b, L, d, dtype=dtype).transpose(1, 2)
    raise ValueError(layout)


def random_tree(B, L):
    """(B, L) parents: token j >= 1 has a parent in [0, j); entry 0 is -1."""
    parents = torch.full((B, L), -1, dtype=torch.int32)
    for b in range(B):
        for j in range(1, L):
            parents[b, j] = int(torch.randint(0, j, ()))
    return parents


def run_both(kernel, x, pool, weight, bias, act, windows=None, **kw):
    """The kernel and the float64 reference on copies; returns
    (out, out_ref, pool, pool_ref, windows, windows_ref)."""
    pool_ref = pool.to(torch.float64, copy=True)  # never the same tensor as pool
    win_ref = None if windows is None else windows.to(torch.float64, copy=True)
    out_ref = kernel.causal_conv1d_update_ref(
        x.double(), pool_ref, weight.double(), to_double(bias), act,
        intermediate_conv_window=win_ref, **kw,
    )
    out = kernel.causal_conv1d_update(
        x, pool, weight, bias, act, intermediate_conv_window=windows, **kw
    )
    return out, out_ref, pool, pool_ref, windows, win_ref


def check(res, dtypes, msg):
    out, out_ref, pool, pool_ref, win, win_ref = res
    assert out.shape == out_ref.shape and out.dtype == dtypes[0], msg
    close(out, out_ref, dtypes, msg)
    exact(pool, pool_ref, "conv_state must be bit-exact (copies only): " + msg)
    if win is not None:
        exact(win, win_ref, "intermediate_conv_window must be bit-exact: " + msg)


@pytest.mark.kernels_ci
@pytest.mark.parametrize("W", WIDTHS)
@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=pair_id)
@pytest.mark.parametrize("layout", ["contiguous", "channel_last"])
def test_spec_decode(kernel, seeded, dtypes, W, layout):
    """num_accepted_tokens over every dtype pair and width, k = 0..3 drafts,
    pools with padding rows, x (B, D) and (B, D, 1 + k); pool and x
    contiguous (per-channel runs) and in vLLM's layout (stride 1 along D)."""
    xdt, wdt = dtypes
    weight = torch.randn(D, W, dtype=wdt)
    bias = torch.randn(D, dtype=wdt)
    for k, pool_rows, act in [(3, 0, "silu"), (1, 9, None), (0, 6, "silu"), (2, 0, None)]:
        B, L = 5, 1 + k
        S = W - 1 + k if W >= 2 else max(k, 1) + 1  # W = 1 keeps no history
        S = max(S, W - 2 + L)
        pool = make_pool(pool_rows or B, D, S, xdt, layout)
        idx = None
        if pool_rows:
            idx = torch.randperm(pool_rows)[:B].to(torch.int32)
            idx[1] = PAD
        n_max = S - W + 2
        acc = torch.randint(1, min(n_max, L) + 1, (B,), dtype=torch.int32)
        x = make_tokens(B, D, L, xdt, layout)
        if L == 1 and k == 0:
            x = x[..., 0]
        res = run_both(kernel, x, pool, weight, bias, act, conv_state_indices=idx,
                       num_accepted_tokens=acc)
        check(res, dtypes,
              f"seed={seeded} W={W} k={k} S={S} pool={pool_rows} {layout} acc={acc.tolist()}")


def spec_steps(kernel, seeded, W, dtype, dim, drafts, pool_for, x_layout):
    """One speculative step for each k in drafts against the reference: B = 3
    sequences (the second a padding row) with random accepted counts, x made
    in x_layout, the pool of 5 rows of S = W - 1 + k columns from
    pool_for(S)."""
    weight = torch.randn(dim, W, dtype=dtype)
    bias = torch.randn(dim, dtype=dtype)
    for k in drafts:
        B, L, S = 3, 1 + k, W - 1 + k
        idx = torch.tensor([3, PAD, 0], dtype=torch.int32)
        acc = torch.randint(1, L + 1, (B,), dtype=torch.int32)
        x = make_tokens(B, dim, L, dtype, x_layout)
        res = run_both(kernel, x, pool_for(S), weight, bias, "silu", conv_state_indices=idx,
                       num_accepted_tokens=acc)
        check(res, (dtype, dtype), f"seed={seeded} W={W} k={k} acc={acc.tolist()}")


@pytest.mark.parametrize("W", [2, 3, 4, 5, 7, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_spec_decode_runs(kernel, seeded, W, dtype):
    """x (B, D, 1 + k) and the pool (N, D, S) contiguous, so every channel's
    tokens and columns are a short run (the CPU's register path on AVX-512
    and AVX2, and its pairs path for 16-bit values at W = 4 and odd k; the
    CUDA spec kernel's shared-memory copies): k = 0..11 drafts (the CPU's
    register path takes runs of up to a register, 16 values on AVX-512 and
    8 on AVX2, its rows path longer ones; the CUDA spec kernels keep up to 8
    tokens in registers, the general kernel takes more), every width of
    those kernels, several whole channel blocks and a partial one, a
    padding row."""
    D2 = 3 * 64 + 13
    spec_steps(kernel, seeded, W, dtype, D2, range(12),
               lambda S: make_pool(5, D2, S, dtype, "contiguous"), "contiguous")


@pytest.mark.parametrize("W", [2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_size_one_dims_any_stride(kernel, seeded, W, dtype):
    """A dimension of size 1 may carry any stride: (B, 1, D).transpose(1, 2)
    .contiguous() keeps D there. One token (x (B, D, 1)) and, at W = 2, a
    one-column state (N, D, 1) made that way, for the spec step and the
    plain update; whole CPU register blocks and a partial one."""
    D2 = 3 * 64 + 13
    weight = torch.randn(D2, W, dtype=dtype)
    bias = torch.randn(D2, dtype=dtype)
    B, S = 3, W - 1
    x = torch.randn(B, 1, D2, dtype=dtype).transpose(1, 2).contiguous()
    assert x.stride(2) == D2
    for spec in (False, True):
        pool = torch.randn(B, S, D2, dtype=dtype).transpose(1, 2).contiguous()
        kw = dict(num_accepted_tokens=torch.ones(B, dtype=torch.int32)) if spec else {}
        res = run_both(kernel, x, pool, weight, bias, "silu", **kw)
        check(res, (dtype, dtype), f"seed={seeded} W={W} spec={spec} pool={pool.stride()}")


@pytest.mark.parametrize("W", [2, 4, 5, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("aligned", [True, False])
def test_spec_decode_vllm_layout(kernel, seeded, W, dtype, aligned):
    """vLLM's layout (x, out and the pool with stride 1 along D) with D a
    multiple of 8 over two whole CUDA blocks of 128 threads of 4 channels
    and a partial one: the CUDA spec kernel's accesses of 4 channels. Unaligned, the pool
    starts one element into its storage (one channel a thread). k = 0, 3, 7
    drafts and 8 (past the registers: the general kernel); a padding row."""
    D2 = 1024 + 200

    def pool_for(S):
        flat = torch.randn(5 * S * D2 + 1, dtype=dtype)[(0 if aligned else 1):][: 5 * S * D2]
        return flat.view(5, S, D2).transpose(1, 2)

    spec_steps(kernel, seeded, W, dtype, D2, (0, 3, 7, 8), pool_for, "channel_last")


@pytest.mark.parametrize("layout", ["contiguous", "channel_last"])
def test_spec_decode_without_tokens(kernel, seeded, layout):
    """x (B, D, 0) with num_accepted_tokens: no output columns, and the
    state stays as it was (nothing to shift in)."""
    W, S, B = 4, 6, 3
    pool = make_pool(B, D, S, torch.float32, layout)
    x = make_tokens(B, D, 0, torch.float32, layout)
    acc = torch.tensor([1, 2, 3], dtype=torch.int32)
    res = run_both(kernel, x, pool, torch.randn(D, W), torch.randn(D), "silu",
                   num_accepted_tokens=acc)
    check(res, (torch.float32, torch.float32), f"seed={seeded} {layout}")


@pytest.mark.kernels_ci
@pytest.mark.parametrize("x_layout", ["contiguous", "channel_last"])
@pytest.mark.parametrize("pool_layout", ["contiguous", "channel_last", "slice"])
@pytest.mark.parametrize("acc_dtype", [torch.int32, torch.int64])
def test_spec_decode_layouts(kernel, seeded, x_layout, pool_layout, acc_dtype):
    """vLLM's layouts (x and state stride 1 along dim) and the others;
    int32 and int64 counts; every count from 1 to k + 1."""
    W, k, B = 4, 3, 4
    S = W - 1 + k
    for dtype in (torch.float32, torch.bfloat16):
        weight = torch.randn(D, W, dtype=dtype)
        bias = torch.randn(D, dtype=dtype)
        pool = make_pool(B, D, S, dtype, pool_layout)
        x = make_tokens(B, D, 1 + k, dtype, x_layout)
        acc = torch.arange(1, B + 1, dtype=acc_dtype)
        res = run_both(kernel, x, pool, weight, bias, "silu", num_accepted_tokens=acc)
        check(res, (dtype, dtype), f"seed={seeded} {dtype} x={x_layout} pool={pool_layout}")
        if x_layout == "channel_last":
            assert res[0].stride(1) == 1, "out keeps x's layout"


@pytest.mark.kernels_ci
@pytest.mark.parametrize("W", [1, 2, 4, 6, 32])
@pytest.mark.parametrize("channels_first", [False, True])
@pytest.mark.parametrize("spec", [False, True])
@pytest.mark.parametrize("pool_layout", ["channel_last", "contiguous"])
def test_varlen_decode(kernel, seeded, W, channels_first, spec, pool_layout):
    """Packed sequences of different lengths, 0 included, with a padding
    sequence and tokens outside every sequence; (T, D) and (D, T); the pool
    in vLLM's layout and contiguous (per-channel runs)."""
    lengths = [3, 0, 1, 4, 2, 1]
    B = len(lengths)
    k = max(lengths) - 1
    S = W - 2 + max(lengths) if spec else W - 1 + 2
    S = max(S, W - 1, 1)
    lead, tail = 2, 3
    T = lead + sum(lengths) + tail
    qsl = torch.tensor([lead] + [lead + sum(lengths[: i + 1]) for i in range(B)],
                       dtype=torch.int32)
    for dtype in (torch.float32, torch.float16):
        weight = torch.randn(D, W, dtype=dtype)
        bias = torch.randn(D, dtype=dtype)
        x = torch.randn(D, T, dtype=dtype) if channels_first else torch.randn(T, D, dtype=dtype)
        pool = make_pool(B + 3, D, S, dtype, pool_layout)
        idx = torch.randperm(B + 3)[:B].to(torch.int32)
        idx[4] = PAD
        kw = dict(conv_state_indices=idx, query_start_loc=qsl, channels_first=channels_first)
        if spec:
            n_max = S - W + 2
            kw["num_accepted_tokens"] = torch.tensor(
                [min(max(n, 1), n_max) for n in [1, 2, 3, 1, 2, 1]], dtype=torch.int64)
        res = run_both(kernel, x, pool, weight, bias, "silu", **kw)
        check(res, (dtype, dtype), f"seed={seeded} {dtype} W={W} k={k} S={S} spec={spec}")
        tokens = res[0] if channels_first else res[0].t()
        assert not tokens[:, :lead].any() and not tokens[:, T - tail :].any(), \
            "tokens outside every sequence output 0"


@pytest.mark.kernels_ci
@pytest.mark.parametrize("W", [2, 3, 4, 6, 16])
@pytest.mark.parametrize("spec", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_tree_with_windows(kernel, seeded, W, spec, dtype):
    """EAGLE token trees: each token convolves its ancestors; the
    intermediate windows hold each token's last W-1 inputs and conv_state is
    only read. Also the tree without windows (the pool written linearly)."""
    B, L = 4, 6
    S = W - 2 + L if spec else W - 1
    weight = torch.randn(D, W, dtype=dtype)
    bias = torch.randn(D, dtype=dtype)
    parents = random_tree(B, L)
    acc = torch.randint(1, S - W + 3, (B,), dtype=torch.int32) if spec else None
    pool = make_pool(B + 2, D, S, dtype, "contiguous")
    idx = torch.tensor([3, 0, PAD, 5], dtype=torch.int32)
    windows = torch.randn(B + 1, L + 1, D, W - 1, dtype=dtype)
    win_idx = torch.tensor([4, 1, 2, 0], dtype=torch.int32)
    before = pool.clone()
    res = run_both(kernel, pool=pool, x=make_tokens(B, D, L, dtype, "contiguous"),
                   weight=weight, bias=bias, act="silu", windows=windows,
                   conv_state_indices=idx, num_accepted_tokens=acc,
                   retrieve_parent_token=parents, intermediate_state_indices=win_idx)
    msg = f"seed={seeded} W={W} spec={spec} parents={parents.tolist()}"
    check(res, (dtype, dtype), msg)
    exact(pool, before, "with windows, conv_state is only read: " + msg)
    # without windows: the tree's outputs, the pool written as for a chain
    pool2 = make_pool(B + 2, D, S, dtype, "channel_last")
    res = run_both(kernel, make_tokens(B, D, L, dtype, "channel_last"), pool2, weight, None,
                   None, conv_state_indices=idx, num_accepted_tokens=acc,
                   retrieve_parent_token=parents.long())
    check(res, (dtype, dtype), "no windows: " + msg)


@pytest.mark.parametrize("W, rows", [(1, 3), (4, 0)], ids=["width_1", "no_rows"])
def test_empty_windows_keep_the_pool(kernel, seeded, W, rows):
    """intermediate_conv_window with no elements still means the pool is only
    read: windows of width - 1 = 0 values, or none of the sequences given
    a row (intermediate_state_indices all negative)."""
    B, L = 3, 2
    weight = torch.randn(D, W)
    pool = make_pool(B, D, W - 1 + 2, torch.float32, "contiguous")
    before = pool.clone()
    windows = torch.empty(rows, L, D, W - 1)
    win_idx = torch.full((B,), -1, dtype=torch.int32) if rows == 0 else None
    res = run_both(kernel, make_tokens(B, D, L, torch.float32, "contiguous"), pool, weight, None,
                   "silu", windows=windows, intermediate_state_indices=win_idx)
    check(res, (torch.float32, torch.float32), f"seed={seeded}")
    exact(pool, before, "with windows, conv_state is only read")


def tree_tables(parents):
    """SGLang's tables of a tree given as parents: each token's first child
    and the next child of its parent (-1: none), children in token order."""
    B, L = parents.shape
    first_child = torch.full((B, L), -1, dtype=torch.int32)
    next_sibling = torch.full((B, L), -1, dtype=torch.int32)
    for b in range(B):
        last_child = {}
        for j in range(1, L):
            p = int(parents[b, j])
            if p in last_child:
                next_sibling[b, last_child[p]] = j
            else:
                first_child[b, p] = j
            last_child[p] = j
    return first_child, next_sibling


@pytest.mark.parametrize("L", [1, 2, 5, 16, 33])
def test_tree_parents_from_sglang_tables(kernel, seeded, L):
    """tree_parents gives back the parents of random trees from SGLang's
    first-child and next-sibling tables, int32 and int64, on the backend's
    device; a token no entry reaches gets the root, as SGLang's kernel."""
    parents = random_tree(6, L)
    first_child, next_sibling = tree_tables(parents)
    for dtype in (torch.int32, torch.int64):
        got = kernel.tree_parents(on_backend(first_child.to(dtype)),
                                  on_backend(next_sibling.to(dtype)))
        assert got.dtype == torch.int32 and got.device == torch.get_default_device()
        exact(got.cpu(), parents, f"seed={seeded} parents={parents.tolist()}")
    if L >= 3:  # token L - 1 cut off: no entry names it
        first_child[first_child == L - 1] = -1
        next_sibling[next_sibling == L - 1] = -1
        got = kernel.tree_parents(on_backend(first_child), on_backend(next_sibling)).cpu()
        assert (got[:, L - 1] == 0).all() and torch.equal(got[:, :-1], parents[:, :-1])


@pytest.mark.parametrize("case,tables,match", [
    ("child before its parent", ([[2, -1, 1]], [[-1, -1, -1]]),
     r"retrieve_next_token\[0, 2\] = 1: must be -1 or a later token"),
    ("sibling past the end", ([[1, -1, -1]], [[-1, 3, -1]]),
     r"retrieve_next_sibling\[0, 1\] = 3"),
    ("a token reached twice", ([[1, 2, -1]], [[-1, 2, -1]]), "token 2 of sequence 0 is reached twice"),
    ("float table", ([[1.0, -1.0]], [[-1, -1]]), "retrieve_next_token must be a 2-D int32 or int64"),
    ("1-D table", ([1, -1], [-1, -1]), "retrieve_next_token must be a 2-D"),
    ("shapes differ", ([[1, -1]], [[-1, -1, -1]]), "must match"),
])
def test_tree_parents_refusals(cc, case, tables, match):
    first, sibling = (torch.tensor(t) for t in tables)
    with pytest.raises(ValueError, match=match):
        cc.tree_parents(first, sibling)
    with pytest.raises(TypeError, match="retrieve_next_sibling must be a torch.Tensor"):
        cc.tree_parents(first, [[-1, -1]])


@pytest.mark.parametrize("W", [2, 3, 4, 5, 9, 17])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("x_layout", ["channel_last", "contiguous"])
def test_tree_windows_runs(kernel, seeded, W, dtype, x_layout):
    """SGLang's verify step: the pool (N, D, W - 1) contiguous (per-channel
    runs), x a (B * L, D) projection viewed as (B, D, L) or contiguous, the
    windows (rows, L, D, W - 1) contiguous; chains and random trees of 1 to
    65 tokens, a padding sequence and one without windows. Then the same
    trees writing a pool of S = W - 2 + L columns (num_accepted_tokens).
    Several whole channel blocks and a partial one; W - 1, S and L up to 16
    and past 8 (the CPU's register path takes runs of up to a register, 16
    values on AVX-512, 8 on AVX2, its rows path longer ones), and as rows
    of channels up to 64 tokens and past them."""
    D2 = 3 * 64 + 13
    B = 4
    weight = torch.randn(D2, W, dtype=dtype)
    bias = torch.randn(D2, dtype=dtype)
    idx = torch.tensor([3, 0, PAD, 5], dtype=torch.int32)
    win_idx = torch.tensor([4, -1, 2, 0], dtype=torch.int32)
    for L in (1, 4, 9, 17, 64, 65):
        for parents in (None, random_tree(B, L)):
            x = make_tokens(B, D2, L, dtype, x_layout)
            pool = make_pool(6, D2, W - 1, dtype, "contiguous")
            before = pool.clone()
            windows = torch.randn(5, L + 1, D2, W - 1, dtype=dtype)
            msg = f"seed={seeded} L={L} parents={None if parents is None else parents.tolist()}"
            res = run_both(kernel, x, pool, weight, bias, "silu", windows=windows,
                           conv_state_indices=idx, retrieve_parent_token=parents,
                           intermediate_state_indices=win_idx)
            check(res, (dtype, dtype), "windows: " + msg)
            exact(pool, before, "with windows, conv_state is only read: " + msg)
            S = W - 2 + L
            pool = make_pool(6, D2, S, dtype, "contiguous")
            acc = torch.randint(1, S - W + 3, (B,), dtype=torch.int32)
            res = run_both(kernel, x, pool, weight, None, None, conv_state_indices=idx,
                           num_accepted_tokens=acc, retrieve_parent_token=parents)
            check(res, (dtype, dtype), f"pool written, acc={acc.tolist()}: " + msg)


@pytest.mark.kernels_ci
@pytest.mark.parametrize("W", [1, 2, 4, 8])
@pytest.mark.parametrize("spec", [False, True])
@pytest.mark.parametrize("L", [1, 3])
@pytest.mark.parametrize("layout", ["channel_last", "contiguous"])
def test_prefix_cached_decode(kernel, seeded, W, spec, L, layout):
    """A (B, blocks) table: read the row at initial_state_idx, write the row
    at block_idx_last_scheduled_token (a different block, or the same), a
    padding sequence; unread, unwritten rows stay as they were. Pool and x
    in vLLM's layout and contiguous (per-channel runs)."""
    B, blocks, N = 4, 5, 30
    S = W - 2 + L if spec else max(W - 1, 1) + 1
    S = max(S, W - 1)
    dtype = torch.float32
    weight = torch.randn(D, W, dtype=dtype)
    bias = torch.randn(D, dtype=dtype)
    table = torch.randperm(N)[: B * blocks].reshape(B, blocks).to(torch.int32)
    table[2] = PAD
    read_col = torch.tensor([0, 2, 1, 3], dtype=torch.int32)
    write_col = torch.tensor([1, 2, 4, 4], dtype=torch.int32)  # sequence 1 writes in place
    pool = make_pool(N, D, S, dtype, layout)
    acc = torch.randint(1, min(S - W + 2, L) + 1, (B,), dtype=torch.int32) if spec else None
    before = pool.clone()
    x = make_tokens(B, D, L, dtype, layout)
    res = run_both(kernel, x, pool, weight, bias, "silu", conv_state_indices=table,
                   initial_state_idx=read_col, block_idx_last_scheduled_token=write_col,
                   num_accepted_tokens=acc)
    msg = f"seed={seeded} W={W} spec={spec} L={L} {layout} table={table.tolist()}"
    check(res, (dtype, dtype), msg)
    written = {int(table[b, write_col[b]]) for b in range(B) if b != 2}
    others = [r for r in range(N) if r not in written]
    exact(pool[others], before[others], "rows nobody writes: " + msg)
    assert not res[0][2].any(), "a padding sequence outputs 0: " + msg


def test_pad_slot_id(kernel, seeded):
    """A pad_slot_id other than -1 marks padding like a negative index."""
    B, W, S = 4, 4, 3
    pool = make_pool(8, D, S, torch.float32, "contiguous")
    idx = torch.tensor([2, 7, 5, 0], dtype=torch.int32)
    x = torch.randn(B, D)
    before = pool.clone()
    res = run_both(kernel, x, pool, torch.randn(D, W), torch.randn(D), "silu",
                   conv_state_indices=idx, pad_slot_id=7)
    check(res, (torch.float32, torch.float32), f"seed={seeded}")
    exact(pool[7], before[7], "the pad slot's row is untouched")
    assert not res[0][1].any()


# ---------------------------------------------------------------------------
# prefix-cached packed prefill


def prefix_case(lengths, computed, block_size, S, dtype=torch.float32, has_init=None):
    """A block table giving each sequence its blocks' rows, and the columns
    vLLM passes: the block holding the initial state, the first block this
    call completes, the block of its last token."""
    B = len(lengths)
    blocks = max((c + n) // block_size + 2 for c, n in zip(computed, lengths))
    N = B * blocks + 3
    table = torch.randperm(N)[: B * blocks].reshape(B, blocks).to(torch.int32)
    init_col = torch.tensor([max(c - 1, 0) // block_size for c in computed], dtype=torch.int32)
    first = torch.tensor([c // block_size for c in computed], dtype=torch.int32)
    last = torch.tensor([(c + max(n, 1) - 1) // block_size for c, n in zip(computed, lengths)],
                        dtype=torch.int32)
    qsl = torch.tensor([0] + [sum(lengths[: i + 1]) for i in range(B)], dtype=torch.int32)
    pool = torch.randn(N, D, S, dtype=dtype)
    if has_init is None:
        has_init = torch.tensor([c > 0 for c in computed])
    return dict(cache_indices=table, initial_state_idx=init_col,
                block_idx_first_scheduled_token=first, block_idx_last_scheduled_token=last,
                num_computed_tokens=torch.tensor(computed, dtype=torch.int32),
                block_size=block_size, cu_seqlens=qsl, has_initial_state=has_init), pool


@pytest.mark.kernels_ci
@pytest.mark.parametrize("W", [1, 2, 4, 7])
@pytest.mark.parametrize("S_extra", [0, 3])
@pytest.mark.parametrize("channels_first", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_prefix_cached_prefill(kernel, seeded, W, S_extra, channels_first, dtype):
    """Block states at every block boundary inside the call, counted from
    each sequence's start (num_computed_tokens earlier tokens), the final
    state to the last block's row; boundaries within W-1 or S tokens of the
    start (reaching into the initial state); a length-0 sequence; padding."""
    S = max(W - 1 + S_extra, 1)
    lengths = [13, 0, 5, 16, 1, 9]
    computed = [0, 8, 6, 3, 15, 16]
    kw, pool = prefix_case(lengths, computed, 8, S, dtype)
    kw["cache_indices"][4] = PAD
    T = sum(lengths)
    x = torch.randn(D, T, dtype=dtype) if channels_first else torch.randn(T, D, dtype=dtype)
    weight, bias = torch.randn(D, W, dtype=dtype), torch.randn(D, dtype=dtype)
    pool_ref = pool.to(torch.float64, copy=True)
    x_ref = (x.t() if channels_first else x).double()
    want = kernel.causal_conv1d_packed_fwd_ref(x_ref, weight.double(), bias.double(),
                                               activation="silu", conv_states=pool_ref, **kw)
    before = pool.clone()
    qsl = kw.pop("cu_seqlens")
    table = kw.pop("cache_indices")
    has_init = kw.pop("has_initial_state")
    got = kernel.causal_conv1d_packed_fwd(x, weight, bias, qsl, pool, table, has_init, "silu",
                                          channels_first=channels_first, **kw)
    msg = f"seed={seeded} W={W} S={S} {dtype} channels_first={channels_first}"
    close(got if channels_first else got.t(), want.t(), (dtype, dtype), msg)
    exact(pool, pool_ref, "pool: " + msg)
    assert not torch.equal(pool, before), "block states were written: " + msg


def test_prefix_cached_prefill_default_zero_states(kernel, seeded):
    """Without has_initial_state, prefix-cached prefill starts every
    sequence from zeros (the documented default, as without prefix
    caching), not from the rows initial_state_idx names."""
    W, S = 4, 3
    lengths, computed = [13, 5, 9], [8, 6, 0]
    kw, pool = prefix_case(lengths, computed, 8, S)
    weight, bias = torch.randn(D, W), torch.randn(D)
    x = torch.randn(sum(lengths), D)
    qsl, table = kw.pop("cu_seqlens"), kw.pop("cache_indices")
    kw.pop("has_initial_state")
    zeros = torch.zeros(len(lengths), dtype=torch.bool)
    pool_zeros = pool.clone()
    want = kernel.causal_conv1d_packed_fwd(x, weight, bias, qsl, pool_zeros, table, zeros,
                                           "silu", **kw)
    got = kernel.causal_conv1d_packed_fwd(x, weight, bias, qsl, pool, table, None, "silu", **kw)
    exact(got, want, f"seed={seeded}: out with has_initial_state None and all False")
    exact(pool, pool_zeros, f"seed={seeded}: pool with has_initial_state None and all False")


@pytest.mark.kernels_ci
def test_prefix_cached_resume(kernel, seeded):
    """Chunked prefill then resumption from a cached block: prefilling a
    sequence in chunks with block states, then starting a new request from
    the state cached at a block boundary, gives the outputs of one pass over
    the whole sequence."""
    W, S, bs, L = 4, 3, 8, 45
    weight, bias = torch.randn(D, W), torch.randn(D)
    seq = torch.randn(L, D)
    whole = kernel.causal_conv1d_fn(seq.t()[None], weight, bias, activation="silu")[0].t()
    blocks = L // bs + 2
    table = torch.arange(blocks, dtype=torch.int32)[None]
    pool = torch.zeros(blocks, D, S)
    done = 0
    for chunk in (11, 20, 14):  # boundaries fall inside chunks and at their ends
        kw = dict(initial_state_idx=torch.tensor([max(done - 1, 0) // bs], dtype=torch.int32),
                  block_idx_first_scheduled_token=torch.tensor([done // bs], dtype=torch.int32),
                  block_idx_last_scheduled_token=torch.tensor([(done + chunk - 1) // bs],
                                                              dtype=torch.int32),
                  num_computed_tokens=torch.tensor([done], dtype=torch.int32), block_size=bs)
        out = kernel.causal_conv1d_packed_fwd(
            seq[done : done + chunk], weight, bias, torch.tensor([0, chunk], dtype=torch.int32),
            pool, table, torch.tensor([done > 0]), "silu", **kw)
        close(out, whole[done : done + chunk], (torch.float32,), f"seed={seeded} chunk at {done}")
        done += chunk
    # a new request sharing the first 24 tokens resumes from block 2's state
    resume = 24
    pool2 = torch.zeros(2, D, S)
    pool2[0] = pool[resume // bs - 1]
    out = kernel.causal_conv1d_packed_fwd(
        seq[resume:], weight, bias, torch.tensor([0, L - resume], dtype=torch.int32), pool2,
        torch.tensor([[0, 1]], dtype=torch.int32), torch.tensor([True]), "silu",
        initial_state_idx=torch.tensor([0], dtype=torch.int32),
        block_idx_first_scheduled_token=torch.tensor([1], dtype=torch.int32),
        block_idx_last_scheduled_token=torch.tensor([1], dtype=torch.int32),
        num_computed_tokens=torch.tensor([0], dtype=torch.int32), block_size=L)
    close(out, whole[resume:], (torch.float32,), f"seed={seeded} resumed")


BAD_PREFIX = [
    ("last - first wrong", dict(block_idx_last_scheduled_token=[1, 0]),
     "block_idx_last_scheduled_token - block_idx_first_scheduled_token"),
    ("first past the table", dict(block_idx_first_scheduled_token=[9, 0],
                                  block_idx_last_scheduled_token=[10, 0]),
     "past the"),
    ("negative computed", dict(num_computed_tokens=[-1, 0]), "num_computed_tokens"),
    ("block size 0 with columns", dict(block_size=0), "block_size"),
    ("two blocks, one row", dict(cache_indices=[[1, 1, 2, 3, 4], [5, 6, 7, 8, 9]]), "both write"),
    ("computed not int32", dict(num_computed_tokens=torch.tensor([0, 0])), "num_computed_tokens"),
]


# Refusals that read index values: checked when the index tensors are on the
# host; on a GPU they live on the device, where checking them would need a
# synchronisation, so the kernels clamp instead (README: Serving) and such a
# call must complete without touching memory outside its tensors (the
# sanitizer run checks that).
VALUE_CHECKS = {
    "last - first wrong", "first past the table", "negative computed", "two blocks, one row",
    "num_accepted_tokens above the drafts", "num_accepted_tokens zero", "parent not an ancestor",
    "parent negative", "block index past the table", "read column past the table",
    "table rows written twice", "row read by another sequence's write", "table row out of range",
    "query_start_loc past x", "query_start_loc decreasing", "window index out of range",
    "window rows twice", "packed parents too short", "packed windows too few tokens",
}


def expect_refusal(backend, name, errors):
    """pytest.raises(errors), or for a value check on a GPU a context that
    lets the call through and waits for its kernels."""
    if backend.device == "cuda" and name in VALUE_CHECKS:
        return _completes()
    return pytest.raises(errors)


class _completes:
    value = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        torch.cuda.synchronize()
        return False


@pytest.mark.parametrize("case", BAD_PREFIX, ids=[c[0] for c in BAD_PREFIX])
def test_prefix_cached_prefill_refusals(backend, case):
    kernel = backend.module
    name, change, needle = case
    kw, pool = prefix_case([10, 3], [0, 0], 4, 3)
    for k, v in change.items():
        kw[k] = torch.tensor(v, dtype=torch.int32) if isinstance(v, list) else on_backend(v)
    kw["cache_indices"] = kw["cache_indices"][:, :5]
    before = pool.clone()
    qsl, table, has_init = kw.pop("cu_seqlens"), kw.pop("cache_indices"), kw.pop("has_initial_state")
    with expect_refusal(backend, name, (ValueError, TypeError)) as info:
        kernel.causal_conv1d_packed_fwd(torch.randn(13, D), torch.randn(D, 4), None, qsl, pool,
                                        table, has_init, "silu", **kw)
    if info.value is None:
        return
    assert needle in str(info.value), str(info.value)
    exact(pool, before, "nothing written on refusal")


# ---------------------------------------------------------------------------
# refusals: the argument named, nothing written


def _serving_args():
    B, W, k = 3, 4, 2
    S = W - 1 + k
    return dict(
        x=torch.randn(B, D, 1 + k), conv_state=torch.randn(B + 2, D, S), weight=torch.randn(D, W),
        conv_state_indices=torch.tensor([0, 2, 4], dtype=torch.int32),
        num_accepted_tokens=torch.tensor([1, 2, 3], dtype=torch.int32),
    )


BAD_SERVING = [
    ("num_accepted_tokens above the drafts",
     dict(num_accepted_tokens=torch.tensor([1, 4, 1], dtype=torch.int32)), "num_accepted_tokens"),
    ("num_accepted_tokens zero",
     dict(num_accepted_tokens=torch.tensor([0, 1, 1], dtype=torch.int32)), "num_accepted_tokens"),
    ("num_accepted_tokens float", dict(num_accepted_tokens=torch.ones(3)), "num_accepted_tokens"),
    ("num_accepted_tokens wrong shape",
     dict(num_accepted_tokens=torch.ones(4, dtype=torch.int32)), "num_accepted_tokens"),
    ("parent not an ancestor",
     dict(retrieve_parent_token=torch.tensor([[-1, 0, 2]] * 3, dtype=torch.int32)),
     "retrieve_parent_token"),
    ("parent negative",
     dict(retrieve_parent_token=torch.tensor([[-1, 0, 0], [-1, -1, 1], [-1, 0, 1]],
                                             dtype=torch.int32)), "retrieve_parent_token"),
    ("parents too short", dict(retrieve_parent_token=torch.zeros(3, 2, dtype=torch.int32)),
     "retrieve_parent_token"),
    ("packed parents too short", dict(
        x=torch.randn(6, D), query_start_loc=torch.tensor([0, 1, 2, 6], dtype=torch.int32),
        num_accepted_tokens=None, retrieve_parent_token=torch.zeros(3, 2, dtype=torch.int32)),
     "retrieve_parent_token"),
    ("block index past the table",
     dict(conv_state_indices=torch.tensor([[0, 1], [2, 3], [4, 0]], dtype=torch.int32),
          initial_state_idx=torch.tensor([0, 0, 0], dtype=torch.int32),
          block_idx_last_scheduled_token=torch.tensor([1, 2, 1], dtype=torch.int32)),
     "block_idx_last_scheduled_token"),
    ("read column past the table",
     dict(conv_state_indices=torch.tensor([[0, 1], [2, 3], [4, 0]], dtype=torch.int32),
          initial_state_idx=torch.tensor([0, -1, 0], dtype=torch.int32),
          block_idx_last_scheduled_token=torch.tensor([1, 1, 0], dtype=torch.int32)),
     "initial_state_idx"),
    ("table without columns",
     dict(conv_state_indices=torch.tensor([[0, 1], [2, 3], [4, 0]], dtype=torch.int32)),
     "initial_state_idx"),
    ("table without blocks",
     dict(conv_state_indices=torch.zeros(3, 0, dtype=torch.int32),
          initial_state_idx=torch.tensor([0, 0, 0], dtype=torch.int32),
          block_idx_last_scheduled_token=torch.tensor([0, 0, 0], dtype=torch.int32)),
     "at least one column"),
    ("one column argument only",
     dict(conv_state_indices=torch.tensor([[0, 1], [2, 3], [4, 0]], dtype=torch.int32),
          initial_state_idx=torch.tensor([0, 0, 0], dtype=torch.int32)),
     "block_idx_last_scheduled_token"),
    ("table rows written twice",
     dict(conv_state_indices=torch.tensor([[0, 1], [2, 1], [4, 3]], dtype=torch.int32),
          initial_state_idx=torch.tensor([0, 0, 0], dtype=torch.int32),
          block_idx_last_scheduled_token=torch.tensor([1, 1, 1], dtype=torch.int32)),
     "both write conv_state row 1"),
    ("row read by another sequence's write",
     dict(conv_state_indices=torch.tensor([[0, 2], [2, 3], [4, 1]], dtype=torch.int32),
          initial_state_idx=torch.tensor([0, 0, 0], dtype=torch.int32),
          block_idx_last_scheduled_token=torch.tensor([1, 1, 1], dtype=torch.int32)),
     "reads conv_state row 2"),
    ("table row out of range",
     dict(conv_state_indices=torch.tensor([[0, 1], [2, 3], [4, 9]], dtype=torch.int32),
          initial_state_idx=torch.tensor([0, 0, 0], dtype=torch.int32),
          block_idx_last_scheduled_token=torch.tensor([1, 1, 1], dtype=torch.int32)),
     "out of range"),
    ("state too short for the drafts", dict(conv_state=torch.randn(5, D, 4)), "state_len"),
    ("cache_seqlens with spec", dict(cache_seqlens=torch.zeros(3, dtype=torch.int32)),
     "cache_seqlens"),
    ("query_start_loc past x", dict(x=torch.randn(5, D), query_start_loc=torch.tensor(
        [0, 2, 4, 6], dtype=torch.int32), num_accepted_tokens=None), "query_start_loc"),
    ("query_start_loc decreasing", dict(x=torch.randn(5, D), query_start_loc=torch.tensor(
        [0, 3, 2, 5], dtype=torch.int32), num_accepted_tokens=None), "query_start_loc"),
    ("query_start_loc float", dict(x=torch.randn(5, D), query_start_loc=torch.tensor(
        [0.0, 1, 2, 5]), num_accepted_tokens=None), "query_start_loc"),
    ("query_start_loc with 3-D x", dict(query_start_loc=torch.tensor([0, 1, 2, 3],
                                                                     dtype=torch.int32)),
     "query_start_loc"),
    ("channels_first without query_start_loc", dict(channels_first=True), "channels_first"),
    ("windows wrong width", dict(intermediate_conv_window=torch.zeros(3, 3, D, 2)),
     "intermediate_conv_window"),
    ("windows too few tokens", dict(intermediate_conv_window=torch.zeros(3, 2, D, 3)),
     "intermediate_conv_window"),
    ("packed windows too few tokens", dict(
        x=torch.randn(6, D), query_start_loc=torch.tensor([0, 1, 2, 6], dtype=torch.int32),
        num_accepted_tokens=None, intermediate_conv_window=torch.zeros(3, 2, D, 3)),
     "intermediate_conv_window"),
    ("windows wrong dtype",
     dict(intermediate_conv_window=torch.zeros(3, 3, D, 3, dtype=torch.float64)),
     "intermediate_conv_window"),
    ("windows overlapping the pool", "overlap", "intermediate_conv_window"),
    ("window index out of range",
     dict(intermediate_conv_window=torch.zeros(3, 3, D, 3),
          intermediate_state_indices=torch.tensor([0, 3, 1], dtype=torch.int32)),
     "intermediate_state_indices"),
    ("window rows twice",
     dict(intermediate_conv_window=torch.zeros(3, 3, D, 3),
          intermediate_state_indices=torch.tensor([0, 1, 1], dtype=torch.int32)),
     "intermediate_state_indices"),
    ("window indices without windows",
     dict(intermediate_state_indices=torch.tensor([0, 1, 2], dtype=torch.int32)),
     "intermediate_state_indices"),
    ("pad_slot_id a float", dict(pad_slot_id=1.5), "pad_slot_id"),
    ("num_accepted_tokens a list", dict(num_accepted_tokens=[1, 2, 3]), "num_accepted_tokens"),
]


@pytest.mark.kernels_ci
@pytest.mark.parametrize("case", BAD_SERVING, ids=[c[0] for c in BAD_SERVING])
def test_serving_refusals(backend, case):
    kernel = backend.module
    name, change, needle = case
    args = _serving_args()
    if isinstance(change, dict):  # the table's tensors are made on the CPU at import
        change = {k: on_backend(v) for k, v in change.items()}
    if change == "overlap":  # windows and pool in one buffer, sharing a pool row
        shared = torch.randn(5 * D * 5 + 3 * 3 * D * 3)
        change = dict(conv_state=shared[: 5 * D * 5].view(5, D, 5),
                      intermediate_conv_window=shared[4 * D * 5 :][: 3 * 3 * D * 3]
                      .view(3, 3, D, 3))
    args.update(change)
    args = {k: v for k, v in args.items() if v is not None}
    pool_before = args["conv_state"].clone()
    win = args.get("intermediate_conv_window")
    win_before = None if win is None else win.clone()
    x, pool, weight = args.pop("x"), args.pop("conv_state"), args.pop("weight")
    with expect_refusal(backend, name, (ValueError, TypeError, RuntimeError)) as info:
        kernel.causal_conv1d_update(x, pool, weight, None, "silu", **args)
    if info.value is None:
        return
    assert needle in str(info.value), str(info.value)
    exact(pool, pool_before, "nothing written on refusal")
    if win is not None:
        exact(win, win_before, "nothing written on refusal")


# ---------------------------------------------------------------------------
# an engine's loop


@pytest.mark.kernels_ci
@pytest.mark.parametrize("W", [2, 4, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["channel_last", "contiguous"])
def test_engine_loop_matches_plain_updates(kernel, seeded, W, dtype, layout):
    """50 steps of draft / verify / accept a random prefix with
    num_accepted_tokens against plain single-token updates of the accepted
    tokens: identical outputs, and the state's live window identical to the
    plain state. Pool rows with padding; state and x in vLLM's layout or
    contiguous."""
    B, k, N = 6, 3, 9
    S = W - 1 + k
    weight = torch.randn(D, W, dtype=dtype)
    bias = torch.randn(D, dtype=dtype)
    idx = torch.randperm(N)[:B].to(torch.int32)
    spec_pool = make_pool(N, D, S, dtype, layout)
    plain_pool = torch.zeros(N, D, W - 1, dtype=dtype)
    spec_pool[idx.long(), :, : W - 1] = 0  # both start from a zero history
    accepted = torch.ones(B, dtype=torch.int32)  # step 0: one "accepted" token, the prompt's last
    for step in range(50):
        x = make_tokens(B, D, 1 + k, dtype, layout)
        out = kernel.causal_conv1d_update(x, spec_pool, weight, bias, "silu",
                                          conv_state_indices=idx, num_accepted_tokens=accepted)
        accepted = torch.randint(1, k + 2, (B,), dtype=torch.int32)
        for b in range(B):
            row = int(idx[b])
            for j in range(int(accepted[b])):
                want = kernel.causal_conv1d_update(x[b : b + 1, :, j], plain_pool[row : row + 1],
                                                   weight, bias, "silu")
                msg = f"seed={seeded} step={step} b={b} token={j}"
                exact(out[b, :, j], want[0], "output: " + msg)
            n = int(accepted[b])
            exact(spec_pool[row, :, n - 1 : n + W - 2], plain_pool[row],
                  f"state window: seed={seeded} step={step} b={b}")


@pytest.mark.kernels_ci
@pytest.mark.parametrize("W", [2, 4])
def test_engine_tree_loop_matches_plain_updates(kernel, seeded, W):
    """SGLang's scheme, 50 steps: a random token tree per step, the windows
    written, the engine commits the window of a random accepted node into
    conv_state; against plain updates along that node's root path."""
    B, L = 4, 5
    weight = torch.randn(D, W)
    bias = torch.randn(D)
    pool = torch.zeros(B, D, W - 1)
    plain = torch.zeros(B, D, W - 1)
    windows = torch.zeros(B, L, D, W - 1)
    for step in range(50):
        x = torch.randn(B, D, L)
        parents = random_tree(B, L)
        out = kernel.causal_conv1d_update(x, pool, weight, bias, "silu",
                                          retrieve_parent_token=parents,
                                          intermediate_conv_window=windows)
        for b in range(B):
            node = int(torch.randint(0, L, ()))
            path = [node]
            while path[-1] > 0:
                path.append(int(parents[b, path[-1]]))
            for j in reversed(path):
                want = kernel.causal_conv1d_update(x[b : b + 1, :, j], plain[b : b + 1], weight,
                                                   bias, "silu")
                exact(out[b, :, j], want[0], f"seed={seeded} step={step} b={b} token={j}")
            pool[b] = windows[b, node]
            exact(pool[b], plain[b], f"committed window: seed={seeded} step={step} b={b}")


@pytest.mark.sanitizer
@pytest.mark.backends("cuda")
def test_sanitizer_serving(backend):
    """One small case through each serving path for tools/gpu.sh check's
    compute-sanitizer run: speculative steps in both layouts, varlen in both
    packings, trees with and without windows, prefix-cached decode and
    prefill, and the refusals the device-side index guards back up."""
    kernel = backend.module
    torch.manual_seed(2)
    pair = (torch.bfloat16, torch.float32)
    for layout in ("contiguous", "channel_last"):
        test_spec_decode(kernel, 0, pair, 4, layout)
        test_prefix_cached_decode(kernel, 0, 4, True, 3, layout)
    for channels_first in (False, True):
        test_varlen_decode(kernel, 0, 4, channels_first, True, "channel_last")
    test_tree_with_windows(kernel, 0, 4, True, torch.float32)
    test_prefix_cached_prefill(kernel, 0, 4, 3, False, torch.bfloat16)
    for case in BAD_SERVING:
        test_serving_refusals(backend, case)
    for case in BAD_PREFIX:
        test_prefix_cached_prefill_refusals(backend, case)


# ---------------------------------------------------------------------------
# compile, fake kernels, opcheck


def test_update_serving_opcheck(kernel):
    """torch.library.opcheck on the serving op: schema (what it writes),
    fake kernel, autograd registration. (Not in kernels_ci: opcheck needs
    hypothesis, which kernel-builder's test inputs do not have.)"""
    op = kernel.ops.update_serving.default
    W, k, B = 4, 2, 3
    S = W - 1 + k
    samples = [
        (torch.randn(B, D, 1 + k), torch.randn(B, D, S), torch.randn(D, W), torch.randn(D),
         None, torch.tensor([1, 2, 3], dtype=torch.int32), None, None, None, None, None, None,
         None, None, None, 0, -1, True),
        (torch.randn(D, 6), torch.randn(4, D, W - 1), torch.randn(D, W), None,
         torch.tensor([3, 0, 1], dtype=torch.int32), None,
         torch.tensor([0, 2, 2, 6], dtype=torch.int32), None, None, None, None, None, None,
         None, None, 0, -1, False),
        (torch.randn(B, D, 3), torch.randn(B, D, W - 1), torch.randn(D, W), None, None, None,
         None, random_tree(B, 3), torch.zeros(B, 3, D, W - 1), None, None, None, None, None,
         None, 0, -1, True),
    ]
    # packed prefill into a block table, with block states
    kw, pool = prefix_case([7, 3], [2, 8], 4, W - 1)
    samples.append((torch.randn(D, 10), pool, torch.randn(D, W), torch.randn(D),
                    kw["cache_indices"], None, kw["cu_seqlens"], None, None, None,
                    kw["initial_state_idx"], kw["block_idx_last_scheduled_token"],
                    kw["has_initial_state"], kw["block_idx_first_scheduled_token"],
                    kw["num_computed_tokens"], 4, -1, True))
    for args in samples:
        torch.library.opcheck(op, args)


def test_update_serving_compiles(kernel, seeded):
    """torch.compile(fullgraph) through the serving path gives the eager result."""
    W, k, B = 4, 3, 4
    S = W - 1 + k
    weight, bias = torch.randn(D, W), torch.randn(D)
    x = torch.randn(B, D, 1 + k)
    acc = torch.tensor([1, 4, 2, 3], dtype=torch.int32)
    pool_a, pool_b = torch.randn(B, D, S), None
    pool_b = pool_a.clone()

    def step(x, pool, acc):
        return kernel.causal_conv1d_update(x, pool, weight, bias, "silu", num_accepted_tokens=acc)

    want = step(x, pool_a, acc)
    got = torch.compile(step, fullgraph=True)(x, pool_b, acc)
    exact(got, want, "compiled output")
    exact(pool_b, pool_a, "compiled state")
