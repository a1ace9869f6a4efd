// Packed sequences (backend.h run_varlen_states, run_fwd_packed) on CPU.
//
// Prefill over packed sequences has two paths. Tokens stored as rows (x and
// out channel-contiguous, the (T, D) layout serving engines use) stream
// through memory in order: threads take ranges of tokens, each output row is
// computed from the W input rows before it with vectors across channels,
// and the final states are written in a second pass. Any other layout (e.g.
// channels_first (D, T)) goes through update.h's ChannelBlock, one task per
// block of channels of one sequence, tasks block-major so each thread gets
// whole channel blocks across all sequences.
#pragma once

#include <algorithm>
#include <vector>

#include "common.h"
#include "update.h"

namespace causal_conv1d::cpu::CPU_CAPABILITY {

// ---------------------------------------------------------------------------
// varlen_states: the last S tokens of each sequence, right-aligned.

template <typename X>
void varlen_states_impl(const ConvParams& p) {
  constexpr int64_t kChannels = 64;  // channels per task
  const int64_t B = p.batch, D = p.dim, S = p.state_len;
  const Offsets& cu = p.cu_seqlens;
  const X* x = ptr<X>(p.x);
  X* out = ptr<X>(p.out);
  const int64_t nblk = (D + kChannels - 1) / kChannels;
  const int64_t grain = std::max<int64_t>(1, kTaskGrainSteps / (kChannels * std::max<int64_t>(S, 1)));
  at::parallel_for(0, B * nblk, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / nblk, d0 = (task % nblk) * kChannels;
      const int64_t n = std::min(kChannels, D - d0);
      const int64_t stop = cu[b + 1];
      const int64_t len = std::min<int64_t>(stop - cu[b], S);
      X* o = out + b * p.out.s0 + d0 * p.out.s1;
      for (int64_t j = 0; j < n; ++j)
        for (int64_t i = 0; i < S - len; ++i) o[j * p.out.s1 + i * p.out.s2] = X(0);
      for (int64_t i = 0; i < len; ++i) {  // token stop-len+i -> column S-len+i
        const X* src = x + (stop - len + i) * p.x.s2 + d0 * p.x.s1;
        X* dst = o + (S - len + i) * p.out.s2;
        for (int64_t j = 0; j < n; ++j) dst[j * p.out.s1] = src[j * p.x.s1];
      }
    }
  });
}

inline void varlen_states(const ConvParams& p) {
  dispatch_dtype(p.x_dtype, [&]<typename X>() { varlen_states_impl<X>(p); });
}

// ---------------------------------------------------------------------------
// fwd_packed: prefill of packed sequences with a pool of states.

// One output row: out[d] = act(bias[d] + sum_k tap_k[d] * rows[k][d]), rows[k]
// being the input row at position t - (W-1) + k, in x (Src = X) or in a
// buffer already widened (Src = A). Two vectors per step, so fp16/bf16
// outputs narrow and store whole vectors.
template <typename X, typename Src, typename A>
void conv_row(const Src* const* rows, const TapRows<A>& taps, int64_t D, bool silu, X* out) {
  using V = at::vec::Vectorized<A>;
  using In = VecIO<Src>;
  using Out = VecIO<X>;
  static_assert(std::is_same_v<typename In::A, A> && std::is_same_v<typename Out::A, A>);
  constexpr int64_t N = V::size();
  const int64_t W = taps.width;
  int64_t d = 0;
  for (; d + 2 * N <= D; d += 2 * N) {
    V acc0 = V::loadu(taps.bias(d)), acc1 = V::loadu(taps.bias(d + N));
    for (int64_t k = 0; k < W; ++k) {
      acc0 = at::vec::fmadd(V::loadu(taps.tap(k, d)), In::load1(rows[k] + d, N), acc0);
      acc1 = at::vec::fmadd(V::loadu(taps.tap(k, d + N)), In::load1(rows[k] + d + N, N), acc1);
    }
    if (silu) {
      acc0 = silu_vec<X>(acc0);
      acc1 = silu_vec<X>(acc1);
    }
    Out::store2(out + d, acc0, acc1);
  }
  for (; d < D; d += N) {  // rows are padded to whole blocks, so taps and bias load fully
    const int64_t n = std::min(N, D - d);
    V acc = V::loadu(taps.bias(d));
    for (int64_t k = 0; k < W; ++k)
      acc = at::vec::fmadd(V::loadu(taps.tap(k, d)), In::load1(rows[k] + d, n), acc);
    if (silu) acc = silu_vec<X>(acc);
    Out::store1(out + d, acc, n);
  }
}

