"""Device-side behaviour of the CUDA backend, on a real GPU only (marked
`gpu`; skipped elsewhere): index tensors on the device that the host cannot
validate without a sync, the current stream and device, offsets past 2**31
elements. The kernels' results are tested per op in test_fwd.py, test_bwd.py,
test_update.py and test_packed.py, on every backend."""

from __future__ import annotations

import pytest
import torch

from helpers import close, dev, exact, randn_layout


@pytest.mark.gpu
def test_invalid_device_indices_stay_in_bounds(kernel):
    """Index tensors on the device are not validated on the host (that would
    need a sync): garbage must neither fault nor touch memory it should not.
    Pool indices outside [0, N) act as padding; cu_seqlens are clamped."""
    D, W, S, N = 32, 4, 3, 5
    w = torch.randn(D, W, device=dev())
    pool = torch.randn(N, D, S, device=dev())
    before = pool.clone()
    x = torch.randn(4, D, device=dev())
    idx = torch.tensor([N, 1 << 30, -7, N + 100], dtype=torch.int32, device=dev())
    out = kernel.causal_conv1d_update(x, pool, w, None, None, None, idx)
    torch.cuda.synchronize()
    assert not out.any() and torch.equal(pool, before)
    cs = torch.tensor([-5, -(1 << 31), 7, 1 << 30], dtype=torch.int32, device=dev())
    kernel.causal_conv1d_update(x, pool[:4], w, None, None, cs, None)
    torch.cuda.synchronize()
    before = pool.clone()
    T = 20
    xt = torch.randn(T, D, device=dev())
    for cus in ([0, 50, 3, -4, 20], [-(1 << 31), (1 << 31) - 1, 5, 6, 2], [19, 0, 0, 25, 99]):
        cus = torch.tensor(cus, dtype=torch.int32, device=dev())
        kernel.causal_conv1d_varlen_states(xt, cus, 6)
        idx = torch.tensor([0, N, 2, -3], dtype=torch.int32, device=dev())
        kernel.causal_conv1d_packed_fwd(xt, w, None, cus, pool, idx, None, "silu")
        torch.cuda.synchronize()
    assert torch.equal(pool[[1, 3, 4]], before[[1, 3, 4]]), "rows no sequence uses stay as they were"


@pytest.mark.gpu
def test_current_stream_and_device(kernel, seeded):
    x = randn_layout(2, 64, 300, "channel_last", torch.bfloat16)
    w = torch.randn(64, 4, device=dev())
    want = kernel.causal_conv1d_fn(x, w, activation="silu")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(20):
            got = kernel.causal_conv1d_fn(x, w, activation="silu")
    torch.cuda.current_stream().wait_stream(s)
    assert torch.equal(got, want)
    if torch.cuda.device_count() > 1:
        x1, w1 = x.to("cuda:1"), w.to("cuda:1")
        got1 = kernel.causal_conv1d_fn(x1, w1, activation="silu")  # current device stays cuda:0
        assert got1.device == x1.device and torch.equal(got1.cpu(), want.cpu())


@pytest.mark.gpu
@pytest.mark.slow
def test_64bit_indexing(kernel):
    """More than 2**31 elements: offsets must be 64-bit everywhere."""
    free, _ = torch.cuda.mem_get_info()
    n = (1 << 31) + 4096
    if free < 4 * n * 2 + (1 << 30):
        pytest.skip(f"needs ~{4 * n * 2 >> 30} GiB free GPU memory")
    D, L = 2, n // 2
    x = torch.randn(1, D, L, device=dev(), dtype=torch.bfloat16)
    w = torch.randn(D, 4, device=dev())
    out = kernel.causal_conv1d_fn(x, w, activation="silu")
    for lo in (0, (1 << 30) - 5, L - 100):
        seg = x[..., max(lo - 3, 0) : lo + 100]
        ref = kernel.causal_conv1d_ref(seg.double(), w.double(), activation="silu")[..., lo - max(lo - 3, 0) :]
        close(out[..., lo : lo + 100], ref, (torch.bfloat16,), f"window at {lo}")
    xt = x.transpose(1, 2).contiguous().transpose(1, 2)  # channel-last, same values
    del out
    out = kernel.causal_conv1d_fn(xt, w, activation="silu")
    close(out[..., L - 100 :], kernel.causal_conv1d_ref(x[..., L - 103 :].double(), w.double(),
                                                    activation="silu")[..., 3:],
          (torch.bfloat16,), "channel-last tail")



@pytest.mark.sanitizer
@pytest.mark.gpu
def test_sanitizer_invalid_indices(kernel):
    test_invalid_device_indices_stay_in_bounds(kernel)
