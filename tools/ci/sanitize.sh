#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer over the native code.
#
# Builds the CPU variant with `tools/build_variant.py --sanitize` into a
# private folder (build-sanitize/, git-ignored; the normal build/ is left
# alone), then runs the tests that drive the native code under the
# sanitizer runtimes: the bad-input table, the property tests at a reduced
# budget, non-finite values, threads, and the per-op grids, on the CPU tier
# this machine picks; then the property and non-finite tests again on each
# lower tier (CAUSAL_CONV1D_CPU_TIER=avx512, avx2, default), whose code
# differs (bf16 rounding, vector widths, the portable exp). Fails on any
# test failure and on any sanitizer report (reports also go to log files, so
# one raised in a worker thread or swallowed by a crash still counts).
#
#   tools/ci/sanitize.sh                         # build + run (CI runs this)
#   tools/ci/sanitize.sh tests/test_fwd.py -k silu   # other pytest arguments
#
# Environment: SANITIZE_ROOT (default build-sanitize), SANITIZE_SCALE (share
# of the hypothesis budget, default 0.25), JOBS (build jobs and
# pytest-xdist workers, default 2),
# PYTHON (default python), CXX (default g++; its runtimes are preloaded).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python}"
CXX="${CXX:-g++}"
SAN_ROOT="$(realpath -m "${SANITIZE_ROOT:-$ROOT/build-sanitize}")"
LOGS="$SAN_ROOT/reports"

say() { printf '[sanitize] %s\n' "$*"; }

# ---- build ------------------------------------------------------------------
t0=$SECONDS
say "building the CPU variant with ASan + UBSan (build_variant.py --sanitize) into $SAN_ROOT"
"$PYTHON" tools/build_variant.py --quiet --backend cpu --sanitize --jobs "${JOBS:-2}" \
  --out "$SAN_ROOT/build"
build_s=$((SECONDS - t0))

so="$(ls "$SAN_ROOT"/build/*/_causal_conv1d_*.abi3.so)"
# (ldd's whole output first: `ldd | grep -q` under pipefail fails whenever
# grep's early exit cuts ldd off with SIGPIPE.)
if ! grep -q libasan <<<"$(ldd "$so")"; then
  say "error: $so is not linked against libasan"
  exit 1
fi

# ---- runtimes -----------------------------------------------------------------
# Python itself is not instrumented, so the ASan runtime must be loaded first.
# libstdc++ is preloaded right after it: ASan resolves __cxa_throw when it
# starts, and python does not link libstdc++ (without it the first C++
# exception, i.e. the first refused argument, aborts in the interceptor).
libasan="$("$CXX" -print-file-name=libasan.so)"
libstdcxx="$("$CXX" -print-file-name=libstdc++.so)"
for lib in "$libasan" "$libstdcxx"; do
  [ -e "$lib" ] || { say "error: $lib not found (is $CXX gcc?)"; exit 1; }
done
rm -rf "$LOGS"
mkdir -p "$LOGS"

existing() {
  local f
  for f in "$@"; do [ -f "tests/$f.py" ] && printf 'tests/%s.py\n' "$f"; done
}

# run_tests SCALE [CAUSAL_CONV1D_CPU_TIER] -- pytest arguments
run_tests() {
  local scale="$1" tier="$2"
  shift 3
  say "running $* (CPU tier: ${tier:-best available})"
  env \
    LD_PRELOAD="$libasan $libstdcxx${LD_PRELOAD:+ $LD_PRELOAD}" \
    ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:log_path=$LOGS/asan" \
    UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$LOGS/ubsan" \
    ${tier:+CAUSAL_CONV1D_CPU_TIER=$tier} \
    CAUSAL_CONV1D_KERNEL_ROOT="$SAN_ROOT" \
    CAUSAL_CONV1D_TEST_BACKEND=cpu \
    CAUSAL_CONV1D_HYPOTHESIS_SCALE="$scale" \
    "$PYTHON" -m pytest -q -p no:cacheprovider "$@"
}

# ---- run ----------------------------------------------------------------------
t1=$SECONDS
rc=0
if [ "$#" -gt 0 ]; then
  run_tests "${SANITIZE_SCALE:-0.25}" "" -- -m "not slow" "$@" || rc=1
else
  mapfile -t main < <(existing test_bad_inputs test_robustness test_upstream_parity \
                               test_properties test_nonfinite test_threads \
                               test_fwd test_bwd test_update test_packed test_serving)
  # in pytest-xdist workers (single-threaded, tests/conftest.py), then the
  # serial tests (threads) in a process of their own
  run_tests "${SANITIZE_SCALE:-0.25}" "" -- -n "${JOBS:-2}" -m "not slow and not serial" \
    "${main[@]}" || rc=1
  run_tests "${SANITIZE_SCALE:-0.25}" "" -- -m "serial and not slow" "${main[@]}" || rc=1
  best="$("$PYTHON" -c 'import torch; print(torch.backends.cpu.get_cpu_capability())')"
  case "$best" in
    AVX512)
      lower=(avx2 default)
      # the best tier is then avx512_bf16 where the CPU has it (cpu/dispatch.cpp)
      if grep -qw avx512_bf16 /proc/cpuinfo; then lower=(avx512 avx2 default); fi ;;
    AVX2) lower=(default) ;;
    *) lower=() ;;
  esac
  mapfile -t again < <(existing test_properties test_nonfinite)
  for tier in "${lower[@]}"; do
    run_tests 0.1 "$tier" -- -m "not slow" "${again[@]}" || rc=1
  done
fi
test_s=$((SECONDS - t1))

reports=("$LOGS"/*)
if [ -e "${reports[0]}" ]; then
  say "sanitizer reports:"
  for r in "${reports[@]}"; do
    printf '%s\n' "----- $r"
    head -n 80 "$r"
  done
  rc=1
fi
say "build ${build_s}s, tests ${test_s}s, pytest/sanitizers: $([ "$rc" -eq 0 ] && echo clean || echo FAILED)"
exit "$rc"
