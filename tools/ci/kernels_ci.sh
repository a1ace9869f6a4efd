#!/usr/bin/env bash
# The test suite as kernel-builder's `nix run .#ci-test` runs it, without Nix:
# the Nix source set (the files build.toml lists, build.toml,
# torch-ext/**/*.py, tests/**/*.py; nothing else, not even pytest.ini) copied
# into an empty folder, then
#
#   PYTHONPATH=<build>/<variant> LOCAL_KERNELS=<repo-id>=<build> \
#     python -m pytest <copy>/tests -m kernels_ci -p no:cacheprovider
#
# with the variant tools/build_variant.py built into build/ (CAUSAL_CONV1D_BUILD
# names another build output). Packages the flake does not give the tests
# (hypothesis, olah, transformers, and pytest plugins) are hidden from the
# interpreter, so a test that needs one must skip, not break collection. Exit 5 (nothing selected)
# counts as a failure here: the subset must exist.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="$(realpath "${CAUSAL_CONV1D_BUILD:-$repo/build}")"
python="${PYTHON:-python}"
work="$(mktemp -d "${TMPDIR:-/tmp}/causal-conv1d-kernels-ci.XXXXXX")"
trap 'rm -rf "$work"' EXIT
src="$work/src"

# The source set: what kernel-builder's flake copies into the store.
"$python" - "$repo" "$src" <<'PY'
import shutil, sys, tomllib
from pathlib import Path

repo, dst = Path(sys.argv[1]), Path(sys.argv[2])
config = tomllib.loads((repo / "build.toml").read_text())
files = {"build.toml"}
files.update(config.get("torch", {}).get("src", []))
for section in config.get("kernel", {}).values():
    files.update(section.get("src", []))
files.update(str(p.relative_to(repo)) for p in repo.glob("torch-ext/**/*.py"))
files.update(str(p.relative_to(repo)) for p in repo.glob("tests/**/*.py"))
for f in sorted(files):
    (dst / f).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(repo / f, dst / f)
print(f"[kernels-ci] source set: {len(files)} files")
PY

# Hide the packages the flake's test environment lacks.
mkdir -p "$work/hide"
cat >"$work/hide/sitecustomize.py" <<'PY'
import sys

# None in sys.modules is how an absent module looks: `import` raises
# ModuleNotFoundError and importlib.util.find_spec returns None.
for name in ("hypothesis", "olah", "transformers"):
    sys.modules[name] = None
PY

variant="$("$python" - "$build" <<'PY'
import sys
from pathlib import Path
from kernels.variants import get_variants_local, resolve_variant

variant, _ = resolve_variant(get_variants_local(Path(sys.argv[1])), None)
if variant is None:
    sys.exit(f"no variant for this host under {sys.argv[1]}")
print(variant.variant_str)
PY
)"
repo_id="$("$python" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["general"]["hub"]["repo-id"])' "$repo/build.toml")"

cd "$work"
for v in $(env | sed -n 's/^\(CAUSAL_CONV1D_[A-Z0-9_]*\)=.*/\1/p'); do unset "$v"; done
unset LD_LIBRARY_PATH
# No pytest plugins from the venv (hypothesis registers one): the flake's
# test environment has none of them.
export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
export PYTHONPATH="$build/$variant:$work/hide"
export LOCAL_KERNELS="$repo_id=$build"
echo "[kernels-ci] PYTHONPATH=$build/$variant LOCAL_KERNELS=$LOCAL_KERNELS"
"$python" -m pytest "$src/tests" -m kernels_ci -p no:cacheprovider -q "$@"
