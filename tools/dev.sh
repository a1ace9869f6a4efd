#!/usr/bin/env bash
# The README's two commands:
#   tools/dev.sh demo   set up, build this host's variant, run the demo
#   tools/dev.sh test   set up, build, run the whole test suite (what CI runs)
#
# The virtual environment is cached outside the clone, keyed by the pinned
# torch version, so a second run installs nothing:
#   ${CAUSAL_CONV1D_CACHE:-~/.cache/causal-conv1d}/venv-cpu-torch2.13.0
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${CAUSAL_CONV1D_CACHE:-$HOME/.cache/causal-conv1d}"
TORCH_VERSION="$(sed -n 's/^torch==//p' "$ROOT/requirements-dev.txt")"
VENV="$CACHE/venv-cpu-torch$TORCH_VERSION"
PYTHON="${PYTHON:-python3}"

step() { printf '\n==> %s\n' "$*"; }

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    step "creating $VENV"
    mkdir -p "$CACHE"
    "$PYTHON" -m venv "$VENV"
  fi
  step "installing requirements-dev.txt"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$ROOT/requirements-dev.txt"
  export PATH="$VENV/bin:$PATH"
}

build() {
  step "building this host's variant into build/"
  python "$ROOT/tools/build_variant.py" --check-abi
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
    step "test suite (CPU variant)"
    # The CUDA variant's build/load test runs in tools/ci_cuda.sh with a CUDA
    # torch; tests on a GPU run where one is (tools/gpu.sh check).
    python -m pytest tests tools -m "not slow" -q -p no:cacheprovider \
      --ignore=tests/test_cuda_variant.py
    step "large-tensor tests (indexing past 2^31 elements)"
    python -m pytest tests -m slow -q -p no:cacheprovider --ignore=tests/test_cuda_variant.py
    step "kernel-builder's ci-test: the Nix source set, pytest -m kernels_ci (tools/kernels_ci.sh)"
    bash tools/kernels_ci.sh
    step "CUDA variant: build, link, ABI, load without a GPU"
    bash tools/ci_cuda.sh
    step "the CUDA kernels on the CPU emulator (tests/cuda_emu): every op's tests as backend cuda-emu"
    emu="${TMPDIR:-/tmp}/causal-conv1d-ci-emu"
    python tools/build_variant.py --backend cuda-emu --out "$emu/build" --quiet
    CAUSAL_CONV1D_TEST_BACKENDS="cuda-emu=$emu/build" \
      python -m pytest tests -m "not slow" -q -p no:cacheprovider --ignore=tests/test_cuda_variant.py
    step "AddressSanitizer + UndefinedBehaviorSanitizer"
    bash tools/sanitize.sh
    step "benchmark smoke runs"
    for bench in benchmarks/bench_cpu_*.py; do
      python "$bench" --quick
    done
    step "kernels benchmark: benchmarks/benchmark.py on build/, each workload verified (smoke run)"
    kernels benchmark . --iterations 2 --warmup 1
    step "aarch64-linux CPU variant: cross-built, tested under qemu-user on every tier"
    bash tools/ci_aarch64.sh
    ;;
  *)
    echo "usage: tools/dev.sh demo|test" >&2
    exit 2
    ;;
esac
