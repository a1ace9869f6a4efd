"""build.toml as kernel-builder reads it: its parser and its CUDA capability rule.

kernel-builder (huggingface/kernels at the commit flake.lock pins) builds a
CUDA variant's `[kernel.*]` section for the `cuda-capabilities` that its
CUDA toolkit knows and emits PTX only for entries written `X.Y+PTX`
(kernel-builder/src/pyproject/templates/torch/preamble.cmake, utils.cmake:
cuda_archs_loose_intersection, set_gencode_flags_for_srcs); metadata.json's
`backend.archs` lists what was built (add_build_metadata.py), and the
`kernels` loader refuses a GPU that no entry covers (kernels/archs.py).

helpers.py restates the rule from those sources, on its own (not imported
from tools/build_variant.py), so that the local builder is checked against
an independent statement of it (tools/test_build_variant.py). Tests that
need a copy of kernel-builder's sources or flake.nix skip without them; the
others run in the Nix source set too (kernels_ci).
"""

from __future__ import annotations

import base64
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import (
    BUILDER_CUDA_VERSIONS,
    PREAMBLE_ARCHS,
    ROOT,
    build_toml,
    build_toml_capabilities,
    builder_variant,
    cmake_version,
    loose_intersection,
)

# A git directory of huggingface/kernels (a bare mirror is enough): where
# present, the tables below are checked against kernel-builder's own files
# at the commit flake.lock pins.
KERNELS_GIT = Path(os.environ.get("CAUSAL_CONV1D_KERNELS_GIT", "/work/.mirror/huggingface+kernels/repo"))

# What build.toml must give each variant of the matrix: (SASS, PTX).
EXPECTED = {
    "12.6": (["7.5", "8.0", "8.6", "8.9", "9.0"], ["9.0"]),
    "13.0": (["7.5", "8.0", "8.6", "8.9", "9.0", "10.0", "11.0", "12.0", "12.1"], ["9.0", "12.1"]),
    "13.2": (["7.5", "8.0", "8.6", "8.9", "9.0", "10.0", "11.0", "12.0", "12.1"], ["9.0", "12.1"]),
}


# ---------------------------------------------------------------------------
# The rule applied to build.toml


@pytest.mark.kernels_ci
def test_rule_reproduces_the_cmake_examples():
    # The worked examples in utils.cmake's comment on the function. The
    # first one's comment also lists 9.0, but the code below it takes 9.0
    # out of the targets once 9.0a claims it; the code is what builds.
    assert loose_intersection(["7.5", "8.0", "8.6", "9.0", "9.0a"], ["8.0", "8.9", "9.0"]) == \
        ["8.0", "8.6", "9.0a"]
    assert loose_intersection(["8.0+PTX"], ["9.0"]) == ["8.0+PTX"]
    # Without +PTX nothing crosses a major version.
    assert loose_intersection(["8.0"], ["9.0"]) == []


@pytest.mark.kernels_ci
@pytest.mark.parametrize("cuda", BUILDER_CUDA_VERSIONS)
def test_every_builder_variant_carries_ptx_of_its_newest_capability(cuda):
    built = builder_variant(build_toml_capabilities(), cuda)
    sass, ptx = EXPECTED[cuda]
    assert (built["sass"], built["ptx"]) == (sass, ptx)
    # A GPU newer than every SASS entry runs the PTX: it must be the newest.
    assert max(built["ptx"], key=cmake_version) == max(built["sass"], key=cmake_version)


# ---------------------------------------------------------------------------
# The tables above, against kernel-builder's files at the pinned commit


