// The default layout's speculative step for fp16/bf16 on AVX-512, in the
// shapes engines use most: W = 4 and an odd number of drafts k (1, 3, 5),
// so that a channel's L = k + 1 tokens and its S = W - 2 + L state columns
// are both runs of whole 32-bit pairs.
//
// RegisterServing moves such runs 16-bit value by value (two permutes and a
// blend per column, per 16 channels, then a widening). Here a permute moves
// a pair of columns at once as one 32-bit value: a dword column holds
// columns 2p and 2p + 1 of 16 channels, and each half widens with one shift
// or mask. Outputs are narrowed a pair of tokens at a time and interleaved
// into pairs; the new state is the kept pair of history columns followed by
// x's token pairs, all moved as raw bits. About half the shuffles of
// RegisterServing, the arithmetic unchanged (the same order, the same
// rounding), so the results are the same bits.
#pragma once

#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>

#include <cstdint>
#include <type_traits>

#include "../serving.h"
#include "common.h"
#include "decode_regs.h"

namespace causal_conv1d::cpu::CPU_CAPABILITY {
namespace serving {

template <typename X>
struct PairServing {
  static_assert(sizeof(X) == 2, "pairs of 16-bit values");
  using V = at::vec::Vectorized<float>;
  using Pairs = Runs<float>;  // 32-bit values moved as raw bits
  static constexpr int64_t kR = 16;  // channels per pass: one register of fp32 columns
  static constexpr int kW = 4;

  const ConvParams& p;
  Pairs state_pairs, token_pairs;  // runs of S / 2 and L / 2 pairs
  __m512i interleave;              // word 2l <- word l, word 2l + 1 <- word 16 + l

  // On top of RegisterServing::applies and chain_of_runs: the shapes above.
  static bool applies(const ConvParams& p) {
    const int64_t L = p.seqlen;
    return p.width == kW && L % 2 == 0 && L >= 2 && L <= 6 && p.state_len == kW - 2 + L;
  }

  explicit PairServing(const ConvParams& params)
      : p(params), state_pairs(params.state_len / 2), token_pairs(params.seqlen / 2) {
    alignas(64) int16_t idx[2 * kR];
    for (int l = 0; l < kR; ++l) {
      idx[2 * l] = static_cast<int16_t>(l);
      idx[2 * l + 1] = static_cast<int16_t>(kR + l);
    }
    interleave = _mm512_load_si512(idx);
  }

  static __m512 load(const X* at) { return _mm512_loadu_ps(reinterpret_cast<const float*>(at)); }
  static void store(X* at, __m512 v) { _mm512_storeu_ps(reinterpret_cast<float*>(at), v); }

