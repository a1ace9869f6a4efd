#!/usr/bin/env python3
"""Build the CUDA backend's kernels as CPU code (cuda_emu.h) into a loadable
CPU-variant folder, so the CUDA kernels' indexing can be tested with the
ordinary test-suite on a machine without a GPU:

    python causal_conv1d/cuda/emu/build_emu.py --out /tmp/cuda-emu/build
    CAUSAL_CONV1D_KERNEL_ROOT=/tmp/cuda-emu CAUSAL_CONV1D_TEST_BACKEND=cpu \\
        pytest tests/test_fwd.py

The library is the real shared host code (checks.cpp, ops.cpp, the torch
binding, cuda/launch.cpp) plus cuda/*.cu compiled by g++ with
CAUSAL_CONV1D_CUDA_EMU; its ops are registered for the CPU dispatch key and
run the CUDA kernels, block by block, on CPU tensors. Host-side index checks
(checks.cpp validates CPU index tensors) stay active, so out-of-range
indices are exercised through the launchers directly (see test_cuda.py).
For tests only: nothing here ships.
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent.parent


def load_builder():
    spec = importlib.util.spec_from_file_location("build_variant", ROOT / "tools" / "build_variant.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output root; the variant goes to <out>/<cpu variant>")
    ap.add_argument("--jobs", "-j", type=int, default=2)
    ap.add_argument("--sanitize", action="store_true",
                    help="AddressSanitizer + UndefinedBehaviorSanitizer: any out-of-bounds access "
                         "by a kernel, used or not, is reported (run python with libasan and "
                         "libstdc++ preloaded, as tools/sanitize.sh does)")
    ap.add_argument("--define", "-D", action="append", default=[], metavar="NAME=VALUE",
                    help="a preprocessor definition for the kernels, e.g. a build-time setting "
                         "that tools/gpu_tune.sh compares (repeatable)")
    args = ap.parse_args()

    bv = load_builder()
    config = tomllib.loads((ROOT / "build.toml").read_text())
    general = config["general"]
    module = general["name"].replace("-", "_")
    facts = bv.torch_facts("cpu")
    ext_id = f"_{module}_cudaemu_{bv.unique_suffix()}"
    out_root = Path(args.out).resolve()
    objdir = out_root.parent / ".local-build" / (facts["variant"] + "-cudaemu" + ("-san" if args.sanitize else ""))
    gen = objdir / "generated"
    bv.write_if_changed(gen / "registration.h", bv.registration_header())

    cuda = config["kernel"]["cuda"]
    srcs = [s for s in config["torch"]["src"] + cuda["src"] if not s.endswith((".h", ".cuh"))]
    srcs.append(str((HERE / "emu.cpp").relative_to(ROOT)))
    san = "address,undefined"
    opt = ["-O1", "-g", f"-fsanitize={san}", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all"] \
        if args.sanitize else ["-O2", "-g"]
    flags = [
        "-std=c++20", "-fPIC", "-Wall", "-Wno-unused-function", "-Wno-unused-variable",
        "-Wno-maybe-uninitialized", "-Wno-unknown-pragmas", *opt,
        f"-D_GLIBCXX_USE_CXX11_ABI={facts['cxx11_abi']}", "-DCPU_KERNEL",
        "-DCAUSAL_CONV1D_CUDA_EMU", f"-DTORCH_EXTENSION_NAME={ext_id}", *[f"-D{d}" for d in args.define],
        f"-I{ROOT}", f"-I{gen}",
        *[f"-isystem{p}" for p in facts["include"]], f"-isystem{sysconfig.get_paths()['include']}",
    ]
    lines = [
        "ninja_required_version = 1.10",
        f"cxx = {shutil.which('g++')}",
        "rule cxx",
        "  command = $cxx -MMD -MF $out.d $flags -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
        "  description = CXX(emu) $in",
        "rule link",
        "  command = $cxx -shared $in -o $out $ldflags",
        "  description = LINK $out",
    ]
    objects = []
    for src in srcs:
        obj = objdir / "obj" / (src.replace("/", "__") + ".o")
        lang = ["-x", "c++"] if src.endswith(".cu") else []
        objects.append(str(obj))
        lines.append(f"build {obj}: cxx {ROOT / src}")
        lines.append(f"  flags = {' '.join(shlex.quote(f) for f in flags + lang)}")
    so = objdir / f"{ext_id}.abi3.so"
    ldflags = [f"-L{facts['lib']}", "-lc10", "-ltorch", "-ltorch_cpu"] + ([f"-fsanitize={san}"] if args.sanitize else [])
    lines.append(f"build {so}: link {' '.join(objects)}")
    lines.append(f"  ldflags = {' '.join(ldflags)}")
    lines.append(f"default {so}")
    bv.write_if_changed(objdir / "build.ninja", "\n".join(lines) + "\n")
    ninja = shutil.which("ninja") or str(Path(sys.executable).parent / "ninja")
    rc = subprocess.run([ninja, "-C", str(objdir), f"-j{args.jobs}"]).returncode
    if rc != 0:
        return rc
    out = out_root / facts["variant"]
    bv.assemble(out, so, module, ext_id, general, "cpu", None)
    print(f"[emu] wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
