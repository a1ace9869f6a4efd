// Packed sequences (backend.h run_varlen_states, run_fwd_packed) on CUDA.
//
// x is (1, D, T): element (d, t) at d * x.s1 + t * x.s2. cu_seqlens, pool
// indices and flags live on the device and are never trusted: offsets are
// clamped into [0, T] (and each end to at least its start), and a pool index
// outside [0, N) is treated like pad_slot_id, so no value can make a kernel
// read or write out of bounds.
#include "launch.h"
#include "common.cuh"

namespace causal_conv1d::cuda {
namespace {

__device__ __forceinline__ int64_t clamp64(int64_t v, int64_t lo, int64_t hi) {
  return v < lo ? lo : v > hi ? hi : v;
}

// [start, end) of sequence b, clamped.
__device__ __forceinline__ void seq_bounds(const ConvParams& p, int64_t b, int64_t* start,
                                           int64_t* end) {
  *start = clamp64(p.cu_seqlens[b], 0, p.seqlen);
  *end = clamp64(p.cu_seqlens[b + 1], *start, p.seqlen);
}

// Pool row of sequence b, or -1 for padding (pad_slot_id, negative, >= N).
__device__ __forceinline__ int64_t pool_row(const ConvParams& p, int64_t b) {
  const int64_t row = p.state_indices.data != nullptr
                          ? ptr<const int32_t>(p.state_indices)[b * p.state_indices.s0]
                          : b;
  if (row == p.pad_slot_id || row < 0 || row >= p.num_states) return -1;
  return row;
}

__device__ __forceinline__ bool has_init(const ConvParams& p, int64_t b) {
  return p.has_initial_state.data != nullptr &&
         ptr<const uint8_t>(p.has_initial_state)[b * p.has_initial_state.s0] != 0;
}

// out[b, d, j]: token end - (S - j) of sequence b, or 0 before its start.
template <typename X>
__global__ void __launch_bounds__(kThreads) varlen_states_kernel(ConvParams p) {
  const int64_t D = p.dim, S = p.state_len, total = p.batch * D * S;
  for (int64_t i = global_thread(); i < total; i += grid_threads()) {
    const int64_t d = i % D, r = i / D;
    const int64_t j = r % S, b = r / S;
    int64_t start, end;
    seq_bounds(p, b, &start, &end);
    const int64_t n = end - start < S ? end - start : S;
    ptr<X>(p.out)[b * p.out.s0 + d * p.out.s1 + j * p.out.s2] =
        j >= S - n ? ptr<const X>(p.x)[d * p.x.s1 + (end - (S - j)) * p.x.s2] : from_f<X>(0.f);
  }
}

// Outputs of every token: found by binary search over cu_seqlens; tokens of
// no live sequence get 0. Reads the initial states from the pool, which the
// state kernel below only overwrites after this kernel has finished.
template <typename X>
__global__ void __launch_bounds__(kThreads) packed_out_kernel(ConvParams p, bool t_fastest) {
  const int64_t D = p.dim, T = p.seqlen, W = p.width, S = p.state_len, B = p.batch;
  const int64_t total = D * T;
  for (int64_t i = global_thread(); i < total; i += grid_threads()) {
    const int64_t d = t_fastest ? i / T : i % D;
    const int64_t t = t_fastest ? i % T : i / D;
    int64_t lo = 0, hi = B;  // largest b with cu[b] <= t
    while (hi - lo > 1) {
      const int64_t mid = (lo + hi) / 2;
      if (p.cu_seqlens[mid] <= t) lo = mid; else hi = mid;
    }
    int64_t start, end;
    seq_bounds(p, lo, &start, &end);
    const int64_t row = pool_row(p, lo);
    float v = 0.f;
    if (start <= t && t < end && row >= 0) {
      const bool init = has_init(p, lo);
      const X* st = ptr<const X>(p.conv_state) + row * p.conv_state.s0 + d * p.conv_state.s1;
      float acc = bias_at(p, d);
      for (int64_t k = 0; k < W; ++k) {
        const int64_t pos = t - (W - 1) + k;
        float xv;
        if (pos >= start) {
          xv = to_f(ptr<const X>(p.x)[d * p.x.s1 + pos * p.x.s2]);
        } else {
          // the initial state's last W-1 columns: start - pos is in [1, W-1]
          xv = init ? to_f(st[(S - (start - pos)) * p.conv_state.s2]) : 0.f;
        }
        acc += weight_at(p, d, k) * xv;
      }
      v = p.silu ? silu_out<X>(acc) : acc;
    }
    ptr<X>(p.out)[d * p.out.s1 + t * p.out.s2] = from_f<X>(v);
  }
}

// Pool row of sequence b := the last S entries of (state or zeros, tokens).
// In place, ascending: entry j reads entry j + n (n = sequence length)
// before anything overwrites it.
template <typename X>
__global__ void __launch_bounds__(kThreads) packed_states_kernel(ConvParams p) {
  const int64_t D = p.dim, S = p.state_len, total = p.batch * D;
  for (int64_t i = global_thread(); i < total; i += grid_threads()) {
    const int64_t d = i % D, b = i / D;
    const int64_t row = pool_row(p, b);
    if (row < 0) continue;
    int64_t start, end;
    seq_bounds(p, b, &start, &end);
    const int64_t n = end - start;
    const bool init = has_init(p, b);
    X* st = ptr<X>(p.conv_state) + row * p.conv_state.s0 + d * p.conv_state.s1;
    for (int64_t j = 0; j < S; ++j) {
      const int64_t src = n + j;
      X v;
      if (src < S) {
        v = init ? st[src * p.conv_state.s2] : from_f<X>(0.f);
      } else {
        v = ptr<const X>(p.x)[d * p.x.s1 + (start + src - S) * p.x.s2];
      }
      st[j * p.conv_state.s2] = v;
    }
  }
}

}  // namespace

void launch_varlen_states(const ConvParams& p, cudaStream_t stream) {
  dispatch_x(p.x_dtype, [&](auto xt) {
    using X = typename decltype(xt)::type;
    launch(varlen_states_kernel<X>, grid_for(p.batch * p.dim * p.state_len), stream, p);
  });
}

void launch_fwd_packed(const ConvParams& p, cudaStream_t stream) {
  dispatch_x(p.x_dtype, [&](auto xt) {
    using X = typename decltype(xt)::type;
    if (p.seqlen > 0) {
      launch(packed_out_kernel<X>, grid_for(p.dim * p.seqlen), stream, p, p.x.s2 <= p.x.s1);
    }
    if (p.state_len > 0) launch(packed_states_kernel<X>, grid_for(p.batch * p.dim), stream, p);
  });
}

}  // namespace causal_conv1d::cuda