def _pinned_source(path: str) -> str:
    lock = ROOT / "flake.lock"
    if not lock.is_file() or not (KERNELS_GIT / "HEAD").exists():
        pytest.skip(f"needs flake.lock and a git copy of huggingface/kernels at {KERNELS_GIT}")
    rev = json.loads(lock.read_text())["nodes"]["kernel-builder"]["locked"]["rev"]
    r = subprocess.run(["git", "--git-dir", str(KERNELS_GIT), "show", f"{rev}:{path}"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"{KERNELS_GIT} lacks {rev}:{path}")
    return r.stdout


def test_tables_match_the_pinned_kernel_builder():
    preamble = _pinned_source("kernel-builder/src/pyproject/templates/torch/preamble.cmake")
    found = re.findall(r'set\(CUDA_DEFAULT_KERNEL_ARCHS "([^"]+)"\)', preamble)
    assert found == [archs for _, archs in PREAMBLE_ARCHS]
    thresholds = re.findall(r"CMAKE_CUDA_COMPILER_VERSION VERSION_GREATER_EQUAL ([\d.]+)\)", preamble)
    assert thresholds == [first for first, _ in PREAMBLE_ARCHS[:-1]]
    versions = _pinned_source("nix-builder/versions.nix")
    cuda = sorted(set(re.findall(r'cudaVersion = "([\d.]+)"', versions)), key=cmake_version)
    assert cuda == BUILDER_CUDA_VERSIONS


# ---------------------------------------------------------------------------
# The loader's arch check, with a GPU faked on CPU


def _fake_variant(root: Path, cuda: str, archs: list[str], ident: str) -> None:
    import torch

    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    machine = platform.machine().lower().replace("amd64", "x86_64").replace("arm64", "aarch64")
    variant = root / "build" / f"torch{major}{minor}-cxx11-cu{cuda.replace('.', '')}-{machine}-linux"
    variant.mkdir(parents=True)
    (variant / "__init__.py").write_text("LOADED = True\n")
    (variant / "metadata.json").write_text(json.dumps({
        "id": ident, "name": "causal-conv1d", "version": 1, "license": "BSD-3-Clause",
        "python-depends": [], "backend": {"type": "cuda", "archs": archs},
    }))


def _load_on_fake_gpu(monkeypatch, root: Path, cuda: str, capability: tuple[int, int]):
    import torch
    from kernels import get_kernel

    monkeypatch.setattr(torch.version, "cuda", cuda)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    monkeypatch.setenv("LOCAL_KERNELS", f"test-org/causal-conv1d={root}")
    return get_kernel("test-org/causal-conv1d", version=1)


@pytest.mark.kernels_ci
@pytest.mark.skipif(sys.platform != "linux", reason="CUDA variants are Linux builds")
@pytest.mark.parametrize("cuda", BUILDER_CUDA_VERSIONS)
def test_loader_runs_each_variant_on_a_newer_gpu_through_its_ptx(cuda, tmp_path, monkeypatch):
    pytest.importorskip("kernels")
    built = builder_variant(build_toml_capabilities(), cuda)
    newer = (max(cmake_version(a)[0] for a in built["sass"]) + 1, 0)  # no SASS of that major
    tag = f"{cuda.replace('.', '')}_{os.getpid()}"

    _fake_variant(tmp_path / "ptx", cuda, built["archs"], f"_causal_conv1d_cuda_ptx{tag}")
    assert _load_on_fake_gpu(monkeypatch, tmp_path / "ptx", cuda, newer).LOADED

    # The same build without PTX: the check refuses the newer GPU ...
    sass_only = sorted(set(built["sass"]))
    _fake_variant(tmp_path / "sass", cuda, sass_only, f"_causal_conv1d_cuda_sass{tag}")
    with pytest.raises(RuntimeError, match=f"capability {newer[0]}.0 .* not supported"):
        _load_on_fake_gpu(monkeypatch, tmp_path / "sass", cuda, newer)
    # ... and PTX does not make an older GPU than every entry pass.
    _fake_variant(tmp_path / "old", cuda, built["archs"], f"_causal_conv1d_cuda_old{tag}")
    with pytest.raises(RuntimeError, match="capability 7.0 .* not supported"):
        _load_on_fake_gpu(monkeypatch, tmp_path / "old", cuda, (7, 0))


# ---------------------------------------------------------------------------
# kernel-builder's parser (the `kernels` package ships it)


@pytest.mark.kernels_ci
def test_build_toml_passes_kernel_builders_parser():
    rust = pytest.importorskip("kernels._rust")
    build = rust.Build.open(ROOT)
    assert [str(b) for b in build.general.backends] == build_toml()["general"]["backends"]


@pytest.mark.kernels_ci
@pytest.mark.parametrize("change, message", [
    (("cuda-capabilities =", "cuda-capabilites ="), "Unknown field cuda-capabilites"),
    (("edition = 5", "edition = 99"), "edition 99"),  # kernels 0.19 knows an edition 6
    (("[general.hub]", "[general.hubb]"), "Unknown field hubb"),
    (('backend = "cpu"', 'backend = "cpus"'), "Unknown variant cpus"),
    (("version = 1\n", 'version = "1"\n'), "Expected usize"),
])
def test_kernel_builders_parser_refuses_a_wrong_build_toml(change, message, tmp_path):
    rust = pytest.importorskip("kernels._rust")
    text = (ROOT / "build.toml").read_text()
    old, new = change
    assert old in text
    (tmp_path / "build.toml").write_text(text.replace(old, new, 1))
    with pytest.raises(ValueError, match=message):
        rust.Build.open(tmp_path)


# ---------------------------------------------------------------------------
# flake.lock: the pinned kernel-builder and everything below it


def _flake_files():
    nix, lock = ROOT / "flake.nix", ROOT / "flake.lock"
    if not (nix.is_file() and lock.is_file()):
        pytest.skip("flake.nix / flake.lock are not here (e.g. the Nix source set)")
    return nix.read_text(), json.loads(lock.read_text())


def _flake_inputs(flake_nix: str) -> dict[str, str]:
    """NAME.url = "..." lines of flake.nix (the form this flake uses)."""
    return dict(re.findall(r'^\s*([A-Za-z][\w-]*)\.url\s*=\s*"([^"]+)";', flake_nix, re.M))


def _github(url: str) -> dict:
    m = re.fullmatch(r"github:([^/]+)/([^/?]+)(?:/([^?]+))?", url)
    assert m, f"not a github: flake URL: {url}"
    owner, repo, ref = m.groups()
    out = {"owner": owner, "repo": repo, "type": "github"}
    if ref:
        out["rev" if re.fullmatch(r"[0-9a-f]{40}", ref) else "ref"] = ref
    return out


def test_flake_lock_matches_flake_nix():
    flake_nix, lock = _flake_files()
    assert lock["version"] == 7
    nodes = lock["nodes"]
    root = nodes[lock["root"]]
    inputs = _flake_inputs(flake_nix)
    assert inputs, "no inputs found in flake.nix"
    assert sorted(root["inputs"]) == sorted(inputs)

    def resolve(ref):
        """A node name, or a `follows` path from the root flake."""
        if isinstance(ref, str):
            return ref
        name = lock["root"]
        for part in ref:
            name = resolve(nodes[name]["inputs"][part])
        return name

    reached, todo = set(), [lock["root"]]
    while todo:
        name = todo.pop()
        if name in reached:
            continue
        reached.add(name)
        for ref in nodes[name].get("inputs", {}).values():
            assert resolve(ref) in nodes, ref
            todo.append(resolve(ref))
    assert reached == set(nodes), f"nodes nothing uses: {set(nodes) - reached}"

    for name, url in inputs.items():
        node = nodes[root["inputs"][name]]
        assert node["original"] == _github(url)
        locked = node["locked"]
        assert {k: locked[k] for k in ("owner", "repo", "type")} == \
            {k: node["original"][k] for k in ("owner", "repo", "type")}
        assert re.fullmatch(r"[0-9a-f]{40}", locked["rev"])
    for name, node in nodes.items():
        if "locked" in node:
            assert re.fullmatch(r"sha256-[A-Za-z0-9+/]{43}=", node["locked"]["narHash"]), name
            assert isinstance(node["locked"]["lastModified"], int), name


def _kernels_git(*args: str) -> str:
    if not (KERNELS_GIT / "HEAD").exists():
        pytest.skip(f"needs a git copy of huggingface/kernels at {KERNELS_GIT}")
    r = subprocess.run(["git", "--git-dir", str(KERNELS_GIT), *args], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"git {' '.join(args)} failed in {KERNELS_GIT}: {r.stderr.strip()}")
    return r.stdout


def test_flake_lock_nested_inputs_are_the_pinned_commits_own():
    _, lock = _flake_files()
    node = lock["nodes"]["kernel-builder"]
    rev = node["locked"]["rev"]
    assert node["locked"]["lastModified"] == int(_kernels_git("log", "-1", "--format=%ct", rev))
    upstream = json.loads(_kernels_git("show", f"{rev}:flake.lock"))
    up_nodes = upstream["nodes"]
    up_root = up_nodes[upstream["root"]]

    def relocate(inputs):  # their follows paths start at their root, ours one level down
        return {k: ["kernel-builder", *v] if isinstance(v, list) else v for k, v in inputs.items()}

    assert node["inputs"] == relocate(up_root["inputs"])
    for name, theirs in up_nodes.items():
        if name == upstream["root"]:
            continue
        ours = lock["nodes"][name]
        assert ours["locked"] == theirs["locked"], name
        assert ours["original"] == theirs["original"], name
        assert ours.get("inputs") == (relocate(theirs["inputs"]) if "inputs" in theirs else None), name


def test_flake_lock_nar_hash_is_the_pinned_source_tree(tmp_path):
    """narHash of a github input: the NAR hash of the unpacked tarball
    GitHub serves for the commit, i.e. `git archive` of it (no submodules,
    no export-ignore / export-subst attributes, checked here)."""
    nix_hash = shutil.which("nix-hash")
    if nix_hash is None:
        pytest.skip("nix-hash not found (Debian: apt-get install nix-bin)")
    _, lock = _flake_files()
    locked = lock["nodes"]["kernel-builder"]["locked"]
    rev = locked["rev"]
    tree = _kernels_git("ls-tree", "-r", rev)
    assert not [line for line in tree.splitlines() if line.startswith("160000")], "submodules"
    for path in [line.split("\t", 1)[1] for line in tree.splitlines() if line.endswith(".gitattributes")]:
        attrs = _kernels_git("show", f"{rev}:{path}")
        assert "export-ignore" not in attrs and "export-subst" not in attrs, path
    source = tmp_path / "source"
    source.mkdir()
    archive = subprocess.run(["git", "--git-dir", str(KERNELS_GIT), "archive", "--format=tar", rev],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    hex_digest = subprocess.run([nix_hash, "--type", "sha256", str(source)],  # NAR hash, base16
                                capture_output=True, text=True, check=True).stdout.strip()
    assert locked["narHash"] == "sha256-" + base64.b64encode(bytes.fromhex(hex_digest)).decode()
