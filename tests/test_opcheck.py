"""torch.library integration: opcheck on every registered operator (schema,
fake kernel, autograd registration, AOT dispatch) and torch.compile with
fullgraph=True of code calling the public functions."""

from __future__ import annotations

import pytest
import torch

from helpers import dev, packed_inputs, randn_layout, random_seq_idx


def _fwd_samples():
    B, D, L, W = 2, 6, 11, 4
    for layout in ("contiguous", "channel_last"):
        for bias in (False, True):
            for seq in (False, True):
                for init in (False, True):
                    for final in (False, True):
                        for silu in (False, True):
                            x = randn_layout(B, D, L, layout, torch.float32)
                            w = torch.randn(D, W)
                            yield (
                                x,
                                w,
                                torch.randn(D) if bias else None,
                                random_seq_idx(B, L) if seq else None,
                                torch.randn(B, D, W - 1) if init else None,
                                final,
                                silu,
                            )


def _with_grad(args):
    return tuple(
        a.detach().clone().requires_grad_(True) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
        for a in args
    )


def test_opcheck_fwd(cc):
    n = 0
    for args in _fwd_samples():
        torch.library.opcheck(cc.ops.fwd.default, args)
        n += 1
    assert n == 64


def test_opcheck_fwd_autograd(cc):
    for i, args in enumerate(_fwd_samples()):
        if i % 4:
            continue
        torch.library.opcheck(cc.ops.fwd.default, _with_grad(args))


def test_opcheck_fwd_out(cc):
    for x, w, b, s, init, final, silu in list(_fwd_samples())[::3]:
        out = torch.empty_like(x)
        fs = torch.empty(x.shape[0], x.shape[1], w.shape[1] - 1) if final else None
        torch.library.opcheck(cc.ops.fwd_out.default, (x, w, b, s, init, out, fs, silu))


def test_opcheck_bwd(cc):
    for x, w, b, s, init, final, silu in list(_fwd_samples())[::2]:
        dout = torch.randn_like(x)
        dfinal = torch.randn(x.shape[0], x.shape[1], w.shape[1] - 1) if final else None
        for deterministic in (False, True):
            torch.library.opcheck(cc.ops.bwd.default, (x, w, b, s, init, dout, dfinal, silu, deterministic))


def _update_samples():
    D, W, S = 6, 4, 5
    for L in (None, 1, 3):
        for bias in (False, True):
            for circular in (False, True):
                for pooled in (False, True):
                    B = 3
                    N = 5 if pooled else B
                    x = torch.randn(B, D) if L is None else torch.randn(B, D, L)
                    state = torch.randn(N, D, S)
                    seqlens = torch.randint(0, 20, (B,), dtype=torch.int32) if circular else None
                    idx = torch.tensor([4, -1, 1], dtype=torch.int32) if pooled else None
                    yield (x, state, torch.randn(D, W), torch.randn(D) if bias else None, seqlens, idx, bool(bias))


def test_opcheck_update(cc):
    n = 0
    for args in _update_samples():
        torch.library.opcheck(cc.ops.update.default, args)
        n += 1
    assert n == 24


def test_output_strides_follow_the_fake_kernels_rule(cc):
    """fwd and update allocate out with x's stride order by the rule the fake
    kernels follow (_registrations.py's _empty_with_layout_of): every
    arrangement of three dims, sizes 1 and 3, and size-1 dims with strides
    out of order."""
    import itertools

    from torch._subclasses.fake_tensor import FakeTensorMode

    fake_mode = FakeTensorMode()
    store = torch.randn(64)
    n = 0
    for sizes in itertools.product((1, 3), repeat=3):
        for order in itertools.permutations(range(3)):
            for odd in itertools.product((1, 50), repeat=3):
                strides, step = [0, 0, 0], 1
                for d in reversed(order):
                    strides[d] = step if sizes[d] > 1 else odd[d]
                    step *= sizes[d]
                x = store.as_strided(sizes, strides)
                w = torch.randn(sizes[1], 4)
                state = torch.randn(sizes[0], sizes[1], 3)
                out = cc.ops.fwd.default(x, w, None, None, None, False, False)[0]
                upd = cc.ops.update.default(x, state, w, None, None, None, False)
                with fake_mode:
                    fx, fw, fs = (fake_mode.from_tensor(t) for t in (x, w, state))
                    fake_out = cc.ops.fwd.default(fx, fw, None, None, None, False, False)[0]
                    fake_upd = cc.ops.update.default(fx, fs, fw, None, None, None, False)
                assert out.stride() == fake_out.stride(), (sizes, strides, out.stride())
                assert upd.stride() == fake_upd.stride(), (sizes, strides, upd.stride())
                n += 1
    assert n == 384


