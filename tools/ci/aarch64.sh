#!/usr/bin/env bash
# The aarch64-linux CPU variant, built and tested on an x86-64 machine:
#   1. Debian's cross compiler builds build/torch<v>-cxx11-cpu-aarch64-linux/
#      from the same build.toml (tools/build_variant.py --arch aarch64)
#      against PyPI's aarch64 torch wheel; kernel-abi-check runs on it.
#   2. qemu-user runs a subset of the tests with an aarch64 CPython (Debian's
#      arm64 packages) loading that variant through `kernels`, once per tier,
#      each on a CPU model that has exactly that tier's features:
#        neon      -cpu neoverse-n1  (ARMv8.2, no SVE: Graviton2, Altra)
#        sve       -cpu a64fx        (SVE, no BF16)
#        sve_bf16  -cpu max          (SVE2, BF16: like Graviton3/4, Grace)
#      plus CAUSAL_CONV1D_CPU_TIER=neon on the max model, running the
#      bad-input table.
# Downloads (the torch wheel is about 430 MB) are cached outside the clone,
# keyed by version: ${CAUSAL_CONV1D_CACHE:-~/.cache/causal-conv1d}/aarch64-...
# Needs: apt-get (as root) where the cross compiler or qemu-user is missing,
# and the venv of tools/dev.sh (pip, kernel-abi-check) first on PATH.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${CAUSAL_CONV1D_CACHE:-$HOME/.cache/causal-conv1d}"
pin() { sed -n "s/^$1==\([^ ]*\).*/\1/p" "$ROOT/requirements-dev.txt"; }
TORCH_VERSION="$(pin torch)"
PYV=3.11  # Debian 12's python3 for arm64; the wheels are downloaded for it
A64="$CACHE/aarch64-torch$TORCH_VERSION-py$PYV"
SYSROOT="$A64/sysroot"
SITE="$A64/site"

step() { printf '\n==> aarch64: %s\n' "$*"; }

