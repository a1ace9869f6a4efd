"""The CPU backend's run-time choices: which tier runs, and output memory.

- kernel_tier() names the instruction-set tier the kernels run in, the best
  one the CPU allows unless CAUSAL_CONV1D_CPU_TIER asks for a lower one; a
  misspelt or unsupported request is refused with a message naming the
  variable (the per-tier correctness grid is test_fwd_cpu_paths.py).
- Outputs of 2 MiB and more come from huge-page blocks that a freed output
  hands to the next output of the same size (output_memory.cpp): a block is
  reused only once its tensor is gone, reused outputs are fully rewritten,
  resizing such a tensor works, CAUSAL_CONV1D_CPU_CACHE_MB=0 turns the cache
  off and a malformed value is refused.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from helpers import KERNEL_ROOT
from helpers import assert_close

HERE = Path(__file__).resolve().parent
TIERS = ["default", "avx2", "avx512", "avx512_bf16"]
BIG = (2, 64, 8192)  # 4 MiB in fp32: above the 2 MiB threshold


@pytest.fixture(autouse=True)
def cpu_only(cc):
    if cc.kernel_tier() not in TIERS:
        pytest.skip(f"the loaded variant runs {cc.kernel_tier()!r}, not a CPU tier")


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    """Runs code in a fresh interpreter that has loaded the kernel as `cc`."""
    prelude = (
        "import sys, torch\n"
        f"sys.path.insert(0, {str(HERE)!r})\n"
        "from helpers import load_kernel\n"
        f"cc = load_kernel(__import__('pathlib').Path({str(KERNEL_ROOT)!r}), 'cpu')\n"
    )
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CAUSAL_CONV1D_CPU_")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", prelude + code], env=full_env,
                          capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------------------
# tiers


def test_kernel_tier_is_the_best_the_cpu_allows(cc):
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    if os.environ.get("CAUSAL_CONV1D_CPU_TIER") or os.environ.get("ATEN_CPU_CAPABILITY"):
        pytest.skip("a tier is forced in this environment")
    capability = torch.backends.cpu.get_cpu_capability()
    expected = {"AVX512": "avx512_bf16" if "avx512_bf16" in flags else "avx512",
                "AVX2": "avx2"}.get(capability, "default")
    assert cc.kernel_tier() == expected


@pytest.mark.parametrize("tier", ["default", "avx2"])
def test_lower_tier_on_request(tier):
    proc = run_python(
        "x = torch.randn(2, 5, 33); w = torch.randn(5, 4)\n"
        "y = cc.causal_conv1d_fn(x, w, activation='silu')\n"
        "ref = cc.causal_conv1d_ref(x, w, activation='silu').float()\n"
        "torch.testing.assert_close(y, ref, rtol=3e-4, atol=1e-3)\n"
        "print(cc.kernel_tier())\n",
        CAUSAL_CONV1D_CPU_TIER=tier)
    if tier == "avx2" and proc.returncode != 0 and "does not allow" in proc.stderr:
        pytest.skip("this CPU has no AVX2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == tier


def test_unknown_tier_is_refused():
    proc = run_python("x = torch.randn(1, 4, 8); w = torch.randn(4, 3)\n"
                      "cc.causal_conv1d_fn(x, w)\n", CAUSAL_CONV1D_CPU_TIER="avx1024")
    assert proc.returncode != 0
    assert "CAUSAL_CONV1D_CPU_TIER=avx1024 is not a tier" in proc.stderr
    assert "avx512_bf16" in proc.stderr  # the valid names are listed


# ---------------------------------------------------------------------------
# output memory


def test_freed_output_block_is_reused_and_rewritten(cc):
    x = torch.randn(*BIG)
    w = torch.randn(BIG[1], 4)
    first = cc.causal_conv1d_fn(x, w, activation="silu")
    address = first.data_ptr()
    del first
    x2 = torch.randn(*BIG)
    second = cc.causal_conv1d_fn(x2, w)
    assert second.data_ptr() == address, "a freed output of the same size is reused"
    assert_close(second, cc.causal_conv1d_ref(x2, w), (torch.float32,))


def test_live_outputs_never_share_memory(cc):
    x = torch.randn(*BIG)
    w = torch.randn(BIG[1], 4)
    outs = [cc.causal_conv1d_fn(x * (i + 1), w) for i in range(4)]
    assert len({o.data_ptr() for o in outs}) == 4
    for i, o in enumerate(outs):
        assert_close(o, cc.causal_conv1d_ref(x * (i + 1), w), (torch.float32,))


def test_output_block_resizes(cc):
    x = torch.randn(*BIG)
    w = torch.randn(BIG[1], 4)
    y = cc.causal_conv1d_fn(x, w)
    expected = y.clone()
    y.resize_(2 * y.numel())  # grows through the block's allocator, keeping the data
    assert torch.equal(y[: expected.numel()], expected.flatten())
    y.resize_(16)
    assert torch.equal(y, expected.flatten()[:16])


def test_outputs_from_many_threads(cc):
    x = torch.randn(*BIG)
    w = torch.randn(BIG[1], 4)
    expected = cc.causal_conv1d_ref(x, w, activation="silu").float()
    errors: list[str] = []

    def work():
        for _ in range(20):
            y = cc.causal_conv1d_fn(x, w, activation="silu")
            if not torch.allclose(y, expected, rtol=3e-4, atol=1e-3):
                errors.append("wrong result")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_cache_off():
    proc = run_python(
        f"x = torch.randn{BIG}; w = torch.randn({BIG[1]}, 4)\n"
        "for _ in range(3):\n"
        "    y = cc.causal_conv1d_fn(x, w, activation='silu')\n"
        "    torch.testing.assert_close(y, cc.causal_conv1d_ref(x, w, activation='silu').float(),"
        " rtol=3e-4, atol=1e-3)\n"
        "print('ok')\n",
        CAUSAL_CONV1D_CPU_CACHE_MB="0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok"


@pytest.mark.parametrize("value", ["lots", "-1", "1.5", "99999999999999999999", "17592186044416"])
def test_malformed_cache_size_is_refused(value):
    proc = run_python(f"cc.causal_conv1d_fn(torch.randn{BIG}, torch.randn({BIG[1]}, 4))\n",
                      CAUSAL_CONV1D_CPU_CACHE_MB=value)
    assert proc.returncode != 0
    assert f"CAUSAL_CONV1D_CPU_CACHE_MB must be a whole number of MiB, got '{value}'" in proc.stderr


def test_output_block_supports_lazy_clone(cc):
    """Copy-on-write clones need the storage's data pointer to be its own
    context, as torch's CPU allocator makes it."""
    x = torch.randn(*BIG)
    w = torch.randn(BIG[1], 4)
    y = cc.causal_conv1d_fn(x, w)
    expected = y.clone()
    z = torch._lazy_clone(y)
    z.add_(1)  # materializes z's own copy; y must not change
    assert torch.equal(y, expected)
    assert torch.equal(z, expected + 1)


def test_forked_child_allocates_and_frees_outputs(cc):
    """The block cache's lock is held across fork(): a forked child (a
    DataLoader worker, say) allocates, frees and reuses outputs, and frees a
    block it inherited."""
    x = torch.randn(*BIG)
    w = torch.randn(BIG[1], 4)
    keep = cc.causal_conv1d_fn(x, w)  # a live block the child inherits
    pid = os.fork()
    if pid == 0:  # child: report through the exit status only
        code = 1
        try:
            torch.set_num_threads(1)  # OpenMP's pool does not survive fork (DataLoader does this too)
            good = True
            for _ in range(3):
                y = cc.causal_conv1d_fn(x, w)
                good &= torch.equal(y, keep)
                del y
            expected = keep.clone()
            del keep  # frees the inherited block into the child's cache
            good &= torch.equal(cc.causal_conv1d_fn(x, w), expected)  # and reuses it
            code = 0 if good else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child status {status}"
