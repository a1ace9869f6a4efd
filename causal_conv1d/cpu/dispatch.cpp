// Runtime choice of the CPU tier, and backend.h's entry points for CPU.
// ATen's capability detection is used so ATEN_CPU_CAPABILITY=default|avx2|
// avx512 forces a tier, exactly as it does for PyTorch's own kernels.
#include <string>

#include <ATen/Version.h>

#include "../backend.h"
#include "../checks.h"
#include "tiers.h"

static_assert(causal_conv1d::cpu::kMaxWidthCpu == causal_conv1d::kMaxWidth);

namespace causal_conv1d::cpu {

const KernelTable& active_table() {
  static const KernelTable table = [] {
#if defined(__x86_64__) || defined(_M_X64)
    // "DEFAULT", "AVX2" or "AVX512" (what torch.backends.cpu.get_cpu_capability() shows).
    const std::string capability = at::get_cpu_capability();
    if (capability == "AVX512") return avx512_table();
    if (capability == "AVX2") return avx2_table();
#endif
    return default_table();
  }();
  return table;
}

}  // namespace causal_conv1d::cpu

namespace causal_conv1d {

void run_fwd(const ConvParams& p) { cpu::active_table().fwd(p); }
void run_bwd(const ConvParams& p) { cpu::active_table().bwd(p); }
void run_update(const ConvParams& p) { cpu::active_table().update(p); }
void run_varlen_states(const ConvParams& p) { cpu::active_table().varlen_states(p); }
void run_fwd_packed(const ConvParams& p) { cpu::active_table().fwd_packed(p); }

}  // namespace causal_conv1d
