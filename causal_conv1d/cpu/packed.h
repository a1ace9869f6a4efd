// Packed sequences (backend.h run_varlen_states, run_fwd_packed) on CPU.
#pragma once

#include "common.h"

namespace causal_conv1d::cpu::CPU_CAPABILITY {

[[noreturn]] inline void varlen_states(const ConvParams&) {
  TORCH_CHECK_NOT_IMPLEMENTED(false, "causal_conv1d: varlen_states is not implemented on CPU yet");
}

[[noreturn]] inline void fwd_packed(const ConvParams&) {
  TORCH_CHECK_NOT_IMPLEMENTED(false, "causal_conv1d: fwd_packed is not implemented on CPU yet");
}

}  // namespace causal_conv1d::cpu::CPU_CAPABILITY
