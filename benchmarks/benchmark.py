"""`kernels benchmark` workloads: forward, backward, decode, speculative
decode and packed prefill.

    kernels benchmark .                                    # this checkout's build/<variant>/
    kernels benchmark kernels-community/causal-conv1d@v1   # a published version

`kernels benchmark` loads the kernel (get_local_kernel for a path,
get_kernel for a repo id), runs each Benchmark subclass's workloads
(`setup_X`, `benchmark_X`), then checks the result against `verify_X`,
which computes the same thing with plain PyTorch the way callers do
without the kernel, and times it as the reference (Ref, Speedup columns;
one call, so a rough figure: benchmarks/bench.py's suites measure the same
baselines carefully). Each op has a small and a large workload, in fp32:
the runner's comparison (allclose, atol 1e-2, rtol 1e-5) is for results of
fp32 accuracy. Before that, the first verify_X call checks the kernel's
result with the ratio tables' tolerances (and, for decode and packed
prefill, the updated states exactly); the timed call only computes.

The baselines live here, not in harness.py, because kernel-builder
uploads only benchmarks/benchmark*.py to the Hub: this file must run on
its own. harness.py imports them for the ratio tables.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:
    from kernels.benchmark import Benchmark
except ImportError:  # the ratio tables use the baselines without `kernels`
    Benchmark = object

WIDTH = 4
STATE_LEN = WIDTH - 1
# Tolerances of the ratio tables: kernel result against the baseline in x's dtype.
TOL = {torch.float32: dict(rtol=3e-4, atol=1e-3), torch.bfloat16: dict(rtol=1e-2, atol=5e-2)}

# (B, D, L) of the forward and backward; (B, D) of a decode step and of a
# speculative step with SPEC_DRAFTS drafts; packed prefill as (sequences,
# tokens, D).
CONV_SIZES = {"small": (2, 64, 256), "large": (2, 2048, 2048)}
DECODE_SIZES = {"small": (8, 256), "large": (256, 8192)}
SPEC_SIZES = {"small": (8, 256), "large": (64, 8192)}
SPEC_DRAFTS = 3
PACKED_SIZES = {"small": (4, 256, 128), "large": (16, 8192, 4096)}


# ---------------------------------------------------------------------------
# Inputs and the PyTorch baselines (shared with the ratio tables)


def make_inputs(B: int, D: int, L: int, width: int, dtype: torch.dtype, channel_last: bool,
                device: str = "cpu", requires_grad: bool = False):
    """x (B, D, L) (contiguous, or a (B, L, D) tensor transposed), weight
    (D, width) scaled by 1/width, bias (D,): fresh random values."""
    if channel_last:
        x = torch.randn(B, L, D, dtype=dtype, device=device).transpose(1, 2)
    else:
        x = torch.randn(B, D, L, dtype=dtype, device=device)
    weight = torch.randn(D, width, dtype=dtype, device=device) / width
    bias = torch.randn(D, dtype=dtype, device=device)
    return tuple(t.requires_grad_(requires_grad) for t in (x, weight, bias))


def conv_silu_ref(x, weight, bias):
    """What transformers falls back to: a depthwise F.conv1d padded by W-1,
    cut to L, then silu (allocates its output in x's dtype)."""
    W, D, L = weight.shape[1], x.shape[1], x.shape[2]
    return F.silu(F.conv1d(x, weight.unsqueeze(1), bias, padding=W - 1, groups=D)[..., :L])


def update_ref(x, conv_state, weight, bias):
    """One decode step without the kernel: cat, depthwise conv, silu, and
    the state shifted in place."""
    stream = torch.cat([conv_state, x.unsqueeze(-1)], dim=-1)  # (B, D, S + 1)
    y = F.conv1d(stream[..., -weight.shape[1]:], weight.unsqueeze(1), bias, groups=x.shape[1])[..., -1]
    conv_state.copy_(stream[..., 1:])
    return F.silu(y)


def spec_update_ref(x, conv_state, weight, bias, num_accepted):
    """A speculative step without the kernel: gather each sequence's window
    (state columns n - 1 .. n + W - 3, n its accepted count), conv over the
    window and the 1 + k tokens, silu; the state becomes that stream from
    its second column on (the W - 2 inputs before the window's end, then the
    tokens)."""
    B, D, L = x.shape
    W = weight.shape[1]
    cols = (num_accepted.long() - 1)[:, None] + torch.arange(W - 1, device=x.device)
    window = conv_state.gather(2, cols[:, None, :].expand(B, D, W - 1))
    stream = torch.cat([window, x], dim=-1)  # (B, D, W - 1 + L)
    y = F.conv1d(stream, weight.unsqueeze(1), bias, groups=D)
    conv_state[..., : W - 2 + L].copy_(stream[..., 1:])
    return F.silu(y)


def mixed_lengths(n: int, total: int) -> list[int]:
    """n lengths summing to total, spread from short to long (fixed seed)."""
    g = torch.Generator().manual_seed(0)
    w = torch.rand(n, generator=g) ** 2 + 0.02
    lengths = (w / w.sum() * total).floor().long()
    lengths[0] += total - int(lengths.sum())
    return lengths.tolist()


def packed_inputs(seqs: int, tokens: int, dim: int, dtype: torch.dtype, device: str = "cpu") -> dict:
    """Packed prefill of `seqs` sequences of mixed lengths (x (T, D)) into a
    pool of seqs + 4 states, half of the sequences starting from theirs."""
    cu = [0]
    for n in mixed_lengths(seqs, tokens):
        cu.append(cu[-1] + n)
    g = torch.Generator().manual_seed(1)
    indices = torch.randperm(seqs + 4, generator=g)[:seqs].to(torch.int32)
    has_init = torch.arange(seqs) % 2 == 0
    return {
        "x": torch.randn(tokens, dim, dtype=dtype, device=device),
        "weight": torch.randn(dim, WIDTH, dtype=dtype, device=device) / WIDTH,
        "bias": torch.randn(dim, dtype=dtype, device=device),
        "cu": cu, "indices": indices.tolist(), "has_init": has_init.tolist(),
        "cu_t": torch.tensor(cu, dtype=torch.int32, device=device),
        "indices_t": indices.to(device), "has_init_t": has_init.to(device),
        "pool": torch.randn(seqs + 4, dim, STATE_LEN, dtype=dtype, device=device),
    }


def packed_ref(x, weight, bias, cu, pool, indices, has_init):
    """Packed prefill without the kernel: per sequence, F.conv1d over its
    initial state (or zeros) and tokens, silu, and the last W-1 inputs
    written back to its pool row."""
    T, D = x.shape
    out = torch.empty_like(x)
    for b in range(len(cu) - 1):
        start, end = cu[b], cu[b + 1]
        row = indices[b]
        init = pool[row] if has_init[b] else pool.new_zeros(D, STATE_LEN)
        stream = torch.cat([init, x[start:end].t()], dim=-1)[None]  # (1, D, S + len)
        y = F.conv1d(stream, weight.unsqueeze(1), bias, groups=D)  # (1, D, len)
        out[start:end] = F.silu(y)[0].t()
        pool[row].copy_(stream[0, :, -STATE_LEN:])
    return out


def _close(what: str, got: torch.Tensor, want: torch.Tensor) -> None:
    try:
        torch.testing.assert_close(got, want, **TOL[want.dtype])
    except AssertionError as e:
        raise RuntimeError(f"{what}: the kernel differs from PyTorch:\n{e}") from None


# ---------------------------------------------------------------------------
# Workloads (`kernels benchmark` runs every Benchmark subclass defined here)


class _SmallAndLarge:
    """The runner's hooks for a small and a large workload of one op, for a
    class that defines _setup(size), _run(), _reference() (the PyTorch
    baseline, which the runner times) and _check(want) (raises if the
    kernel's result differs). The runner calls verify_X warmup + 1 times
    and times the last call: the check runs on the first only."""

    def setup_small(self):
        self._setup("small")

    def setup_large(self):
        self._setup("large")

    def benchmark_small(self):
        self._run()

    def benchmark_large(self):
        self._run()

    def verify_small(self):
        return self._verify()

    def verify_large(self):
        return self._verify()

    def _verify(self):
        want = self._reference()
        if not getattr(self, "_checked", False):
            self._check(want)
            self._checked = True
        return want


class Forward(_SmallAndLarge, Benchmark):
    """causal_conv1d_fn(x, weight, bias, activation="silu"), x (B, D, L)."""

    seed = 0

    def _setup(self, size):
        self.x, self.weight, self.bias = make_inputs(*CONV_SIZES[size], WIDTH, torch.float32, False,
                                                     device=self.device)

    def _run(self):
        self.out = self.kernel.causal_conv1d_fn(self.x, self.weight, self.bias, activation="silu")

    def _reference(self):
        return conv_silu_ref(self.x, self.weight, self.bias)

    def _check(self, want):
        _close("forward", self.out, want)


class Backward(_SmallAndLarge, Benchmark):
    """dx, dweight, dbias of causal_conv1d_fn(..., activation="silu") through
    its registered autograd; the forward graph is built once in setup."""

    seed = 0

    def _setup(self, size):
        self.inputs = make_inputs(*CONV_SIZES[size], WIDTH, torch.float32, False, device=self.device,
                                  requires_grad=True)
        x, weight, bias = self.inputs
        self.y = self.kernel.causal_conv1d_fn(x, weight, bias, activation="silu")
        self.y_ref = conv_silu_ref(x, weight, bias)
        self.dout = torch.randn_like(self.y)

    def _run(self):
        self.grads = torch.autograd.grad(self.y, self.inputs, self.dout, retain_graph=True)
        self.out = self.grads[0]

    def _reference(self):
        self.grads_ref = torch.autograd.grad(self.y_ref, self.inputs, self.dout, retain_graph=True)
        return self.grads_ref[0]

    def _check(self, want):
        _close("backward dx", self.grads[0], want)
        for name, got, ref in zip(("dweight", "dbias"), self.grads[1:], self.grads_ref[1:]):
            err = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-6))
            if err > 1e-4:
                raise RuntimeError(f"backward {name}: relative difference {err:.2e} from PyTorch")


