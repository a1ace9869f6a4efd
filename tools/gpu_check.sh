#!/usr/bin/env bash
# One command for a GPU machine (an H100 or H200, sm_90, with Python 3.12, a
# CUDA torch, nvcc and ninja; no network, no `kernels` package needed):
#
#   tools/gpu_check.sh
#
# 1. builds the CUDA variant (sm_90 + PTX) and the CPU variant side by side,
# 2. runs tests/test_cuda.py (CUDA vs the float64 reference and vs the CPU
#    variant),
# 3. runs benchmarks/bench_gpu.py, with the peers tools/peers.sh staged in
#    .peers/ (installed into $OUT/peers-site during step 1, no network),
# 4. runs the small grid (pytest -k sanitizer) and the many-tile test
#    (-k more_tiles) under compute-sanitizer memcheck, then racecheck for
#    the shared-memory kernels if time is left,
# and prints a short table. Results (card, date, commit, tables) go to
# $OUT/gpu-results.md (OUT defaults to build/gpu-check) and replace
# docs/gpu-results.md in this checkout; CHECK_COMMIT=<hash> names the commit
# there when the machine's copy of .git may not be the tested tree's. Budget: 8 minutes; every step has a
# timeout so the summary always comes out. Exit status: 0 when every step
# passed.
set -uo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/gpu_env.sh"   # repo, py, jobs, caps, CUDA_HOME, build_into
out="${OUT:-$repo/build/gpu-check}"
mkdir -p "$out"
root="$out/kernel"          # build/<variant>/ for both variants live in $root/build
echo "CUDA_HOME=${CUDA_HOME:-unset}"
start=$SECONDS
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

# -- 1. builds (both at once; the CUDA one is the long pole) -----------------
t0=$SECONDS
build_into "$root" cuda -lineinfo >"$out/build-cuda.log" 2>&1 & cuda_pid=$!
build_into "$root" cpu >"$out/build-cpu.log" 2>&1 & cpu_pid=$!
# Peers carried in .peers/ (tools/peers.sh): installed meanwhile, upstream
# built from its sdist here when no wheel was staged.
peers_pid=""
if compgen -G "$repo/.peers/*" >/dev/null; then
  PYTHON="$py" timeout 400 tools/peers.sh install "$out/peers-site" >"$out/peers-install.log" 2>&1 &
  peers_pid=$!
fi
wait $cuda_pid; cuda_rc=$?
wait $cpu_pid; cpu_rc=$?
record "build CUDA variant ($caps)" "$([[ $cuda_rc -eq 0 ]] && echo pass || echo "FAIL (see build-cuda.log)")" $((SECONDS - t0))
record "build CPU variant" "$([[ $cpu_rc -eq 0 ]] && echo pass || echo "FAIL (see build-cpu.log)")" $((SECONDS - t0))
tail -n 2 "$out/build-cuda.log" "$out/build-cpu.log"

export CAUSAL_CONV1D_KERNEL_ROOT="$root" CAUSAL_CONV1D_CPU_KERNEL_ROOT="$root"
pytest_args=(-q -p no:cacheprovider -rfEs --maxfail=50)

budget="${BUDGET_S:-470}"   # stay inside 8 minutes, summary included
left() { echo $((budget - (SECONDS - start))); }
limit() {  # a step's timeout: its own cap, or what is left of the budget
  local l; l=$(left); (( l > $1 )) && l=$1
  echo $(( l > 0 ? l : 1 ))
}

