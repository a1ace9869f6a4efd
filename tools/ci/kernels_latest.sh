#!/usr/bin/env bash
# The loader-facing tests again, under the newest kernels and transformers
# (NEWEST below) rather than requirements-dev.txt's pins: what a user who
# installs today gets. kernels moves its internals between releases
# (0.19 put kernels.variants and kernels.verify under kernels._internals),
# and this run is where such a move shows.
#
# The environment is layered, so that torch and the rest are not installed
# twice: a venv of its own for NEWEST (and what they pull in), whose
# site-packages come first, with the main venv's site-packages behind them
# (a .pth file). Cached beside the main venv, keyed by the versions.
# Run by tools/dev.sh test after the main suite, with the main venv active.
set -euo pipefail

NEWEST=(kernels==0.19.1 transformers==5.25.0)

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache="${CAUSAL_CONV1D_CACHE:-$HOME/.cache/causal-conv1d}"
base_prefix="$(python -c 'import sys; print(sys.prefix)')"
base_site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
venv="$cache/layer-$(printf '%s-' "${NEWEST[@]}" | sed 's/==//g')on-$(basename "$base_prefix")"

if [ ! -x "$venv/bin/python" ]; then
  python -m venv "$venv"
  site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "$base_site" >"$site/zz-main-venv.pth"  # after the layer's own packages
fi
# Every run: a no-op once installed, and it completes a layer that an
# interrupted run left half-installed.
"$venv/bin/pip" install --quiet --disable-pip-version-check "${NEWEST[@]}"
"$venv/bin/python" - "${NEWEST[@]}" <<'PY'
import importlib.metadata as md, sys
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    got = md.version(name)
    assert got == want, f"{name} {got} in the layer, not {want}"
    print(f"[newest] {name} {got}")
PY

cd "$repo"
PATH="$venv/bin:$PATH" python -m pytest -q -p no:cacheprovider \
  tests/test_transformers.py tests/test_packaging.py tests/test_build_description.py \
  tools/test_publish.py tools/test_build_variant.py benchmarks/test_benchmark.py
