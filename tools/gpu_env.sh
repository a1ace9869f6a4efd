# Sourced by tools/gpu_check.sh, gpu_profile.sh and gpu_tune.sh: the settings
# they share, and the one way they build a variant.
#
#   repo  the checkout (the current directory afterwards)
#   py    PYTHON, default python3 (a GPU machine's python holds the CUDA torch)
#   jobs  JOBS, default every core
#   caps  CUDA_CAPABILITIES (build.toml syntax), default 9.0+PTX (an H100)
#   CUDA_HOME  exported: the toolkit of the nvcc on PATH, else the usual places
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

# build_into ROOT BACKEND [NVCC_FLAGS]: builds the variant of BACKEND (cuda:
# for $caps) into ROOT/build/<variant>/, where CAUSAL_CONV1D_KERNEL_ROOT=ROOT
# finds it; the output goes to stdout.
build_into() {
  local caps_args=()
  [[ $2 == cuda ]] && caps_args=(--cuda-capabilities "$caps")
  CAUSAL_CONV1D_NVCC_FLAGS="${3:-}" "$py" tools/build_variant.py --backend "$2" \
    "${caps_args[@]}" --out "$1/build" --jobs "$jobs"
}
