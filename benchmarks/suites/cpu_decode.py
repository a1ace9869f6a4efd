"""CPU decode and serving benchmark: causal_conv1d_update and
causal_conv1d_packed_fwd against what callers do without a kernel.

Loads the built kernel the way users do (kernels.get_local_kernel on
$CAUSAL_CONV1D_KERNEL_ROOT, default: this checkout) and measures at W = 4
with silu, for fp32 and bf16:

  decode   one token (L = 1) per row, B rows, D channels, conv_state (B, D, 3)
           ref:    torch.cat([conv_state, x[..., None]], -1), depthwise
                   F.conv1d, silu, conv_state.copy_(the last 3 columns)
           kernel: causal_conv1d_update(x, conv_state, weight, bias, "silu")
           copy:   a copy of the bytes the update must move: x and the state
                   read, the state and y written, as (B, D, 4) into (B, D, 4)
  spec     a speculative-decoding step, k = 3 drafts (x (B, D, 4), conv_state
           (B, D, 6), num_accepted_tokens in 1..4), against a plain one-token
           update of the same batch (x (B, D), conv_state (B, D, 3)), both
           states in the default layout and in vLLM's (stride 1 along D);
           target: spec / plain <= 1.5 at B = 64, D = 8192 (issue 17).
           Also against a plain update of the step's own pool, conv_state
           (B, D, 6): what an engine that allocated its states for k drafts
           pays for a step without drafts (spec / pool6, no target).
           torch:  the step in tensor ops (peers.Torch.spec: gather each
                   window, conv1d, write the state back)
           copy:   the step's bytes, x (B, D, 4) and the state (B, D, 6) read,
                   both written back: (B, D, 10) into (B, D, 10)
           plain copy: the plain update's bytes, as the decode copy: (B, D, 4)
                   into (B, D, 4); copy / plain copy is the ratio a step
                   and a plain update at this machine's copy bandwidth would
                   have (the floor column), measured in the same run
  verify   SGLang's and TensorRT-LLM's verify step: L = 4 tokens a sequence,
           x a (B * L, D) projection viewed as (B, D, L), the pool (B, D, 3)
           only read, the intermediate windows (B, L, D, 3) written; a chain
           and a token tree (parents 0, 0, 1: two branches)
           torch:  the step in tensor ops (gather each token's inputs along
                   its ancestors, multiply-add, silu, the windows copied out)
           copy:   the step's bytes, x and the state read, y and the windows
                   written: (B, D, 2 L + 3 + 3 L) values copied
  packed   prefill of 16 packed sequences of mixed lengths (8192 tokens in
           all, x (T, D) with D = 4096) into a pool of states, half of them
           starting from the pool's state
           ref:    per sequence, F.conv1d over the initial state (or zeros)
                   followed by its tokens, silu, and the last 3 inputs
                   written back to its pool row
           kernel: causal_conv1d_packed_fwd(x, weight, bias, cu_seqlens, pool,
                   cache_indices, has_initial_state, "silu")

Times are medians over repeats (the minimum in parentheses: other processes
may share the machine), the candidates measured round-robin so load drift
hits both alike; speedup = ref / kernel. Targets (issue 4): decode >= 5x at
B >= 8, packed prefill >= 4x.

On a machine shared with other work, wall-clock times mostly measure how
long the scheduler kept the process off the CPU. --clock cpu measures the
process's CPU time instead (all its threads summed): with --threads 1 that
is the cost of one call, unaffected by time slicing.

Calls back to back find their bytes in the last-level cache when they fit
(a plain update's at B = 64, D = 8192 do, a speculative step's do not).
In a model they never do: the other layers run between two steps of one
layer. --cold evicts the caches before each timed call.

    python benchmarks/bench.py decode                            # full table
    python benchmarks/bench.py decode --quick                    # CI smoke run: tiny shapes
    python benchmarks/bench.py decode --threads 1 --clock cpu    # on a busy machine
    python benchmarks/bench.py decode --only spec --cold         # bytes from memory
"""

from __future__ import annotations

import torch

