# The aarch64 test subset, sourced by tools/ci/aarch64.sh and clang.sh
# (bash: KEEP, a pytest -k expression, and FILES, an array).
#
# The subset (about 560 tests): every op (forward and backward in both
# layouts, update into a pool, packed prefill, varlen states) in every dtype
# pairing at width 4 (the row_slide fast path); tests/test_cpu_aarch64.py:
# the tier check and widths 1..32 for forward, backward and update in
# fp32/bf16/fp16; the serving engines' decode whole (tests/test_serving.py:
# aarch64 has no register paths, so its rows and channel paths take every
# call) but for torch.compile, whose inductor would need an aarch64 C++
# compiler inside qemu; the backward's single-pass rows at widths 4, 5 and 8
# (fp64 in 4-lane vectors takes that path up to width 5, the halo one
# vector long, and buffered rows at 8); the backward with dout laid out
# against x at width 4 (its tiles' transposes: NEON and SVE, 16-bit and
# wide); and the property tests, on a fifth of their budget.
KEEP="test_cpu_aarch64"
KEEP+=" or ((test_grid or test_bwd_grid) and (-4-contiguous] or -4-channel_last]))"
KEEP+=" or (test_rows_single_pass and (-4] or -5] or -8])) or (test_bwd_dout_other_layout and -4])"
KEEP+=" or (test_grid and (-4-True] or -4-0])) or (test_varlen_states and [cpu-3-)"
KEEP+=" or (test_serving.py and not compiles) or test_properties.py"
FILES=(tests/test_cpu_aarch64.py tests/test_fwd.py tests/test_bwd.py tests/test_update.py
       tests/test_packed.py tests/test_serving.py tests/test_properties.py)
