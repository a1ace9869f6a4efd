"""Decode (causal_conv1d_update) against the float64 reference: every dtype
pairing, widths 1..32, state lengths S = W-1 and S > W-1, strided x and
conv_state, circular buffers (cache_seqlens) that wrap, pools with padding
rows, multi-token updates (also L > S); and a decode loop that must match one
causal_conv1d_fn over the whole sequence. conv_state must come out bit-exact:
decode only moves inputs."""

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
    exact,
    pair_id,
    pool_indices,
    skip_unimplemented,
    to_cpu,
    update_case,
)

WIDTHS = [1, 2, 3, 4, 5, 6, 7, 8, 16, 32]  # 2..8: each a fast CUDA decode kernel
D = 77  # two full channel blocks and a partial one on every tier


def make_state(n: int, d: int, s: int, dtype: torch.dtype, layout: str) -> torch.Tensor:
    """(n, d, s) random state: contiguous; "channel_last" (stride 1 along d);
    "slice" (a column window of a wider state, and every other pool row)."""
    if layout == "contiguous":
        return torch.randn(n, d, s, dtype=dtype)
    if layout == "channel_last":
        return torch.randn(n, s, d, dtype=dtype).transpose(1, 2)
    if layout == "slice":
        return torch.randn(2 * n, d, s + 3, dtype=dtype)[::2, :, 2 : 2 + s]
    raise ValueError(layout)


def make_x(b: int, d: int, L: int | None, dtype: torch.dtype, layout: str) -> torch.Tensor:
    """(b, d) when L is None, else (b, d, L), in the given memory layout."""
    n = 1 if L is None else L
    if layout == "contiguous":
        x = torch.randn(b, d, n, dtype=dtype)
    elif layout == "channel_last":
        x = torch.randn(b, n, d, dtype=dtype).transpose(1, 2)
    elif layout == "strided":  # a slice of a wider projection, every stride > 1
        x = torch.randn(b, 2 * n, 3 * d, dtype=dtype)[:, ::2, d : 2 * d].transpose(1, 2)
    else:
        raise ValueError(layout)
    return x[..., 0] if L is None else x


def run_update(kernel, x, state, weight, bias, activation, cache_seqlens=None, indices=None):
    """The kernel on (x, state) and the float64 reference on copies: returns
    (out, out_ref, state after, reference state after)."""
    state_ref = state.to(torch.float64, copy=True)  # never the same tensor as state
    out_ref = kernel.causal_conv1d_update_ref(
        x.double(), state_ref, weight.double(), None if bias is None else bias.double(),
        activation=activation, cache_seqlens=cache_seqlens, conv_state_indices=indices,
    )
    out = kernel.causal_conv1d_update(
        x, state, weight, bias, activation=activation, cache_seqlens=cache_seqlens,
        conv_state_indices=indices,
    )
    return out, out_ref, state, state_ref


def check(out, out_ref, state, state_ref, x_dtype, w_dtype, msg):
    assert out.shape == out_ref.shape and out.dtype == x_dtype, msg
    assert_close(out, out_ref, (x_dtype, w_dtype), msg)
    # bit-exact: the state only ever holds copies of inputs
    assert torch.equal(state.double(), state_ref), f"{msg}: conv_state differs"


# (L, extra state columns, circular, bias, activation): one token (L None)
# and several, state_len W - 1 and longer, linear and circular buffers
GRID_CASES = [
    (None, 0, False, True, "silu"),
    (None, 0, True, True, "silu"),
    (None, 3, False, True, "silu"),
    (None, 3, True, True, "silu"),
    (None, 3, True, False, "swish"),
    (1, 2, False, False, None),
    (4, 0, True, True, None),
    (5, 1, False, True, "silu"),
]


