// The avx512 tier: kernels.h compiled with this tier's flags (build.toml).
#include "kernels.h"

namespace causal_conv1d::cpu {

KernelTable avx512_table() { return CPU_CAPABILITY::make_table("avx512"); }

}  // namespace causal_conv1d::cpu
