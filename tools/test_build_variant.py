"""tools/build_variant.py builds what kernel-builder builds: its CUDA
capability rule and its build.toml parser, against kernel-builder's own
as helpers.py restates the rule (tests/test_build_description.py checks
the restatement against kernel-builder's sources) and as the `kernels`
package ships the parser."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import build_variant as bv
from helpers import (
    BUILDER_CUDA_VERSIONS,
    PREAMBLE_ARCHS,
    ROOT,
    build_toml,
    build_toml_capabilities,
    builder_variant,
)

TOOL = Path(bv.__file__)


@pytest.mark.parametrize("cuda", BUILDER_CUDA_VERSIONS + ["12.8"])
def test_local_builder_builds_what_kernel_builder_builds(cuda):
    want = builder_variant(build_toml_capabilities(), cuda)
    archs = bv.cuda_archs(bv.build_toml_entries(build_toml()), cuda)
    assert bv.metadata_archs(archs) == want["archs"]
    assert bv.gencode_flags(archs) == want["gencode"]


def test_local_builder_rule_matches_on_other_entries():
    cases = [["7.5", "8.0", "8.6", "9.0", "9.0a"], ["8.0+PTX"], ["8.0"], ["8.6+PTX", "10.0", "12.0+PTX"],
             ["7.0", "9.0+PTX", "9.0", "11.0"], ["10.0a", "12.1"]]
    for entries in cases:
        for cuda in ("12.6", "12.8", "13.0"):
            want = builder_variant(entries, cuda)["archs"]
            got = bv.metadata_archs(bv.select_archs(entries, bv.toolkit_archs(cuda)))
            assert got == want, (entries, cuda)


def test_local_builder_toolkit_archs_are_the_preamble_tables():
    for first, archs in PREAMBLE_ARCHS:
        assert bv.toolkit_archs(first) == archs.replace("+PTX", "").split(";")


def test_print_archs_reports_the_rule():
    r = subprocess.run([sys.executable, str(TOOL), "--print-archs", "--cuda-version", "12.6"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    want = builder_variant(build_toml_capabilities(), "12.6")
    assert (got["cuda"], got["archs"], got["gencode"]) == ("12.6", want["archs"], want["gencode"])


def test_local_builder_refuses_what_kernel_builder_refuses(tmp_path):
    pytest.importorskip("kernels._rust")
    shutil.copy2(ROOT / "build.toml", tmp_path / "build.toml")
    bv.check_build_toml(tmp_path)  # accepted: returns
    text = (ROOT / "build.toml").read_text().replace("cuda-capabilities =", "cuda-capabilites =")
    (tmp_path / "build.toml").write_text(text)
    with pytest.raises(SystemExit, match="refused by kernel-builder's parser"):
        bv.check_build_toml(tmp_path)
