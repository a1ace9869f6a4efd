"""The built variant is what the Hub loader expects: layout, metadata, ABI,
namespaces, and loading through `kernels` as users do."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import ROOT, kernels_variants


@pytest.fixture(scope="module")
def variant_dir(cc) -> Path:
    return Path(cc.__file__).parent


def test_build_toml_parses_with_the_real_parser():
    from kernels._rust import Build

    build = Build.open(ROOT)
    assert "cpu" in [str(b).lower().split(".")[-1] for b in build.general.backends]


def test_variant_is_the_one_the_loader_picks(variant_dir):
    kv = kernels_variants()
    variants = kv.get_variants_local(variant_dir.parent)
    chosen, _ = kv.resolve_variant(variants, backend=os.environ.get("CAUSAL_CONV1D_TEST_BACKEND"))
    assert chosen is not None
    assert chosen.variant_str == variant_dir.name


def test_layout_and_metadata(cc, variant_dir):
    from kernels._rust import Metadata

    meta = json.loads((variant_dir / "metadata.json").read_text())
    ext_id = meta["id"]
    assert ext_id.startswith("_causal_conv1d_cpu_") or ext_id.startswith("_causal_conv1d_cuda_")
    assert cc.__name__ == ext_id
    for required in ("id", "name", "version", "license", "python-depends", "backend"):
        assert required in meta
    assert meta["name"] == "causal-conv1d" and meta["version"] == 1
    parsed = Metadata.read_from_file(variant_dir / "metadata.json")
    assert parsed.id == ext_id and parsed.version == 1
    files = sorted(p.name for p in variant_dir.iterdir() if p.name != "__pycache__")
    assert f"{ext_id}.abi3.so" in files
    for name in ("__init__.py", "_ops.py", "functions.py", "reference.py", "metadata.json", "causal_conv1d"):
        assert name in files
    assert (variant_dir / "causal_conv1d" / "__init__.py").is_file()
    # ops live in the build's unique namespace, never one named after the version
    assert cc.ops.name == ext_id


def test_digest_matches_kernels(variant_dir):
    from kernels._rust import Digest, Metadata

    meta = Metadata.read_from_file(variant_dir / "metadata.json")
    assert meta.digest is not None
    meta.digest.validate(Digest.hash_variant(meta.digest.algorithm, variant_dir))


def test_abi(variant_dir):
    from kernel_abi_check import ObjectFile

    (so,) = variant_dir.glob("*.abi3.so")
    obj = ObjectFile(str(so))
    assert list(obj.check_manylinux("manylinux_2_28")) == []
    assert list(obj.check_python_abi("3.9")) == []


@pytest.mark.skipif(platform.machine() != "x86_64" or shutil.which("objdump") is None,
                    reason="reads x86-64 code with binutils' objdump")
def test_cpu_backward_prefetches_are_in_the_library(variant_dir):
    """bwd.h asks for the cache lines of coming rows (prefetch_line). GCC
    once deleted every such request without a word (a loop of
    __builtin_prefetch behind an early return), so the library is read back:
    each x86-64 tier's backward must contain its prefetches."""
    (so,) = variant_dir.glob("*.abi3.so")
    if "_cpu_" not in so.name:
        pytest.skip("a CUDA variant: its backward is not bwd.h")
    listing = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", str(so)],
                             capture_output=True, text=True, check=True).stdout
    found = {}
    for block in listing.split("\n\n"):
        head = block.lstrip().split("\n", 1)[0]
        if "bwd_impl::prefetch_channel" not in head:
            continue
        tier = head.split("causal_conv1d::cpu::")[1].split("::")[0]
        found[tier] = found.get(tier, 0) + block.count("prefetcht0") + block.count("prefetchw")
    assert set(found) == {"DEFAULT", "AVX2", "AVX512", "AVX512_BF16"}, found
    assert all(n > 0 for n in found.values()), found


def test_ops_registered_for_own_backend_only(cc):
    backend = "CUDA" if cc.__name__.startswith("_causal_conv1d_cuda_") else "CPU"
    other = "CPU" if backend == "CUDA" else "CUDA"
    for op in ("fwd", "fwd_out", "bwd", "update", "varlen_states", "fwd_packed"):
        name = f"{cc.__name__}::{op}"
        assert torch._C._dispatch_has_kernel_for_dispatch_key(name, backend), name
        assert not torch._C._dispatch_has_kernel_for_dispatch_key(name, other), name


def _run_in_subprocess(code: str, **env) -> str:
    full_env = {**os.environ, **env}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env,
                         cwd="/")
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_get_kernel_through_local_kernels(variant_dir):
    """get_kernel("ORG/causal-conv1d", version=1) resolves to this tree via LOCAL_KERNELS."""
    import tomllib

    repo_id = tomllib.loads((ROOT / "build.toml").read_text())["general"]["hub"]["repo-id"]
    out = _run_in_subprocess(
        f"""
import torch, kernels
cc = kernels.get_kernel({repo_id!r}, version=1)
x = torch.randn(2, 8, 19); w = torch.randn(8, 4)
y = cc.causal_conv1d_fn(x, w, activation="silu")
r = cc.causal_conv1d_ref(x.double(), w.double(), activation="silu")
torch.testing.assert_close(y.double(), r, rtol=3e-4, atol=1e-3)
print(cc.__name__)
""",
        LOCAL_KERNELS=f"{repo_id}={variant_dir.parent}",
        HF_HUB_OFFLINE="1",
    )
    assert out.strip() == json.loads((variant_dir / "metadata.json").read_text())["id"]


def test_compat_folder_imports(variant_dir):
    """Older loaders import <variant>/causal_conv1d/__init__.py."""
    out = _run_in_subprocess(
        f"""
import importlib.util, sys, torch
p = {str(variant_dir / 'causal_conv1d' / '__init__.py')!r}
spec = importlib.util.spec_from_file_location("compat_cc", p)
m = importlib.util.module_from_spec(spec); sys.modules["compat_cc"] = m; spec.loader.exec_module(m)
x = torch.randn(1, 4, 9); w = torch.randn(4, 3)
print(float((m.causal_conv1d_fn(x, w).double() - m.causal_conv1d_ref(x.double(), w.double())).abs().max()))
"""
    )
    assert float(out.strip()) < 1e-5


def test_public_api(cc):
    for name in ("causal_conv1d_fn", "causal_conv1d_update", "causal_conv1d_varlen_states",
                 "causal_conv1d_packed_fwd", "causal_conv1d_ref"):
        assert name in cc.__all__ and callable(getattr(cc, name))
        assert getattr(cc, name).__doc__, f"{name} needs a docstring"
