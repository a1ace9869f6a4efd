// Forward (backend.h run_fwd) on CPU.
#pragma once

#include "common.h"

namespace causal_conv1d::cpu::CPU_CAPABILITY {

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

}  // namespace causal_conv1d::cpu::CPU_CAPABILITY
