#!/usr/bin/env bash
# CI for the CUDA variant on a machine without a GPU: build it (one
# capability, 9.0+PTX: sm_90 SASS plus compute_90 PTX) with the ABI checks,
# then check that it loads through `kernels` and registers every op for CUDA only
# (tests/test_cuda_variant.py). GPU tests are tools/gpu.sh check.
#
#   tools/ci/cuda.sh            # venv and build dir are cached between runs
#
# Environment: CAUSAL_CONV1D_CUDA_VENV (default ~/.cache/causal-conv1d/
# venv-cu130-torch2.14.1, created when missing), CAUSAL_CONV1D_CI_BUILD (build
# root, default ${TMPDIR:-/tmp}/causal-conv1d-ci-cuda; the variant goes to its
# build/, objects to its .local-build/), JOBS (default 2).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${CAUSAL_CONV1D_CUDA_VENV:-$HOME/.cache/causal-conv1d/venv-cu130-torch2.14.1}"
root="${CAUSAL_CONV1D_CI_BUILD:-${TMPDIR:-/tmp}/causal-conv1d-ci-cuda}"
jobs="${JOBS:-2}"
start=$SECONDS
step() { printf '\n== %s (%ds)\n' "$1" $((SECONDS - start)); }

if [[ ! -x "$venv/bin/python" ]]; then
  step "creating $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet torch==2.14.1 kernels==0.17.2 ninja kernel-abi-check pytest numpy
fi
export PATH="$venv/bin:$PATH"
python -c 'import torch, sys; sys.exit(0 if torch.version.cuda else "torch in the venv has no CUDA")'

# The build runs on a copy of what it reads, kept at a fixed path ($root/src)
# and rewritten file by file only where the content changed: ninja then
# recompiles what changed since the last build on this machine, not every
# object of a clone in a new folder (the paths are in its commands).
step "updating the sources in $root/src"
python - "$repo" "$root/src" <<'PY'
import subprocess, sys
from pathlib import Path

repo, dst = Path(sys.argv[1]), Path(sys.argv[2])
listed = subprocess.run(["git", "-C", str(repo), "ls-files", "-co", "--exclude-standard", "--",
                         "build.toml", "tools/build_variant.py", "causal_conv1d", "torch-ext"],
                        capture_output=True, text=True, check=True).stdout.split()
keep = {f for f in listed if (repo / f).is_file()}
changed = 0
for f in sorted(keep):
    data, out = (repo / f).read_bytes(), dst / f
    if not out.is_file() or out.read_bytes() != data:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        changed += 1
stale = [p for p in dst.rglob("*") if p.is_file() and str(p.relative_to(dst)) not in keep]
for p in stale:
    p.unlink()
print(f"[ci-cuda] {len(keep)} files, {changed} written, {len(stale)} removed")
PY

# The copy is no git checkout, so each build takes a fresh id: the old
# libraries would pile up in the object folder.
rm -f "$root"/.local-build/*/_causal_conv1d_*.abi3.so

step "building the CUDA variant (sm_90 + PTX) into $root/build"
python "$root/src/tools/build_variant.py" --backend cuda --cuda-capabilities 9.0+PTX \
  --out "$root/build" --check-abi --jobs "$jobs" --quiet

step "tests/test_cuda_variant.py"
cd "$repo"
CAUSAL_CONV1D_KERNEL_ROOT="$root" python -m pytest tests/test_cuda_variant.py -q -p no:cacheprovider

step "done"
