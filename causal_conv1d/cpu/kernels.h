// All CPU kernels of one instruction-set tier. Included only by tier_*.cpp,
// each selecting its target (#pragma GCC target) and CPU_CAPABILITY, so
// every symbol lives in namespace cpu::CPU_CAPABILITY and tiers never collide.
#pragma once

#include "bwd.h"
#include "fwd.h"
#include "packed.h"
#include "update.h"
#include "update_serving.h"

namespace causal_conv1d::cpu::CPU_CAPABILITY {

inline KernelTable make_table(const char* name) {
  return {name, &fwd, &bwd, &update, &update_serving, &varlen_states, &fwd_packed};
}

}  // namespace causal_conv1d::cpu::CPU_CAPABILITY
