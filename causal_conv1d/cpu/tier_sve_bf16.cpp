// The sve_bf16 tier (aarch64 with SVE and ARMv8.6 BF16: Graviton3/4, Grace):
// the sve tier plus the BF16 extension. With __ARM_FEATURE_BF16 defined,
// at::vec rounds fp32 to bf16 with BFCVTN/BFCVTN2 (one instruction per four
// lanes, nearest-even, subnormals kept unless FPCR.FZ is set) in place of the
// add/shift/select emulation, which is every bf16 store of a result (common.h
// narrow). BFDOT/BFMMLA are not used yet: they sum the products of
// neighbouring bf16 lanes, i.e. two taps of one channel, so the depthwise
// window needs a lane permutation per pair of taps, which on AVX-512
// (VPERMW + VDPBF16PS) was slower than widening to fp32. Empty where tiers.h
// leaves it out.
#include "tiers.h"  // before the pragma: which tiers this compiler and system build
#if defined(CAUSAL_CONV1D_SVE_TIERS)
#include "std_first.h"  // before the pragma: std_first.h says why
#pragma GCC target("arch=armv8.2-a+sve+bf16")
// The feature macros the pragma leaves undefined (isa_macros.h says why).
#define CAUSAL_CONV1D_ISA_SVE_BF16
#include "isa_macros.h"
#define CPU_CAPABILITY SVE_BF16
#include "kernels.h"

namespace causal_conv1d::cpu {

KernelTable sve_bf16_table() { return CPU_CAPABILITY::make_table("sve_bf16"); }

}  // namespace causal_conv1d::cpu
#endif
