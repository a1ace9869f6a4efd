#!/usr/bin/env bash
# The CPU variant built and tested against the other torch releases users
# run: 2.12, kernel-builder's other required version (the host variant is
# built against requirements-dev.txt's 2.13), and the newest on PyPI, which
# kernel-builder will add next. Each release's headers carry their own
# at::vec, which the CPU kernels use throughout, so a build against one
# release says little about another.
#
# For each version: a venv cached by version (torch from PyPI, the rest
# from requirements-dev.txt's pins), the CPU variant built with its headers
# into $TMPDIR/causal-conv1d-torch<v>/build with the ABI checks, then the
# test suite on that variant. PyPI's x86_64 wheels of these releases are
# CUDA builds; they run the CPU variant (CAUSAL_CONV1D_TEST_BACKEND=cpu).
# Left out: test_transformers and test_packaging's get_kernel test, where
# the `kernels` loader itself picks the CUDA variant for a CUDA torch.
#
# pip runs without this machine's configuration (PIP_CONFIG_FILE=/dev/null):
# its constraints file caps torch below the newest release.
# Run by tools/dev.sh test; TORCH_VERSIONS overrides the list.
set -euo pipefail

read -r -a versions <<<"${TORCH_VERSIONS:-2.12.1 2.15.0}"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache="${CAUSAL_CONV1D_CACHE:-$HOME/.cache/causal-conv1d}"
pins="$(mktemp)"
trap 'rm -f "$pins"' EXIT
grep -v '^torch==' "$repo/requirements-dev.txt" >"$pins"

for v in "${versions[@]}"; do
  venv="$cache/venv-torch$v"
  out="${TMPDIR:-/tmp}/causal-conv1d-torch$v"
  printf '\n== torch %s: %s\n' "$v" "$venv"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  # Every run: a no-op once installed, and it completes an interrupted one.
  PIP_CONFIG_FILE=/dev/null "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "torch==$v" -r "$pins"
  "$venv/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$v' else f'torch {torch.__version__}, not $v')"
  PATH="$venv/bin:$PATH" python "$repo/tools/build_variant.py" --backend cpu --check-abi --quiet \
    --out "$out/build"
  (cd "$repo" && CAUSAL_CONV1D_TEST_BACKEND=cpu CAUSAL_CONV1D_KERNEL_ROOT="$out" PATH="$venv/bin:$PATH" \
    python -m pytest -q -p no:cacheprovider -n "${JOBS:-2}" --dist loadgroup tests \
    -m "not slow and not serial" --ignore=tests/test_cuda_variant.py \
    --ignore=tests/test_transformers.py \
    --deselect tests/test_packaging.py::test_get_kernel_through_local_kernels)
done
