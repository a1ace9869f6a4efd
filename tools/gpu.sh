#!/usr/bin/env bash
# The GPU machine's entry point (a CUDA torch, nvcc and ninja; no network,
# no `kernels` package needed):
#
#   tools/gpu.sh check     build the CUDA and CPU variants side by side; the
#                          test suite on both backends (pytest -m "not slow":
#                          CUDA against the float64 reference and against
#                          the CPU variant); `benchmarks/bench.py gpu` with
#                          the peers tools/peers.sh staged in .peers/; the
#                          `sanitizer` tests under compute-sanitizer memcheck,
#                          then racecheck if time is left. A short table and
#                          $OUT/gpu-results.md (card, date, commit, tables)
#                          come out; the README's GPU table is filled from it.
#   tools/gpu.sh profile   Nsight Compute's counters for the benchmark
#                          kernels (tools/gpu_profile.py under ncu): per
#                          kernel its time, DRAM and issue use, active warps,
#                          registers and the three costliest warp stalls,
#                          which say whether a kernel short of its bandwidth
#                          waits on memory, barriers or its own instructions.
#                          Profiles check's build (built here if missing).
#
# Environment: PYTHON (default python3: a GPU machine's python holds the CUDA
# torch), JOBS (default every core), CUDA_CAPABILITIES (build.toml syntax,
# default 9.0+PTX: an H100 or H200),
# OUT (default build/gpu-<command>), BUDGET_S (check's time budget, default
# 470 s: every step has a timeout so the summary always comes out),
# BENCH_ARGS (more options for bench.py gpu, e.g. "--ops spec --peers none"),
# CHECK_COMMIT (names the commit where the machine's .git may be stale),
# PREBUILT=1 (check: test the variants already in build/gpu-check/kernel/
# build instead of building them, e.g. built off the machine against its
# torch version with `PATH=<a venv with that torch>/bin:$PATH python
# tools/build_variant.py --backend cuda --cuda-capabilities 9.0+PTX --out
# build/gpu-check/kernel/build` (and --backend cpu) and carried to it: the
# builds are minutes of device time),
# KERNEL_ROOT (profile: the build to profile, default check's), PROFILE_ARGS
# (profile: options for gpu_profile.py run, e.g. "--ops spec").
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo" || exit 1
py="${PYTHON:-python3}"
jobs="${JOBS:-$(nproc)}"
caps="${CUDA_CAPABILITIES:-9.0+PTX}"
if [[ -z "${CUDA_HOME:-}" ]]; then
  nvcc_dir="$(dirname "$(dirname "$(readlink -f "$(command -v nvcc || echo /none/bin/nvcc)")")")"
  for c in "$nvcc_dir" /usr/local/cuda /opt/cuda; do
    if [[ -x "$c/bin/nvcc" && -f "$c/include/cuda_runtime.h" ]]; then export CUDA_HOME="$c"; break; fi
  done
fi
check_root="$repo/build/gpu-check/kernel"   # build/<variant>/ of both variants

# build_into ROOT BACKEND [NVCC_FLAGS]: the variant of BACKEND (cuda: for
# $caps) into ROOT/build/<variant>/, where CAUSAL_CONV1D_KERNEL_ROOT=ROOT
# finds it; the output goes to stdout.
build_into() {
  local caps_args=()
  [[ $2 == cuda ]] && caps_args=(--cuda-capabilities "$caps")
  CAUSAL_CONV1D_NVCC_FLAGS="${3:-}" "$py" tools/build_variant.py --backend "$2" \
    "${caps_args[@]}" --out "$1/build" --jobs "$jobs"
}