# -- tools ------------------------------------------------------------------
missing=()
command -v aarch64-linux-gnu-g++ >/dev/null || missing+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
command -v readelf >/dev/null || missing+=(binutils)
if [ ${#missing[@]} -gt 0 ]; then
  step "installing ${missing[*]}"
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# -- cached aarch64 Python, torch and test dependencies ---------------------
if [ ! -e "$A64/.complete" ]; then
  step "setting up $A64 (once per version)"
  tmp="$A64.partial"
  rm -rf "$tmp" && mkdir -p "$tmp/apt-lists/partial" "$tmp/apt-cache/archives/partial" "$tmp/debs" "$tmp/wheels"
  # Debian's arm64 CPython and the libraries it links, downloaded with apt's
  # own lists kept in the cache (the host's dpkg architectures are untouched).
  apt_opts=(-qq -oAPT::Architecture=arm64 -oAPT::Architectures=arm64
            "-oDir::State::Lists=$tmp/apt-lists" "-oDir::Cache=$tmp/apt-cache")
  apt-get "${apt_opts[@]}" update
  pkgs=(libc6 libgcc-s1 libstdc++6 zlib1g "python$PYV-minimal" "libpython$PYV-minimal"
        "libpython$PYV-stdlib" "libpython$PYV-dev" libexpat1 libffi8 libssl3 libbz2-1.0 liblzma5
        libsqlite3-0 libuuid1 libncursesw6 libtinfo6 libreadline8 libcrypt1 libdb5.3 libnsl2
        libtirpc3 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libcom-err2 libkrb5support0 libkeyutils1)
  (cd "$tmp/debs" && apt-get "${apt_opts[@]}" download "${pkgs[@]/%/:arm64}" 2>/dev/null)
  for deb in "$tmp"/debs/*.deb; do dpkg -x "$deb" "$tmp/sysroot"; done
  # qemu-user shows the host's /proc/cpuinfo and /sys, which torch's cpuinfo
  # cannot parse; it opens PREFIX/path first when that exists (-L), so an
  # aarch64 description there (two Neoverse V1 cores) is what torch reads.
  cpu="$tmp/sysroot/sys/devices/system/cpu"
  mkdir -p "$tmp/sysroot/proc" "$cpu"
  for f in possible present online; do echo 0-1 >"$cpu/$f"; done
  for i in 0 1; do
    mkdir -p "$cpu/cpu$i/regs/identification"
    echo 0x00000000411fd401 >"$cpu/cpu$i/regs/identification/midr_el1"
    printf 'processor\t: %s\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg dcpodp svei8mm svebf16 i8mm bf16 dgh rng\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x1\nCPU part\t: 0xd40\nCPU revision\t: 1\n\n' "$i" \
      >>"$tmp/sysroot/proc/cpuinfo"
  done
  # PyPI's aarch64 torch (a CUDA build: its CUDA libraries are stubbed below
  # instead of downloaded) and what the tests import, pinned as for x86.
  plat=(--platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64
        --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64
        --only-binary=:all: --python-version "$PYV" --disable-pip-version-check -q)
  pip download "${plat[@]}" --no-deps -d "$tmp/wheels" "torch==$TORCH_VERSION"
  pip download "${plat[@]}" -d "$tmp/wheels" "kernels==$(pin kernels)" "numpy==$(pin numpy)" \
    "pytest==$(pin pytest)" "hypothesis==$(pin hypothesis)" filelock typing-extensions sympy \
    networkx jinja2 fsspec
  pip install "${plat[@]}" --no-deps --no-index --target "$tmp/site" "$tmp"/wheels/*.whl
  python "$ROOT/tools/ci/aarch64_torch_stubs.py" "$tmp/site/torch" "$tmp/sysroot"
  rm -rf "$tmp/wheels" "$tmp/debs" "$tmp/apt-cache" "$tmp/apt-lists"
  rm -rf "$A64" && mv "$tmp" "$A64" && touch "$A64/.complete"
fi

# -- build -------------------------------------------------------------------
step "cross-building the aarch64 CPU variant (tools/build_variant.py --arch aarch64)"
python "$ROOT/tools/build_variant.py" --arch aarch64 --torch-dir "$SITE/torch" \
  --python-include "$SYSROOT/usr/include/python$PYV" --check-abi -q

# -- tests under qemu ----------------------------------------------------------
# The subset (about 560 tests): KEEP and FILES, in aarch64_subset.sh.
source "$ROOT/tools/ci/aarch64_subset.sh"
cd "$ROOT"
# KEEP names tests: one renamed must not leave the subset unnoticed, so each
# file must select some (collected on this host, whose ids are the same).
selected="$(CAUSAL_CONV1D_TEST_BACKEND=cpu python -m pytest -q -p no:cacheprovider --collect-only \
  "${FILES[@]}" -k "$KEEP" | sed -n 's/::.*//p' | sort | uniq -c)"
echo "$selected"
for f in "${FILES[@]}"; do
  grep -q " $f\$" <<<"$selected" || { echo "error: -k \"$KEEP\" selects nothing in $f"; exit 1; }
done

qpytest() {  # CPU model, then pytest arguments
  local model="$1"; shift
  QEMU_LD_PREFIX="$SYSROOT" QEMU_CPU="$model" PYTHONPATH="$SITE" PYTHONDONTWRITEBYTECODE=1 \
    CAUSAL_CONV1D_TEST_BACKEND=cpu CAUSAL_CONV1D_KERNEL_ROOT="$ROOT" \
    CAUSAL_CONV1D_HYPOTHESIS_SCALE="${CAUSAL_CONV1D_HYPOTHESIS_SCALE:-0.2}" \
    qemu-aarch64 "$SYSROOT/usr/bin/python$PYV" -m pytest -q -p no:cacheprovider "$@"
}
# The four runs are independent processes, each on one core (qemu-user runs
# a guest thread on one host thread): JOBS (default 2) of them at a time,
# each one's output shown in order once all have ended.
logs="$(mktemp -d "${TMPDIR:-/tmp}/causal-conv1d-aarch64.XXXXXX")"
trap 'rm -rf "$logs"' EXIT
names=()
run() {  # title, then a command; in the background, output and status to $logs/<n>
  local n=${#names[@]}
  names+=("$1"); shift
  while [ "$(jobs -rp | wc -l)" -ge "${JOBS:-2}" ]; do wait -n || true; done
  (
    start=$SECONDS rc=0
    "$@" >"$logs/$n.out" 2>&1 || rc=$?
    echo "$((SECONDS - start)) s, exit $rc" >"$logs/$n.end"
    echo "$rc" >"$logs/$n.rc"
  ) &
}
for tier_model in neon:neoverse-n1 sve:a64fx sve_bf16:max; do
  tier="${tier_model%%:*}"; model="${tier_model#*:}"
  run "tier $tier (qemu -cpu $model)" qpytest "$model" "${FILES[@]}" -k "$KEEP"
done
neon_on() { CAUSAL_CONV1D_CPU_TIER=neon qpytest "$@"; }
run "CAUSAL_CONV1D_CPU_TIER=neon on -cpu max, with the bad-input table" \
  neon_on max tests/test_cpu_aarch64.py tests/test_bad_inputs.py -k "tier or test_bad_inputs"
wait
rc=0
for n in "${!names[@]}"; do
  step "${names[$n]}"
  cat "$logs/$n.out"
  echo "${names[$n]}: $(cat "$logs/$n.end")"
  [ "$(cat "$logs/$n.rc")" = 0 ] || rc=1
done
exit "$rc"
