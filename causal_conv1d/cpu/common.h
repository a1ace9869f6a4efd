// Shared by the CPU kernels: dtype dispatch, element access, activation.
// Compiled once per tier (through kernels.h), inside cpu::CPU_CAPABILITY.
#pragma once

#include <cmath>
#include <cstdint>

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include "../params.h"
#include "tiers.h"

#ifndef CPU_CAPABILITY
#error "compile kernels.h through a tier_*.cpp file with CPU_CAPABILITY defined"
#endif

namespace causal_conv1d::cpu::CPU_CAPABILITY {

// ---------------------------------------------------------------------------
// dtypes

// Arithmetic type: fp64 for fp64 inputs, fp32 otherwise.
template <typename X> using acc_t = std::conditional_t<std::is_same_v<X, double>, double, float>;

// Calls f.template operator()<X, Wt>() for the runtime dtypes of x and weight.
template <typename F>
void dispatch_dtypes(DType x, DType w, F&& f) {
  auto with_weight = [&]<typename X>() {
    switch (w) {
      case DType::Float32: return f.template operator()<X, float>();
      case DType::Float16: return f.template operator()<X, c10::Half>();
      case DType::BFloat16: return f.template operator()<X, c10::BFloat16>();
      case DType::Float64: return f.template operator()<X, double>();
    }
  };
  switch (x) {
    case DType::Float32: return with_weight.template operator()<float>();
    case DType::Float16: return with_weight.template operator()<c10::Half>();
    case DType::BFloat16: return with_weight.template operator()<c10::BFloat16>();
    case DType::Float64: return with_weight.template operator()<double>();
  }
}

template <typename T> inline T* ptr(const Strided& v) { return static_cast<T*>(v.data); }

template <typename A> inline A silu(A v) { return v / (A(1) + std::exp(-v)); }

}  // namespace causal_conv1d::cpu::CPU_CAPABILITY