from . import harness, peers
from .harness import (
    DTYPES, WIDTH, cpu_arguments, cpu_setting, load_kernel, packed_inputs, packed_ref,
    parse_cpu_arguments, update_ref,
)

STATE_LEN = WIDTH - 1
DECODE_B = [1, 8, 64, 256]
DECODE_D = [4096, 8192]
PACKED = dict(seqs=16, tokens=8192, dim=4096)
QUICK_DECODE_B, QUICK_DECODE_D = [1, 8], [256]
QUICK_PACKED = dict(seqs=4, tokens=256, dim=128)
SPEC = dict(B=[1, 64], D=[8192], drafts=3)
QUICK_SPEC = dict(B=[8], D=[256], drafts=3)
VERIFY = dict(B=[1, 64], D=[8192], tokens=4)
QUICK_VERIFY = dict(B=[8], D=[256], tokens=4)
TREES = {"chain": None, "tree": [-1, 0, 0, 1]}
TARGET_SPEC = 1.5
TARGET_DECODE, TARGET_DECODE_MIN_B, TARGET_PACKED = 5.0, 8, 4.0
TOL = {torch.float32: dict(rtol=3e-4, atol=1e-3), torch.bfloat16: dict(rtol=1e-2, atol=5e-2)}


clock = harness.CLOCKS["wall"]
cold = False


def measure(fns: dict, repeats: int, warmup: int) -> dict:
    """harness.measure with samples of about 2 ms each (with --cold, one
    call after the caches were evicted), on the --clock clock."""
    return harness.measure(fns, repeats, warmup, min_sample_s=2e-3, clock=clock, cold=cold)


def copy_pair(B, D, columns, dtype):
    """Source and destination of a copy moving what an update moves: it
    reads x and the state and writes the state and y, `columns` values per
    channel each way."""
    return torch.randn(B, D, columns, dtype=dtype), torch.empty(B, D, columns, dtype=dtype)


# ---------------------------------------------------------------------------
# decode


def bench_decode(cc, B, D, dtype, repeats, warmup):
    x = torch.randn(B, D, dtype=dtype)
    weight = torch.randn(D, WIDTH, dtype=dtype) / WIDTH
    bias = torch.randn(D, dtype=dtype)
    state_ref = torch.randn(B, D, STATE_LEN, dtype=dtype)
    state_ker = state_ref.clone()
    # Same results first: the comparison is only meaningful for equal work.
    want = update_ref(x, state_ref, weight, bias)
    got = cc.causal_conv1d_update(x, state_ker, weight, bias, activation="silu")
    torch.testing.assert_close(got.float(), want.float(), **TOL[dtype])
    assert torch.equal(state_ker, state_ref)
    src, dst = copy_pair(B, D, 1 + STATE_LEN, dtype)
    fns = {
        "ref": lambda: update_ref(x, state_ref, weight, bias),
        "kernel": lambda: cc.causal_conv1d_update(x, state_ker, weight, bias, activation="silu"),
        "copy": lambda: dst.copy_(src),
    }
    return measure(fns, repeats, warmup)


# ---------------------------------------------------------------------------
# speculative decoding


def make_state(B, D, S, dtype, layout):
    if layout == "vllm":  # stride 1 along D, as vLLM allocates its conv states
        return torch.randn(B, S, D, dtype=dtype).transpose(1, 2)
    return torch.randn(B, D, S, dtype=dtype)


