"""The aarch64 CPU tiers (neon, sve, sve_bf16), and every width 1..32.

tools/ci/aarch64.sh runs this file, with a subset of the other files, under
qemu-user once per tier: on a CPU model without SVE (neon), one with SVE
but no BF16 (sve) and one with both (sve_bf16), and with
CAUSAL_CONV1D_CPU_TIER asking for a lower tier. The tier tests skip on other
architectures; the width sweep runs everywhere (it is cheap).
"""

from __future__ import annotations

import ctypes
import os
import platform

import pytest
import torch

from helpers import assert_close, randn_layout

AARCH64_TIERS = ["neon", "sve", "sve_bf16"]
on_aarch64 = pytest.mark.skipif(platform.machine() != "aarch64", reason="aarch64 only")


def best_aarch64_tier() -> str:
    """What the kernel's HWCAP check should pick (Linux asm/hwcap.h bits)."""
    getauxval = ctypes.CDLL(None).getauxval
    getauxval.restype = ctypes.c_ulong
    getauxval.argtypes = [ctypes.c_ulong]
    at_hwcap, at_hwcap2 = 16, 26
    sve = bool(getauxval(at_hwcap) & (1 << 22))
    bf16 = bool(getauxval(at_hwcap2) & (1 << 14))
    return "neon" if not sve else ("sve_bf16" if bf16 else "sve")


@on_aarch64
def test_tier_follows_hwcap_and_override(cc):
    asked = os.environ.get("CAUSAL_CONV1D_CPU_TIER")
    best = best_aarch64_tier()
    if os.environ.get("ATEN_CPU_CAPABILITY") == "default":
        best = "neon"
    want = asked or best
    assert AARCH64_TIERS.index(want) <= AARCH64_TIERS.index(best)
    assert cc.kernel_tier() == want


@pytest.mark.parametrize("layout", ["contiguous", "channel_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["fp32", "bf16", "fp16"])
def test_every_width(cc, seeded, dtype, layout):
    """Forward (with initial and final states), backward and update for each
    width 1..32: the kernels specialise some widths at compile time and run
    the others through the runtime-width path."""
    B, D, L = 2, 8, 45
    for W in range(1, 33):
        msg = f"seed={seeded} W={W} dtype={dtype} layout={layout}"
        x = randn_layout(B, D, L, layout, dtype)
        w = torch.randn(D, W, dtype=dtype)
        b = torch.randn(D, dtype=dtype)
        init = randn_layout(B, D, W - 1, layout, dtype) if W > 1 else None
        out, fin = cc.causal_conv1d_fn(x, w, b, initial_states=init, return_final_states=True,
                                       activation="silu")
        ref, fin_ref = cc.causal_conv1d_ref(x.double(), w.double(), b.double(),
                                            initial_states=None if init is None else init.double(),
                                            return_final_states=True, activation="silu")
        assert_close(out, ref, (dtype,), msg)
        assert torch.equal(fin.double(), fin_ref), f"{msg}: final states"

        xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))
        xd, wd, bd = (t.double().requires_grad_() for t in (x, w, b))
        out = cc.causal_conv1d_fn(xg, wg, bg, activation="silu")
        ref = cc.causal_conv1d_ref(xd, wd, bd, activation="silu")
        g = torch.randn_like(out)
        out.backward(g)
        ref.backward(g.double())
        for name, got, want in (("dx", xg.grad, xd.grad), ("dw", wg.grad, wd.grad),
                                ("dbias", bg.grad, bd.grad)):
            assert_close(got, want, (dtype,), f"{msg}: {name}")

        state = torch.randn(B, D, W - 1 + 2, dtype=dtype)
        xs = torch.randn(B, D, 3, dtype=dtype)
        state_ref = state.double()
        got = cc.causal_conv1d_update(xs, state, w, b, activation="silu")
        want = cc.causal_conv1d_update_ref(xs.double(), state_ref, w.double(), b.double(),
                                           activation="silu")
        assert_close(got, want, (dtype,), f"{msg}: update")
        assert torch.equal(state.double(), state_ref), f"{msg}: update state"
