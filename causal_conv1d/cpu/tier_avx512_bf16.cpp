// The avx512_bf16 tier (x86-64): the avx512 tier's kernels plus AVX512_BF16,
// whose one-instruction fp32 -> bf16 rounding (common.h narrow) replaces
// about eight instructions per vector in every bf16 store. Its VDPBF16PS
// is not used: in the forward's rows it needs a VPERMW per pair of taps
// and was slower than widening x to fp32 for row_slide's VALIGND windows.
// Target selected in the source as in tier_avx512.cpp. Empty where tiers.h
// leaves it out.
#include "tiers.h"  // before the pragma: which tiers this compiler and system build
#if defined(CAUSAL_CONV1D_X86_TIERS)
#include "std_first.h"  // before the pragma: std_first.h says why
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")
// The feature macros the pragma leaves undefined (isa_macros.h says why).
#define CAUSAL_CONV1D_ISA_AVX512_BF16
#include "isa_macros.h"
#define CPU_CAPABILITY AVX512_BF16
#define CPU_CAPABILITY_AVX512
#define CAUSAL_CONV1D_AVX512_BF16
#include "kernels.h"

namespace causal_conv1d::cpu {

KernelTable avx512_bf16_table() { return CPU_CAPABILITY::make_table("avx512_bf16"); }

}  // namespace causal_conv1d::cpu
#endif