def bench_spec(cc, B, D, k, dtype, layout, repeats, warmup):
    weight = torch.randn(D, WIDTH, dtype=dtype) / WIDTH
    bias = torch.randn(D, dtype=dtype)
    x1 = torch.randn(B, D, dtype=dtype)
    xk = torch.randn(B, k + 1, D, dtype=dtype).transpose(1, 2)  # a (B * (k+1), D) projection
    if layout != "vllm":
        xk = xk.contiguous()
    plain_state = make_state(B, D, STATE_LEN, dtype, layout)
    spec_state = make_state(B, D, STATE_LEN + k, dtype, layout)
    pool_state = make_state(B, D, STATE_LEN + k, dtype, layout)
    accepted = torch.randint(1, k + 2, (B,), dtype=torch.int32)
    ref_state = spec_state.double()
    want = cc.causal_conv1d_update_ref(xk.double(), ref_state, weight.double(), bias.double(),
                                       "silu", num_accepted_tokens=accepted)
    got = cc.causal_conv1d_update(xk, spec_state, weight, bias, "silu",
                                  num_accepted_tokens=accepted)
    torch.testing.assert_close(got.double(), want, **TOL[dtype])
    assert torch.equal(spec_state.double(), ref_state)
    # The PyTorch step must compute the same thing too.
    torch_state = make_state(B, D, STATE_LEN + k, dtype, layout)
    ok, detail = peers.verify(peers.Torch(), "spec",
                              peers.reference(cc, "spec", xk, weight, bias, state=torch_state,
                                              accepted=accepted),
                              xk, weight, bias, state=torch_state, accepted=accepted)
    assert ok, f"PyTorch spec step: {detail}"
    torch_step, _ = peers.Torch().spec(xk, torch_state, weight, bias, accepted)
    src, dst = copy_pair(B, D, 1 + k + STATE_LEN + k, dtype)
    plain_src, plain_dst = copy_pair(B, D, 1 + STATE_LEN, dtype)
    fns = {
        "plain": lambda: cc.causal_conv1d_update(x1, plain_state, weight, bias, "silu"),
        "pool": lambda: cc.causal_conv1d_update(x1, pool_state, weight, bias, "silu"),
        "spec": lambda: cc.causal_conv1d_update(xk, spec_state, weight, bias, "silu",
                                                num_accepted_tokens=accepted),
        "torch": torch_step,
        "copy": lambda: dst.copy_(src),
        "plain copy": lambda: plain_dst.copy_(plain_src),
    }
    return measure(fns, repeats, warmup)


# ---------------------------------------------------------------------------
# tree verification with intermediate windows


def torch_verify(x, state, weight, bias, parents, windows):
    """The verify step in tensor ops: token j's inputs are rows of the
    stream cat(state, x) along its ancestors (an index table built once, as
    an engine builds it with the tree); returns the step."""
    B, D, L = x.shape
    W = weight.shape[1]
    rows = []
    for j in range(L):
        walk, taps = j, []
        for _ in range(W):
            taps.append(W - 1 + walk)  # token walk, or history column W - 1 + walk
            walk = (parents[walk] if parents is not None else walk - 1) if walk > 0 else walk - 1
        rows.append(taps[::-1])
    index = torch.tensor(rows).view(1, 1, L * W).expand(B, D, L * W)
    w = weight.float().view(1, D, 1, W)
    b = bias.float().view(1, D, 1)

    def step():
        stream = torch.cat([state, x], dim=-1)
        inputs = torch.gather(stream, 2, index).view(B, D, L, W)
        y = torch.nn.functional.silu((inputs.float() * w).sum(-1) + b).to(x.dtype)
        windows[:, :L].copy_(inputs[..., 1:].transpose(1, 2))
        return y

    return step


def bench_verify(cc, B, D, L, dtype, parents, repeats, warmup):
    W = WIDTH
    weight = torch.randn(D, W, dtype=dtype) / W
    bias = torch.randn(D, dtype=dtype)
    x = torch.randn(B, L, D, dtype=dtype).transpose(1, 2)
    state = torch.randn(B, D, W - 1, dtype=dtype)
    windows = torch.empty(B, L, D, W - 1, dtype=dtype)
    tree = None if parents is None else torch.tensor([parents] * B, dtype=torch.int32)
    kw = dict(retrieve_parent_token=tree)
    ref_windows = torch.zeros(B, L, D, W - 1, dtype=torch.float64)
    want = cc.causal_conv1d_update_ref(x.double(), state.double(), weight.double(),
                                       bias.double(), "silu", intermediate_conv_window=ref_windows,
                                       **kw)
    got = cc.causal_conv1d_update(x, state, weight, bias, "silu",
                                  intermediate_conv_window=windows, **kw)
    torch.testing.assert_close(got.double(), want, **TOL[dtype])
    assert torch.equal(windows.double(), ref_windows)
    torch_windows = torch.zeros_like(windows)
    step = torch_verify(x, state, weight, bias, parents, torch_windows)
    torch.testing.assert_close(step().double(), want, **TOL[dtype])
    assert torch.equal(torch_windows.double(), ref_windows), "PyTorch verify step: windows"
    src, dst = copy_pair(B, D, 2 * L + (W - 1) * (1 + L), dtype)
    fns = {
        "kernel": lambda: cc.causal_conv1d_update(x, state, weight, bias, "silu",
                                                  intermediate_conv_window=windows, **kw),
        "torch": step,
        "copy": lambda: dst.copy_(src),
    }
    return measure(fns, repeats, warmup)


