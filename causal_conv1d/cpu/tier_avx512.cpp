// The avx512 tier (x86-64): kernels.h with AVX-512 F/BW/VL/DQ (plus AVX2,
// FMA, F16C). The pragma comes before every include, so at::vec, the
// intrinsics and every inline function this file instantiates are compiled
// for this target, as command-line -m flags would; CPU_CAPABILITY_AVX512
// selects at::vec's 512-bit Vectorized<T>. Empty on other architectures.
#if defined(__x86_64__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
// GCC's C++ front end reads the whole file before it applies the pragma,
// so the pragma does not define the feature macros that ATen's, Sleef's and
// c10's headers test (__AVX2__, ...): they are defined here as the
// equivalent command-line flags define them.
#define __SSE3__ 1
#define __SSSE3__ 1
#define __SSE4_1__ 1
#define __SSE4_2__ 1
#define __POPCNT__ 1
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __F16C__ 1
#define __FP_FAST_FMA 1
#define __FP_FAST_FMAF 1
#define __AVX512F__ 1
#define __AVX512BW__ 1
#define __AVX512VL__ 1
#define __AVX512DQ__ 1
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#include "kernels.h"

namespace causal_conv1d::cpu {

KernelTable avx512_table() { return CPU_CAPABILITY::make_table("avx512"); }

}  // namespace causal_conv1d::cpu
#endif
