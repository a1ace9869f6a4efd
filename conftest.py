"""The test suite's pytest plugin (tests/plugin.py: markers, the backends,
the kernel fixtures) for every test folder: tests/, and the tests of
benchmarks/ and tools/, which use the same kernel fixtures. pytest.ini puts
tests/ on sys.path."""

pytest_plugins = ["plugin"]