# ---------------------------------------------------------------------------
# packed prefill


def bench_packed(cc, seqs, tokens, dim, dtype, repeats, warmup):
    p = packed_inputs(seqs, tokens, dim, dtype)
    x, weight, bias, cu, cu_list = p["x"], p["weight"], p["bias"], p["cu_t"], p["cu"]
    indices, has_init, idx_list, init_list = p["indices_t"], p["has_init_t"], p["indices"], p["has_init"]
    pool_ref = p["pool"]
    pool_ker = pool_ref.clone()
    want = packed_ref(x, weight, bias, cu_list, pool_ref, idx_list, init_list)
    got = cc.causal_conv1d_packed_fwd(x, weight, bias, cu, pool_ker, indices, has_init,
                                      activation="silu")
    torch.testing.assert_close(got.float(), want.float(), **TOL[dtype])
    assert torch.equal(pool_ker, pool_ref)
    fns = {
        "ref": lambda: packed_ref(x, weight, bias, cu_list, pool_ref, idx_list, init_list),
        "kernel": lambda: cc.causal_conv1d_packed_fwd(x, weight, bias, cu, pool_ker, indices,
                                                      has_init, activation="silu"),
    }
    lengths = [b - a for a, b in zip(cu_list, cu_list[1:])]
    return lengths, measure(fns, repeats, warmup)


