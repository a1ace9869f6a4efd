// CPU instruction-set tiers. kernels.h is compiled once per tier (files
// tier_*.cpp, each selecting its target with #pragma GCC target, so one
// build.toml serves every architecture); dispatch.cpp picks the best tier
// the running CPU supports.
#pragma once

// Which tiers a build has. A tier above the baseline selects its target
// with `#pragma GCC target`, which only GCC honours: clang ignores it and
// would compile the tier's intrinsics for the baseline target, which fails
// (SVE, BF16) or lies about the tier. The aarch64 tiers are also chosen
// from Linux's HWCAP bits. So the x86-64 tiers come with GCC, the SVE ones
// with GCC on Linux, and elsewhere the baseline is the only tier: that is
// kernel-builder's aarch64-darwin CPU variant, which clang builds (Apple's
// cores have no SVE). The tier files include this before their pragma.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define CAUSAL_CONV1D_X86_TIERS 1
#elif defined(__GNUC__) && !defined(__clang__) && defined(__aarch64__) && defined(__linux__)
#define CAUSAL_CONV1D_SVE_TIERS 1
#endif

#include <cstdint>

#include "../params.h"

namespace causal_conv1d::cpu {

// Widths the CPU kernels support (== checks.h kMaxWidth; a static_assert in
// dispatch.cpp keeps the two equal).
constexpr int64_t kMaxWidthCpu = 32;

// One tier's entry points (same meaning as backend.h's run_*).
struct KernelTable {
  const char* name;
  void (*fwd)(const ConvParams&);
  void (*bwd)(const ConvParams&);
  void (*update)(const ConvParams&);
  void (*update_serving)(const ConvParams&);
  void (*varlen_states)(const ConvParams&);
  void (*fwd_packed)(const ConvParams&);
};

KernelTable default_table();  // tier_default.cpp: the baseline ("default", aarch64 "neon")
#if defined(CAUSAL_CONV1D_X86_TIERS)
KernelTable avx2_table();     // tier_avx2.cpp:   AVX2, FMA, F16C
KernelTable avx512_table();   // tier_avx512.cpp: AVX-512 F/BW/VL/DQ
KernelTable avx512_bf16_table();  // tier_avx512_bf16.cpp: avx512 + AVX512_BF16
#elif defined(CAUSAL_CONV1D_SVE_TIERS)
KernelTable sve_table();       // tier_sve.cpp:      + SVE
KernelTable sve_bf16_table();  // tier_sve_bf16.cpp: + SVE, BF16
#endif

// The tier used for this process (see dispatch.cpp); its name is what the
// kernel_tier op reports.
const KernelTable& active_table();

}  // namespace causal_conv1d::cpu
