// CPU instruction-set tiers. kernels.h is compiled once per tier (files
// tier_*.cpp, each with its own cxx-flags in build.toml); dispatch.cpp picks
// the best tier the running CPU supports.
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
  void (*varlen_states)(const ConvParams&);
  void (*fwd_packed)(const ConvParams&);
};

KernelTable default_table();  // tier_default.cpp: portable, no ISA flags
#if defined(__x86_64__) || defined(_M_X64)
KernelTable avx2_table();     // tier_avx2.cpp:   -mavx2 -mfma -mf16c
KernelTable avx512_table();   // tier_avx512.cpp: AVX-512 F/BW/VL/DQ
KernelTable avx512_bf16_table();  // tier_avx512_bf16.cpp: avx512 + AVX512_BF16
#endif

// The tier used for this process (see dispatch.cpp); its name is what the
// kernel_tier op reports.
const KernelTable& active_table();

}  // namespace causal_conv1d::cpu
