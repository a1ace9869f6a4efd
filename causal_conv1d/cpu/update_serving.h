// The serving engines' decode step (backend.h run_update_serving) on CPU.
//
// What each sequence reads and writes comes from serving.h's plan_sequence,
// shared with the CUDA kernel. Work is split into (sequence, block of
// kBlock channels) tasks; within one, every row of inputs (a token, a
// window column, a state column) is moved through a buffer of kBlock
// accumulators, so the arithmetic is whole vectors across channels whatever
// the strides, and only gather_row / scatter_row look at the layout.
#pragma once

#include <algorithm>
#include <cstdint>

#include "../serving.h"
#include "common.h"
#include "update.h"

namespace causal_conv1d::cpu::CPU_CAPABILITY {
namespace serving {

template <typename X>
struct Rows {
  using A = acc_t<X>;
  using V = Vec<A>;
  static constexpr int64_t N = kLanes<A>;
  // Channels per task: whole vectors on every tier (4 to 16 lanes).
  static constexpr int64_t kBlock = 64;

  // dst[d] = base[d * stride] for d < n, widened; lanes n.. are left as they are.
  static void gather_row(const X* base, int64_t stride, int64_t n, A* dst) {
    if (stride == 1) {
      int64_t d = 0;
      for (; d + N <= n; d += N) VecIO<X>::load1(base + d, N).store(dst + d);
      if (d < n) VecIO<X>::load1(base + d, n - d).store(dst + d, n - d);
    } else {
      for (int64_t d = 0; d < n; ++d) dst[d] = A(base[d * stride]);
    }
  }

  // base[d * stride] = src[d] for d < n, rounded to X.
  static void scatter_row(const A* src, int64_t n, X* base, int64_t stride) {
    if (stride == 1) {
      int64_t d = 0;
      for (; d + N <= n; d += N) VecIO<X>::store1(base + d, V::loadu(src + d), N);
      if (d < n) VecIO<X>::store1(base + d, V::loadu(src + d, n - d), n - d);
    } else {
      for (int64_t d = 0; d < n; ++d) base[d * stride] = X(src[d]);
    }
  }
};

template <typename X>
void run(const ConvParams& p) {
  using R = Rows<X>;
  using A = typename R::A;
  using V = typename R::V;
  constexpr int64_t N = R::N, K = R::kBlock;
  const int64_t B = p.batch, D = p.dim, W = p.width;
  const int64_t blocks = (D + K - 1) / K;
  // Enough tasks per thread chunk to amortize the tap transpose.
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / (K * (p.seqlen + W)));
  at::parallel_for(0, B * blocks, grain, [&](int64_t begin, int64_t end) {
    // The channel blocks this chunk of tasks visits (all, once it wraps).
    int64_t c_lo = begin % blocks, c_hi = (end - 1) % blocks + 1;
    if (end - begin >= blocks || c_hi <= c_lo) c_lo = 0, c_hi = blocks;
    const TapRows<A> taps = transpose_taps<A>(p, K, c_lo, c_hi);
    alignas(64) A window[kMaxWidthCpu - 1][K];  // the W-1 inputs before token 0
    alignas(64) A in[K], acc[K];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks, d0 = (task % blocks) * K, nd = std::min(K, D - d0);
      const SeqPlan s = plan_sequence(p, b);
      if (s.len == 0) continue;
      const X* x = ptr<const X>(p.x) + b * p.x.s0 + d0 * p.x.s1 + s.first * p.x.s2;
      X* out = ptr<X>(p.out) + b * p.out.s0 + d0 * p.out.s1 + s.first * p.out.s2;
      if (s.read_row < 0) {
        std::fill(acc, acc + K, A(0));
        for (int64_t j = 0; j < s.len; ++j) R::scatter_row(acc, nd, out + j * p.out.s2, p.out.s1);
        continue;
      }
      X* state = ptr<X>(p.conv_state) + d0 * p.conv_state.s1;
      const X* read = state + s.read_row * p.conv_state.s0;
      const int64_t first_col = s.hist_len - (W - 1);
      for (int64_t c = 0; c < W - 1; ++c)
        R::gather_row(read + (first_col + c) * p.conv_state.s2, p.conv_state.s1, nd, window[c]);
      for (int64_t j = 0; j < s.len; ++j) {
        // Token j's inputs, newest first; then tap 0 (the oldest) first, the
        // order of the plain update, so both round alike.
        int64_t srcs[kMaxWidthCpu];
        int64_t walk = j;
        for (int64_t i = 0; i < W; ++i) srcs[i] = step_back(p, b, s, i, &walk);
        for (int64_t d = 0; d < K; d += N) V::loadu(taps.bias(d0 + d)).store(acc + d);
        for (int64_t k = 0; k < W; ++k) {
          const int64_t i = W - 1 - k, src = srcs[i];
          const A* v = in;
          if (src >= 0) {
            R::gather_row(x + src * p.x.s2, p.x.s1, nd, in);
          } else {
            v = window[-1 - src - first_col];
          }
          const A* tap = taps.tap(k, d0);
          for (int64_t d = 0; d < K; d += N) {
            at::vec::fmadd(V::loadu(tap + d), V::loadu(v + d), V::loadu(acc + d)).store(acc + d);
          }
          if (s.window_row >= 0 && i < W - 1) {
            X* win = static_cast<X*>(p.windows.data) + s.window_row * p.windows.s0 +
                     j * p.windows.s1 + d0 * p.windows.s2 + (W - 2 - i) * p.windows.s3;
            R::scatter_row(v, nd, win, p.windows.s2);
          }
        }
        if (p.silu) {
          for (int64_t d = 0; d < K; d += N) silu_vec<X>(V::loadu(acc + d)).store(acc + d);
        }
        R::scatter_row(acc, nd, out + j * p.out.s2, p.out.s1);
      }
      // The written row, new[c] = stream[shift + c], ascending: in place,
      // column c reads column shift + c > c before anything overwrites it.
      X* write = state + s.write_row * p.conv_state.s0;
      for (int64_t c = 0; c < s.count; ++c) {
        const int64_t src = s.shift + c;
        if (src < s.hist_len) {
          R::gather_row(read + src * p.conv_state.s2, p.conv_state.s1, nd, in);
        } else {
          R::gather_row(x + (src - s.hist_len) * p.x.s2, p.x.s1, nd, in);
        }
        R::scatter_row(in, nd, write + c * p.conv_state.s2, p.conv_state.s1);
      }
    }
  });
}

}  // namespace serving

inline void update_serving(const ConvParams& p) {
  switch (p.x_dtype) {
    case DType::Float32: return serving::run<float>(p);
    case DType::Float16: return serving::run<c10::Half>(p);
    case DType::BFloat16: return serving::run<c10::BFloat16>(p);
    case DType::Float64: return serving::run<double>(p);
  }
}

}  // namespace causal_conv1d::cpu::CPU_CAPABILITY
