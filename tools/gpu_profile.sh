#!/usr/bin/env bash
# Nsight Compute's counters for the benchmark kernels, on a GPU machine:
#
#   tools/gpu_profile.sh        (after tools/gpu_check.sh: it profiles that build)
#
# Runs benchmarks/profile_gpu.py (one call of each op of bench_gpu.py) under
# ncu and prints, per kernel, its time, DRAM and issue utilisation, active
# warps per SM, registers and the three warp stall reasons that cost the most;
# that says whether a kernel short of its bandwidth target waits on memory,
# on barriers, or on its own instructions (docs/gpu-perf-notes.md).
# KERNEL_ROOT: the build to profile (default: gpu_check's, build/gpu-check/kernel;
# built here for sm_90 if missing). Output in $OUT (default build/gpu-profile):
# profile.csv (ncu's raw counters), profile.md (the table), ncu.log.
# The clocks are left alone (--clock-control none), as the machine's notes ask.
set -uo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/gpu_env.sh"   # repo, py, jobs, caps, CUDA_HOME, build_into
out="${OUT:-$repo/build/gpu-profile}"
root="${KERNEL_ROOT:-$repo/build/gpu-check/kernel}"
mkdir -p "$out"

ncu="$(command -v ncu || true)"
for c in "${CUDA_HOME:-/usr/local/cuda}/bin/ncu" /opt/nvidia/nsight-compute/*/ncu; do
  [[ -z "$ncu" && -x "$c" ]] && ncu="$c"
done
[[ -n "$ncu" ]] || { echo "gpu_profile: ncu (Nsight Compute) not found" >&2; exit 1; }

if [[ ! -d "$root/build" ]]; then
  echo "== building the CUDA variant ($caps) into $root"
  build_into "$root" cuda >"$out/build.log" 2>&1 ||
    { echo "gpu_profile: build failed (see $out/build.log)" >&2; exit 1; }
fi

profile() {  # ncu options selecting the counters
  CAUSAL_CONV1D_KERNEL_ROOT="$root" timeout --kill-after=10 "${PROFILE_TIMEOUT_S:-240}" \
    "$ncu" --clock-control none --kernel-name-base mangled --kernel-name regex:causal_conv1d4cuda \
    --print-kernel-base demangled "$@" --csv --page raw --print-units base \
    "$py" benchmarks/profile_gpu.py run >"$out/profile.csv" 2>>"$out/ncu.log"
}
: >"$out/ncu.log"
echo "== ncu on benchmarks/profile_gpu.py run ($ncu)"
profile --metrics "$("$py" benchmarks/profile_gpu.py metrics)"
rc=$?
if (( rc != 0 )); then  # e.g. a counter this ncu does not know: its sections hold the same names
  echo "gpu_profile: ncu exited with $rc with the metric list; retrying with its sections"
  tail -n 5 "$out/ncu.log"
  profile --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats
  rc=$?
  (( rc == 0 )) || { echo "gpu_profile: ncu exited with $rc"; tail -n 20 "$out/ncu.log"; }
fi
"$py" benchmarks/profile_gpu.py summarize "$out/profile.csv" | tee "$out/profile.md"
exit $rc
