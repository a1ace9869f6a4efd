// The sve tier (aarch64: Graviton3/4, Grace, A64FX): kernels.h compiled for
// ARMv8.2-A with SVE, selected in the source as the x86 tiers are. What it
// changes, honestly: at::vec's Vectorized<T> on aarch64 is 128-bit NEON in
// every tier (its SVE classes need -msve-vector-bits fixed on the command
// line and then run only on CPUs of exactly that vector length), so the hot
// loops (fwd row_slide/row_span, the channel-last tiles) are the neon
// tier's; SVE enters only where the compiler vectorizes loops itself
// (weight transposes, parts of the backward's channel-last and update
// bookkeeping), several hundred instructions in all. Empty where tiers.h
// leaves it out.
#include "tiers.h"  // before the pragma: which tiers this compiler and system build
#if defined(CAUSAL_CONV1D_SVE_TIERS)
#include "std_first.h"  // before the pragma: std_first.h says why
#pragma GCC target("arch=armv8.2-a+sve")
// The feature macros the pragma leaves undefined (isa_macros.h says why).
#define CAUSAL_CONV1D_ISA_SVE
#include "isa_macros.h"
#define CPU_CAPABILITY SVE
#include "kernels.h"

namespace causal_conv1d::cpu {

KernelTable sve_table() { return CPU_CAPABILITY::make_table("sve"); }

}  // namespace causal_conv1d::cpu
#endif
