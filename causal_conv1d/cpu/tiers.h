// CPU instruction-set tiers. kernels.h is compiled once per tier (files
// tier_*.cpp, each selecting its target with #pragma GCC target, so one
// build.toml serves every architecture); dispatch.cpp picks the best tier
// the running CPU supports.
#pragma once

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
#if defined(__x86_64__) || defined(_M_X64)
KernelTable avx2_table();     // tier_avx2.cpp:   AVX2, FMA, F16C
KernelTable avx512_table();   // tier_avx512.cpp: AVX-512 F/BW/VL/DQ
KernelTable avx512_bf16_table();  // tier_avx512_bf16.cpp: avx512 + AVX512_BF16
#elif defined(__aarch64__)
KernelTable sve_table();       // tier_sve.cpp:      + SVE
KernelTable sve_bf16_table();  // tier_sve_bf16.cpp: + SVE, BF16
#endif

// The tier used for this process (see dispatch.cpp); its name is what the
// kernel_tier op reports.
const KernelTable& active_table();

}  // namespace causal_conv1d::cpu