class Decode(_SmallAndLarge, Benchmark):
    """causal_conv1d_update: one token per row, x (B, D), conv_state (B, D, 3)
    updated in place. The runner compares the first call's output; the
    reference restores the state it started from before each of its calls
    (an extra copy of the state in its time)."""

    seed = 0

    def _setup(self, size):
        B, D = DECODE_SIZES[size]
        dev = self.device
        self.x = torch.randn(B, D, device=dev)
        self.weight = torch.randn(D, WIDTH, device=dev) / WIDTH
        self.bias = torch.randn(D, device=dev)
        self.state = torch.randn(B, D, STATE_LEN, device=dev)
        self.state0 = self.state.clone()
        self.state_ref = self.state.clone()

    def _run(self):
        self.out = self.kernel.causal_conv1d_update(self.x, self.state, self.weight, self.bias,
                                                    activation="silu")

    def _reference(self):
        self.state_ref.copy_(self.state0)
        return update_ref(self.x, self.state_ref, self.weight, self.bias)

    def _check(self, want):
        _close("decode", self.out, want)
        if not torch.equal(self.state, self.state_ref):  # the kernel ran once before verify
            raise RuntimeError("decode: the updated conv_state differs from PyTorch's")


class SpecDecode(_SmallAndLarge, Benchmark):
    """causal_conv1d_update verifying k = 3 drafts: x (B, D, 4), conv_state
    (B, D, 6) in the default layout, num_accepted_tokens in 1..4 per
    sequence. Like Decode, the reference restores the state first."""

    seed = 0

    def _setup(self, size):
        B, D = SPEC_SIZES[size]
        dev, k = self.device, SPEC_DRAFTS
        self.x = torch.randn(B, D, 1 + k, device=dev)
        self.weight = torch.randn(D, WIDTH, device=dev) / WIDTH
        self.bias = torch.randn(D, device=dev)
        self.state = torch.randn(B, D, STATE_LEN + k, device=dev)
        self.accepted = torch.randint(1, k + 2, (B,), dtype=torch.int32, device=dev)
        self.state0 = self.state.clone()
        self.state_ref = self.state.clone()

    def _run(self):
        self.out = self.kernel.causal_conv1d_update(self.x, self.state, self.weight, self.bias,
                                                    activation="silu",
                                                    num_accepted_tokens=self.accepted)

    def _reference(self):
        self.state_ref.copy_(self.state0)
        return spec_update_ref(self.x, self.state_ref, self.weight, self.bias, self.accepted)

    def _check(self, want):
        _close("speculative decode", self.out, want)
        if not torch.equal(self.state, self.state_ref):  # the kernel ran once before verify
            raise RuntimeError("speculative decode: the updated conv_state differs from PyTorch's")


class PackedPrefill(_SmallAndLarge, Benchmark):
    """causal_conv1d_packed_fwd: packed sequences x (T, D) of mixed lengths,
    states read from and written to a shared pool. Like Decode, the
    reference restores the pool before each of its calls."""

    seed = 0

    def _setup(self, size):
        self.p = packed_inputs(*PACKED_SIZES[size], torch.float32, device=self.device)
        self.pool0 = self.p["pool"].clone()
        self.pool_ref = self.p["pool"].clone()

    def _run(self):
        p = self.p
        self.out = self.kernel.causal_conv1d_packed_fwd(
            p["x"], p["weight"], p["bias"], p["cu_t"], p["pool"], p["indices_t"], p["has_init_t"],
            activation="silu")

    def _reference(self):
        p = self.p
        self.pool_ref.copy_(self.pool0)
        return packed_ref(p["x"], p["weight"], p["bias"], p["cu"], self.pool_ref, p["indices"], p["has_init"])

    def _check(self, want):
        _close("packed prefill", self.out, want)
        if not torch.equal(self.p["pool"], self.pool_ref):
            raise RuntimeError("packed prefill: the state pool differs from PyTorch's")
