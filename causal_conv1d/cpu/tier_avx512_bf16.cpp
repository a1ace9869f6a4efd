// The avx512_bf16 tier: the avx512 tier's kernels plus AVX512_BF16, whose
// one-instruction fp32 -> bf16 rounding (common.h narrow) replaces about
// eight instructions per vector in every bf16 store (build.toml flags).
#include "kernels.h"

namespace causal_conv1d::cpu {

KernelTable avx512_bf16_table() { return CPU_CAPABILITY::make_table("avx512_bf16"); }

}  // namespace causal_conv1d::cpu
