#!/usr/bin/env bash
# The peers `benchmarks/bench.py gpu` times ours against, as wheels the GPU
# machine (no network) can install: upstream causal-conv1d 1.7 built from its
# PyPI sdist for sm_90 only, and flash-linear-attention's Triton kernels
# (fla-core, pure Python). None of their code enters this repository.
#
#   tools/peers.sh build      # wheels into $CACHE/peers/wheels (upstream: a long nvcc build)
#   tools/peers.sh stage      # copy wheels and the upstream sdist into .peers/ (ignored by git):
#                             # what the device tool's `carry` takes
#   tools/peers.sh install D  # on the GPU machine: install .peers/ into D (no network); builds
#                             # upstream from the sdist there when no wheel was staged
#   tools/peers.sh check      # install .peers/ into a scratch dir, import each peer (no GPU needed)
#   tools/peers.sh cpu        # the CPU peers (`bench.py peers`): vLLM's and SGLang's CPU conv
#                             # kernels from vLLM's sdist, built here against python's torch
#   tools/peers.sh triton     # vLLM's and SGLang's Triton causal_conv1d and Triton, for
#                             # tests/test_engine_parity.py (Triton's CPU interpreter)
#
# The GPU call, after `build` and `stage` here: the device tool's run with
# carry [".peers"] and timeout_s 560, command
#   CHECK_COMMIT=<hash> OUT=/tmp/gc tools/gpu_check.sh; rc=$?; cd /tmp/gc && cp gpu-results.md
#   bench.json bench.log test_cuda.log memcheck.log racecheck.log peers-install.log
#   build-cuda.log "$OUT"/; exit $rc
#
# The upstream wheel is a pybind11 extension against one torch's C++ ABI and
# one CPython, so it is built with the GPU image's pair (KINDS.md: Python 3.12,
# torch 2.11.0+cu130), not this machine's: PEER_PYTHON and PEER_TORCH override.
# vLLM's Triton causal_conv1d is not a peer: its module imports vllm internals
# (vllm.attention..., vllm.triton_utils), so it needs the whole vllm wheel,
# compiled against one torch and far over the 64 MiB a device call carries.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${CAUSAL_CONV1D_CACHE:-$HOME/.cache/causal-conv1d}/peers"
torch_v="${PEER_TORCH:-2.11.0}"
upstream_v="1.7.0"
fla_v="0.5.2"
stage="$repo/.peers"
vllm_v="0.34.0"
vllm_sha256="fcad848b246a9d8652b47e6425af92334dc02492f9802720f54e27b823cf0113"
triton_v="3.9.0"
sglang_v="0.5.23"
sdist="causal_conv1d-$upstream_v.tar.gz"

peer_python() {
  local p="${PEER_PYTHON:-}"
  [[ -z "$p" ]] && for c in python3.12 "$HOME/.pyenv/versions/3.12.1/bin/python"; do
    command -v "$c" >/dev/null && { p="$c"; break; }
  done
  [[ -n "$p" ]] || { echo "peers.sh: no Python 3.12 (set PEER_PYTHON)" >&2; exit 1; }
  echo "$p"
}