@pytest.mark.kernels_ci
@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize("W", WIDTHS)
@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=pair_id)
def test_grid(kernel, seeded, dtypes, W, pool):
    """Every dtype pair and width, across token counts, state lengths and the
    linear / circular state, with and without bias and silu, in a batch of
    its own or a pool with padding rows."""
    for L, extra, circular, bias, act in GRID_CASES:
        S = W - 1 + extra
        if circular:
            S = max(S, 1)  # a circular buffer needs a column
        update_case(kernel, seeded, B=3, D=D, W=W, S=S, L=L, xdt=dtypes[0], wdt=dtypes[1],
                    circular=circular, pool=pool, act=act, bias=bias)


X_LAYOUTS = ["contiguous", "channel_last", "strided"]
STATE_LAYOUTS = ["contiguous", "channel_last", "slice"]


@pytest.mark.kernels_ci
@pytest.mark.parametrize("x_layout", X_LAYOUTS)
@pytest.mark.parametrize("state_layout", STATE_LAYOUTS)
@pytest.mark.parametrize("L", [None, 1, 3, 9])
@pytest.mark.parametrize("circular", [False, True])
def test_layouts_and_lengths(kernel, seeded, x_layout, state_layout, L, circular):
    """Any strides of x and conv_state, linear and circular, in a batch of its
    own and in a pool."""
    for xdt, wdt, pool in ((torch.float32, torch.float32, False),
                           (torch.bfloat16, torch.bfloat16, False),
                           (torch.bfloat16, torch.float32, True)):
        update_case(kernel, seeded, B=4, D=D, W=4, S=5, L=L, circular=circular, pool=pool,
                    x_layout=x_layout, state_layout=state_layout, xdt=xdt, wdt=wdt)


@pytest.mark.parametrize("W", [1, 2, 4, 6])
@pytest.mark.parametrize("L", [1, 2, 7, 12])
def test_update_circular_wraps(kernel, seeded, W, L):
    """cache_seqlens far past S (the buffer wrapped many times), L up to > S."""
    B, S = 5, max(W - 1, 1) + 2
    weight = torch.randn(D, W)
    bias = torch.randn(D)
    x = make_x(B, D, L, torch.float32, "contiguous")
    state = make_state(B, D, S, torch.float32, "contiguous")
    seqlens = torch.tensor([0, S - 1, S, 7 * S + 2, 1000 * S + S - 1], dtype=torch.int32)
    res = run_update(kernel, x, state, weight, bias, None, seqlens)
    check(*res, torch.float32, torch.float32, f"seed={seeded} W={W} L={L} S={S}")


@pytest.mark.parametrize("L", [1, 3, 9])
def test_update_longer_than_state(kernel, seeded, L):
    """Linear state with L >= S: the state becomes the last S tokens."""
    B, W = 3, 4
    for S in (3, 4):
        weight, bias = torch.randn(D, W), torch.randn(D)
        x = make_x(B, D, L, torch.float32, "contiguous")
        state = make_state(B, D, S, torch.float32, "contiguous")
        res = run_update(kernel, x, state, weight, bias, "silu")
        check(*res, torch.float32, torch.float32, f"seed={seeded} L={L} S={S}")
        if L >= S:
            assert torch.equal(state, x[..., -S:])


