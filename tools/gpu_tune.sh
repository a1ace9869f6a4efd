#!/usr/bin/env bash
# Compares build-time settings of the CUDA kernels on a GPU machine, for the
# choices that only a GPU can make (docs/gpu-perf-notes.md records them):
#
#   tools/gpu_tune.sh "" "-DCAUSAL_CONV1D_FWD_TILE_POSITIONS=16" \
#                     "-DCAUSAL_CONV1D_BWD_TILE_POSITIONS=32 -DCAUSAL_CONV1D_DECODE_ROWS=8"
#
# Each argument is a set of extra nvcc flags ("" is the committed defaults).
# For each, the CUDA variant is built for sm_90 (CUDA_CAPABILITIES) into its
# own folder under $OUT (default build/gpu-tune) and benchmarks/bench_gpu.py
# runs on it; the tables print one after another, each headed by its flags,
# and go to $OUT/tune.md. Same machine and call for all, so the figures
# compare. The sets build side by side first; TUNE_STEP=build stops there
# (to overlap the builds with other work) and TUNE_STEP=bench only
# benchmarks. Settings known today:
# CAUSAL_CONV1D_FWD_TILE_POSITIONS and CAUSAL_CONV1D_BWD_TILE_POSITIONS
# (causal_conv1d/cuda/rows.cuh), CAUSAL_CONV1D_DECODE_ROWS
# (causal_conv1d/cuda/update.cu).
set -uo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/gpu_env.sh"   # repo, py, jobs, caps, CUDA_HOME, build_into
out="${OUT:-$repo/build/gpu-tune}"
(( $# > 0 )) || { echo "usage: tools/gpu_tune.sh FLAGS [FLAGS ...]  (\"\" = defaults)" >&2; exit 2; }
mkdir -p "$out"
report="$out/tune.md"
step="${TUNE_STEP:-all}"   # build | bench | all (build: all sets at once, then stop)
status=0
build_set() {  # index flags
  build_into "$out/v$1" cuda "$2" >"$out/build-$1.log" 2>&1
  echo $? >"$out/build-$1.rc"
}
if [[ $step != bench ]]; then  # the builds run side by side: nvcc is one process per file
  echo "== building $# sets"
  declare -a pids=()
  i=0
  for flags in "$@"; do i=$((i + 1)); build_set "$i" "$flags" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p"; done
  grep -qvx 0 "$out"/build-*.rc && status=1
  [[ $step == build ]] && exit $status
fi
: >"$report"
i=0
for flags in "$@"; do
  i=$((i + 1))
  label="${flags:-defaults}"
  if [[ "$(cat "$out/build-$i.rc" 2>/dev/null)" != 0 ]]; then
    echo "[$i/$#] $label: build failed (see $out/build-$i.log)" | tee -a "$report"
    status=1
    continue
  fi
  echo "== [$i/$#] $label: benchmarking"
  printf '### %s\n\n' "$label" | tee -a "$report"
  CAUSAL_CONV1D_KERNEL_ROOT="$out/v$i" "$py" benchmarks/bench_gpu.py 2>&1 | tee -a "$report"
  [[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
  echo | tee -a "$report"
done
echo "tables: $report"
exit $status