def main() -> int:
    ap = cpu_arguments(__doc__, DTYPES, default_repeats=15, default_warmup=3, layouts=False,
                       clock=True)
    ap.add_argument("--only", choices=["decode", "spec", "verify", "packed"], default=None)
    args = parse_cpu_arguments(ap)
    global clock, cold
    clock, cold = harness.CLOCKS[args.clock], args.cold
    repeats, dtypes = args.repeats, args.dtype
    Bs, Ds = (QUICK_DECODE_B, QUICK_DECODE_D) if args.quick else (DECODE_B, DECODE_D)
    packed = QUICK_PACKED if args.quick else PACKED

    cc = load_kernel()
    print(f"causal_conv1d CPU decode/serving, W={WIDTH}, S={STATE_LEN}, silu; {cpu_setting(cc)}; "
          f"{harness.cpu_timing(args)}")
    misses = []
    if args.only in (None, "decode"):
        head = (f"{'decode':6} {'dtype':5} {'B':>4} {'D':>5} | {'ref us':>17} {'kernel us':>17} "
                f"{'copy us':>17} | {'speedup':>13} {'/copy':>6}")
        print(head)
        print("-" * len(head))
        for name in dtypes:
            for D in Ds:
                for B in Bs:
                    r = bench_decode(cc, B, D, DTYPES[name], repeats, args.warmup)
                    (rm, rn), (km, kn), (cm, cn) = r["ref"], r["kernel"], r["copy"]
                    speed = rm / km
                    print(f"{'':6} {name:5} {B:>4} {D:>5} | {rm * 1e6:8.1f} ({rn * 1e6:6.1f}) "
                          f"{km * 1e6:8.1f} ({kn * 1e6:6.1f}) {cm * 1e6:8.1f} ({cn * 1e6:6.1f}) | "
                          f"{speed:6.1f}x ({rn / kn:4.1f}x) {km / cm:5.2f}x")
                    if not args.quick and B >= TARGET_DECODE_MIN_B and speed < TARGET_DECODE:
                        misses.append(f"decode {name} B={B} D={D}: {speed:.1f}x < {TARGET_DECODE}x")
    if args.only in (None, "spec"):
        spec = QUICK_SPEC if args.quick else SPEC
        head = (f"{'spec':6} {'dtype':5} {'state':6} {'B':>4} {'D':>5} | {'plain us':>17} "
                f"{'pool6 us':>17} {'spec k=' + str(spec['drafts']) + ' us':>17} "
                f"{'torch us':>17} {'copy us':>17} {'plain copy us':>17} | "
                f"{'spec/plain':>10} {'floor':>6} {'spec/pool6':>10} {'torch/spec':>10} "
                f"{'spec/copy':>9}")
        print(head)
        print("-" * len(head))
        for name in dtypes:
            for layout in ("default", "vllm"):
                for D in spec["D"]:
                    for B in spec["B"]:
                        r = bench_spec(cc, B, D, spec["drafts"], DTYPES[name], layout, repeats,
                                       args.warmup)
                        columns = ("plain", "pool", "spec", "torch", "copy", "plain copy")
                        pm, qm, sm, tm, cm, pcm = (r[c][0] for c in columns)
                        cells = " ".join(f"{r[c][0] * 1e6:8.1f} ({r[c][1] * 1e6:6.1f})"
                                         for c in columns)
                        print(f"{'':6} {name:5} {layout:6} {B:>4} {D:>5} | {cells} | "
                              f"{sm / pm:9.2f}x {cm / pcm:5.2f}x {sm / qm:9.2f}x {tm / sm:9.1f}x "
                              f"{sm / cm:8.2f}x")
                        if not args.quick and B == 64 and sm / pm > TARGET_SPEC:
                            misses.append(f"spec {name} {layout} B={B} D={D}: "
                                          f"{sm / pm:.2f}x > {TARGET_SPEC}x (copy floor "
                                          f"{cm / pcm:.2f}x)")
    if args.only in (None, "verify"):
        verify = QUICK_VERIFY if args.quick else VERIFY
        L = verify["tokens"]
        head = (f"{'verify':6} {'dtype':5} {'tree':5} {'B':>4} {'D':>5} | {'kernel us':>17} "
                f"{'torch us':>17} {'copy us':>17} | {'torch/kernel':>12} {'kernel/copy':>11}")
        print(head)
        print("-" * len(head))
        for name in dtypes:
            for tree, parents in TREES.items():
                for D in verify["D"]:
                    for B in verify["B"]:
                        r = bench_verify(cc, B, D, L, DTYPES[name], parents, repeats, args.warmup)
                        km, tm, cm = (r[c][0] for c in ("kernel", "torch", "copy"))
                        cells = " ".join(f"{r[c][0] * 1e6:8.1f} ({r[c][1] * 1e6:6.1f})"
                                         for c in ("kernel", "torch", "copy"))
                        print(f"{'':6} {name:5} {tree:5} {B:>4} {D:>5} | {cells} | "
                              f"{tm / km:11.1f}x {km / cm:10.2f}x")
    if args.only in (None, "packed"):
        head = (f"{'packed':6} {'dtype':5} {'seqs':>4} {'T':>5} {'D':>5} | {'ref ms':>15} "
                f"{'kernel ms':>15} | {'speedup':>13}")
        print(head)
        print("-" * len(head))
        for name in dtypes:
            lengths, r = bench_packed(cc, packed["seqs"], packed["tokens"], packed["dim"],
                                      DTYPES[name], repeats, args.warmup)
            (rm, rn), (km, kn) = r["ref"], r["kernel"]
            speed = rm / km
            print(f"{'':6} {name:5} {packed['seqs']:>4} {packed['tokens']:>5} {packed['dim']:>5} | "
                  f"{rm * 1e3:7.2f} ({rn * 1e3:5.2f}) {km * 1e3:7.2f} ({kn * 1e3:5.2f}) | "
                  f"{speed:6.1f}x ({rn / kn:4.1f}x)")
            if not args.quick and speed < TARGET_PACKED:
                misses.append(f"packed {name}: {speed:.1f}x < {TARGET_PACKED}x")
        print(f"sequence lengths: {lengths}")
    for m in misses:
        print(f"MISS {m}")
    return 1 if misses else 0
