// The avx2 tier (x86-64): kernels.h with AVX2, FMA and F16C. The pragma
// comes before every include, so ATen's at::vec headers, the intrinsics and
// every inline function this file instantiates are compiled for this target
// (what -mavx2 -mfma -mf16c on the command line did; build.toml stays free
// of per-architecture flags). CPU_CAPABILITY_AVX2 selects at::vec's AVX2
// Vectorized<T>. Empty where tiers.h leaves it out.
#include "tiers.h"  // before the pragma: which tiers this compiler and system build
#if defined(CAUSAL_CONV1D_X86_TIERS)
#include "std_first.h"  // before the pragma: std_first.h says why
#pragma GCC target("avx2,fma,f16c")
// The feature macros the pragma leaves undefined (isa_macros.h says why).
#define CAUSAL_CONV1D_ISA_AVX2
#include "isa_macros.h"
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "kernels.h"

namespace causal_conv1d::cpu {

KernelTable avx2_table() { return CPU_CAPABILITY::make_table("avx2"); }

}  // namespace causal_conv1d::cpu
#endif