@pytest.mark.parametrize("circular", [False, True])
@pytest.mark.parametrize("L", [None, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_update_pool_with_padding(kernel, seeded, circular, L, dtype):
    """conv_state_indices pick rows of a larger pool in any order; negative
    indices are padding rows: output 0 and no pool row changes."""
    B, N, W, S = 6, 11, 4, 4
    weight, bias = torch.randn(D, W, dtype=dtype), torch.randn(D, dtype=dtype)
    pool = make_state(N, D, S, dtype, "contiguous")
    rows = torch.randperm(N)[:B].to(torch.int32)
    rows[1] = -1
    rows[4] = -7
    x = make_x(B, D, L, dtype, "channel_last")
    seqlens = torch.randint(0, 30, (B,), dtype=torch.int32) if circular else None
    before = pool.clone()
    res = run_update(kernel, x, pool, weight, bias, "silu", seqlens, rows)
    check(*res, dtype, dtype, f"seed={seeded} circular={circular} L={L}")
    out = res[0]
    assert torch.count_nonzero(out[1]) == 0 and torch.count_nonzero(out[4]) == 0
    live = {int(r) for r in rows if r >= 0}
    for n in range(N):
        if n not in live:
            assert torch.equal(pool[n], before[n]), f"pool row {n} was touched"
        else:
            assert not torch.equal(pool[n], before[n]), f"pool row {n} was not updated"


@pytest.mark.parametrize("L", [None, 4])
def test_update_width1_empty_state(kernel, seeded, L):
    """W = 1 needs no history: a state of length 0 is legal."""
    B = 3
    weight, bias = torch.randn(D, 1), torch.randn(D)
    x = make_x(B, D, L, torch.float32, "contiguous")
    state = torch.empty(B, D, 0)
    res = run_update(kernel, x, state, weight, bias, "silu")
    check(*res, torch.float32, torch.float32, f"seed={seeded}")


def test_update_many_threads_blocks(kernel, seeded):
    """A size that splits across threads and blocks (B * D large)."""
    B, Dl, W, S = 24, 1100, 4, 3
    weight, bias = torch.randn(Dl, W, dtype=torch.bfloat16), torch.randn(Dl, dtype=torch.bfloat16)
    x = torch.randn(B, Dl, dtype=torch.bfloat16)
    state = torch.randn(B, Dl, S, dtype=torch.bfloat16)
    res = run_update(kernel, x, state, weight, bias, "silu")
    check(*res, torch.bfloat16, torch.bfloat16, f"seed={seeded}")


def _prefill_state(kernel, x, S):
    """The last S inputs of x (B, D, L), zero-padded on the left, computed
    with causal_conv1d_varlen_states on the packed (B*L, D) tokens."""
    B, Dx, L = x.shape
    packed = x.transpose(1, 2).reshape(B * L, Dx)
    cu = torch.arange(0, B * L + 1, L, dtype=torch.int32)
    return kernel.causal_conv1d_varlen_states(packed, cu, S)


@pytest.mark.parametrize("S_extra", [0, 3])
@pytest.mark.parametrize("circular", [False, True])
@pytest.mark.parametrize("W", [2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_loop_matches_forward(kernel, seeded, dtype, W, circular, S_extra):
    """Prefill L tokens with causal_conv1d_fn, then decode 20 tokens one at a
    time: the outputs must equal causal_conv1d_fn over all L + 20 tokens, and
    the final state must be the last S inputs, bit for bit."""
    B, L, steps = 3, 13, 20
    S = W - 1 + S_extra
    weight, bias = torch.randn(D, W, dtype=dtype), torch.randn(D, dtype=dtype)
    x = torch.randn(B, D, L + steps, dtype=dtype)
    full = kernel.causal_conv1d_fn(x, weight, bias, activation="silu")
    out_pre, final = kernel.causal_conv1d_fn(
        x[..., :L], weight, bias, return_final_states=True, activation="silu"
    )
    state = final.clone() if S_extra == 0 else _prefill_state(kernel, x[..., :L], S)
    if S_extra == 0:
        assert torch.equal(state, _prefill_state(kernel, x[..., :L], S))
    if circular:
        # the same history as a circular buffer whose oldest column is at
        # start % S, with starts that differ per row
        start = torch.tensor([0, 1, 4 * S + 2], dtype=torch.int32)
        lin = state
        state = torch.empty_like(lin)
        for b in range(B):
            cols = (int(start[b]) + torch.arange(S)) % S
            state[b][:, cols] = lin[b]
        seqlens = start.clone()
    outs = []
    for t in range(L, L + steps):
        # alternate a strided token view and a contiguous copy: the kernels
        # for either layout must keep the state in the same form
        xt = x[..., t] if t % 2 else x[..., t].contiguous()
        if circular:
            outs.append(kernel.causal_conv1d_update(
                xt, state, weight, bias, activation="silu", cache_seqlens=seqlens))
            seqlens += 1
        else:
            outs.append(kernel.causal_conv1d_update(xt, state, weight, bias, activation="silu"))
    decoded = torch.stack(outs, dim=-1)
    msg = f"seed={seeded} {dtype} W={W} S={S} circular={circular}"
    assert_close(out_pre, full[..., :L], (dtype,), msg)
    assert_close(decoded, full[..., L:], (dtype,), msg)
    want_state = x[..., -S:]
    if circular:
        for b in range(B):
            cols = (int(seqlens[b]) + torch.arange(S)) % S  # oldest first
            assert torch.equal(state[b][:, cols], want_state[b]), msg
    else:
        assert torch.equal(state, want_state), msg


@pytest.mark.parametrize("circular", [False, True])
def test_reference_decode_loop_matches_reference_forward(kernel, seeded, circular):
    """The reference itself: token-by-token causal_conv1d_update_ref equals
    causal_conv1d_ref over the whole sequence (both float64)."""
    B, Dr, W, S, L = 2, 5, 4, 5, 9
    weight, bias = torch.randn(Dr, W, dtype=torch.float64), torch.randn(Dr, dtype=torch.float64)
    x = torch.randn(B, Dr, L, dtype=torch.float64)
    full = kernel.causal_conv1d_ref(x, weight, bias, activation="silu")
    state = torch.zeros(B, Dr, S, dtype=torch.float64)
    seqlens = torch.tensor([3, 11], dtype=torch.int32) if circular else None
    outs = []
    for t in range(L):
        outs.append(kernel.causal_conv1d_update_ref(
            x[..., t], state, weight, bias, activation="silu", cache_seqlens=seqlens))
        if circular:
            seqlens += 1
    torch.testing.assert_close(torch.stack(outs, -1), full, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("L", [None, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_update_silu_extremes(kernel, dtype, L):
    """silu over its whole range, from -200 to 200, +-inf and NaN, against
    F.silu in float64 (the kernels use their own exp and reciprocal)."""
    import math
    import torch.nn.functional as F
    vals = torch.cat([torch.linspace(-200, 200, 801), torch.tensor([math.inf, -math.inf, math.nan])])
    vals = vals[torch.randperm(len(vals))].to(dtype)
    B, n = 3, len(vals)
    Dv = n // B
    x = vals[: B * Dv].reshape(B, Dv)
    if L is not None:
        x = torch.stack([torch.zeros_like(x), x], dim=-1)  # the second token is the value
    weight = torch.zeros(Dv, 4, dtype=dtype)
    weight[:, -1] = 1  # out = silu(newest token)
    state = torch.zeros(B, Dv, 3, dtype=dtype)
    out = kernel.causal_conv1d_update(x, state, weight, None, activation="silu")
    newest = x if L is None else x[..., -1]
    got = out if L is None else out[..., -1]
    want = F.silu(newest.double())
    # 16-bit outputs: common.cuh's silu_out is within 2.5e-4 * |v| (a
    # sixteenth of a bf16 ulp of v), so far out on the negative side, where
    # silu is below that, a GPU may return 0
    slack = 2.5e-4 * newest.double().abs().nan_to_num(posinf=0) if dtype == torch.bfloat16 else 0
    err = (got.double() - want).abs()
    bound = (3e-4 if dtype != torch.bfloat16 else 1e-2) * want.abs() + 1e-6 + slack
    finite = want.isfinite()
    assert (err[finite] <= bound[finite]).all(), (err - bound).max()
    torch.testing.assert_close(got.double()[~finite], want[~finite], equal_nan=True)


@pytest.mark.parametrize("x_layout", ["contiguous", "channel_last", "strided"])
@pytest.mark.parametrize("L", [None, 3])
def test_update_output_is_not_a_view(kernel, seeded, x_layout, L):
    """out is a fresh tensor with x's stride order, not a view of one."""
    x = make_x(4, 6, L, torch.float32, x_layout)
    state = make_state(4, 6, 3, torch.float32, "contiguous")
    out = kernel.causal_conv1d_update(x, state, torch.randn(6, 4), activation="silu")
    assert out._base is None
    order = sorted(range(x.dim()), key=lambda d: -x.stride(d))  # outermost first
    assert out.shape == x.shape and out.permute(order).is_contiguous()


def test_in_place_writes_bump_versions(kernel, seeded):
    """The ops that write a tensor in place (update's conv_state, packed
    prefill's conv_states, causal_conv1d_fn's final_states_out) bump its
    version counter, as torch's in-place ops do: autograd then refuses a
    backward that saved the tensor before it was overwritten, instead of
    computing a gradient from the new values."""
    w = torch.randn(5, 4)
    state = torch.randn(3, 5, 3)
    before = state._version
    kernel.causal_conv1d_update(torch.randn(3, 5), state, w)
    assert state._version > before, "update: conv_state"

    pool = torch.randn(2, 5, 3)
    before = pool._version
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    kernel.causal_conv1d_packed_fwd(torch.randn(5, 7), w, None, cu, pool, channels_first=True)
    assert pool._version > before, "packed prefill: conv_states"

    final = torch.empty(2, 5, 3)
    before = final._version
    kernel.causal_conv1d_fn(torch.randn(2, 5, 9), w, return_final_states=True, final_states_out=final)
    assert final._version > before, "causal_conv1d_fn: final_states_out"

    leaf = torch.randn(3, 5, 3, requires_grad=True)
    saved = leaf * 2
    loss = (saved * saved).sum()  # saves `saved` for its backward
    kernel.causal_conv1d_update(torch.randn(3, 5), saved.detach(), w)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()

    with torch.inference_mode():  # inference tensors have no counter: the op runs as before
        inference_state = torch.randn(3, 5, 3)
        expected = inference_state.clone()
        out = kernel.causal_conv1d_update(torch.randn(3, 5), inference_state, w)
        assert out.shape == (3, 5) and not torch.equal(inference_state, expected)


def test_every_writing_op_has_the_version_kernel(kernel):
    """torch_binding.cpp lists the ops that get the version-bump kernel by
    hand: every op whose schema writes an argument (`(a!)`) must be on it,
    and no other."""
    schemas = [s for s in torch._C._jit_get_all_schemas() if s.name.startswith(kernel.ops.name + "::")]
    assert len(schemas) >= 6, [s.name for s in schemas]
    for s in schemas:
        writes = [a.name for a in s.arguments if a.alias_info is not None and a.alias_info.is_write]
        bumps = torch._C._dispatch_has_kernel_for_dispatch_key(s.name, "ADInplaceOrView")
        assert bumps == bool(writes), (s.name, writes, bumps)


def test_state_ops_have_no_gradient(kernel, seeded):
    """update, varlen_states and packed prefill are not differentiable (as
    upstream's): with inputs that require grad their outputs do not, so a
    backward through them fails loudly instead of giving no gradient with a
    warning; the values are those of a call without gradients."""
    x = torch.randn(3, 5, requires_grad=True)
    w = torch.randn(5, 4, requires_grad=True)
    state = torch.randn(3, 5, 3)
    state_no_grad = state.clone()
    out = kernel.causal_conv1d_update(x, state, w, activation="silu")
    assert not out.requires_grad and out.grad_fn is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        out.sum().backward()
    with torch.no_grad():
        expected = kernel.causal_conv1d_update(x, state_no_grad, w, activation="silu")
    assert torch.equal(out, expected) and torch.equal(state, state_no_grad)

    packed = torch.randn(7, 5, requires_grad=True)
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    assert not kernel.causal_conv1d_varlen_states(packed, cu, 3).requires_grad
    pool = torch.zeros(2, 5, 3)
    y = kernel.causal_conv1d_packed_fwd(packed.t(), w, None, cu, pool, activation="silu",
                                    channels_first=True)
    assert not y.requires_grad


# ---------------------------------------------------------------------------
# one token with state_len W - 1 (the CUDA decode kernel's fast case) in
# every layout; on the CUDA kernels also: a large pool under repeated steps,
# agreement with the CPU backend


@pytest.mark.parametrize("act", ["silu", None])
@pytest.mark.parametrize("x_layout", ["contiguous", "proj_slice", "strided"])
@pytest.mark.parametrize("state_layout", ["contiguous", "channel_last", "slice"])
@pytest.mark.parametrize("W", [2, 3, 4])
def test_update_decode_layouts(kernel, seeded, W, state_layout, x_layout, act):
    """One token with state_len W - 1, the decode kernel's case where the
    state's columns are contiguous: batch rows not a multiple of the rows a
    thread takes, partial warps of channels, strided tokens and state rows,
    padding rows; without the activation also without bias."""
    update_case(kernel, seeded, B=9, D=70, W=W, pool=True, act=act, bias=act is not None,
                x_layout=x_layout, state_layout=state_layout, xdt=torch.float16,
                wdt=torch.bfloat16)


def weight_view(D: int, W: int, dtype: torch.dtype, layout: str) -> torch.Tensor:
    """A (D, W) weight: contiguous, or a view with other strides."""
    if layout == "contiguous":
        return torch.randn(D, W, dtype=dtype)
    if layout == "transposed":  # stride 1 along D
        return torch.randn(W, D, dtype=dtype).t()
    if layout == "slice":  # taps of a wider row, every other channel
        return torch.randn(2 * D, W + 3, dtype=dtype)[::2, 1 : 1 + W]
    raise ValueError(layout)


@pytest.mark.parametrize("layout", ["contiguous", "transposed", "slice"])
@pytest.mark.parametrize("W", [2, 3, 4, 5])
@pytest.mark.parametrize("dtypes", [(torch.float32, torch.float32),
                                    (torch.bfloat16, torch.bfloat16),
                                    (torch.bfloat16, torch.float32)], ids=pair_id)
def test_weight_and_bias_views(kernel, seeded, dtypes, W, layout):
    """weight and bias of any strides (a bias of stride 2 with every weight
    view but the contiguous one): one-token decode at B = 1 and B = 3, and a
    speculative step of k = 3 drafts."""
    xdt, wdt = dtypes
    Dw = 3 * 64 + 5  # several whole channel blocks on every tier and a partial one
    weight = weight_view(Dw, W, wdt, layout)
    bias = torch.randn(Dw, dtype=wdt) if layout == "contiguous" else torch.randn(2 * Dw, dtype=wdt)[::2]
    for B in (1, 3):
        state = torch.randn(B, Dw, W - 1, dtype=xdt)
        x = torch.randn(B, Dw, dtype=xdt)
        out, out_ref, state, state_ref = run_update(kernel, x, state, weight, bias, "silu")
        check(out, out_ref, state, state_ref, xdt, wdt, f"seed={seeded} B={B} decode")
    k = 3
    pool = torch.randn(2, Dw, W - 1 + k, dtype=xdt)
    pool_ref = pool.double()
    x = torch.randn(2, Dw, 1 + k, dtype=xdt)
    acc = torch.tensor([1, 3], dtype=torch.int32)
    out_ref = kernel.causal_conv1d_update_ref(x.double(), pool_ref, weight.double(), bias.double(),
                                              "silu", num_accepted_tokens=acc)
    out = kernel.causal_conv1d_update(x, pool, weight, bias, "silu", num_accepted_tokens=acc)
    check(out, out_ref, pool, pool_ref, xdt, wdt, f"seed={seeded} spec step")


@pytest.mark.backends("cuda")  # races between a GPU's blocks (the emulator: a smoke run)
@pytest.mark.parametrize("circular", [False, True])
def test_update_race_pool(kernel, backend, seeded, circular):
    """Many rows of a large pool, distinct random indices with padding rows,
    repeated: every step must equal a vectorised reference exactly (states)
    and within tolerance (outputs); nothing outside the live rows moves."""
    B, D, S, W, N = (96, 32, 3, 4, 300) if backend.emulated else (2048, 256, 3, 4, 6000)
    dtype = torch.bfloat16
    pool = torch.randn(N, D, S, dtype=dtype, device=dev())
    w = torch.randn(D, W, device=dev())
    b = torch.randn(D, device=dev())
    for step in range(3 if backend.emulated else 25):
        idx = pool_indices(B, N, pad_frac=0.3)
        cs = torch.randint(0, 1000, (B,), dtype=torch.int32, device=dev()) if circular else None
        x = torch.randn(B, D, dtype=dtype, device=dev())
        live = idx >= 0
        rows = idx[live].long()
        expect_pool = pool.clone()
        st = pool[rows]  # (n, D, S)
        if circular:
            order = (torch.arange(S, device=dev())[None, :] + (cs[live].long() % S)[:, None]) % S
            hist = torch.gather(st, 2, order[:, None, :].expand(-1, D, -1))
        else:
            hist = st
        stream = torch.cat([hist, x[live][..., None]], dim=-1)  # (n, D, S + 1)
        y = torch.nn.functional.silu(
            (stream[..., S + 1 - W :].double() * w.double()).sum(-1) + b.double())
        want = torch.zeros(B, D, dtype=torch.float64, device=dev())
        want[live] = y
        if circular:
            new = st.clone()
            new.scatter_(2, (cs[live].long() % S)[:, None, None].expand(-1, D, 1), x[live][..., None])
            expect_pool[rows] = new
        else:
            expect_pool[rows] = stream[..., 1:]
        got = kernel.causal_conv1d_update(x, pool, w, b, "silu", cs, idx)
        assert torch.equal(pool, expect_pool), f"step {step}: pool differs (seed={seeded})"
        close(got, want, (dtype,), f"step {step} seed={seeded}")
        assert not got[~live].any(), f"step {step}: padding rows must output 0"


@pytest.mark.backends("cuda")
@pytest.mark.parametrize("circular", [False, True])
@pytest.mark.parametrize("W", [2, 4, 6])
def test_update_vs_cpu(kernel, cpu_kernel, seeded, W, circular):
    B, D, S, N = 6, 40, W + 1, 10
    pool = torch.randn(N, D, S, device=dev(), dtype=torch.float16)
    x = torch.randn(B, D, 3, device=dev(), dtype=torch.float16)
    w, b = torch.randn(D, W, device=dev()), torch.randn(D, device=dev())
    idx = pool_indices(B, N)
    cs = torch.randint(0, 20, (B,), dtype=torch.int32, device=dev()) if circular else None
    pool_c = pool.to("cpu", copy=True)  # a copy even when dev() is the CPU (emulation)
    c = skip_unimplemented(lambda: cpu_kernel.ops.update(x.cpu(), pool_c, w.cpu(), b.cpu(), to_cpu(cs),
                                                      idx.cpu(), True))
    g = kernel.ops.update(x, pool, w, b, cs, idx, True)
    close(g, c, (torch.float16,), f"seed={seeded}")
    exact(pool, pool_c, f"pool seed={seeded}")


@pytest.mark.backends("cuda")
@pytest.mark.parametrize("f64", list(FLOAT64_CASES))
def test_float64_refused(kernel, cc, f64):
    """The CUDA kernels have no float64: refused with checks.cpp's error, the
    emulator's CPU tensors included."""
    xdt, wdt = FLOAT64_CASES[f64]
    x, w = torch.randn(2, 8, dtype=xdt, device=dev()), torch.randn(8, 4, dtype=wdt, device=dev())
    state = torch.randn(2, 8, 3, dtype=xdt, device=dev())
    assert_float64_refused(kernel, cc, "update", x, state, w, None, None, None, True)
    assert_float64_refused(kernel, cc, "update", x[..., None], state, w, None, None, None, True)
