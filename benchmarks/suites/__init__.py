"""The suites benchmarks/bench.py runs, one module each with a main() that
parses the suite's options, and what they share: harness.py (loading the
built kernel, timing, inputs, the CPU options) and peers.py (the kernels
the GPU suite compares ours with)."""
