"""The built CUDA variant, checked without a GPU (CI: tools/ci/cuda.sh).

Run with a CUDA build of torch and CAUSAL_CONV1D_KERNEL_ROOT pointing at a
folder whose build/ holds the CUDA variant: the kernel must load through the
`kernels` loader on a machine without a GPU, register every operator for the
CUDA dispatch key and for no other backend, carry SASS for its capabilities
plus PTX for the newest, and link nothing beyond torch and the CUDA runtime.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(
    torch.version.cuda is None, reason="needs a CUDA build of torch (torch.version.cuda is None)"
)

OPS = ["fwd", "fwd_out", "bwd", "update", "varlen_states", "fwd_packed"]
# Libraries the extension may need: torch's, the CUDA runtime torch ships, libc/libstdc++.
ALLOWED_NEEDED = re.compile(
    r"^(libc10(_cuda)?|libtorch(_cpu|_cuda)?|libcudart|libstdc\+\+|libgcc_s|libm|libc|ld-linux-x86-64|"
    r"ld-linux-aarch64)\.so(\.\d+)*$"
)


@pytest.fixture(scope="module")
def variant(cc) -> Path:
    return Path(cc.__file__).resolve().parent


@pytest.fixture(scope="module")
def metadata(variant) -> dict:
    return json.loads((variant / "metadata.json").read_text())


@pytest.fixture(scope="module")
def library(variant, metadata) -> Path:
    return variant / f"{metadata['id']}.abi3.so"


def test_loaded_variant_is_cuda(variant, metadata, cc):
    assert metadata["backend"]["type"] == "cuda", metadata["backend"]
    assert re.fullmatch(r"torch\d+-cxx11-cu\d+-(x86_64|aarch64)-linux", variant.name), variant.name
    assert cc.ops.name == metadata["id"], "ops live in the namespace named by metadata id"
    assert metadata["id"].startswith("_causal_conv1d_cuda_")


def test_archs_newest_has_ptx(metadata):
    """backend.archs as kernel-builder writes them, sorted as strings ("10.0"
    before "7.5"), and the newest capability carries PTX, so GPUs newer than
    the build can still JIT it."""
    archs = metadata["backend"]["archs"]
    assert archs and archs == sorted(set(archs)), archs
    newest = max(archs, key=lambda a: tuple(int(v) for v in a.removesuffix("+PTX").split(".")))
    assert newest.endswith("+PTX"), archs


@pytest.mark.parametrize("op", OPS)
def test_registered_for_cuda_only(cc, metadata, op):
    name = f"{metadata['id']}::{op}"
    assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA"), f"{name} lacks a CUDA kernel"
    for key in ("CPU", "XPU", "MPS", "HIP", "CompositeExplicitAutograd", "CompositeImplicitAutograd"):
        assert not torch._C._dispatch_has_kernel_for_dispatch_key(name, key), f"{name} has a {key} kernel"


def test_cpu_tensors_are_refused(cc):
    x = torch.randn(1, 4, 8)
    w = torch.randn(4, 3)
    with pytest.raises(NotImplementedError, match="CPU"):
        cc.ops.fwd(x, w, None, None, None, False, True)


def _needed(lib: Path) -> list[str]:
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf not found")
    out = subprocess.run([readelf, "-d", str(lib)], capture_output=True, text=True, check=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def test_links_only_torch_and_cudart(library):
    needed = _needed(library)
    assert any(n.startswith("libcudart.so") for n in needed), needed
    bad = [n for n in needed if not ALLOWED_NEEDED.match(n)]
    assert not bad, f"unexpected shared-library dependencies: {bad}"


def _cuobjdump() -> str | None:
    found = shutil.which("cuobjdump")
    if found:
        return found
    candidates = [Path("/usr/local/cuda/bin/cuobjdump")]
    try:
        import triton  # ships a cuobjdump with its NVIDIA backend

        candidates.append(Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump")
    except ImportError:
        pass
    return next((str(c) for c in candidates if c.exists()), None)


def test_device_code_for_every_arch_and_ptx(library, metadata):
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not found (CUDA toolkit or triton)")
    listing = subprocess.run([tool, "--list-elf", "--list-ptx", str(library)], capture_output=True,
                             text=True, check=True).stdout
    archs = [a.removesuffix("+PTX").replace(".", "") for a in metadata["backend"]["archs"]]
    for a in archs:
        assert re.search(rf"\.sm_{a}\.cubin", listing), f"no SASS for sm_{a}:\n{listing}"
    assert re.search(rf"\.sm_{archs[-1]}\.ptx", listing), f"no PTX for compute_{archs[-1]}:\n{listing}"


def test_abi(library):
    abi = pytest.importorskip("kernel_abi_check")
    obj = abi.ObjectFile(str(library))
    for result in (obj.check_manylinux("manylinux_2_28"), obj.check_python_abi("3.9")):
        problems = [str(v) for v in (result if isinstance(result, (list, tuple)) else [result]) if v]
        assert not problems, problems
