// Backward (backend.h run_bwd) on CPU.
#pragma once

#include "common.h"

namespace causal_conv1d::cpu::CPU_CAPABILITY {

[[noreturn]] inline void bwd(const ConvParams&) {
  TORCH_CHECK_NOT_IMPLEMENTED(false, "causal_conv1d: backward is not implemented on CPU yet");
}

}  // namespace causal_conv1d::cpu::CPU_CAPABILITY
