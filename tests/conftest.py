"""Registers the suite's pytest plugin (plugin.py) where nothing has: the
repository's root conftest.py registers it for tests/, benchmarks/ and
tools/ alike; in kernel-builder's Nix source set, which has tests/ alone,
this is the top-level conftest and does."""

import sys

# KERNEL_ROOT, ROOT and load_kernel stay importable from here for scripts
# written against the older conftest (benchmarks/suites/harness.py).
from helpers import KERNEL_ROOT, ROOT, load_kernel  # noqa: F401

if "plugin" not in sys.modules:
    pytest_plugins = ["plugin"]
