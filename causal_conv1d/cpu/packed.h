// Packed sequences (backend.h run_varlen_states, run_fwd_packed) on CPU.
//
// Prefill over packed sequences reuses update.h's ChannelBlock: a task is
// one block of channels of one sequence, so with tokens stored (T, D) every
// token is one vector load across channels. Tasks run block-major, so each
// thread gets whole blocks of channels across all sequences: the work stays
// balanced however unequal the sequence lengths are.
#pragma once

#include <algorithm>

#include "common.h"
#include "update.h"

namespace causal_conv1d::cpu::CPU_CAPABILITY {

// ---------------------------------------------------------------------------
// varlen_states: the last S tokens of each sequence, right-aligned.

template <typename X>
void varlen_states_impl(const ConvParams& p) {
  constexpr int64_t kChannels = 64;  // channels per task
  const int64_t B = p.batch, D = p.dim, S = p.state_len;
  const int32_t* cu = ptr<int32_t>(p.cu_seqlens);
  const int64_t cs = p.cu_seqlens.s0;
  const X* x = ptr<X>(p.x);
  X* out = ptr<X>(p.out);
  const int64_t nblk = (D + kChannels - 1) / kChannels;
  const int64_t grain = std::max<int64_t>(1, kTaskGrainSteps / (kChannels * std::max<int64_t>(S, 1)));
  at::parallel_for(0, B * nblk, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / nblk, d0 = (task % nblk) * kChannels;
      const int64_t n = std::min(kChannels, D - d0);
      const int64_t stop = cu[(b + 1) * cs];
      const int64_t len = std::min<int64_t>(stop - cu[b * cs], S);
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
  switch (p.x_dtype) {
    case DType::Float32: return varlen_states_impl<float>(p);
    case DType::Float16: return varlen_states_impl<c10::Half>(p);
    case DType::BFloat16: return varlen_states_impl<c10::BFloat16>(p);
    case DType::Float64: return varlen_states_impl<double>(p);
  }
}

// ---------------------------------------------------------------------------
// fwd_packed: prefill of packed sequences with a pool of states.

template <typename X>
void fwd_packed_impl(const ConvParams& p) {
  using Block = ChannelBlock<X>;
  constexpr int64_t kLanes = Block::kLanes;
  const int64_t B = p.batch, D = p.dim, T = p.seqlen, W = p.width, S = p.state_len;
  const int32_t* cu = ptr<int32_t>(p.cu_seqlens);
  const int64_t cs = p.cu_seqlens.s0;
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
  zero_tokens(cu[B * cs], T);

  const int64_t nblk = (D + kLanes - 1) / kLanes;
  const int64_t steps = kLanes * (T / std::max<int64_t>(B, 1) + W + S);  // per task, on average
  const int64_t grain = std::max<int64_t>(1, kTaskGrainSteps / steps);
  at::parallel_for(0, nblk * B, grain, [&](int64_t begin, int64_t end) {
    Block blk;
    int64_t loaded = -1;
    int64_t col[kMaxWidthCpu];
    for (int64_t k = 0; k + 1 < W; ++k) col[k] = S - (W - 1) + k;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t c = task / B, b = task % B;
      const int64_t d0 = c * kLanes, n = std::min(kLanes, D - d0);
      const int64_t start = cu[b * cs], len = cu[(b + 1) * cs] - start;
      const X* x = x0 + d0 * p.x.s1 + start * p.x.s2;
      X* out = out0 + d0 * p.out.s1 + start * p.out.s2;
      const int64_t row = indices ? indices[b * p.state_indices.s0] : b;
      if (row == p.pad_slot_id || row < 0) {  // padded slot: output 0, pool untouched
        for (int64_t t = 0; t < len; ++t)
          for (int64_t j = 0; j < n; ++j) out[j * p.out.s1 + t * p.out.s2] = X(0);
        continue;
      }
      if (c != loaded) {
        blk.set_channels(p, d0, n);
        loaded = c;
      }
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
  switch (p.x_dtype) {
    case DType::Float32: return fwd_packed_impl<float>(p);
    case DType::Float16: return fwd_packed_impl<c10::Half>(p);
    case DType::BFloat16: return fwd_packed_impl<c10::BFloat16>(p);
    case DType::Float64: return fwd_packed_impl<double>(p);
  }
}

}  // namespace causal_conv1d::cpu::CPU_CAPABILITY