  // The first (low) and second (high) value of each pair, as fp32.
  static V first_of(__m512 pairs) {
    const __m512i v = _mm512_castps_si512(pairs);
    if constexpr (std::is_same_v<X, c10::BFloat16>) {
      return V(_mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
    } else {
      return V(_mm512_cvtph_ps(_mm512_cvtepi32_epi16(v)));
    }
  }
  static V second_of(__m512 pairs) {
    const __m512i v = _mm512_castps_si512(pairs);
    if constexpr (std::is_same_v<X, c10::BFloat16>) {
      return V(_mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(int32_t(0xFFFF0000u)))));
    } else {
      return V(_mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(v, 16))));
    }
  }

  // Channels [d0, d0 + n) of sequence b, n a multiple of 16 (RegisterServing::takes holds).
  void task(int64_t b, const SeqPlan& s, int64_t d0, int64_t n, const TapRows<float>& taps) const {
    switch (p.seqlen) {
      case 2: return task_l<2>(b, s, d0, n, taps);
      case 4: return task_l<4>(b, s, d0, n, taps);
      default: return task_l<6>(b, s, d0, n, taps);
    }
  }

  template <int kL>
  void task_l(int64_t b, const SeqPlan& s, int64_t d0, int64_t n, const TapRows<float>& taps) const {
    constexpr int kS = kW - 2 + kL, kSP = kS / 2, kLP = kL / 2;
    // Stream columns: the window is state columns first .. first + 2 (in
    // pairs p0 and p0 + 1), the kept history state columns first + 1 and
    // first + 2 (the stream's columns shift, shift + 1).
    const int64_t first = s.hist_len - (kW - 1);
    const int64_t p0 = first / 2;
    const X* x = ptr<const X>(p.x) + b * p.x.s0;
    X* out = ptr<X>(p.out) + b * p.out.s0;
    X* pool = ptr<X>(p.conv_state);
    const X* read = pool + s.read_row * p.conv_state.s0;
    X* write = pool + s.write_row * p.conv_state.s0;
    for (int64_t d = d0; d < d0 + n; d += kR) {
      __m512 st[kSP], tok[kLP];
      for (int m = 0; m < kSP; ++m) st[m] = load(read + d * kS + m * 2 * kR);
      for (int m = 0; m < kLP; ++m) tok[m] = load(x + d * kL + m * 2 * kR);
      V rows[kW - 1 + kL];  // the window, then the tokens
      __m512 kept = _mm512_setzero_ps();
      if (s.zero_history) {
        for (int c = 0; c < kW - 1; ++c) rows[c] = V(0.f);
      } else {
        const __m512 pc[2] = {state_pairs.template column<kSP>(st, p0),
                              state_pairs.template column<kSP>(st, p0 + 1)};
        for (int c = 0; c < kW - 1; ++c) {
          const int64_t col = first + c;
          const __m512 pair = pc[col / 2 - p0];
          rows[c] = col % 2 ? second_of(pair) : first_of(pair);
        }
        if (first % 2) {  // columns first + 1, first + 2 are pair p0 + 1
          kept = pc[1];
        } else {  // the second of pair p0, then the first of pair p0 + 1
          const __m512i lo = _mm512_srli_epi32(_mm512_castps_si512(pc[0]), 16);
          const __m512i hi = _mm512_slli_epi32(_mm512_castps_si512(pc[1]), 16);
          kept = _mm512_castsi512_ps(_mm512_or_si512(lo, hi));
        }
      }
      __m512 tp[kLP];
      for (int q = 0; q < kLP; ++q) {
        tp[q] = token_pairs.template column<kLP>(tok, q);
        rows[kW - 1 + 2 * q] = first_of(tp[q]);
        rows[kW + 2 * q] = second_of(tp[q]);
      }
      __m512 out_pairs[kLP];
      for (int q = 0; q < kLP; ++q) {
        V res[2];
        for (int h = 0; h < 2; ++h) {
          const int j = 2 * q + h;
          V a = V::loadu(taps.bias(d));
          for (int k = 0; k < kW; ++k) a = at::vec::fmadd(V::loadu(taps.tap(k, d)), rows[j + k], a);
          res[h] = p.silu ? silu_vec<X>(a) : a;
        }
        const __m512i narrowed = narrow<X>(res[0], res[1]);  // token 2q, then 2q + 1
        out_pairs[q] = _mm512_castsi512_ps(_mm512_permutexvar_epi16(interleave, narrowed));
      }
      for (int m = 0; m < kLP; ++m)
        store(out + d * kL + m * 2 * kR, token_pairs.template spread<kLP>(out_pairs, m));
      __m512 new_pairs[kSP];
      new_pairs[0] = kept;
      for (int q = 0; q < kLP; ++q) new_pairs[1 + q] = tp[q];
      for (int m = 0; m < kSP; ++m)
        store(write + d * kS + m * 2 * kR, state_pairs.template spread<kSP>(new_pairs, m));
    }
  }
};

}  // namespace serving
}  // namespace causal_conv1d::cpu::CPU_CAPABILITY
#endif  // CPU_CAPABILITY_AVX512