if [[ $cuda_rc -eq 0 ]]; then
  # -- 2. tests ---------------------------------------------------------------
  run_step "tests/test_cuda.py" "$(limit 240)" "$out/test_cuda.log" \
    "$py" -m pytest tests/test_cuda.py "${pytest_args[@]}" --junitxml="$out/test_cuda.xml"
  if ! grep -qE '[0-9]+ passed' "$out/test_cuda.log"; then  # all skipped: no GPU visible
    results[${#results[@]}-1]="FAIL (nothing ran: is a GPU visible?)"
  fi

  # -- 3. benchmark -------------------------------------------------------------
  # Triton peers compile and autotune on first use: no peer starts after --budget-s.
  peer_env=()
  if [[ -n "$peers_pid" ]]; then
    wait "$peers_pid"
    peer_env=(env "PYTHONPATH=$out/peers-site${PYTHONPATH:+:$PYTHONPATH}")
  fi
  run_step "benchmarks/bench_gpu.py${peers_pid:+ (with peers)}" "$(limit 240)" \
    "$out/bench.log" "${peer_env[@]}" "$py" benchmarks/bench_gpu.py --budget-s 170 --json "$out/bench.json"

  # -- 4. compute-sanitizer -----------------------------------------------------
  sanitizer="$(command -v compute-sanitizer || true)"
  [[ -z "$sanitizer" && -x "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" ]] &&
    sanitizer="${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer"
  if [[ -z "$sanitizer" ]]; then
    record "compute-sanitizer" "SKIPPED (compute-sanitizer not found)" 0
  elif (( $(left) < 60 )); then
    record "compute-sanitizer memcheck" "SKIPPED (out of time budget)" 0
  else
    # Without the caching allocator every tensor is its own allocation, so an
    # out-of-bounds access cannot land silently inside a neighbour.
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 run_step "compute-sanitizer memcheck (-k sanitizer, more_tiles)" \
      "$(limit 200)" "$out/memcheck.log" "$sanitizer" --tool memcheck --error-exitcode 99 \
      --print-limit 20 "$py" -m pytest tests/test_cuda.py "${pytest_args[@]}" -k "sanitizer or more_tiles"
    if (( $(left) >= 60 )); then
      run_step "compute-sanitizer racecheck (shared-memory kernels)" "$(limit 150)" \
        "$out/racecheck.log" "$sanitizer" --tool racecheck --error-exitcode 99 --print-limit 20 \
        "$py" -m pytest tests/test_cuda.py "${pytest_args[@]}" \
        -k "(sanitizer_fwd_bwd and channel_last) or bwd_chanlast_tile_groups or more_tiles"
    else
      record "compute-sanitizer racecheck" "SKIPPED (out of time budget)" 0
    fi
  fi
fi

# -- summary --------------------------------------------------------------------
summary="$out/summary.md"
{
  echo "| step | result | seconds |"
  echo "|---|---|---|"
  for i in "${!names[@]}"; do echo "| ${names[$i]} | ${results[$i]} | ${times[$i]} |"; done
  echo "| total | | $((SECONDS - start)) |"
} >"$summary"
tests_line="$(grep -E '[0-9]+ (passed|failed|skipped|errors?)' "$out/test_cuda.log" 2>/dev/null | tail -n 1)"
echo
cat "$summary"
[[ -n "$tests_line" ]] && echo "tests: $tests_line"
grep -q '^device:' "$out/bench.log" 2>/dev/null && sed -n '/^device:/,$p' "$out/bench.log"

card="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1)"
if [[ -n "${CHECK_COMMIT:-}" ]]; then  # the caller knows better (a device copy's .git can be stale)
  commit="$CHECK_COMMIT"
elif git rev-parse --git-dir >/dev/null 2>&1; then
  commit="$(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' (with local changes)')"
else
  commit="unknown (not a git checkout)"
fi
{
  echo "# GPU results"
  echo
  echo "Produced by \`tools/gpu_check.sh\` (builds, tests/test_cuda.py, compute-sanitizer, benchmarks/bench_gpu.py)."
  echo
  echo "- card: ${card:-unknown}"
  echo "- date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "- commit: $commit"
  echo "- torch: $("$py" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)' 2>/dev/null)"
  echo "- nvcc: $("${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" --version 2>/dev/null | tail -n 1)"
  echo
  echo "## Steps"
  echo
  cat "$summary"
  [[ -n "$tests_line" ]] && { echo; echo "tests/test_cuda.py: $tests_line"; }
  if grep -q '^device:' "$out/bench.log" 2>/dev/null; then
    echo
    echo "## Benchmark (W = 4 and 8, bias, silu; CUDA-event medians; peers vs ours)"
    echo
    sed -n '/^device:/,$p' "$out/bench.log"
  fi
} >"$out/gpu-results.md"
mkdir -p "$repo/docs" && cp "$out/gpu-results.md" "$repo/docs/gpu-results.md" 2>/dev/null
echo
echo "results: $out/gpu-results.md (copied to docs/gpu-results.md)"
for r in "${results[@]}"; do [[ $r == pass ]] || exit 1; done
exit 0
