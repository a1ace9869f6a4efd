"""Property-based tests: hypothesis draws shapes, strides and views, dtypes,
widths 1..32, options, seq_idx patterns and pool layouts for every public
function, and each result is compared with the float64 reference, on
every backend under test (the CUDA kernels on the emulator in CI).

Random strides alone almost never give the layouts and sizes the fast
paths take (whole vectors of channels, contiguous per-channel runs), so
part of each test's draws is aimed at them: a mutation of a fast path
that no draw reaches goes unnoticed.

Tensor values come from a torch.Generator seeded by a drawn integer, so an
example is fully described by what hypothesis drew. The runs are
derandomized (the same examples on every run, so CI failures reproduce) and
print_blob=True prints the @reproduce_failure blob of a failing example.

Budget: EXAMPLES below (>= 2,000 in total); CAUSAL_CONV1D_HYPOTHESIS_SCALE
scales it (tools/ci/sanitize.sh runs a fraction under the sanitizers).
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("hypothesis", reason="property tests need hypothesis (requirements-dev.txt)")

from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from helpers import tolerance  # noqa: E402

I32 = torch.int32
SCALE = float(os.environ.get("CAUSAL_CONV1D_HYPOTHESIS_SCALE", "1"))
EXAMPLES = {"fwd": 800, "bwd": 250, "update": 500, "serving": 1000, "varlen": 200,
            "packed": 450}


def examples(name: str, fixtures: bool = False) -> settings:
    """fixtures: the test takes the `backend` fixture, set up once for all
    its examples (nothing in it changes between them)."""
    checks = [HealthCheck.too_slow, HealthCheck.data_too_large]
    if fixtures:
        checks.append(HealthCheck.function_scoped_fixture)
    return settings(
        max_examples=max(1, int(EXAMPLES[name] * SCALE)),
        derandomize=True,
        database=None,
        print_blob=True,
        deadline=None,
        suppress_health_check=checks,
    )


def test_budget():
    """The unscaled budget the issue asks for."""
    assert sum(EXAMPLES.values()) >= 2000


# ---------------------------------------------------------------------------
# strategies

FLOATS = [torch.float32, torch.float16, torch.bfloat16]
# x and weight: any of the 9 pairs of fp32/fp16/bf16, or fp64 with fp64
# (which no fast path takes: a tenth of the draws, not half as one_of's)
dtype_pairs = st.sampled_from(
    [(x, w) for x in FLOATS for w in FLOATS] + [(torch.float64, torch.float64)])
# mostly the widths models use, but every width up to 32
widths = st.one_of(st.integers(1, 5), st.integers(1, 32))
activations = st.sampled_from([None, "silu", "swish"])


@st.composite
def layouts(draw, rank: int, expandable: bool = False):
    """How a tensor of the given rank lies in memory: the order of its dims in
    storage (contiguous, channel-last, any permutation), a step per dim
    (non-unit strides), an offset per dim (a slice of a wider tensor) and,
    for read-only inputs, a broadcast leading dim (stride 0)."""
    perm = draw(st.permutations(range(rank)))
    steps = draw(st.lists(st.sampled_from([1, 1, 2, 3]), min_size=rank, max_size=rank))
    pads = draw(st.lists(st.integers(0, 2), min_size=rank, max_size=rank))
    expand = expandable and draw(st.integers(0, 9)) == 0
    return perm, steps, pads, expand


def make(gen: torch.Generator, shape, dtype, layout) -> torch.Tensor:
    """A random tensor of `shape` laid out as `layout` (see layouts())."""
    perm, steps, pads, expand = layout
    shape = list(shape)
    if expand and shape and shape[0] > 1:
        one = make(gen, [1] + shape[1:], dtype, (perm, steps, pads, False))
        return one.expand(shape)
    full = [s * st_ + p for s, st_, p in zip(shape, steps, pads)]
    storage = torch.randn([full[i] for i in perm], generator=gen).to(dtype)
    inverse = [perm.index(i) for i in range(len(shape))]
    t = storage.permute(inverse)
    return t[tuple(slice(p, p + s * st_, st_) for s, st_, p in zip(shape, steps, pads))]


def fixed_layout(perm, steps=None, pads=None):
    """A layout (as layouts() draws them) given outright."""
    rank = len(perm)
    return list(perm), steps or [1] * rank, pads or [0] * rank, False


def contiguous(rank: int):
    return fixed_layout(range(rank))


def channels_last(rank: int, channel_dim: int):
    """The channels along the last storage dim: vLLM's pool, a (tokens,
    dim) projection viewed as (..., dim, tokens)."""
    perm = list(range(rank))
    return fixed_layout(perm[:channel_dim] + perm[channel_dim + 1 :] + [channel_dim])


def engine_layouts(rank: int, channel_dim: int):
    """The layouts engines hand over (layouts() alone rarely draws one), a
    slice of every other row of a wider tensor, or any layout."""
    sliced = fixed_layout(range(rank), [2] + [1] * (rank - 1), [1] + [0] * (rank - 2) + [2])
    return st.one_of(st.just(contiguous(rank)), st.just(channels_last(rank, channel_dim)),
                     st.just(sliced), layouts(rank))


def seq_idx_pattern(gen: torch.Generator, B: int, L: int, kind: str) -> torch.Tensor:
    """(B, L) int32 segment ids.

    single      one sequence per row (all 0)
    segments    sorted runs of increasing ids (packed sequences)
    padded      segments with a run of padding (-1) somewhere
    left_pad    padding first, then segments (left-padded batches)
    all_pad     every token is padding
    """

    def randint(lo, hi):
        return int(torch.randint(lo, hi, (), generator=gen))

    rows = []
    for _ in range(B):
        ids = torch.zeros(L, dtype=I32)
        if kind == "all_pad":
            ids.fill_(-1)
        elif kind != "single" and L > 0:
            cuts = sorted(randint(0, L + 1) for _ in range(randint(0, 4)))
            first = randint(0, 3)
            for j, c in enumerate(cuts):
                ids[c:] = first + j + 1
            if kind == "padded":
                a = randint(0, L)
                ids[a : min(L, a + randint(1, 6))] = -1
            elif kind == "left_pad":
                ids[: randint(1, L + 1)] = -1
        rows.append(ids)
    return torch.stack(rows) if rows else torch.zeros(0, L, dtype=I32)


seq_kinds = st.sampled_from([None, "single", "segments", "padded", "left_pad", "all_pad"])
seeds = st.integers(0, 2**32 - 1)


def dbl(t):
    return None if t is None else t.detach().double()


def check_close(got, want, *dtypes, what=""):
    rtol, atol = tolerance(*dtypes)
    torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=atol,
                               msg=lambda m: f"{what}: {m}")


def check_exact(got, want, what=""):
    torch.testing.assert_close(got.double(), want.double(), rtol=0, atol=0, equal_nan=True,
                               msg=lambda m: f"{what} (must be bit-exact): {m}")


# ---------------------------------------------------------------------------
# causal_conv1d_fn


@st.composite
def fwd_problems(draw, small: bool = False):
    """D past a vector of channels in part of the draws (the channel path's
    full vectors), x in the layouts models pass in part."""
    B = draw(st.integers(1, 3))
    D = draw(st.one_of(st.integers(1, 10), st.sampled_from([16, 17, 32, 33, 64])))
    L = draw(st.integers(0, 12 if small else 40))
    W = draw(widths)
    xdt, wdt = draw(dtype_pairs)
    x_layouts = layouts(3, expandable=not small)
    return dict(
        B=B, D=D, L=L, W=W, xdt=xdt, wdt=wdt,
        x_layout=draw(st.one_of(x_layouts, st.sampled_from([contiguous(3), channels_last(3, 1)]))),
        w_layout=draw(layouts(2)),
        bias=draw(st.booleans()),
        seq=draw(seq_kinds),
        seq_layout=draw(layouts(2)),
        init=draw(st.booleans()),
        init_layout=draw(layouts(3, expandable=not small)),
        final=draw(st.sampled_from(["none", "return", "out"])),
        final_layout=draw(layouts(3)),
        activation=draw(activations),
        seed=draw(seeds),
    )


def build_fwd(p, device="cpu"):
    g = torch.Generator(device).manual_seed(p["seed"])
    B, D, L, W = p["B"], p["D"], p["L"], p["W"]
    x = make(g, (B, D, L), p["xdt"], p["x_layout"])
    w = make(g, (D, W), p["wdt"], p["w_layout"])
    b = torch.randn(D, generator=g).to(p["wdt"]) if p["bias"] else None
    s = None
    if p["seq"] is not None:
        s = make(g, (B, L), I32, p["seq_layout"])  # a strided int32 view
        s.copy_(seq_idx_pattern(g, B, L, p["seq"]))
    init = make(g, (B, D, W - 1), p["xdt"], p["init_layout"]) if p["init"] else None
    return x, w, b, s, init


@examples("fwd", fixtures=True)
@given(p=fwd_problems())
def test_fwd_matches_reference(backend, p):
    assume(backend.float64 or p["xdt"] != torch.float64)  # the CUDA kernels refuse it
    cc = backend.module
    x, w, b, s, init = build_fwd(p, backend.device)
    B, D, W = p["B"], p["D"], p["W"]
    kw = dict(seq_idx=s, initial_states=init, activation=p["activation"])
    fso = None
    if p["final"] == "out":
        g = torch.Generator(backend.device).manual_seed(p["seed"] + 1)
        fso = make(g, (B, D, W - 1), p["xdt"], p["final_layout"])
    got = cc.causal_conv1d_fn(x, w, b, return_final_states=p["final"] != "none",
                              final_states_out=fso, **kw)
    want = cc.causal_conv1d_ref(dbl(x), dbl(w), dbl(b), return_final_states=p["final"] != "none",
                                **{**kw, "initial_states": dbl(init)})
    if p["final"] == "none":
        got, want = (got,), (want,)
    out, out_ref = got[0], want[0]
    assert out.shape == x.shape and out.dtype == x.dtype
    check_close(out, out_ref, p["xdt"], p["wdt"], what="out")
    if p["final"] != "none":
        fin = got[1]
        assert fin.shape == (B, D, W - 1) and fin.dtype == x.dtype
        if fso is not None:
            assert fin.data_ptr() == fso.data_ptr()
        check_exact(fin, want[1], what="final_states")


# ---------------------------------------------------------------------------
# backward (autograd through causal_conv1d_fn)


@examples("bwd", fixtures=True)
@given(p=fwd_problems(small=True))
def test_bwd_matches_reference(backend, p):
    assume(backend.float64 or p["xdt"] != torch.float64)
    cc = backend.module
    x, w, b, s, init = build_fwd(p, backend.device)
    final = p["final"] != "none"
    leaves = [t.detach().requires_grad_() if t is not None else None for t in (x, w, b, init)]
    refs = [t.detach().double().requires_grad_() if t is not None else None for t in (x, w, b, init)]
    g = torch.Generator(backend.device).manual_seed(p["seed"] + 2)
    dout = torch.randn(x.shape, generator=g).to(x.dtype)
    dfin = torch.randn(p["B"], p["D"], p["W"] - 1, generator=g).to(x.dtype)

    def loss(fn, xs, cast):
        xx, ww, bb, ii = xs
        r = fn(xx, ww, bb, seq_idx=s, initial_states=ii, return_final_states=final,
               activation=p["activation"])
        out, fin = (r if final else (r, None))
        total = (out * cast(dout)).sum()
        if final:
            total = total + (fin * cast(dfin)).sum()
        return total

    loss(cc.causal_conv1d_fn, leaves, lambda t: t).backward()
    loss(cc.causal_conv1d_ref, refs, lambda t: t.double()).backward()
    for name, got, ref in zip(("dx", "dweight", "dbias", "dinitial_states"), leaves, refs):
        if got is None:
            continue
        assert got.grad is not None, name
        assert got.grad.shape == got.shape and got.grad.dtype == got.dtype, name
        check_close(got.grad, ref.grad, p["xdt"], p["wdt"], what=name)


# ---------------------------------------------------------------------------
# causal_conv1d_update


@st.composite
def update_problems(draw):
    """Half the draws in the layouts engines use with whole blocks of
    channels, which the CPU's register and channel paths need (layouts()
    alone rarely draws them)."""
    B = draw(st.integers(1, 4))
    W = draw(widths)
    xdt, wdt = draw(dtype_pairs)
    if draw(st.booleans()):
        D = draw(st.sampled_from([32, 33, 64, 77]))
        x_layout = draw(st.sampled_from([contiguous(3), channels_last(3, 1)]))
        state_layout = draw(st.sampled_from([contiguous(3), channels_last(3, 1)]))
    else:
        D = draw(st.integers(1, 10))
        x_layout = draw(layouts(3))
        state_layout = draw(layouts(3))
    return dict(
        B=B, D=D, W=W, xdt=xdt, wdt=wdt,
        L=draw(st.sampled_from([None, 1, 2, 3, 5])),  # None: a (B, D) x
        S=W - 1 + draw(st.integers(0, 5)),
        x_layout=x_layout,
        w_layout=draw(layouts(2)),
        state_layout=state_layout,
        bias=draw(st.booleans()),
        cache_seqlens=draw(st.booleans()),
        pool=draw(st.sampled_from(["none", "indices", "indices_padded"])),
        extra_rows=draw(st.integers(0, 4)),
        activation=draw(activations),
        seed=draw(seeds),
    )


@examples("update", fixtures=True)
@given(p=update_problems())
def test_update_matches_reference(backend, p):
    assume(backend.float64 or p["xdt"] != torch.float64)
    cc = backend.module
    g = torch.Generator(backend.device).manual_seed(p["seed"])
    B, D, W, L, S = p["B"], p["D"], p["W"], p["L"], p["S"]
    if p["cache_seqlens"] and S == 0:
        S = 1  # a circular buffer needs a slot (S == 0 is refused, see test_bad_inputs)
    x = make(g, (B, D, L or 1), p["xdt"], p["x_layout"])
    if L is None:
        x = x[:, :, 0]
    w = make(g, (D, W), p["wdt"], p["w_layout"])
    b = torch.randn(D, generator=g).to(p["wdt"]) if p["bias"] else None
    idx = None
    N = B
    if p["pool"] != "none":
        N = B + p["extra_rows"]
        idx = torch.randperm(N, generator=g)[:B].to(I32)
        if p["pool"] == "indices_padded":
            idx[torch.rand(B, generator=g) < 0.4] = -1
    state = make(g, (N, D, S), p["xdt"], p["state_layout"])
    cache = torch.randint(0, 3 * S + 2, (B,), generator=g, dtype=I32) if p["cache_seqlens"] else None
    state_ref = state.to(torch.float64, copy=True)  # taken before the call
    out = cc.causal_conv1d_update(x, state, w, b, activation=p["activation"],
                                  cache_seqlens=cache, conv_state_indices=idx)
    out_ref = cc.causal_conv1d_update_ref(dbl(x), state_ref, dbl(w), dbl(b),
                                          activation=p["activation"], cache_seqlens=cache,
                                          conv_state_indices=idx)
    assert out.shape == x.shape and out.dtype == x.dtype
    check_close(out, out_ref, p["xdt"], p["wdt"], what="out")
    check_exact(state, state_ref, what="conv_state")


# ---------------------------------------------------------------------------
# causal_conv1d_update: the serving engines' decode step (keyword-only
# arguments), every option drawn together


int_dtypes = st.sampled_from([torch.int32, torch.int64])


@st.composite
def serving_problems(draw):
    """Every option and combination, most draws aimed at one of the CPU's
    fast paths (which layouts() alone would rarely reach): "register", the
    state's columns per-channel runs (the default layout, SGLang's pool)
    with whole blocks of channels; "constant", its W = 4 speculative chains
    (S = W - 2 + L) with x as runs or rows; "channels", everything with
    stride 1 along dim (vLLM's layout); "any", any layouts and sizes."""
    target = draw(st.sampled_from(["register", "constant", "channels", "any"]))
    constant = target == "constant"
    W = 4 if constant else draw(st.one_of(st.just(4), widths))
    xdt, wdt = draw(dtype_pairs)
    B = draw(st.integers(1, 5))
    tokens = draw(st.sampled_from(["one", "runs", "runs"] if constant else
                                  ["one", "runs", "packed", "channels_first"]))
    if tokens in ("packed", "channels_first"):
        lens = draw(st.lists(st.integers(0, 8), min_size=B, max_size=B))
    elif tokens == "one":
        lens = [1] * B
    else:
        lengths = list(range(1, 10)) if constant else list(range(1, 10)) + [15, 16, 17, 18]
        lens = [draw(st.sampled_from(lengths))] * B
    spec = constant or draw(st.booleans())
    L = max(lens)
    extra = 0 if constant else draw(st.sampled_from([0, 0, 1, 3]))
    S = (max(W - 1, W - 2 + L) if spec else W - 1) + extra
    x_rank = 3 if tokens == "runs" else 2
    x_channels = 0 if tokens == "channels_first" else 1
    if target == "any":
        D = draw(st.one_of(st.integers(1, 10), st.sampled_from([16, 31, 32, 33, 64, 77])))
        x_layout = draw(engine_layouts(x_rank, x_channels))
        pool_layout = draw(engine_layouts(3, 1))
        windows_layout = draw(engine_layouts(4, 2))
    else:
        D = draw(st.sampled_from([32, 33, 64, 77, 128]))
        rows = st.just(channels_last(x_rank, x_channels))
        x_layout = draw(rows if target == "channels" else st.one_of(rows, st.just(contiguous(x_rank))))
        pool_layout = channels_last(3, 1) if target == "channels" else contiguous(3)
        windows_layout = contiguous(4)
    return dict(
        target=target, W=W, xdt=xdt, wdt=wdt, B=B, lens=lens, S=S, spec=spec, D=D,
        tokens=tokens, x_layout=x_layout, pool_layout=pool_layout,
        lead=draw(st.integers(0, 2)), trail=draw(st.integers(0, 2)),
        qsl_dtype=draw(int_dtypes),
        acc_dtype=draw(int_dtypes),
        tree=None if constant else draw(st.sampled_from([None, None, torch.int32, torch.int64])),
        tree_cols=draw(st.integers(0, 2)),
        tree_layout=draw(layouts(2)),
        windows="none" if constant else draw(
            st.sampled_from(["none", "none", "per_sequence", "indexed"])),
        windows_layout=windows_layout,
        windows_extra=draw(st.tuples(st.integers(0, 2), st.integers(0, 2))),
        rows=draw(st.sampled_from(["batch", "indices", "table"])),
        blocks=draw(st.integers(1, 3)),
        extra_rows=draw(st.integers(0, 3)),
        padding=draw(st.sampled_from([None, -1, "in_range", "past_end"])),
        w_layout=draw(layouts(2)),
        bias=draw(st.booleans()),
        activation=draw(activations),
        seed=draw(seeds),
    )


def build_serving(p, device="cpu"):
    """The call's tensors and keyword arguments from a serving_problems draw,
    made on `device` (where the backend's kernels run)."""
    g = torch.Generator(device).manual_seed(p["seed"])

    def randint(lo, hi, shape=()):
        return torch.randint(lo, hi, shape, generator=g)

    W, B, D, S, lens = p["W"], p["B"], p["D"], p["S"], p["lens"]
    L = max(lens)
    kw = {}
    if p["tokens"] in ("packed", "channels_first"):
        T = p["lead"] + sum(lens) + p["trail"]
        starts = torch.tensor([0] + lens).cumsum(0) + p["lead"]
        kw["query_start_loc"] = starts.to(p["qsl_dtype"])
        kw["channels_first"] = p["tokens"] == "channels_first"
        shape = (D, T) if kw["channels_first"] else (T, D)
    else:
        shape = (B, D) if p["tokens"] == "one" else (B, D, L)
    x = make(g, shape, p["xdt"], p["x_layout"])
    w = make(g, (D, W), p["wdt"], p["w_layout"])
    bias = torch.randn(D, generator=g).to(p["wdt"]) if p["bias"] else None
    windows = p["windows"] != "none"

    # pool rows: each sequence reads and writes its own (with windows the
    # pool is only read, and rows may be shared); some sequences padding
    N = B if p["rows"] == "batch" else B * p["blocks"] + p["extra_rows"]
    pad = {None: -1, -1: -1, "in_range": N, "past_end": N + 5}[p["padding"]]
    if p["rows"] == "batch":
        pad = N - 1 if p["padding"] == "in_range" else pad  # the last sequence's own row
    elif p["padding"] == "in_range":
        N += 1  # a real row that only padding names
    if p["rows"] != "batch":
        cols = p["blocks"] if p["rows"] == "table" else 1
        if windows:
            table = randint(0, N - (pad == N - 1), (B, cols))
        else:
            table = torch.randperm(N - (pad == N - 1), generator=g)[: B * cols]
            table = table.view(B, cols)
        table = table.to(I32)
        read = randint(0, cols, (B,)).to(I32)
        write = randint(0, cols, (B,)).to(I32)
        if p["padding"] is not None:
            padded = torch.rand(B, generator=g) < 0.3
            table[padded, read[padded].long()] = pad
            table[padded, write[padded].long()] = pad
        if p["rows"] == "table":
            kw["conv_state_indices"] = table
            kw["initial_state_idx"] = read
            kw["block_idx_last_scheduled_token"] = write
        else:
            kw["conv_state_indices"] = table[:, 0]
    if p["padding"] is not None:
        kw["pad_slot_id"] = pad
    pool = make(g, (N, D, S), p["xdt"], p["pool_layout"])

    if p["spec"]:
        kw["num_accepted_tokens"] = randint(1, S - W + 3, (B,)).to(p["acc_dtype"])
    if p["tree"] is not None:
        cols = L + p["tree_cols"]
        parents = make(g, (B, cols), p["tree"], p["tree_layout"])
        parents.fill_(-1)
        for j in range(1, cols):
            parents[:, j] = randint(0, j, (B,))
        kw["retrieve_parent_token"] = parents
    win = None
    if windows:
        rows_extra, tokens_extra = p["windows_extra"]
        n2 = B + rows_extra
        win = make(g, (n2, L + tokens_extra, D, W - 1), p["xdt"], p["windows_layout"])
        if p["windows"] == "indexed":
            idx = torch.randperm(n2, generator=g)[:B].to(I32)
            idx[torch.rand(B, generator=g) < 0.3] = -1
            kw["intermediate_state_indices"] = idx
    return x, pool, w, bias, win, kw


@examples("serving", fixtures=True)
@given(p=serving_problems())
def test_update_serving_matches_reference(backend, p):
    """Every backend: the CUDA kernels too (on the emulator in CI), which
    share the CPU's plan of each sequence's reads and writes but not its
    paths."""
    assume(backend.float64 or p["xdt"] != torch.float64)  # the CUDA kernels refuse it
    x, pool, w, b, win, kw = build_serving(p, backend.device)
    pool_ref = pool.to(torch.float64, copy=True)
    win_ref = None if win is None else win.to(torch.float64, copy=True)
    cc = backend.module
    out = cc.causal_conv1d_update(x, pool, w, b, p["activation"], intermediate_conv_window=win,
                                  **kw)
    out_ref = cc.causal_conv1d_update_ref(dbl(x), pool_ref, dbl(w), dbl(b), p["activation"],
                                          intermediate_conv_window=win_ref, **kw)
    assert out.shape == x.shape and out.dtype == x.dtype
    check_close(out, out_ref, p["xdt"], p["wdt"], what="out")
    check_exact(pool, pool_ref, what="conv_state")
    if win is not None:
        check_exact(win, win_ref, what="intermediate_conv_window")


# ---------------------------------------------------------------------------
# causal_conv1d_varlen_states


@st.composite
def cu_seqlens(draw, T: int):
    """(B+1,) int32 offsets into T tokens: non-decreasing, empty sequences
    allowed, possibly not starting at 0 nor ending at T."""
    B = draw(st.integers(0, 6))
    cuts = sorted(draw(st.lists(st.integers(0, T), min_size=B + 1, max_size=B + 1)))
    if draw(st.booleans()):
        cuts[0] = 0
    if draw(st.booleans()):
        cuts[-1] = T
    return torch.tensor(sorted(cuts), dtype=I32)


@st.composite
def varlen_problems(draw):
    T = draw(st.integers(0, 40))
    return dict(
        T=T, D=draw(st.integers(1, 10)), cu=draw(cu_seqlens(T)),
        state_len=draw(st.integers(0, 9)), dtype=draw(st.sampled_from(FLOATS + [torch.float64])),
        layout=draw(layouts(2, expandable=True)), seed=draw(seeds),
    )


@examples("varlen", fixtures=True)
@given(p=varlen_problems())
def test_varlen_states_matches_reference(backend, p):
    assume(backend.float64 or p["dtype"] != torch.float64)
    cc = backend.module
    g = torch.Generator(backend.device).manual_seed(p["seed"])
    x = make(g, (p["T"], p["D"]), p["dtype"], p["layout"])
    got = cc.causal_conv1d_varlen_states(x, p["cu"], p["state_len"])
    want = cc.causal_conv1d_varlen_states_ref(x, p["cu"], p["state_len"])
    assert got.shape == want.shape and got.dtype == x.dtype
    check_exact(got, want, what="states")


# ---------------------------------------------------------------------------
# causal_conv1d_packed_fwd


@st.composite
def packed_problems(draw):
    """Pools by batch, by indices (some padding) or by a block table with
    prefix caching's block states (vLLM's block_size, num_computed_tokens
    and three table columns per sequence)."""
    T = draw(st.integers(0, 40))
    W = draw(widths)
    xdt, wdt = draw(dtype_pairs)
    cu = draw(cu_seqlens(T))
    channels_first = draw(st.booleans())
    return dict(
        T=T, D=draw(st.one_of(st.integers(1, 10), st.sampled_from([32, 33, 64, 77]))),
        W=W, xdt=xdt, wdt=wdt, cu=cu,
        S=W - 1 + draw(st.integers(0, 4)),
        channels_first=channels_first,
        x_layout=draw(engine_layouts(2, 0 if channels_first else 1)),
        w_layout=draw(layouts(2)),
        pool_layout=draw(engine_layouts(3, 1)),
        bias=draw(st.booleans()),
        indices=draw(st.sampled_from(["none", "perm", "padded", "blocks", "blocks_padded"])),
        block_size=draw(st.integers(1, 9)),
        pad_slot_id=draw(st.sampled_from([-1, "past_end", "in_range"])),
        extra_rows=draw(st.integers(0, 3)),
        has_init=draw(st.sampled_from(["none", "random", "all"])),
        activation=draw(activations),
        seed=draw(seeds),
    )


def block_states(g, p, N_extra, lengths, pad):
    """Prefix caching's arguments for sequences of these lengths: each
    computed 0..20 tokens earlier, its blocks' rows a (B, blocks) table of
    distinct rows (whole sequences padding with "blocks_padded"), the
    initial state in the block of its last computed token. The pool's last
    row is in no table (an in-range pad_slot_id names it). Returns the
    table, the keyword arguments and the pool's row count."""
    bs, B = p["block_size"], len(lengths)
    computed = torch.randint(0, 21, (B,), generator=g, dtype=I32)
    first = computed // bs
    last = (computed + lengths.clamp(min=1) - 1) // bs  # a length-0 sequence: first
    cols = int(last.max()) + 1 if B else 1
    N = B * cols + N_extra + 1
    table = torch.randperm(N - 1, generator=g)[: B * cols].view(B, cols).to(I32)
    if p["indices"] == "blocks_padded" and B:
        table[torch.rand(B, generator=g) < 0.3] = pad
    kw = dict(initial_state_idx=((computed - 1).clamp(min=0) // bs).to(I32),
              block_idx_first_scheduled_token=first.to(I32),
              block_idx_last_scheduled_token=last.to(I32),
              num_computed_tokens=computed, block_size=bs)
    return table, kw, N


@examples("packed", fixtures=True)
@given(p=packed_problems())
def test_packed_fwd_matches_reference(backend, p):
    assume(backend.float64 or p["xdt"] != torch.float64)
    cc = backend.module
    g = torch.Generator(backend.device).manual_seed(p["seed"])
    T, D, W, S, cu = p["T"], p["D"], p["W"], p["S"], p["cu"]
    B = cu.numel() - 1
    N = B + p["extra_rows"]
    blocks = p["indices"].startswith("blocks")
    kw = {}
    if blocks:
        lengths = (cu[1:] - cu[:-1]).to(torch.int64)
        pad = {-1: -1, "past_end": 10**6, "in_range": -2}[p["pad_slot_id"]]
        idx, kw, N = block_states(g, p, p["extra_rows"], lengths, pad)
        if pad == -2:  # the pool's last row, which the table leaves out
            pad = N - 1
            idx[idx == -2] = pad
    shape = (D, T) if p["channels_first"] else (T, D)
    x = make(g, shape, p["xdt"], p["x_layout"])
    w = make(g, (D, W), p["wdt"], p["w_layout"])
    b = torch.randn(D, generator=g).to(p["wdt"]) if p["bias"] else None
    pool = make(g, (N, D, S), p["xdt"], p["pool_layout"])
    if not blocks:
        pad = {-1: -1, "past_end": N + 7, "in_range": N - 1}[p["pad_slot_id"]]
        idx = None
    if p["indices"] in ("perm", "padded"):
        idx = torch.randperm(N, generator=g)[:B].to(I32)
        if p["indices"] == "padded" and B:
            idx[torch.rand(B, generator=g) < 0.3] = pad
    elif p["indices"] == "none" and pad >= 0:
        pad = N + 7  # with implicit indices 0..B-1 an in-range pad id would skip rows
    has_init = None
    if p["has_init"] == "random":
        has_init = torch.rand(B, generator=g) < 0.5
    elif p["has_init"] == "all":
        has_init = torch.ones(B, dtype=torch.bool)
    pool_ref = pool.to(torch.float64, copy=True)
    out = cc.causal_conv1d_packed_fwd(x, w, b, cu, pool, idx, has_init, activation=p["activation"],
                                      pad_slot_id=pad, channels_first=p["channels_first"], **kw)
    x_td = x.t() if p["channels_first"] else x
    out_ref = cc.causal_conv1d_packed_fwd_ref(dbl(x_td), dbl(w), dbl(b), cu, pool_ref, idx, has_init,
                                              activation=p["activation"], pad_slot_id=pad, **kw)
    assert out.shape == x.shape and out.dtype == x.dtype
    check_close(out.t() if p["channels_first"] else out, out_ref, p["xdt"], p["wdt"], what="out")
    check_exact(pool, pool_ref, what="conv_states")
