#!/usr/bin/env python3
"""Make PyPI's aarch64 torch wheel importable without its CUDA libraries.

PyPI's torch for linux-aarch64 is a CUDA build: libtorch_cpu.so itself links
libcudart and libcupti, and libtorch_python.so links libtorch_cuda.so and
through it cuDNN, NCCL, cuBLAS... (gigabytes of wheels). The aarch64 test run
under qemu (tools/ci/aarch64.sh) needs only the CPU part, so this script
replaces libtorch_cuda.so and libc10_cuda.so, and stands in for each CUDA
library the remaining ones link, with a small stub library of the same name
that defines every symbol the remaining libraries import from it (with its
symbol version): C functions return 0, C++ functions a zeroed scratch block
(what the few called while torch initializes return is a reference), data
is zeroed. Nothing CUDA ever runs: the stubbed c10::cuda::device_count()
answers 0, so torch reports no GPU, and the kernel is loaded with backend
"cpu".

    python tools/ci/aarch64_torch_stubs.py SITE/torch SYSROOT

SYSROOT holds the aarch64 system libraries (glibc, libstdc++): symbols they
define are not stubbed. Needs binutils' readelf (any architecture) and
aarch64-linux-gnu-gcc.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

REPLACED = ["libtorch_cuda.so", "libc10_cuda.so"]
# CUDA-only libraries nothing kept links; torch opens them lazily if at all.
REMOVED = ["libtorch_cuda_linalg.so", "libtorch_nvshmem.so", "libcaffe2_nvrtc.so"]
CC = "aarch64-linux-gnu-gcc"
TRACE = bool(os.environ.get("STUB_TRACE"))  # debugging: each stub prints its name


def readelf(*args: str) -> str:
    return subprocess.run(["readelf", "-W", *args], capture_output=True, text=True,
                          check=True).stdout


def needed(lib: Path) -> list[str]:
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", readelf("-d", str(lib)))


def dynsyms(lib: Path):
    """(name, version or None, type, defined) per dynamic symbol."""
    out = []
    for line in readelf("--dyn-syms", str(lib)).splitlines():
        f = line.split()
        if len(f) < 8 or not f[0].rstrip(":").isdigit():
            continue
        typ, bind, ndx, name = f[3], f[4], f[6], f[7]
        if not name or bind == "LOCAL":
            continue
        ver = None
        if "@" in name:
            name, _, ver = name.partition("@")
            ver = ver.lstrip("@")
        out.append((name, ver, typ, bind, ndx != "UND"))
    return out


def version_files(lib: Path) -> dict[str, str]:
    """version name -> file it is needed from (readelf -V, version needs)."""
    res, cur = {}, None
    for line in readelf("-V", str(lib)).splitlines():
        m = re.search(r"File: (\S+)", line)
        if m:
            cur = m.group(1)
            continue
        m = re.search(r"Name: (\S+)\s+Flags", line)
        if m and cur:
            res[m.group(1)] = cur
    return res


def main() -> int:
    torch_dir, sysroot = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    lib_dir = torch_dir / "lib"
    record = lib_dir / "causal_conv1d_stubs.txt"  # stubs of an earlier run
    earlier = record.read_text().split() if record.exists() else []
    for name in REMOVED + REPLACED + earlier:
        (lib_dir / name).unlink(missing_ok=True)
    kept = sorted(p for p in lib_dir.glob("*.so*") if not p.name.startswith("stub"))
    kept += sorted(torch_dir.glob("_C*.so"))
    kept_names = {p.name for p in kept}

    defined: set[str] = set()
    system = [p for p in sysroot.rglob("*.so*") if p.is_file() and not p.is_symlink()]
    system += sorted(sysroot.glob("usr/bin/python3*"))  # the Python C API lives in the executable
    for lib in kept + system:
        try:
            defined |= {n for n, _, _, _, d in dynsyms(lib) if d}
        except subprocess.CalledProcessError:
            pass  # not an ELF file (linker scripts)

    system_names = {p.name for p in sysroot.rglob("*.so*")}
    stubs = set(REPLACED)
    for lib in kept:
        stubs |= {n for n in needed(lib) if n not in kept_names and n not in system_names}
    # symbols[stub][version or None] = {name: type}
    symbols: dict[str, dict[str | None, dict[str, str]]] = defaultdict(lambda: defaultdict(dict))
    for lib in kept:
        vfiles = version_files(lib)
        for name, ver, typ, bind, is_def in dynsyms(lib):
            if is_def or name in defined or bind == "WEAK":
                continue
            owner = vfiles.get(ver) if ver else None
            if ver and owner not in stubs:
                continue  # a system library's versioned symbol
            for stub in ([owner] if owner else sorted(stubs)):
                symbols[stub][ver][name] = typ

    with tempfile.TemporaryDirectory() as tmp:
        for stub in sorted(stubs):
            asm, script, k = [], [], 0
            for ver, syms in symbols[stub].items():
                for name, typ in sorted(syms.items()):
                    q = f'"{name}"'
                    if typ == "OBJECT" and name.startswith("_ZTI"):
                        # typeinfo: pybind11 reads typeid(T).name() of every
                        # class _C registers, so a real std::type_info
                        # (no bases) with the type's mangled name.
                        k += 1
                        asm += [".data", ".balign 16", f".globl {q}", f".type {q}, %object",
                                f".size {q}, 16", f"{q}:",
                                ".quad _ZTVN10__cxxabiv117__class_type_infoE+16", f".quad .Lt{k}",
                                ".section .rodata", f'.Lt{k}: .asciz "{name[4:]}"']
                    elif typ == "OBJECT":
                        asm += [".data", ".balign 16", f".globl {q}", f".type {q}, %object",
                                f".size {q}, 256", f"{q}:", ".zero 256"]
                    elif typ == "TLS":
                        asm += ['.section .tbss,"awT",%nobits', ".balign 16", f".globl {q}",
                                f".type {q}, %tls_object", f".size {q}, 256", f"{q}:", ".zero 256"]
                    else:
                        asm += [".text", ".balign 4", f".globl {q}", f".type {q}, %function", f"{q}:"]
                        if TRACE:  # write(2, name) first
                            k += 1
                            asm += [f"adr x1, .Ln{k}", f"mov x2, #{len(name) + 1}", "mov x0, #2",
                                    "mov x8, #64", "svc #0", ".section .rodata",
                                    f'.Ln{k}: .ascii "{name}\\n"', ".text"]
                        if name.startswith("_Z"):  # C++: may return a reference
                            asm += ["adrp x0, scratch", "add x0, x0, :lo12:scratch", "mov x1, #0", "ret"]
                        else:  # C APIs (CUDA runtime...): 0, i.e. success, null
                            asm += ["mov x0, #0", "mov x1, #0", "ret"]
                if ver:
                    script.append(f"{ver} {{ global: " + " ".join(f'"{n}";' for n in sorted(syms)) + " };")
            # C++ stubs return this zeroed, 64 KiB-aligned block: a returned
            # reference is usable, and a returned bool/int8/int16 reads 0.
            asm += [".bss", ".balign 65536", "scratch:", ".zero 65536"]
            src, vs = Path(tmp) / f"{stub}.s", Path(tmp) / f"{stub}.map"
            src.write_text("\n".join(asm) + "\n")
            vs.write_text("\n".join(script) + "\n")
            cmd: list = [CC, "-shared", "-nostdlib", "-o", str(lib_dir / stub), f"-Wl,-soname,{stub}", str(src)]
            if script:
                cmd.append(f"-Wl,--version-script={vs}")
            if "__class_type_info" in src.read_text():  # loaded before libstdc++ may be
                cmd += [next(sysroot.rglob("libstdc++.so.6"))]
            subprocess.run(cmd, check=True)
            print(f"stub {stub}: {sum(len(s) for s in symbols[stub].values())} symbols")
    record.write_text("\n".join(sorted(stubs)) + "\n")
    # torch.distributed's init builds ProcessGroupNCCL options objects in the
    # stubbed libtorch_cuda: report it (c10d, rpc, ...) unavailable instead.
    for py in [torch_dir / "__init__.py", *(torch_dir / "distributed").rglob("*.py")]:
        text = py.read_text()
        new = re.sub(r'hasattr\(torch\._C, "_\w+_init"\)', "False", text)
        if new != text:
            py.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
