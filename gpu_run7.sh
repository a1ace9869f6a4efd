#!/usr/bin/env bash
# Run 7 (one device call): gpu_check on the head, the pipeline sets built beside it
# and benchmarked after it, their tests and racecheck, then a profile if time is left.
set -u
export PYTHONUNBUFFERED=1
S=$OUT; T=/tmp/r7; mkdir -p $T
sets=("-DCAUSAL_CONV1D_FWD_PIPELINE=1" "-DCAUSAL_CONV1D_FWD_PIPELINE=1 -DCAUSAL_CONV1D_FWD_TILE_POSITIONS=32" "-DCAUSAL_CONV1D_FWD_PIPELINE=1 -DCAUSAL_CONV1D_FWD_TILE_POSITIONS=8")
(OUT=$T/tune TUNE_STEP=build nice -n 10 bash tools/gpu_tune.sh "${sets[@]}" > $T/tune-build.log 2>&1) & tb=$!
BUDGET_S=380 CHECK_COMMIT=$1 OUT=$T/check bash tools/gpu_check.sh > $S/check.log 2>&1
echo "check done at $SECONDS s" | tee -a $S/check.log
wait $tb; cat $T/tune/build-*.rc; tail -n 3 $T/tune/build-*.log >> $S/check.log
OUT=$T/tune TUNE_STEP=bench bash tools/gpu_tune.sh "${sets[@]}" > $S/tune.log 2>&1
echo "tune done at $SECONDS s" | tee -a $S/tune.log
SAN=$(command -v compute-sanitizer || echo ${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer)
for i in 1 2 3; do
  echo "== set $i: ${sets[$((i-1))]}"
  CAUSAL_CONV1D_KERNEL_ROOT=$T/tune/v$i CAUSAL_CONV1D_CPU_KERNEL_ROOT=$T/check/kernel timeout 70 \
    python3 -m pytest tests/test_cuda.py -q -p no:cacheprovider -x -k "fwd or long_rows or more_tiles or options or sizes" 2>&1 | tail -n 4
  CAUSAL_CONV1D_KERNEL_ROOT=$T/tune/v$i CAUSAL_CONV1D_CPU_KERNEL_ROOT=$T/check/kernel timeout 45 \
    $SAN --tool racecheck --error-exitcode 99 --print-limit 10 python3 -m pytest tests/test_cuda.py -q -p no:cacheprovider -k "more_tiles" 2>&1 | tail -n 4
  echo "racecheck rc ${PIPESTATUS[0]} at $SECONDS s"
done > $S/sets.log 2>&1
cp $T/check/gpu-results.md $T/check/summary.md $S/ 2>/dev/null
tail -n 30 $T/check/racecheck.log > $S/racecheck-tail.log 2>/dev/null
if (( SECONDS < 450 )); then
  OUT=$T/prof KERNEL_ROOT=$T/check/kernel PROFILE_TIMEOUT_S=$((565 - SECONDS)) bash tools/gpu_profile.sh > $S/prof.log 2>&1
  cp $T/prof/profile.md $S/ 2>/dev/null
fi
echo "all done at $SECONDS s"