# build_upstream PY TARBALL OUTDIR: the wheel of upstream's sdist for sm_90,
# against PY's torch, into OUTDIR.
build_upstream() {
  local py=$1 work
  work="$(mktemp -d)"
  tar xzf "$2" -C "$work"
  # setup.py hard-codes a -gencode list from sm_75 up (no variable selects
  # it); one capability cuts the build several-fold, and sm_90 is the card.
  "$py" - "$work/causal_conv1d-$upstream_v/setup.py" <<'EOF'
import sys
path = sys.argv[1]
text = open(path).read()
anchor = "    # HACK: The compiler flag -D_GLIBCXX_USE_CXX11_ABI"
if anchor not in text:
    sys.exit("peers.sh: setup.py changed, no anchor for the sm_90 patch")
line = '    cc_flag = ["-gencode", "arch=compute_90,code=sm_90"]  # peers.sh: sm_90 only\n'
open(path, "w").write(text.replace(anchor, line + anchor, 1))
EOF
  (cd "$work/causal_conv1d-$upstream_v" && CAUSAL_CONV1D_FORCE_BUILD=TRUE TORCH_CUDA_ARCH_LIST=9.0 \
    CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" "$py" -m pip wheel --no-build-isolation --no-deps \
    --no-index . -w "$3")
  rm -rf "$work"
}

build() {
  local venv="$cache/venv-cu130-torch$torch_v-py312" wheels="$cache/wheels"
  mkdir -p "$wheels" "$cache/src"
  if [[ ! -x "$venv/bin/python" ]]; then
    "$(peer_python)" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet "torch==$torch_v" numpy ninja packaging wheel setuptools
  fi
  local py="$venv/bin/python"
  "$py" -c 'import torch, sys; sys.exit(0 if torch.version.cuda else "the peer venv torch has no CUDA")'
  # fla-core alone: pure Python (Triton kernels; needs einops, on the GPU
  # image); the flash-linear-attention wheel adds only fla.layers / fla.models.
  "$py" -m pip download --quiet --no-deps "fla-core==$fla_v" -d "$wheels"
  if [[ ! -f "$cache/src/$sdist" ]]; then
    # metadata of a torch extension's sdist imports torch: no build isolation
    CAUSAL_CONV1D_FORCE_BUILD=TRUE "$py" -m pip download --quiet --no-deps --no-binary :all: \
      --no-build-isolation "causal-conv1d==$upstream_v" -d "$cache/src"
  fi
  if ! compgen -G "$wheels/causal_conv1d-$upstream_v-*.whl" >/dev/null; then
    # The machine is shared: one nvcc at a time, at the lowest priority.
    MAX_JOBS="${MAX_JOBS:-1}" nice -n 19 bash -c "$(declare -f build_upstream); upstream_v=$upstream_v; \
      build_upstream '$py' '$cache/src/$sdist' '$wheels'"
  fi
  ls -la "$wheels"
}

# vllm_source PATH: PATH of vLLM's sdist (a file or folder under its root),
# extracted into the cache; prints the sdist's root there. The sdist comes
# from PyPI's file host with its hash checked: pip cannot download it
# without building vLLM's metadata.
vllm_source() {
  local root="$cache/src/vllm-$vllm_v" tarball="$cache/src/vllm-$vllm_v.tar.gz" url
  if [[ ! -e "$root/$1" ]]; then
    mkdir -p "$cache/src"
    if [[ ! -f "$tarball" ]]; then
      url="$(curl -fsS "https://pypi.org/simple/vllm/" |
        grep -o "https://[^\"#]*/vllm-$vllm_v\.tar\.gz" | head -n 1)"
      curl -fsS -o "$tarball.part" "$url"
      echo "$vllm_sha256  $tarball.part" | sha256sum -c --quiet >&2
      mv "$tarball.part" "$tarball"
    fi
    # into a scratch folder first: an interrupted extraction leaves no
    # half folder that a later run would take for the whole
    local scratch="$cache/src/.extract.$$"
    rm -rf "$scratch" && mkdir -p "$scratch" "$(dirname "$root/$1")"
    tar xzf "$tarball" -C "$scratch" "vllm-$vllm_v/$1"
    mv "$scratch/vllm-$vllm_v/$1" "$root/$1"
    rm -rf "$scratch"
  fi
  echo "$root"
}