// Tokens as rows: x.s1 == out.s1 == 1.
template <typename X>
void fwd_packed_rows(const ConvParams& p) {
  using A = acc_t<X>;
  constexpr int64_t kLanes = ChannelBlock<X>::kLanes;
  const int64_t B = p.batch, D = p.dim, W = p.width, S = p.state_len;
  const Offsets& cu = p.cu_seqlens;
  const int32_t* indices = ptr<int32_t>(p.state_indices);
  const bool* has_init = ptr<bool>(p.has_initial_state);
  const X* x0 = ptr<X>(p.x);
  X* out0 = ptr<X>(p.out);
  const int64_t xs = p.x.s2, os = p.out.s2;  // token strides
  const int64_t nblk = (D + kLanes - 1) / kLanes;
  auto slot = [&](int64_t b) -> int64_t {  // pool row of sequence b, or -1 when padded
    const int64_t row = indices ? indices[b * p.state_indices.s0] : b;
    return row == p.pad_slot_id || row < 0 ? -1 : row;
  };
  auto initial = [&](int64_t b) { return has_init && has_init[b * p.has_initial_state.s0]; };

  // Pass 1: outputs, by ranges of tokens. Reads the initial states.
  const int64_t first = cu[0], last = cu[B];
  const int64_t grain = std::max<int64_t>(1, kTaskGrainSteps / (D * (W + 4)));
  at::parallel_for(first, last, grain, [&](int64_t begin, int64_t end) {
    const TapRows<A> taps = transpose_taps<A>(p, kLanes, 0, nblk);
    // The W-1 inputs before a sequence (its initial state, or zeros) and
    // its first W-1 tokens, widened, as rows: the windows of its first tokens.
    thread_local std::vector<A> head_scratch;
    const int64_t hs = taps.stride;
    const X* rows_x[kMaxWidthCpu];
    const A* rows_a[kMaxWidthCpu];
    int64_t b = 0, hi = B;  // the last sequence starting at or before `begin`
    while (hi - b > 1) {
      const int64_t mid = (b + hi) / 2;
      (cu[mid] <= begin ? b : hi) = mid;
    }
    for (int64_t t = begin; t < end;) {
      while (cu[b + 1] <= t) ++b;  // skips empty sequences too
      const int64_t start = cu[b], stop = std::min<int64_t>(cu[b + 1], end);
      const int64_t row = slot(b);
      if (row < 0) {  // padded slot: output 0
        for (; t < stop; ++t) std::fill(out0 + t * os, out0 + t * os + D, X(0));
        continue;
      }
      const int64_t head_end = std::min(stop, start + W - 1);
      if (t < head_end) {
        if (static_cast<int64_t>(head_scratch.size()) < 2 * W * hs) head_scratch.resize(2 * W * hs);
        A* head = head_scratch.data();
        const X* st = ptr<X>(p.conv_state) + row * p.conv_state.s0;
        const bool init = initial(b);
        for (int64_t r = 0; r + 1 < W; ++r) {
          A* h = head + r * hs;
          const int64_t col = S - (W - 1) + r;
          if (init) {
            VecIO<X>::load_row(st + col * p.conv_state.s2, p.conv_state.s1, h, D);
          } else {
            std::fill(h, h + D, A(0));
          }
        }
        const int64_t n_tok = std::min<int64_t>(cu[b + 1] - start, W - 1);
        for (int64_t i = 0; i < n_tok; ++i)
          VecIO<X>::load_row(x0 + (start + i) * xs, 1, head + (W - 1 + i) * hs, D);
        for (; t < head_end; ++t) {
          for (int64_t k = 0; k < W; ++k) rows_a[k] = head + (t - start + k) * hs;
          conv_row<X>(rows_a, taps, D, p.silu, out0 + t * os);
        }
      }
      for (; t < stop; ++t) {
        for (int64_t k = 0; k < W; ++k) rows_x[k] = x0 + (t - (W - 1) + k) * xs;
        conv_row<X>(rows_x, taps, D, p.silu, out0 + t * os);
      }
    }
  });

  // Pass 2: final states, per (sequence, block of channels).
  constexpr int64_t kStateChannels = 256;
  const int64_t nsb = (D + kStateChannels - 1) / kStateChannels;
  at::parallel_for(0, B * nsb, std::max<int64_t>(1, kTaskGrainSteps / (kStateChannels * (S + 1))),
                   [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / nsb, d0 = (task % nsb) * kStateChannels;
      const int64_t row = slot(b);
      if (row < 0) continue;
      const int64_t start = cu[b], len = cu[b + 1] - start;
      X* st = ptr<X>(p.conv_state) + row * p.conv_state.s0 + d0 * p.conv_state.s1;
      shift_state(st, p.conv_state.s1, p.conv_state.s2, S, std::min(kStateChannels, D - d0),
                  x0 + start * xs + d0, int64_t(1), xs, len, initial(b));
    }
  });
}

