"""Engine parity: our serving ops against vLLM's and SGLang's own Triton
kernels, called the way their Mamba layers call them, on the same random
inputs.

vLLM's `vllm/model_executor/layers/mamba/ops/causal_conv1d.py` (its sdist)
and SGLang's `sglang/kernels/ops/mamba/causal_conv1d_triton.py` (its wheel;
versions in tools/peers.sh) run under Triton's CPU interpreter in a
process of their own (TRITON_INTERPRET must be set before Triton is
imported), with stand-ins for what they import from their packages (the
platform: not a CPU, no PDL; triton_utils: Triton itself; the padding
constants). Three shims fix the interpreter, not the engines: it hands
masks that are integer 0/1 arrays to its loads (they become booleans); it
passes the launch's own argument dict to a grid function, whose writes
into it (vLLM's prefill grid stores its chunk map there) would replace the
interpreter's pointer objects (the grid gets a copy); and it does bf16
arithmetic on the raw 16-bit patterns (it computes in fp32 and rounds to
bf16, as a GPU's bf16 multiply does: the engines' taps multiply in x's
dtype).

fp32 and bf16, D = 40 (a partial block), pools with stride 1 along D (both
engines' layout) and rows left unused. vLLM (widths 2 to 7; padding as
vLLM 0.34 marks it, pool row 0, the null block: our pad_slot_id=0):

  update       x (B, D), one token a sequence
  spec         x (B, D, 1 + k) a view of a (B, 1 + k, D) projection, the pool
               (N, D, W - 1 + k), num_accepted_tokens from 1 to k + 1
  varlen_spec  the same packed (T, D) with query_start_loc, lengths 0 to k + 1
  varlen       packed (T, D), lengths 0 and 1: without num_accepted_tokens
               vLLM's kernel shifts the state by max_query_len whatever a
               sequence's length, so longer ones are outside its contract
  prefill      causal_conv1d_fn on x (D, T) (a (T, D) projection transposed)
               against causal_conv1d_packed_fwd on (T, D): lengths across
               vLLM's 8-token chunks, initial states for some sequences

SGLang (widths 2 to 4, the ones its tree path has), its verify step with
L = 4 tokens a sequence and the intermediate windows (rows, L, D, W - 1),
each sequence's windows row from intermediate_state_indices:

  chain        the tokens in a line
  tree         an EAGLE token tree (0 -> 1, 2; 1 -> 3) that SGLang takes as
               first-child and next-sibling tables, and we as the parents
               tree_parents derives from them
  spec         num_accept_tokens (SGLang's name), no windows, as vLLM's spec

Outputs agree within the dtype's tolerance on the sequences both compute
(vLLM leaves a padding row's output unwritten, ours writes zeros) and
windows and pools are bit-identical, except one difference, SGLang's: its
verify step also writes each pool row with the step's last W - 1 tokens,
which the engine then overwrites with the accepted token's window; ours
leaves the pool as it was (only read), which the chain and tree cases
check. Needs tools/peers.sh triton; skips otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("CAUSAL_CONV1D_CACHE", Path.home() / ".cache/causal-conv1d")) / "peers"
FILES = {"vllm": "vllm/model_executor/layers/mamba/ops/causal_conv1d.py",
         "sglang": "sglang/kernels/ops/mamba/causal_conv1d_triton.py"}
OPS = {"vllm": (["update", "spec", "varlen_spec", "varlen", "prefill"], [2, 3, 4, 5, 7]),
       "sglang": (["chain", "tree", "spec"], [2, 3, 4])}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CASES = [f"{engine}-{op}-{d}-W{w}" for engine, (ops, widths) in OPS.items() for op in ops
         for d in DTYPES for w in widths]
TOL = {"fp32": (3e-4, 1e-3), "bf16": (1e-2, 5e-2)}  # (rtol, atol), as the peers' checks
D, N, K = 40, 9, 3  # channels, pool rows, drafts


def sources() -> dict | None:
    """{"vllm": file, "sglang": file, "triton": folder} from tools/peers.sh
    triton, or None."""
    tag = "py%d.%d" % sys.version_info[:2]
    found = {name: sorted(CACHE.glob(f"src/{name}-*/{path}")) for name, path in FILES.items()}
    found["triton"] = sorted(p for p in CACHE.glob(f"triton*-{tag}") if (p / ".complete").exists())
    return {k: str(v[-1]) for k, v in found.items()} if all(found.values()) else None


# -- the parent: one child process per backend, one test per case -------------------

_results: dict = {}


@pytest.fixture(scope="module")
def engine_sources():
    found = sources()
    if found is None:
        pytest.skip(f"the engines' Triton files or Triton not in {CACHE} (tools/peers.sh triton)")
    return found


@pytest.mark.parametrize("case", CASES)
def test_matches_engine(backend, engine_sources, case):
    if backend.device != "cpu":
        pytest.skip("Triton's interpreter runs on CPU tensors")
    if backend.name not in _results:
        env = dict(os.environ, TRITON_INTERPRET="1",
                   PYTHONPATH=os.pathsep.join([engine_sources["triton"], str(HERE)]))
        spec = dict(engine_sources, path=str(backend.spec.path or ""))
        run = subprocess.run([sys.executable, __file__, json.dumps(spec)], env=env,
                             capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stderr[-3000:]
        _results[backend.name] = json.loads(run.stdout.strip().splitlines()[-1])
    ok, detail = _results[backend.name][case]
    assert ok, detail


# -- the child ----------------------------------------------------------------------

def patch_interpreter():
    """The three interpreter shims of the module docstring."""
    import triton.language as tl
    from triton.runtime import interpreter

    def as_bool(mask):
        if mask.data.dtype == bool:
            return mask
        return interpreter.TensorHandle(mask.data != 0, tl.int1)

    builder = interpreter.InterpreterBuilder
    load, store = builder.create_masked_load, builder.create_masked_store
    builder.create_masked_load = lambda self, p, m, *a: load(self, p, as_bool(m), *a)
    builder.create_masked_store = lambda self, p, v, m, *a: store(self, p, v, as_bool(m), *a)
    init = interpreter.GridExecutor.__init__

    def init_copying_meta(self, fn, arg_names, grid, *a, **k):
        if callable(grid):
            grid = (lambda g: lambda meta: g(dict(meta)))(grid)
        init(self, fn, arg_names, grid, *a, **k)

    interpreter.GridExecutor.__init__ = init_copying_meta
    binary = builder.binary_op

    def binary_in_fp32(self, lhs, rhs, op):
        if lhs.dtype.scalar != tl.bfloat16:
            return binary(self, lhs, rhs, op)
        widen = lambda h: self.cast_impl(h, tl.float32)  # noqa: E731
        return self.cast_impl(binary(self, widen(lhs), widen(rhs), op), tl.bfloat16)

    builder.binary_op = binary_in_fp32


def load_engines(spec: dict) -> dict:
    """{"vllm": module, "sglang": module}: each engine's file, with
    stand-ins for what it imports from its package."""
    import triton
    import triton.language as tl

    def stub(name, **attrs):
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module

    platform = types.SimpleNamespace(is_cpu=lambda: False, is_arch_support_pdl=lambda: False)
    for name in ("vllm", "vllm.v1", "vllm.v1.attention", "vllm.v1.attention.backends",
                 "sglang", "sglang.kernels", "sglang.kernels.jit"):
        stub(name)
    stub("vllm.platforms", current_platform=platform)
    stub("vllm.triton_utils", tl=tl, triton=triton)
    stub("vllm.v1.attention.backends.utils", NULL_BLOCK_ID=0, PAD_SLOT_ID=-1)
    stub("sglang.kernels.jit.utils", is_arch_support_pdl=lambda: False)
    modules = {}
    for engine in FILES:
        module_spec = importlib.util.spec_from_file_location(f"{engine}_causal_conv1d", spec[engine])
        modules[engine] = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(modules[engine])
    return modules


def chunk_metadata(lengths, block_m=8):
    """The (sequence, chunk) map of the prefill's programs that vLLM's
    attention metadata carries (causal_conv1d_fn's `metadata`)."""
    chunks = [-(-n // block_m) for n in lengths]
    seq = torch.tensor([i for i, c in enumerate(chunks) for _ in range(c)], dtype=torch.int32)
    offset = torch.tensor([j for c in chunks for j in range(c)], dtype=torch.int32)
    entry = dict(tot=len(seq), mlist=seq, mlist_len=len(seq), offsetlist=offset, batch_ptr=seq,
                 token_chunk_offset_ptr=offset)
    return types.SimpleNamespace(nums_dict={block_m: entry}, batch_ptr=seq,
                                 token_chunk_offset_ptr=offset)


def pool(S, dtype):
    """(N, D, S) with stride 1 along D, as vLLM allocates it."""
    return torch.randn(N, S, D).to(dtype).transpose(1, 2)


def compare(name, got, want, live, tol):
    """(ok, detail) of our output against the engine's on the live rows."""
    rtol, atol = tol
    g, w = got[live].double(), want[live].double()
    err = ((g - w).abs() / (atol + rtol * w.abs())).max().item() if g.numel() else 0.0
    return err <= 1.0, f"{name}: worst {err:.2f} of tolerance"


def vllm_case(vllm, cc, op, dname, W):
    dtype = DTYPES[dname]
    weight, bias = torch.randn(D, W).to(dtype), torch.randn(D).to(dtype)
    rows = torch.tensor([3, 0, 5, 1, 8, 6], dtype=torch.int32)  # 0: the null block
    B = len(rows)
    live_seq = rows != 0
    if op in ("update", "spec"):
        L = 1 if op == "update" else 1 + K
        x = torch.randn(B, L, D).to(dtype).transpose(1, 2)
        if op == "update":
            x = x[..., 0].contiguous()
        state = pool(W - 1 + (L - 1), dtype)
        kw = dict(num_accepted_tokens=torch.randint(1, L + 1, (B,), dtype=torch.int32)) \
            if op == "spec" else {}
        ours_state, vllm_state = state.clone(), state.clone()
        want = vllm.causal_conv1d_update(x.clone(), vllm_state, weight, bias, "silu",
                                         conv_state_indices=rows, **kw)
        got = cc.causal_conv1d_update(x, ours_state, weight, bias, "silu",
                                      conv_state_indices=rows, pad_slot_id=0, **kw)
        live = live_seq
    elif op in ("varlen_spec", "varlen"):
        top = 1 + K if op == "varlen_spec" else 1
        lengths = torch.tensor([top, 0, 2 % (top + 1), top, 1, 0])
        qsl = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]).to(torch.int32)
        x = torch.randn(int(lengths.sum()), D).to(dtype)
        state = pool(W - 1 + (top - 1), dtype)
        kw = dict(num_accepted_tokens=torch.randint(1, top + 1, (B,), dtype=torch.int32)) \
            if op == "varlen_spec" else {}
        ours_state, vllm_state = state.clone(), state.clone()
        want = vllm.causal_conv1d_update(x.clone(), vllm_state, weight, bias, "silu",
                                         conv_state_indices=rows, query_start_loc=qsl,
                                         max_query_len=top, out=torch.zeros_like(x), **kw)
        got = cc.causal_conv1d_update(x, ours_state, weight, bias, "silu", conv_state_indices=rows,
                                      query_start_loc=qsl, pad_slot_id=0, **kw)
        live = torch.repeat_interleave(live_seq, lengths)
    elif op == "prefill":
        lengths = [5, 1, 17, 9, 33, 8]
        qsl = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
        x = torch.randn(sum(lengths), D).to(dtype)  # (T, D); vLLM takes its transpose
        has_initial = torch.tensor([True, True, False, True, False, True])
        state = pool(W - 1, dtype)
        ours_state, vllm_state = state.clone(), state.clone()
        want = vllm.causal_conv1d_fn(x.t(), weight, bias, vllm_state, qsl, cache_indices=rows,
                                     has_initial_state=has_initial, activation="silu",
                                     metadata=chunk_metadata(lengths)).t()
        got = cc.causal_conv1d_packed_fwd(x, weight, bias, qsl, ours_state, rows, has_initial,
                                          activation="silu", pad_slot_id=0)
        live = torch.repeat_interleave(live_seq, torch.tensor(lengths))
    else:
        raise ValueError(op)
    ok, detail = compare("y", got, want, live, TOL[dname])
    return ok and torch.equal(ours_state, vllm_state), detail + pool_detail(ours_state, vllm_state)


def pool_detail(ours, want) -> str:
    bad = [r for r in range(N) if not torch.equal(ours[r], want[r])]
    return f"; pool rows {bad} differ" if bad else ""


def sglang_case(sglang, cc, op, dname, W):
    dtype = DTYPES[dname]
    L = 1 + K
    weight, bias = torch.randn(D, W).to(dtype), torch.randn(D).to(dtype)
    rows = torch.tensor([3, 5, 1, 8, 6], dtype=torch.int32)
    B = len(rows)
    x = torch.randn(B, L, D).to(dtype).transpose(1, 2)  # (B, D, L) of a (B * L, D) projection
    if op == "spec":
        state = pool(W - 1 + K, dtype)
        accepted = torch.randint(1, L + 1, (B,), dtype=torch.int32)
        ours_state, sglang_state = state.clone(), state.clone()
        want = sglang.causal_conv1d_update(x, sglang_state, weight, bias, "silu",
                                           conv_state_indices=rows, num_accept_tokens=accepted)
        got = cc.causal_conv1d_update(x, ours_state, weight, bias, "silu",
                                      conv_state_indices=rows, num_accepted_tokens=accepted)
        ok, detail = compare("y", got, want, slice(None), TOL[dname])
        return ok and torch.equal(ours_state, sglang_state), \
            detail + pool_detail(ours_state, sglang_state)
    state = pool(W - 1, dtype)
    window_rows = torch.tensor([2, 0, 6, 3, 4], dtype=torch.int32)
    ours_windows, sglang_windows = (torch.zeros(7, L, D, W - 1, dtype=dtype) for _ in range(2))
    ours_kw, sglang_kw = {}, {}
    if op == "tree":  # 0 -> (1, 2), 1 -> 3, as SGLang's tables and as parents
        first_child = torch.tensor([[1, 3, -1, -1]] * B, dtype=torch.int32)
        next_sibling = torch.tensor([[-1, 2, -1, -1]] * B, dtype=torch.int32)
        sglang_kw = dict(retrieve_next_token=first_child, retrieve_next_sibling=next_sibling,
                         retrieve_parent_token=torch.zeros(B, L, dtype=torch.int32))
        parents = cc.tree_parents(first_child, next_sibling)  # SGLang's tables, as parents
        if not torch.equal(parents, torch.tensor([[-1, 0, 0, 1]] * B, dtype=torch.int32)):
            return False, f"tree_parents gave {parents.tolist()}"
        ours_kw = dict(retrieve_parent_token=parents)
    ours_state, sglang_state = state.clone(), state.clone()
    want = sglang.causal_conv1d_update(x, sglang_state, weight, bias, "silu",
                                       conv_state_indices=rows,
                                       intermediate_conv_window=sglang_windows,
                                       intermediate_state_indices=window_rows, **sglang_kw)
    got = cc.causal_conv1d_update(x, ours_state, weight, bias, "silu", conv_state_indices=rows,
                                  intermediate_conv_window=ours_windows,
                                  intermediate_state_indices=window_rows, **ours_kw)
    ok, detail = compare("y", got, want, slice(None), TOL[dname])
    same_windows = torch.equal(ours_windows, sglang_windows)
    if not same_windows:
        detail += "; windows differ"
    # SGLang's verify step also rolls the pool (the docstring); ours only reads it
    return ok and same_windows and torch.equal(ours_state, state), \
        detail + pool_detail(ours_state, state)


def run_case(engines, cc, case):
    engine, op, dname, w = case.split("-")
    run = vllm_case if engine == "vllm" else sglang_case
    return run(engines[engine], cc, op, dname, int(w[1:]))


def child(spec: dict) -> dict:
    from helpers import load_kernel

    patch_interpreter()
    engines = load_engines(spec)
    cc = load_kernel(Path(spec["path"]), backend="cpu") if spec["path"] else \
        load_kernel(backend=os.environ.get("CAUSAL_CONV1D_TEST_BACKEND"))
    out = {}
    for i, case in enumerate(CASES):
        torch.manual_seed(i)
        try:
            out[case] = run_case(engines, cc, case)
        except Exception as e:  # a refusal or a crash is a failed case, with its reason
            out[case] = (False, f"{type(e).__name__}: {e}")
    return out


if __name__ == "__main__":
    print(json.dumps(child(json.loads(sys.argv[1]))))
