"""Threads and determinism.

- The same calls made from 8 Python threads at once give results bitwise
  identical to serial calls (no hidden shared state in the operators; the
  GIL is released while they run).
- Results are bitwise identical whatever torch.set_num_threads says: the
  intra-op split must not change any value (tails, reductions, vector paths).

For every public function and the backward. Sizes are picked so that the
CPU kernels split the work into several chunks (D not a multiple of any
vector width, several rows per chunk).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import pytest
import torch

from helpers import randn_layout

# Threads use the kernels' intra-op pool at once: outside xdist's
# single-threaded workers (conftest.py)
pytestmark = pytest.mark.serial

I32 = torch.int32
N_THREADS = 8
ITERS = 4


def bits(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().contiguous()
    return t.view(torch.uint8) if t.element_size() > 1 and t.dim() > 0 else t


def assert_bitwise(a: list, b: list, what: str) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.shape == y.shape and x.dtype == y.dtype, f"{what}[{i}]"
        assert torch.equal(bits(x), bits(y)), f"{what}: result {i} differs bitwise"


@contextmanager
def deterministic(flag: bool):
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(flag)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


# ---------------------------------------------------------------------------
# scenarios: each builds random inputs once and returns run() -> [tensors],
# which copies whatever the call updates in place, so runs are independent.


def fn_scenario(cc, dtype, layout):
    B, D, L, W = 3, 67, 300, 4
    x = randn_layout(B, D, L, layout, dtype)
    w, b = torch.randn(D, W).to(dtype), torch.randn(D).to(dtype)
    seq = torch.zeros(B, L, dtype=I32)
    seq[:, 100:] = 1
    seq[1, 180:190] = -1
    init = torch.randn(B, D, W - 1).to(dtype)

    def run():
        out, fin = cc.causal_conv1d_fn(x, w, b, seq_idx=seq, initial_states=init,
                                       return_final_states=True, activation="silu")
        return [out, fin]

    return run


def bwd_scenario(cc, dtype, layout):
    B, D, L, W = 2, 37, 200, 4
    x0 = randn_layout(B, D, L, layout, dtype)
    w0, b0 = torch.randn(D, W).to(dtype), torch.randn(D).to(dtype)
    init0 = torch.randn(B, D, W - 1).to(dtype)
    dout, dfin = torch.randn(B, D, L).to(dtype), torch.randn(B, D, W - 1).to(dtype)

    def run():
        x, w, b, init = (t.detach().requires_grad_() for t in (x0, w0, b0, init0))
        out, fin = cc.causal_conv1d_fn(x, w, b, initial_states=init, return_final_states=True,
                                       activation="silu")
        torch.autograd.backward([out, fin], [dout, dfin])
        return [x.grad, w.grad, b.grad, init.grad]

    return run


# The update's tasks are (row, block of 32 channels), split among threads in
# chunks of at least about 2^17 / (32 (L + W + S)) tasks (cpu/update.h):
# these sizes make at least two chunks, and chunk boundaries fall inside a
# row (a row of the pool must not be worked on by two threads).


def update_scenario(cc, dtype, layout):
    B, D, L, W, S, N = 25, 1043, 2, 4, 6, 32  # 825 tasks, chunks of >= 341
    x = randn_layout(B, D, L, layout, dtype)
    w, b = torch.randn(D, W).to(dtype), torch.randn(D).to(dtype)
    pool0 = torch.randn(N, D, S).to(dtype)
    idx = torch.randperm(N)[:B].to(I32)
    idx[3] = -1
    cache = torch.randint(0, 20, (B,), dtype=I32)

    def run():
        pool = pool0.clone()
        out = cc.causal_conv1d_update(x, pool, w, b, activation="silu", cache_seqlens=cache,
                                      conv_state_indices=idx)
        return [out, pool]

    return run


def decode_scenario(cc, dtype, layout):
    """One token a row, the pool in `layout` (channel_last: vLLM's)."""
    B, D, W, S, N = 13, 2083, 4, 3, 16  # 858 tasks, chunks of >= 512
    x = torch.randn(B, D).to(dtype)
    w, b = torch.randn(D, W).to(dtype), torch.randn(D).to(dtype)
    pool0 = randn_layout(N, D, S, layout, dtype)
    idx = torch.randperm(N)[:B].to(I32)
    idx[5] = -1

    def run():
        pool = pool0.clone()
        out = cc.causal_conv1d_update(x, pool, w, b, activation="silu", conv_state_indices=idx)
        return [out, pool]

    return run


def varlen_scenario(cc, dtype, layout):
    T, D = 500, 67
    x = randn_layout(1, D, T, layout, dtype)[0].t()  # (T, D) in the chosen layout
    cu = torch.tensor([0, 10, 10, 200, 203, 470], dtype=I32)

    def run():
        return [cc.causal_conv1d_varlen_states(x, cu, 5)]

    return run


def packed_scenario(cc, dtype, layout):
    T, D, W, S, N = 400, 67, 4, 5, 10
    x = randn_layout(1, D, T, layout, dtype)[0].t()  # (T, D)
    w, b = torch.randn(D, W).to(dtype), torch.randn(D).to(dtype)
    cu = torch.tensor([0, 50, 51, 51, 260, 399, 400], dtype=I32)
    idx = torch.tensor([7, 2, 9, -1, 0, 4], dtype=I32)
    has_init = torch.tensor([True, False, True, True, False, True])
    pool0 = torch.randn(N, D, S).to(dtype)

    def run():
        pool = pool0.clone()
        out = cc.causal_conv1d_packed_fwd(x, w, b, cu, pool, idx, has_init, activation="silu")
        return [out, pool]

    return run


SCENARIOS = {
    "fn": fn_scenario,
    "bwd": bwd_scenario,
    "update": update_scenario,
    "decode": decode_scenario,
    "varlen": varlen_scenario,
    "packed": packed_scenario,
}
CASES = [(name, dtype, layout) for name in SCENARIOS
         for dtype, layout in [(torch.float32, "contiguous"), (torch.bfloat16, "channel_last"),
                               (torch.float16, "strided")]]


def _id(case):
    name, dtype, layout = case
    return f"{name}-{str(dtype).replace('torch.', '')}-{layout}"


def run_in_threads(run, n: int = N_THREADS, iters: int = ITERS) -> list:
    """Call run() `iters` times in each of n threads started together."""
    barrier = threading.Barrier(n)
    results: list = [None] * n
    errors: list = []

    def worker(i):
        try:
            barrier.wait()
            results[i] = [run() for _ in range(iters)]
        except BaseException as e:  # reported below, with the thread's id
            errors.append((i, e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, f"thread {errors[0][0]} raised {errors[0][1]!r}"
    return [r for per_thread in results for r in per_thread]


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_threads_match_serial(cc, seeded, case):
    name, dtype, layout = case
    run = SCENARIOS[name](cc, dtype, layout)
    serial = run()
    assert_bitwise(run(), serial, "second serial call")
    for i, got in enumerate(run_in_threads(run)):
        assert_bitwise(got, serial, f"threaded call {i}")


def test_threads_share_one_pool(cc, seeded):
    """8 threads decode into disjoint rows of one shared pool at once: the
    pool ends as after the same calls made one by one."""
    D, W, S, N = 67, 4, 5, 2 * N_THREADS
    w, b = torch.randn(D, W), torch.randn(D)
    xs = [torch.randn(1, D, 3) for _ in range(N_THREADS)]
    rows = torch.randperm(N)[:N_THREADS].to(I32)
    pool0 = torch.randn(N, D, S)

    def call(pool, i):
        return cc.causal_conv1d_update(xs[i], pool, w, b, activation="silu",
                                       conv_state_indices=rows[i : i + 1])

    serial_pool = pool0.clone()
    serial = [call(serial_pool, i) for i in range(N_THREADS)]

    shared = pool0.clone()
    outs: list = [None] * N_THREADS
    barrier = threading.Barrier(N_THREADS)

    def worker(i):
        barrier.wait()
        outs[i] = call(shared, i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(N_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(o is not None for o in outs), "a thread failed"
    assert_bitwise(outs, serial, "outputs")
    assert_bitwise([shared], [serial_pool], "shared pool")


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_num_threads_invariance(cc, seeded, case):
    name, dtype, layout = case
    run = SCENARIOS[name](cc, dtype, layout)
    before = torch.get_num_threads()
    try:
        default = run()
        for n in (1, 3, 4):
            torch.set_num_threads(n)
            assert_bitwise(run(), default, f"torch.set_num_threads({n}) vs default ({before})")
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bwd_deterministic_mode(cc, seeded, dtype):
    """With torch.use_deterministic_algorithms(True) the backward (dweight and
    dbias are reductions over batch and length) is bitwise reproducible run to
    run, across thread counts and across concurrent callers."""
    run = bwd_scenario(cc, dtype, "channel_last")
    before = torch.get_num_threads()
    with deterministic(True):
        try:
            first = run()
            torch.set_num_threads(1)
            assert_bitwise(run(), first, "1 thread")
            torch.set_num_threads(4)
            assert_bitwise(run(), first, "4 threads")
        finally:
            torch.set_num_threads(before)
        for i, got in enumerate(run_in_threads(run, iters=2)):
            assert_bitwise(got, first, f"threaded call {i}")