template <typename X>
void fwd_packed_impl(const ConvParams& p) {
  using Block = ChannelBlock<X>;
  using A = typename Block::A;
  constexpr int64_t kLanes = Block::kLanes;
  const int64_t B = p.batch, D = p.dim, T = p.seqlen, W = p.width, S = p.state_len;
  const Offsets& cu = p.cu_seqlens;
  const int32_t* indices = ptr<int32_t>(p.state_indices);
  const bool* has_init = ptr<bool>(p.has_initial_state);
  const X* x0 = ptr<X>(p.x);
  X* out0 = ptr<X>(p.out);

  // Tokens outside every sequence (before cu[0], after cu[B]) output 0.
  auto zero_tokens = [&](int64_t t_begin, int64_t t_end) {
    for (int64_t t = t_begin; t < t_end; ++t)
      for (int64_t d = 0; d < D; ++d) out0[d * p.out.s1 + t * p.out.s2] = X(0);
  };
  zero_tokens(0, cu[0]);
  zero_tokens(cu[B], T);
  if (p.x.s1 == 1 && p.out.s1 == 1) return fwd_packed_rows<X>(p);

  const int64_t nblk = (D + kLanes - 1) / kLanes;
  const int64_t steps = kLanes * (T / std::max<int64_t>(B, 1) + W + S);  // per task, on average
  const int64_t grain = std::max<int64_t>(1, kTaskGrainSteps / steps);
  at::parallel_for(0, nblk * B, grain, [&](int64_t begin, int64_t end) {
    const TapRows<A> taps = transpose_taps<A>(p, kLanes, begin / B, (end - 1) / B + 1);
    Block blk(p);
    int64_t col[kMaxWidthCpu];
    for (int64_t k = 0; k + 1 < W; ++k) col[k] = S - (W - 1) + k;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t c = task / B, b = task % B;
      const int64_t d0 = c * kLanes, n = std::min(kLanes, D - d0);
      const int64_t start = cu[b], len = cu[b + 1] - start;
      const X* x = x0 + d0 * p.x.s1 + start * p.x.s2;
      X* out = out0 + d0 * p.out.s1 + start * p.out.s2;
      const int64_t row = indices ? indices[b * p.state_indices.s0] : b;
      if (row == p.pad_slot_id || row < 0) {  // padded slot: output 0, pool untouched
        for (int64_t t = 0; t < len; ++t)
          for (int64_t j = 0; j < n; ++j) out[j * p.out.s1 + t * p.out.s2] = X(0);
        continue;
      }
      blk.bind(taps, d0, n);
      X* st = ptr<X>(p.conv_state) + row * p.conv_state.s0 + d0 * p.conv_state.s1;
      const bool init = has_init && has_init[b * p.has_initial_state.s0];
      if (init) {
        blk.load_window(st, p.conv_state.s1, p.conv_state.s2, col);
      } else {
        blk.clear_window();
      }
      blk.run(x, p.x.s1, p.x.s2, len, out, p.out.s1, p.out.s2);
      shift_state(st, p.conv_state.s1, p.conv_state.s2, S, n, x, p.x.s1, p.x.s2, len, init);
    }
  });
}

inline void fwd_packed(const ConvParams& p) {
  dispatch_dtype(p.x_dtype, [&]<typename X>() { fwd_packed_impl<X>(p); });
}

}  // namespace causal_conv1d::cpu::CPU_CAPABILITY