# ---- check ---------------------------------------------------------------------
check() {
  local out="${OUT:-$repo/build/gpu-check}" root="$check_root"
  mkdir -p "$out"
  echo "CUDA_HOME=${CUDA_HOME:-unset}"
  # The machine's image has its own g++ (seen: /opt/gcc with GCC 13 headers),
  # whose build differs from kernel-builder's: say which one built this.
  echo "g++: $(command -v g++) ($(g++ --version 2>/dev/null | head -n 1))"
  local start=$SECONDS
  declare -a names=() results=() times=()
  record() { names+=("$1"); results+=("$2"); times+=("$3"); }
  run_step() {  # name timeout_s log command...
    local name=$1 limit=$2 log=$3; shift 3
    local t0=$SECONDS
    printf '== %s\n' "$name"
    timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
    local rc=$?
    local verdict=pass
    [[ $rc -eq 124 || $rc -eq 137 ]] && verdict="TIMEOUT (${limit}s)"
    [[ $rc -ne 0 && $verdict == pass ]] && verdict="FAIL (rc $rc)"
    tail -n 3 "$log"
    record "$name" "$verdict" $((SECONDS - t0))
    return $rc
  }
  local budget="${BUDGET_S:-470}"
  left() { echo $((budget - (SECONDS - start))); }
  limit() {  # a step's timeout: its own cap, or what is left of the budget
    local l; l=$(left); (( l > $1 )) && l=$1
    echo $(( l > 0 ? l : 1 ))
  }

  # -- builds (both at once; the CUDA one is the long pole) -------------------
  local t0=$SECONDS cuda_pid="" cpu_pid="" cuda_rc cpu_rc
  if [[ -n "${PREBUILT:-}" ]]; then
    echo "PREBUILT: the variants in $root/build: $(ls "$root/build" 2>/dev/null | tr '\n' ' ')"
    # each build's log and exit status stand for whether its variant is there
    compgen -G "$root/build/*-cu[0-9]*" >"$out/build-cuda.log"; cuda_rc=$?
    compgen -G "$root/build/*-cpu-*" >"$out/build-cpu.log"; cpu_rc=$?
  else
    build_into "$root" cuda -lineinfo >"$out/build-cuda.log" 2>&1 & cuda_pid=$!
    build_into "$root" cpu >"$out/build-cpu.log" 2>&1 & cpu_pid=$!
  fi
  # Peers carried in .peers/ (tools/peers.sh): installed meanwhile, upstream
  # built from its sdist here when no wheel was staged.
  local peers_pid=""
  if compgen -G "$repo/.peers/*" >/dev/null; then
    PYTHON="$py" timeout 400 tools/peers.sh install "$out/peers-site" >"$out/peers-install.log" 2>&1 &
    peers_pid=$!
  fi
  if [[ -n "$cuda_pid" ]]; then
    wait $cuda_pid; cuda_rc=$?
    wait $cpu_pid; cpu_rc=$?
  fi
  if [[ -n "${PREBUILT:-}" ]]; then
    record "CUDA variant (prebuilt)" "$([[ $cuda_rc -eq 0 ]] && echo pass || echo "ABSENT")" 0
    record "CPU variant (prebuilt)" "$([[ $cpu_rc -eq 0 ]] && echo pass || echo "ABSENT")" 0
  else
    record "build CUDA variant ($caps)" "$([[ $cuda_rc -eq 0 ]] && echo pass || echo "FAIL (see build-cuda.log)")" $((SECONDS - t0))
    record "build CPU variant" "$([[ $cpu_rc -eq 0 ]] && echo pass || echo "FAIL (see build-cpu.log)")" $((SECONDS - t0))
  fi
  tail -n 2 "$out/build-cuda.log"
  if [[ $cpu_rc -eq 0 ]]; then tail -n 2 "$out/build-cpu.log"; else grep -m 12 -B 2 -A 6 -E 'error|FAILED' "$out/build-cpu.log"; fi

  # The host's kernel is the CUDA variant; the backend fixture adds the CPU
  # variant of the same root, so every op's grid runs on both. Without a CPU
  # variant the CUDA backend runs alone rather than every CPU case erroring.
  export CAUSAL_CONV1D_KERNEL_ROOT="$root" CAUSAL_CONV1D_CPU_KERNEL_ROOT="$root"
  [[ $cpu_rc -eq 0 ]] || export CAUSAL_CONV1D_TEST_BACKENDS="cuda=$root"
  local pytest_args=(-q -p no:cacheprovider -rfEs --maxfail=50)
  local ops=(tests/test_fwd.py tests/test_bwd.py tests/test_update.py tests/test_packed.py
             tests/test_serving.py tests/test_upstream_parity.py tests/test_opcheck.py
             tests/test_device.py)
  # xdist workers share the one GPU; each runs torch on one thread (plugin.py)
  local workers=$(( jobs > 12 ? 12 : jobs ))

  if [[ $cuda_rc -eq 0 ]]; then
    # -- tests ------------------------------------------------------------------
    run_step "tests (CUDA and CPU backends)" "$(limit 240)" "$out/tests.log" \
      "$py" -m pytest "${ops[@]}" "${pytest_args[@]}" -m "not slow and not serial" -n "$workers" \
      --junitxml="$out/tests.xml"
    if ! grep -qE '[0-9]+ passed' "$out/tests.log"; then
      results[${#results[@]}-1]="FAIL (nothing ran: is a GPU visible?)"
    fi

    # -- benchmark --------------------------------------------------------------
    # Triton peers compile and autotune on first use: no peer starts after --budget-s.
    local peer_env=()
    if [[ -n "$peers_pid" ]]; then
      wait "$peers_pid"
      peer_env=(env "PYTHONPATH=$out/peers-site${PYTHONPATH:+:$PYTHONPATH}")
    fi
    run_step "benchmarks/bench.py gpu${peers_pid:+ (with peers)}" "$(limit 240)" "$out/bench.log" \
      "${peer_env[@]}" "$py" benchmarks/bench.py gpu --budget-s 170 --json "$out/bench.json" \
      ${BENCH_ARGS:-}

    # -- compute-sanitizer -------------------------------------------------------
    local sanitizer
    sanitizer="$(command -v compute-sanitizer || true)"
    [[ -z "$sanitizer" && -x "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" ]] &&
      sanitizer="${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer"
    # Only the CUDA backend: CAUSAL_CONV1D_TEST_BACKENDS=host is the CUDA
    # variant alone.
    local san_env=(env CAUSAL_CONV1D_TEST_BACKENDS="cuda=$root")
    if [[ -z "$sanitizer" ]]; then
      record "compute-sanitizer" "SKIPPED (compute-sanitizer not found)" 0
    elif (( $(left) < 60 )); then
      record "compute-sanitizer memcheck" "SKIPPED (out of time budget)" 0
    else
      # Without the caching allocator every tensor is its own allocation, so an
      # out-of-bounds access cannot land silently inside a neighbour.
      PYTORCH_NO_CUDA_MEMORY_CACHING=1 run_step "compute-sanitizer memcheck (-m sanitizer)" \
        "$(limit 200)" "$out/memcheck.log" "${san_env[@]}" "$sanitizer" --tool memcheck \
        --error-exitcode 99 --print-limit 20 "$py" -m pytest "${ops[@]}" "${pytest_args[@]}" -m sanitizer
      if (( $(left) >= 60 )); then
        run_step "compute-sanitizer racecheck (-m sanitizer)" "$(limit 150)" \
          "$out/racecheck.log" "${san_env[@]}" "$sanitizer" --tool racecheck --error-exitcode 99 \
          --print-limit 20 "$py" -m pytest "${ops[@]}" "${pytest_args[@]}" -m sanitizer
      else
        record "compute-sanitizer racecheck" "SKIPPED (out of time budget)" 0
      fi
    fi
  fi

  # -- summary ------------------------------------------------------------------
  local summary="$out/summary.md" tests_line card commit
  {
    echo "| step | result | seconds |"
    echo "|---|---|---|"
    for i in "${!names[@]}"; do echo "| ${names[$i]} | ${results[$i]} | ${times[$i]} |"; done
    echo "| total | | $((SECONDS - start)) |"
  } >"$summary"
  tests_line="$(grep -E '[0-9]+ (passed|failed|skipped|errors?)' "$out/tests.log" 2>/dev/null | tail -n 1)"
  echo
  cat "$summary"
  [[ -n "$tests_line" ]] && echo "tests: $tests_line"
  grep -q '^device:' "$out/bench.log" 2>/dev/null && sed -n '/^device:/,$p' "$out/bench.log"

  card="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1)"
  if [[ -n "${CHECK_COMMIT:-}" ]]; then
    commit="$CHECK_COMMIT"
  elif git rev-parse --git-dir >/dev/null 2>&1; then
    commit="$(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' (with local changes)')"
  else
    commit="unknown (not a git checkout)"
  fi
  {
    echo "# GPU results"
    echo
    echo "- card: ${card:-unknown}"
    echo "- date: $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "- commit: $commit"
    echo "- torch: $("$py" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)' 2>/dev/null)"
    echo "- nvcc: $("${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" --version 2>/dev/null | tail -n 1)"
    echo "- g++: $(command -v g++) ($(g++ --version 2>/dev/null | head -n 1))"
    echo
    echo "## Steps"
    echo
    cat "$summary"
    [[ -n "$tests_line" ]] && { echo; echo "tests: $tests_line"; }
    if grep -q '^device:' "$out/bench.log" 2>/dev/null; then
      echo
      echo "## Benchmark (W = 4 and 8, bias, silu; CUDA-event medians; peers vs ours)"
      echo
      sed -n '/^device:/,$p' "$out/bench.log"
    fi
  } >"$out/gpu-results.md"
  echo
  echo "results: $out/gpu-results.md"
  for r in "${results[@]}"; do [[ $r == pass ]] || return 1; done
  return 0
}

# ---- profile -------------------------------------------------------------------
profile() {
  local out="${OUT:-$repo/build/gpu-profile}" root="${KERNEL_ROOT:-$check_root}" ncu rc
  mkdir -p "$out"
  ncu="$(command -v ncu || true)"
  for c in "${CUDA_HOME:-/usr/local/cuda}/bin/ncu" /opt/nvidia/nsight-compute/*/ncu; do
    [[ -z "$ncu" && -x "$c" ]] && ncu="$c"
  done
  [[ -n "$ncu" ]] || { echo "gpu.sh profile: ncu (Nsight Compute) not found" >&2; return 1; }
  if [[ ! -d "$root/build" ]]; then
    echo "== building the CUDA variant ($caps) into $root"
    build_into "$root" cuda >"$out/build.log" 2>&1 ||
      { echo "gpu.sh profile: build failed (see $out/build.log)" >&2; return 1; }
  fi
  run_ncu() {  # ncu options selecting the counters; the clocks are left alone
    CAUSAL_CONV1D_KERNEL_ROOT="$root" timeout --kill-after=10 "${PROFILE_TIMEOUT_S:-240}" \
      "$ncu" --clock-control none --kernel-name-base mangled --kernel-name regex:causal_conv1d4cuda \
      --print-kernel-base demangled "$@" --csv --page raw --print-units base \
      "$py" tools/gpu_profile.py run ${PROFILE_ARGS:-} >"$out/profile.csv" 2>>"$out/ncu.log"
  }
  : >"$out/ncu.log"
  echo "== ncu on tools/gpu_profile.py run ($ncu)"
  run_ncu --metrics "$("$py" tools/gpu_profile.py metrics)"
  rc=$?
  if (( rc != 0 )); then  # e.g. a counter this ncu does not know: its sections hold the same names
    echo "gpu.sh profile: ncu exited with $rc with the metric list; retrying with its sections"
    tail -n 5 "$out/ncu.log"
    run_ncu --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats
    rc=$?
    (( rc == 0 )) || { echo "gpu.sh profile: ncu exited with $rc"; tail -n 20 "$out/ncu.log"; }
  fi
  "$py" tools/gpu_profile.py summarize "$out/profile.csv" | tee "$out/profile.md"
  return $rc
}

case "${1:-}" in
  check) check ;;
  profile) profile ;;
  *) echo "usage: tools/gpu.sh check|profile" >&2; exit 2 ;;
esac
