// Runtime choice of the CPU tier, and backend.h's entry points for CPU.
//
// The best tier this process may use follows ATen's own capability
// detection, so ATEN_CPU_CAPABILITY=default|avx2|avx512 caps it exactly as it
// does PyTorch's kernels; above avx512, avx512_bf16 needs AVX512_BF16 in
// CPUID. CAUSAL_CONV1D_CPU_TIER=default|avx2|avx512|avx512_bf16 asks for a
// tier at or below that best one (tests run every tier this way).
//
// aarch64 Linux: neon (every ARMv8 core), sve, sve_bf16, from the kernel's
// HWCAP bits. ATen's own capability is no guide there (it reports SVE only
// for 256-bit vectors, for its fixed-length SVE kernels), so only
// ATEN_CPU_CAPABILITY=default is followed, as a cap to neon. Where tiers.h
// builds the baseline alone (aarch64-darwin, clang), it is the only choice.
#include <array>
#include <cstdlib>
#include <string>

#include <ATen/Version.h>
#include <c10/util/Exception.h>

#include "tiers.h"

#if defined(CAUSAL_CONV1D_X86_TIERS)
#include <cpuid.h>
#elif defined(CAUSAL_CONV1D_SVE_TIERS)
#include <sys/auxv.h>
#endif

#include "../backend.h"
#include "../checks.h"

static_assert(causal_conv1d::cpu::kMaxWidthCpu == causal_conv1d::kMaxWidth);

namespace causal_conv1d::cpu {
namespace {

using TableFn = KernelTable (*)();

struct Tier {
  const char* name;
  TableFn table;
};

// Lowest first.
#if defined(CAUSAL_CONV1D_X86_TIERS)
constexpr std::array<Tier, 4> kTiers{{{"default", &default_table},
                                      {"avx2", &avx2_table},
                                      {"avx512", &avx512_table},
                                      {"avx512_bf16", &avx512_bf16_table}}};

bool cpu_has_avx512_bf16() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  // CPUID leaf 7, sub-leaf 1: EAX bit 5 is AVX512_BF16.
  if (!__get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx)) return false;
  return (eax >> 5) & 1u;
}

// Index in kTiers of the best tier this process may use.
size_t best_tier() {
  // "DEFAULT", "AVX2" or "AVX512" (torch.backends.cpu.get_cpu_capability()).
  const std::string capability = at::get_cpu_capability();
  if (capability == "AVX512") return cpu_has_avx512_bf16() ? 3 : 2;
  if (capability == "AVX2") return 1;
  return 0;
}
#elif defined(CAUSAL_CONV1D_SVE_TIERS)
constexpr std::array<Tier, 3> kTiers{{{"neon", &default_table},
                                      {"sve", &sve_table},
                                      {"sve_bf16", &sve_bf16_table}}};

size_t best_tier() {
  // Linux's HWCAP_SVE and HWCAP2_BF16 (asm/hwcap.h), spelled out so older
  // kernel headers build too.
  constexpr unsigned long kHwcapSve = 1ul << 22, kHwcap2Bf16 = 1ul << 14;
  const char* aten = std::getenv("ATEN_CPU_CAPABILITY");
  if (aten != nullptr && std::string(aten) == "default") return 0;
  if (!(getauxval(AT_HWCAP) & kHwcapSve)) return 0;
  return (getauxval(AT_HWCAP2) & kHwcap2Bf16) ? 2 : 1;
}
#else
#if defined(__aarch64__)
constexpr std::array<Tier, 1> kTiers{{{"neon", &default_table}}};  // its name in tier_default.cpp
#else
constexpr std::array<Tier, 1> kTiers{{{"default", &default_table}}};
#endif
size_t best_tier() { return 0; }
#endif

KernelTable choose_table() {
  const size_t best = best_tier();
  const char* asked = std::getenv("CAUSAL_CONV1D_CPU_TIER");
  if (asked == nullptr || *asked == '\0') return kTiers[best].table();
  std::string names;
  for (size_t i = 0; i < kTiers.size(); ++i) {
    if (std::string(asked) == kTiers[i].name) {
      TORCH_CHECK(i <= best, "CAUSAL_CONV1D_CPU_TIER=", asked,
                  " asks for a tier this CPU (or ATEN_CPU_CAPABILITY) does not allow; the best "
                  "available is ", kTiers[best].name);
      return kTiers[i].table();
    }
    names += (i ? ", " : "") + std::string(kTiers[i].name);
  }
  TORCH_CHECK(false, "CAUSAL_CONV1D_CPU_TIER=", asked, " is not a tier; use one of ", names);
}

}  // namespace

const KernelTable& active_table() {
  static const KernelTable table = choose_table();
  return table;
}

}  // namespace causal_conv1d::cpu

namespace causal_conv1d {

void run_fwd(const ConvParams& p) { cpu::active_table().fwd(p); }
void run_bwd(const ConvParams& p) { cpu::active_table().bwd(p); }
void run_update(const ConvParams& p) { cpu::active_table().update(p); }
void run_update_serving(const ConvParams& p) { cpu::active_table().update_serving(p); }
void run_varlen_states(const ConvParams& p) { cpu::active_table().varlen_states(p); }
void run_fwd_packed(const ConvParams& p) { cpu::active_table().fwd_packed(p); }
const char* kernel_tier() { return cpu::active_table().name; }

}  // namespace causal_conv1d
