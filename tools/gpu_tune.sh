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
# compare. Settings known today: CAUSAL_CONV1D_FWD_TILE_POSITIONS,
# CAUSAL_CONV1D_BWD_TILE_POSITIONS, CAUSAL_CONV1D_TILE_PREFETCH
# (causal_conv1d/cuda/rows.cuh), CAUSAL_CONV1D_DECODE_ROWS
# (causal_conv1d/cuda/update.cu), CAUSAL_CONV1D_CHANLAST_STREAM and
# CAUSAL_CONV1D_STREAM_STEPS (causal_conv1d/cuda/fwd.cu),
# CAUSAL_CONV1D_CHANLAST_FULL_TILES (causal_conv1d/cuda/rows.cuh).
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
out="${OUT:-$repo/build/gpu-tune}"
py="${PYTHON:-python3}"
jobs="${JOBS:-$(nproc)}"
caps="${CUDA_CAPABILITIES:-9.0}"
(( $# > 0 )) || { echo "usage: tools/gpu_tune.sh FLAGS [FLAGS ...]  (\"\" = defaults)" >&2; exit 2; }
mkdir -p "$out"
report="$out/tune.md"
: >"$report"
status=0
i=0
for flags in "$@"; do
  i=$((i + 1))
  root="$out/v$i"
  label="${flags:-defaults}"
  echo "== [$i/$#] $label: building"
  if ! CAUSAL_CONV1D_NVCC_FLAGS="$flags" "$py" tools/build_variant.py --backend cuda \
      --cuda-capabilities "$caps" --out "$root/build" --jobs "$jobs" >"$out/build-$i.log" 2>&1; then
    echo "build failed (see $out/build-$i.log)" | tee -a "$report"
    status=1
    continue
  fi
  echo "== [$i/$#] $label: benchmarking"
  printf '### %s\n\n' "$label" | tee -a "$report"
  CAUSAL_CONV1D_KERNEL_ROOT="$root" "$py" benchmarks/bench_gpu.py 2>&1 | tee -a "$report"
  [[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
  echo | tee -a "$report"
done
echo "tables: $report"
exit $status