def test_opcheck_varlen_states(cc):
    for T, state_len in ((0, 3), (17, 3), (17, 8)):
        x = torch.randn(T, 6)
        cu = torch.tensor([0, min(T, 5), min(T, 5), T], dtype=torch.int32)
        torch.library.opcheck(cc.ops.varlen_states.default, (x, cu, state_len))


def test_opcheck_fwd_packed(cc):
    D, W, S = 6, 4, 4
    cu = torch.tensor([0, 5, 5, 12, 20], dtype=torch.int32)
    for channels_first in (False, True):
        for pooled in (False, True):
            for has_init in (False, True):
                x = torch.randn(D, 20) if channels_first else torch.randn(20, D).t()
                pool = torch.randn(7 if pooled else 4, D, S)
                idx = torch.tensor([6, 2, -1, 0], dtype=torch.int32) if pooled else None
                hi = torch.tensor([True, False, True, True]) if has_init else None
                torch.library.opcheck(
                    cc.ops.fwd_packed.default,
                    (x, torch.randn(D, W), torch.randn(D), cu, pool, idx, hi, -1, True),
                )


def test_compile_fullgraph_matches_eager(cc):
    torch._dynamo.reset()
    D, W = 16, 4

    def step(x, w, b, init, state, x_new):
        y, final = cc.causal_conv1d_fn(x, w, b, initial_states=init, return_final_states=True,
                                       activation="silu")
        loss = (y * y).sum() + (final * final).sum()
        dec = cc.causal_conv1d_update(x_new, state, w, b, activation="silu")
        return loss, dec

    def run(fn):
        torch.manual_seed(1234)
        x = torch.randn(2, 40, D).transpose(1, 2).requires_grad_(True)
        w = torch.randn(D, W, requires_grad=True)
        b = torch.randn(D, requires_grad=True)
        init = torch.randn(2, D, W - 1, requires_grad=True)
        state = torch.randn(2, D, W - 1)
        x_new = torch.randn(2, D)
        loss, dec = fn(x, w, b, init, state, x_new)
        loss.backward()
        return loss.detach(), dec, state, x.grad, w.grad, b.grad, init.grad

    eager = run(step)
    compiled = run(torch.compile(step, fullgraph=True))
    for e, c in zip(eager, compiled):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-5)


@pytest.mark.backends("cuda")
def test_opcheck_cuda(kernel, seeded):
    B, D, L, W = 2, 16, 40, 4
    x = randn_layout(B, D, L, "channel_last", torch.float32)
    w, b = torch.randn(D, W, device=dev()), torch.randn(D, device=dev())
    s = random_seq_idx(B, L, device=dev())
    ini = torch.randn(B, D, W - 1, device=dev())
    torch.library.opcheck(kernel.ops.fwd.default, (x, w, b, s, ini, True, True))
    dout = torch.randn_like(x)
    torch.library.opcheck(kernel.ops.bwd.default, (x, w, b, s, ini, dout, None, True, True))
    pool = torch.randn(6, D, 3, device=dev())
    torch.library.opcheck(kernel.ops.update.default,
                          (torch.randn(3, D, 1, device=dev()), pool, w, b, None,
                           torch.tensor([4, -1, 0], dtype=torch.int32, device=dev()), True))
    xt, cus = packed_inputs([3, 0, 9], D, torch.float32, "contiguous")
    torch.library.opcheck(kernel.ops.varlen_states.default, (xt, cus, 5))
    torch.library.opcheck(kernel.ops.fwd_packed.default,
                          (xt.t(), w, b, cus, pool, None, None, -1, True))
