// The avx512 tier (x86-64): kernels.h with AVX-512 F/BW/VL/DQ (plus AVX2,
// FMA, F16C). The pragma comes before every include, so at::vec, the
// intrinsics and every inline function this file instantiates are compiled
// for this target, as command-line -m flags would; CPU_CAPABILITY_AVX512
// selects at::vec's 512-bit Vectorized<T>. Empty where tiers.h leaves it out.
#include "tiers.h"  // before the pragma: which tiers this compiler and system build
#if defined(CAUSAL_CONV1D_X86_TIERS)
#include "std_first.h"  // before the pragma: std_first.h says why
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
// The feature macros the pragma leaves undefined (isa_macros.h says why).
#define CAUSAL_CONV1D_ISA_AVX512
#include "isa_macros.h"
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#include "kernels.h"

namespace causal_conv1d::cpu {

KernelTable avx512_table() { return CPU_CAPABILITY::make_table("avx512"); }

}  // namespace causal_conv1d::cpu
#endif
