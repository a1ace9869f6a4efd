#!/usr/bin/env bash
set -u
export PYTHONUNBUFFERED=1
S=$OUT; T=/tmp/r8; mkdir -p $T
BUDGET_S=330 CHECK_COMMIT=$1 OUT=$T/check bash tools/gpu_check.sh > $S/check.log 2>&1
echo "check done at $SECONDS s" | tee -a $S/check.log
cp $T/check/gpu-results.md $T/check/summary.md $S/ 2>/dev/null
tail -n 8 $T/check/racecheck.log $T/check/memcheck.log > $S/sanitizer-tail.log 2>/dev/null
if (( SECONDS < 330 )); then
  OUT=$T/prof KERNEL_ROOT=$T/check/kernel PROFILE_TIMEOUT_S=$((420 - SECONDS)) bash tools/gpu_profile.sh > $S/prof.log 2>&1
  cp $T/prof/profile.md $S/ 2>/dev/null
fi
echo "all done at $SECONDS s"
