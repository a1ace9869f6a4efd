// CPU kernels, compiled once per instruction-set tier (tier_*.cpp). Every
// symbol lives in namespace cpu::CPU_CAPABILITY so the tiers never collide.
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

// ---------------------------------------------------------------------------
// forward, any strides (the semantics every fast path must match)

template <typename X, typename Wt>
void fwd_generic(const ConvParams& p) {
  using A = acc_t<X>;
  const int64_t B = p.batch, D = p.dim, L = p.seqlen, W = p.width;
  const X* x = ptr<X>(p.x);
  const Wt* w = ptr<Wt>(p.weight);
  const int32_t* seq = ptr<int32_t>(p.seq_idx);
  const X* init = ptr<X>(p.initial_states);
  X* out = ptr<X>(p.out);
  X* fin = ptr<X>(p.final_states);
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(L * W, 1));
  at::parallel_for(0, B * D, grain, [&](int64_t begin, int64_t end) {
    A wk[kMaxWidthCpu];
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / D, d = row % D;
      for (int64_t k = 0; k < W; ++k) wk[k] = A(w[d * p.weight.s0 + k * p.weight.s1]);
      const A bias = p.bias.given() ? A(ptr<Wt>(p.bias)[d * p.bias.s0]) : A(0);
      const X* xr = x + b * p.x.s0 + d * p.x.s1;
      const X* ir = init ? init + b * p.initial_states.s0 + d * p.initial_states.s1 : nullptr;
      const int32_t* sr = seq ? seq + b * p.seq_idx.s0 : nullptr;
      const int32_t first_id = (sr && L > 0) ? sr[0] : 0;
      X* orow = out + b * p.out.s0 + d * p.out.s1;
      for (int64_t t = 0; t < L; ++t) {
        const int32_t id = sr ? sr[t * p.seq_idx.s1] : 0;
        if (id < 0) {
          orow[t * p.out.s2] = X(0);
          continue;
        }
        A acc = bias;
        for (int64_t k = 0; k < W; ++k) {
          const int64_t pos = t - (W - 1) + k;
          if (pos >= 0) {
            if (!sr || sr[pos * p.seq_idx.s1] == id) acc += wk[k] * A(xr[pos * p.x.s2]);
          } else if (ir && id == first_id) {
            acc += wk[k] * A(ir[(W - 1 + pos) * p.initial_states.s2]);
          }
        }
        orow[t * p.out.s2] = X(p.silu ? silu(acc) : acc);
      }
      if (fin) {
        X* frow = fin + b * p.final_states.s0 + d * p.final_states.s1;
        const int32_t last_id = (sr && L > 0) ? sr[(L - 1) * p.seq_idx.s1] : first_id;
        for (int64_t j = 0; j < W - 1; ++j) {
          const int64_t pos = L - (W - 1) + j;
          X v = X(0);
          if (pos >= 0) {
            if (!sr || sr[pos * p.seq_idx.s1] == last_id) v = xr[pos * p.x.s2];
          } else if (ir && last_id == first_id) {
            v = ir[(W - 1 + pos) * p.initial_states.s2];
          }
          frow[j * p.final_states.s2] = v;
        }
      }
    }
  });
}

inline void fwd(const ConvParams& p) {
  dispatch_dtypes(p.x_dtype, p.weight_dtype, [&]<typename X, typename Wt>() { fwd_generic<X, Wt>(p); });
}

[[noreturn]] inline void not_yet(const char* what) {
  TORCH_CHECK_NOT_IMPLEMENTED(false, "causal_conv1d: ", what, " is not implemented on CPU yet");
}
inline void bwd(const ConvParams&) { not_yet("backward"); }
inline void update(const ConvParams&) { not_yet("causal_conv1d_update"); }
inline void varlen_states(const ConvParams&) { not_yet("causal_conv1d_varlen_states"); }
inline void fwd_packed(const ConvParams&) { not_yet("packed prefill"); }

inline KernelTable make_table(const char* name) {
  return {name, &fwd, &bwd, &update, &varlen_states, &fwd_packed};
}

}  // namespace causal_conv1d::cpu::CPU_CAPABILITY
