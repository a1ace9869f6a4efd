// Decode step (backend.h run_update) on CPU.
#pragma once

#include "common.h"

namespace causal_conv1d::cpu::CPU_CAPABILITY {

[[noreturn]] inline void update(const ConvParams&) {
  TORCH_CHECK_NOT_IMPLEMENTED(false, "causal_conv1d: update is not implemented on CPU yet");
}

}  // namespace causal_conv1d::cpu::CPU_CAPABILITY
