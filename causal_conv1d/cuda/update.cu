// Decode step (backend.h run_update) on CUDA.
//
// One thread per (batch row, channel), channels fastest so that a warp reads
// and writes neighbouring state rows. The thread computes all L outputs
// from the unchanged state first, then updates its own state row: no other
// thread touches that row (distinct pool indices), so no synchronisation is
// needed. Pool indices and cache_seqlens live on the device and are never
// trusted: an index outside [0, N) is treated as padding (output 0, state
// untouched) and the circular write position is reduced into [0, S).
#include "launch.h"
#include "common.cuh"

namespace causal_conv1d::cuda {
namespace {

template <typename X>
__global__ void __launch_bounds__(kThreads) update_kernel(ConvParams p) {
  const int64_t D = p.dim, L = p.seqlen, W = p.width, S = p.state_len, N = p.num_states;
  const int64_t total = p.batch * D;
  const bool circular = p.cache_seqlens.data != nullptr;
  for (int64_t i = global_thread(); i < total; i += grid_threads()) {
    const int64_t d = i % D, b = i / D;
    const X* xr = ptr<const X>(p.x) + b * p.x.s0 + d * p.x.s1;
    X* orow = ptr<X>(p.out) + b * p.out.s0 + d * p.out.s1;
    const int64_t row =
        p.state_indices.data != nullptr ? ptr<const int32_t>(p.state_indices)[b * p.state_indices.s0] : b;
    if (row < 0 || row >= N) {
      for (int64_t t = 0; t < L; ++t) orow[t * p.out.s2] = from_f<X>(0.f);
      continue;
    }
    X* st = ptr<X>(p.conv_state) + row * p.conv_state.s0 + d * p.conv_state.s1;
    const int64_t cs = circular ? ptr<const int32_t>(p.cache_seqlens)[b * p.cache_seqlens.s0] : 0;
    const int64_t oldest = S > 0 ? ((cs % S) + S) % S : 0;  // physical index of history(0)

    // stream(j) = history(j) for j < S, else x[j - S]; token t reads
    // stream(S - (W-1) + t + k) with tap k.
    const float bias = bias_at(p, d);
    for (int64_t t = 0; t < L; ++t) {
      float acc = bias;
      for (int64_t k = 0; k < W; ++k) {
        const int64_t j = S - (W - 1) + t + k;
        float v;
        if (j < S) {
          const int64_t phys = circular ? (oldest + j) % S : j;
          v = to_f(st[phys * p.conv_state.s2]);
        } else {
          v = to_f(xr[(j - S) * p.x.s2]);
        }
        acc += weight_at(p, d, k) * v;
      }
      orow[t * p.out.s2] = from_f<X>(p.silu ? silu(acc) : acc);
    }

    if (S == 0) continue;
    if (circular) {
      // token t goes to (cache_seqlens + t) % S; later tokens win when L > S
      for (int64_t t = 0; t < L; ++t) st[((oldest + t) % S) * p.conv_state.s2] = xr[t * p.x.s2];
    } else {
      // shift left by L in place: ascending order reads each source before
      // it is overwritten (the source index j + L is always ahead)
      for (int64_t j = 0; j < S; ++j) {
        const int64_t src = j + L;
        st[j * p.conv_state.s2] = src < S ? st[src * p.conv_state.s2] : xr[(src - S) * p.x.s2];
      }
    }
  }
}

}  // namespace

void launch_update(const ConvParams& p, cudaStream_t stream) {
  dispatch_x(p.x_dtype, [&](auto xt) {
    using X = typename decltype(xt)::type;
    launch(update_kernel<X>, grid_for(p.batch * p.dim), stream, p);
  });
}

}  // namespace causal_conv1d::cuda
