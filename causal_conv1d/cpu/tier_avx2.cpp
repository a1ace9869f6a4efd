// The avx2 tier (x86-64): kernels.h with AVX2, FMA and F16C. The pragma
// comes before every include, so ATen's at::vec headers, the intrinsics and
// every inline function this file instantiates are compiled for this target
// (what -mavx2 -mfma -mf16c on the command line did; build.toml stays free
// of per-architecture flags). CPU_CAPABILITY_AVX2 selects at::vec's AVX2
// Vectorized<T>. Empty on other architectures.
#if defined(__x86_64__)
#pragma GCC target("avx2,fma,f16c")
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
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "kernels.h"

namespace causal_conv1d::cpu {

KernelTable avx2_table() { return CPU_CAPABILITY::make_table("avx2"); }

}  // namespace causal_conv1d::cpu
#endif
