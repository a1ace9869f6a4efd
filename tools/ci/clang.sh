#!/usr/bin/env bash
# The CPU variant under clang: kernel-builder also builds it for
# aarch64-darwin, with nixpkgs' clang, libc++ and torch's own libomp, on a
# Mac this project has not got (nor the macOS SDK to cross-compile with).
# What can be checked here, after tools/ci/aarch64.sh (its sysroot, torch
# and test subset):
#   1. every CPU translation unit of the aarch64 build compiles under clang
#      with libc++, to assembly, without an error or a warning (tiers.h
#      leaves out the SVE tiers there: clang ignores `#pragma GCC target`);
#   2. the aarch64 variant built by clang, the NEON baseline alone as on a
#      Mac, its OpenMP regions on LLVM's runtime (libomp, Debian's arm64
#      build, preloaded in the guest), passes aarch64.sh's test subset under
#      qemu-user on a CPU model without SVE.
# Both compile for -mcpu=apple-m1, as clang does for arm64-apple-macos by
# default: FP16 vector arithmetic and dot products, which turn on ATen's
# native fp16 paths (vec128_half_neon.h) that the Linux builds' baseline
# (generic ARMv8.0) never takes. The guest CPU is qemu's `max` with SVE
# off, which has every feature apple-m1 code may use (and BF16, as an M2).
# Not covered: Mach-O linking, macOS's C library and int64_t being long long
# there (the sources use int64_t throughout, never long).
# Debian 12's clang 14 is installed with apt-get where missing (as root);
# LLVM's arm64 OpenMP runtime is downloaded once into the cache.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${CAUSAL_CONV1D_CACHE:-$HOME/.cache/causal-conv1d}"
pin() { sed -n "s/^$1==\([^ ]*\).*/\1/p" "$ROOT/requirements-dev.txt"; }
PYV=3.11
A64="$CACHE/aarch64-torch$(pin torch)-py$PYV"
OMP="$CACHE/libomp14-arm64"
OMP_INCLUDE="$OMP/usr/lib/llvm-14/lib/clang/14.0.6/include"
step() { printf '\n==> clang: %s\n' "$*"; }

[ -e "$A64/.complete" ] || { echo "error: run tools/ci/aarch64.sh first ($A64)"; exit 1; }
if ! command -v clang++-14 >/dev/null || [ ! -e /usr/lib/llvm-14/include/c++/v1/vector ]; then
  step "installing clang-14 and libc++"
  apt-get update -qq && apt-get install -y -qq --no-install-recommends clang-14 libc++-14-dev \
    libc++abi-14-dev >/dev/null
fi
if [ ! -e "$OMP/.complete" ]; then
  step "downloading LLVM's arm64 OpenMP runtime into $OMP"
  tmp="$OMP.partial"
  rm -rf "$tmp" && mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/debs"
  apt_opts=(-qq -oAPT::Architecture=arm64 -oAPT::Architectures=arm64 -oAPT::Sandbox::User=root
            "-oDir::State::Lists=$tmp/lists" "-oDir::Cache=$tmp/cache")
  apt-get "${apt_opts[@]}" update
  (cd "$tmp/debs" && apt-get "${apt_opts[@]}" download libomp5-14:arm64 libomp-14-dev:arm64 2>/dev/null)
  for deb in "$tmp"/debs/*.deb; do dpkg -x "$deb" "$tmp"; done
  rm -rf "$tmp/debs" "$tmp/cache" "$tmp/lists"
  rm -rf "$OMP" && mv "$tmp" "$OMP" && touch "$OMP/.complete"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/causal-conv1d-clang.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# clang as a cross compiler for aarch64 Linux tuned as for a Mac, with
# omp.h from LLVM's runtime; -Wno-maybe-uninitialized (build_variant.py's, for GCC) is GCC's
# alone and clang would warn about it on every unit.
cat >"$work/clang++" <<EOF
#!/usr/bin/env bash
args=()
for a in "\$@"; do [ "\$a" = -Wno-maybe-uninitialized ] || args+=("\$a"); done
exec clang++-14 --target=aarch64-linux-gnu -mcpu=apple-m1 -isystem "$OMP_INCLUDE" "\${args[@]}"
EOF
chmod +x "$work/clang++"

step "every CPU translation unit of the aarch64 build, clang 14 with libc++"
python - "$ROOT" "$work/clang++" <<'PY'
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

repo, clang = Path(sys.argv[1]), sys.argv[2]
ninja = next((repo / ".local-build").glob("torch*-cpu-aarch64-linux/build.ninja"), None)
if ninja is None:
    sys.exit("[clang] no aarch64 build.ninja under .local-build/: run tools/ci/aarch64.sh first")
lines = ninja.read_text().splitlines()
jobs = []
for i, line in enumerate(lines):
    m = re.match(r"build (\S+\.o): cxx (\S+)", line)
    if m:
        flags = shlex.split(lines[i + 1].split("flags = ", 1)[1])
        jobs.append((m.group(2), [clang, "-stdlib=libc++", *flags, "-S", m.group(2), "-o", "/dev/null"]))


def run(job):
    r = subprocess.run(job[1], capture_output=True, text=True)
    return job[0], r.returncode, r.stderr


failed, warnings = [], set()
with ThreadPoolExecutor(max_workers=2) as pool:
    for src, rc, err in pool.map(run, jobs):
        if rc != 0:
            failed.append(src)
            print("\n".join(err.splitlines()[-15:]))
        warnings.update(l for l in err.splitlines() if ": warning:" in l)
for w in sorted(warnings):
    print("  WARNING", w)
print(f"[clang] {len(jobs)} translation units, {len(failed)} failed, {len(warnings)} distinct warnings")
sys.exit(1 if failed or warnings else 0)
PY

step "the aarch64 variant built by clang, tested under qemu (-cpu max,sve=off)"
CXX="$work/clang++" python "$ROOT/tools/build_variant.py" --arch aarch64 \
  --torch-dir "$A64/site/torch" --python-include "$A64/sysroot/usr/include/python$PYV" \
  --out "$work/kernel/build" -q
so="$(ls "$work"/kernel/build/torch*-cpu-aarch64-linux/*.so)"
readelf -p .comment "$so" | grep -q "clang version" || { echo "error: $so was not built by clang"; exit 1; }
cd "$ROOT"
source tools/ci/aarch64_subset.sh  # KEEP, FILES
QEMU_LD_PREFIX="$A64/sysroot" QEMU_CPU=max,sve=off PYTHONPATH="$A64/site" PYTHONDONTWRITEBYTECODE=1 \
  CAUSAL_CONV1D_TEST_BACKEND=cpu CAUSAL_CONV1D_KERNEL_ROOT="$work/kernel" \
  CAUSAL_CONV1D_CPU_KERNEL_ROOT="$work/kernel" \
  CAUSAL_CONV1D_HYPOTHESIS_SCALE="${CAUSAL_CONV1D_HYPOTHESIS_SCALE:-0.2}" \
  qemu-aarch64 -E "LD_PRELOAD=$OMP/usr/lib/aarch64-linux-gnu/libomp.so.5" \
  "$A64/sysroot/usr/bin/python$PYV" -m pytest -q -p no:cacheprovider "${FILES[@]}" -k "$KEEP"