# cpu: vLLM's CPU causal-conv1d kernels (its own decode kernel and the
# SGLang kernels it vendors) with tools/peers_cpu.cpp's op registrations,
# one shared library per torch version, compiled with the flags of vLLM's
# AVX-512 + AMX build (its release images' x86 flavour).
cpu() {
  local py="${PYTHON:-python}" torch_version out src
  torch_version="$("$py" -c 'import torch; print(torch.__version__)')"
  # keyed by the binding's hash too: a clean clone's checkout is newer than any cache
  out="$cache/cpu-vllm$vllm_v-torch$torch_version-$(sha256sum "$repo/tools/peers_cpu.cpp" | cut -c1-12)"
  if [[ "$(uname -m)" != x86_64 ]] || ! grep -qw avx512_bf16 /proc/cpuinfo; then
    echo "peers.sh cpu: vLLM's CPU kernels are built for x86-64 with AVX512-BF16; this host has not"
    return 0
  fi
  if [[ -f "$out/cpu_peers.so" ]]; then
    echo "$out/cpu_peers.so"
    return 0
  fi
  src="$(vllm_source csrc/cpu)"
  mkdir -p "$out/build"
  "$py" - "$repo/tools/peers_cpu.cpp" "$src/csrc" "$out" <<'EOF'
import shutil, sys
from pathlib import Path
from torch.utils import cpp_extension

binding, csrc, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
flags = ["-O3", "-std=c++20", "-fopenmp", "-mf16c", "-mavx512f", "-mavx512vl", "-mavx512bw",
         "-mavx512dq", "-mavx512bf16", "-mavx512vnni", "-mamx-bf16", "-mamx-tile", "-w"]
cpp_extension.load(
    name="cpu_peers", sources=[binding, str(csrc / "cpu/mamba_cpu.cpp"),
                               str(csrc / "cpu/sgl-kernels/conv.cpp")],
    extra_include_paths=[str(csrc), str(csrc / "cpu")], extra_cflags=flags,
    extra_ldflags=["-fopenmp"], build_directory=str(out / "build"), is_python_module=False)
shutil.copy(out / "build/cpu_peers.so", out / "cpu_peers.so")
EOF
  echo "$out/cpu_peers.so"
}

# triton: what tests/test_engine_parity.py runs under Triton's interpreter:
# vLLM's causal_conv1d.py from its sdist and SGLang's causal_conv1d_triton.py
# from its wheel (pure Python; pip checks the wheel's hash), and Triton
# installed into its own folder of the cache (python's version in the
# name), which the test puts on the path of the process it starts; the
# venv itself stays without Triton.
triton() {
  local py="${PYTHON:-python}" target sglang="$cache/src/sglang-$sglang_v" wheels
  local sglang_file="sglang/kernels/ops/mamba/causal_conv1d_triton.py"
  target="$cache/triton$triton_v-py$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  vllm_source vllm/model_executor/layers/mamba/ops/causal_conv1d.py >/dev/null
  if [[ ! -f "$sglang/$sglang_file" ]]; then
    wheels="$(mktemp -d)"
    "$py" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary :all: \
      --python-version 3.11 --platform manylinux_2_34_x86_64 "sglang==$sglang_v" -d "$wheels"
    "$py" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])' \
      "$(ls "$wheels"/sglang-*.whl)" "$sglang_file" "$sglang"
    rm -rf "$wheels"
  fi
  if [[ ! -f "$target/.complete" ]]; then
    rm -rf "$target"
    "$py" -m pip install --quiet --disable-pip-version-check --no-deps --target "$target" \
      "triton==$triton_v"
    touch "$target/.complete"
  fi
  echo "$target"
}

case "${1:-}" in
  build) build ;;
  cpu) cpu ;;
  triton) triton ;;
  stage)
    mkdir -p "$stage"
    cp "$cache"/wheels/*.whl "$cache/src/$sdist" "$stage"/
    du -ch "$stage"/* ;;
  install)
    dir="${2:?install DIR}"
    py="${PYTHON:-python3}"
    if ! compgen -G "$stage/causal_conv1d-*.whl" >/dev/null && [[ -f "$stage/$sdist" ]]; then
      mkdir -p "$dir.wheels"
      # every core: this runs beside the variant builds on a GPU machine
      MAX_JOBS="${MAX_JOBS:-4}" build_upstream "$py" "$stage/$sdist" "$dir.wheels" ||
        echo "peers.sh: upstream causal-conv1d did not build; benchmarking without it" >&2
    fi
    "$py" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$dir" "$stage"/*.whl $(compgen -G "$dir.wheels/*.whl" || true) ;;
  check)
    dir="$(mktemp -d)"
    trap 'rm -rf "$dir" "$dir.wheels"' EXIT
    py="${PYTHON:-$cache/venv-cu130-torch$torch_v-py312/bin/python}"
    PYTHON="$py" "$0" install "$dir"
    PYTHONPATH="$dir" "$py" "$repo/benchmarks/suites/peers.py" ;;
  *) sed -n '2,25p' "$0"; exit 2 ;;
esac
