#!/usr/bin/env bash
# The README's two commands:
#   tools/dev.sh demo   set up, build this host's variant, run the demo
#   tools/dev.sh test   set up, build, run the whole test suite (what CI runs)
#
# The virtual environment is cached outside the clone, keyed by the pinned
# torch version, so a second run installs nothing:
#   ${CAUSAL_CONV1D_CACHE:-~/.cache/causal-conv1d}/venv-cpu-torch2.13.0
# and so are compiled objects: the g++ builds (host, emulator, sanitizer,
# aarch64) go through ccache (installed with apt-get where missing), whose
# base_dir makes a fresh clone elsewhere hit what another clone compiled.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${CAUSAL_CONV1D_CACHE:-$HOME/.cache/causal-conv1d}"
TORCH_VERSION="$(sed -n 's/^torch==//p' "$ROOT/requirements-dev.txt")"
VENV="$CACHE/venv-cpu-torch$TORCH_VERSION"
PYTHON="${PYTHON:-python3}"

step() { printf '\n==> [%ds] %s\n' "$SECONDS" "$*"; }  # seconds since the start

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    step "creating $VENV"
    mkdir -p "$CACHE"
    "$PYTHON" -m venv "$VENV"
  fi
  step "installing requirements-dev.txt"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$ROOT/requirements-dev.txt"
  export PATH="$VENV/bin:$PATH"
  if ! command -v ccache >/dev/null; then
    step "installing ccache"
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends ccache >/dev/null; } ||
      echo "(no ccache: every build compiles from scratch)"
  fi
}

# Runs a command whose g++ (and aarch64-linux-gnu-g++) is ccache's, where
# there is one. nvcc is left out: it calls gcc on temporary files that never
# hit.
cached() {
  local bin
  for bin in /usr/lib/ccache /usr/lib64/ccache; do
    if [ -x "$bin/g++" ] && command -v ccache >/dev/null; then
      PATH="$bin:$PATH" CCACHE_DIR="${CCACHE_DIR:-$CACHE/ccache}" CCACHE_BASEDIR="$ROOT" \
        CCACHE_NOHASHDIR=1 "$@"
      return
    fi
  done
  "$@"
}

build() {
  step "building this host's variant into build/"
  cached python "$ROOT/tools/build_variant.py" --check-abi
}

case "${1:-}" in
  demo)
    setup
    build
    step "demo"
    python "$ROOT/tools/demo.py"
    ;;
  test)
    setup
    build
    cd "$ROOT"
    step "vLLM's kernels (tools/peers.sh): CPU ones for benchmarks/test_peers.py, Triton ones (and SGLang's) for tests/test_engine_parity.py"
    cached bash tools/peers.sh cpu
    bash tools/peers.sh triton
    # pytest-xdist: JOBS workers, each running torch on one thread
    # (tests/conftest.py). The CUDA variant's build/load test runs in
    # tools/ci/cuda.sh with a CUDA torch; tests on a GPU run where one is
    # (tools/gpu.sh check).
    pytest=(python -m pytest -q -p no:cacheprovider --ignore=tests/test_cuda_variant.py)
    xdist=(-n "${JOBS:-2}" --dist loadgroup)
    step "test suite (CPU variant), in ${JOBS:-2} workers"
    "${pytest[@]}" "${xdist[@]}" tests benchmarks tools -m "not slow and not serial"
    step "tests that need a process to themselves: threads (serial), tensors past 2^31 elements (slow)"
    "${pytest[@]}" tests benchmarks tools -m "slow or serial"
    # Each tier is its own compilation of the kernels, and the decode and
    # serving steps' register paths differ per tier (vector width, bf16
    # rounding, PairServing on AVX-512 only); the forward's and backward's
    # per-tier grid is tests/test_fwd_cpu_paths.py.
    lower="$(python - <<'PY'
import pathlib, kernels
best = kernels.get_local_kernel(pathlib.Path("build")).kernel_tier()
for order in (["default", "avx2", "avx512", "avx512_bf16"], ["neon", "sve", "sve_bf16"]):
    if best in order:
        print(" ".join(order[:order.index(best)]))
PY
)"
    for tier in $lower; do
      step "update, serving, packed and property tests on the lower CPU tier $tier"
      CAUSAL_CONV1D_CPU_TIER="$tier" "${pytest[@]}" "${xdist[@]}" -m "not slow and not serial" \
        tests/test_update.py tests/test_serving.py tests/test_packed.py tests/test_properties.py
    done
    step "kernel-builder's ci-test: the Nix source set, pytest -m kernels_ci (tools/ci/kernels_ci.sh)"
    bash tools/ci/kernels_ci.sh
    step "the loader-facing tests under the newest kernels and transformers (tools/ci/kernels_latest.sh)"
    bash tools/ci/kernels_latest.sh
    step "the CPU variant built and tested against torch 2.12 and the newest torch (tools/ci/torch_versions.sh)"
    cached bash tools/ci/torch_versions.sh
    step "CUDA variant: build, link, ABI, load without a GPU"
    bash tools/ci/cuda.sh
    step "the CUDA kernels on the CPU emulator (tests/cuda_emu): every op's tests as backend cuda-emu"
    cached python tools/build_variant.py --backend cuda-emu --quiet  # into build-cuda-emu/
    # (the emulator runs a launch on one thread: its serial tests, if any,
    # need no process of their own)
    CAUSAL_CONV1D_TEST_BACKENDS="cuda-emu=$ROOT/build-cuda-emu" "${pytest[@]}" "${xdist[@]}" \
      tests benchmarks tools -m "not slow"
    step "AddressSanitizer + UndefinedBehaviorSanitizer"
    cached bash tools/ci/sanitize.sh
    step "benchmark smoke runs"
    for suite in fwd bwd decode peers host e2e; do
      python benchmarks/bench.py "$suite" --quick
    done
    python benchmarks/bench.py bwd --quick --channel-last --dout-other-layout
    python benchmarks/bench.py decode --quick --only spec --cold
    step "kernels benchmark: benchmarks/benchmark.py on build/, each workload verified (smoke run)"
    kernels benchmark . --iterations 2 --warmup 1
    step "aarch64-linux CPU variant: cross-built, tested under qemu-user on every tier"
    cached bash tools/ci/aarch64.sh
    step "clang (kernel-builder's compiler for aarch64-darwin): every aarch64 unit with libc++, and its build tested under qemu"
    bash tools/ci/clang.sh
    step "GCC 14, kernel-builder's compiler: every CPU translation unit, x86_64 and aarch64"
    bash tools/ci/gcc14.sh
    step "done"
    ;;
  *)
    echo "usage: tools/dev.sh demo|test" >&2
    exit 2
    ;;
esac
