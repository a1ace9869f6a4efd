// The baseline tier: kernels.h with the compiler's default target, i.e. the
// instruction set every CPU of this architecture has (x86-64: SSE2, reported
// as "default"; aarch64: NEON, reported as "neon").
#define CPU_CAPABILITY DEFAULT
#include "kernels.h"

namespace causal_conv1d::cpu {

#if defined(__aarch64__)
KernelTable default_table() { return CPU_CAPABILITY::make_table("neon"); }
#else
KernelTable default_table() { return CPU_CAPABILITY::make_table("default"); }
#endif

}  // namespace causal_conv1d::cpu
