// The default tier: kernels.h compiled with this tier's flags (build.toml).
#include "kernels.h"

namespace causal_conv1d::cpu {

KernelTable default_table() { return CPU_CAPABILITY::make_table("default"); }

}  // namespace causal_conv1d::cpu
