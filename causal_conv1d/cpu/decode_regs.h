// The decode paths' per-ISA intrinsics (AVX-512, AVX2), beside at::vec's:
// Regs (registers of raw x-dtype values), Runs (per-channel runs of values
// <-> columns, shared with update_serving.h's RegisterServing) and the
// one-token decode of update.h in registers.
#pragma once

#include <cstdint>
#include <type_traits>

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

#include "common.h"

namespace causal_conv1d::cpu::CPU_CAPABILITY {

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
// ---------------------------------------------------------------------------
// One-token decode of a state stored (N, D, S), S <= 8, in registers.
//
// With R values per register (16 on AVX-512, 8 on AVX2), R channels' states
// are R*S consecutive values: S registers. Window column c of those channels
// (value l*S + c for lane l) is a few in-register permutes and blends; the
// linear state update is S loads one value further on (every value moves one
// place left; the last register is permuted instead, so nothing past the
// block is read) with the token permuted into each channel's last column;
// the circular update permutes the token into one column. No gathers, no
// scalar stores, and the state moves as raw bits. Index vectors and masks
// depend only on S, so they are built once per call.
//
// Regs<X> holds R values of dtype X per register: fp32 as floats, fp16/bf16
// as their bits (16 per ymm on AVX-512; on AVX2 zero-extended to 32-bit
// lanes, which AVX2 can permute across the register).

#if defined(CPU_CAPABILITY_AVX512)
template <typename X>
struct Regs {  // c10::Half, c10::BFloat16
  static constexpr int kLanes = 16;
  static constexpr int kGroup = 2;  // registers one permute reads from
  using R = __m256i;
  using Idx = __m256i;
  using Mask = __mmask16;
  static R load(const X* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static void store(X* p, R v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
  static Idx index(const int32_t* v) { return _mm512_cvtepi32_epi16(_mm512_loadu_si512(v)); }
  static Mask mask(uint32_t bits) { return static_cast<Mask>(bits); }
  static R permute(Idx i, R a) { return _mm256_permutexvar_epi16(i, a); }
  // indices 0..31: bit 4 picks b
  static R permute2(R a, Idx i, R b) { return _mm256_permutex2var_epi16(a, i, b); }
  static R blend(Mask k, R a, R b) { return _mm256_mask_blend_epi16(k, a, b); }
  static R permute_into(R src, Mask k, Idx i, R a) {
    return _mm256_mask_permutexvar_epi16(src, k, i, a);
  }
  static R zero() { return _mm256_setzero_si256(); }
  static __m512 widen(R a) {
    if constexpr (std::is_same_v<X, c10::BFloat16>) {
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(a), 16));
    } else {
      return _mm512_cvtph_ps(a);
    }
  }
  // Two registers of results, rounded as every other store rounds.
  static void narrow2(__m512 a, __m512 b, R& ra, R& rb) {
    const __m512i v = narrow<X>(a, b);
    ra = _mm512_castsi512_si256(v);
    rb = _mm512_extracti64x4_epi64(v, 1);
  }
};

template <>
struct Regs<float> {
  static constexpr int kLanes = 16;
  static constexpr int kGroup = 2;
  using R = __m512;
  using Idx = __m512i;
  using Mask = __mmask16;
  static R load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, R v) { _mm512_storeu_ps(p, v); }
  static Idx index(const int32_t* v) { return _mm512_loadu_si512(v); }
  static Mask mask(uint32_t bits) { return static_cast<Mask>(bits); }
  static R permute(Idx i, R a) { return _mm512_permutexvar_ps(i, a); }
  static R permute2(R a, Idx i, R b) { return _mm512_permutex2var_ps(a, i, b); }
  static R blend(Mask k, R a, R b) { return _mm512_mask_blend_ps(k, a, b); }
  static R permute_into(R src, Mask k, Idx i, R a) {
    return _mm512_mask_permutexvar_ps(src, k, i, a);
  }
  static R zero() { return _mm512_setzero_ps(); }
  static __m512 widen(R a) { return a; }
  static void narrow2(__m512 a, __m512 b, R& ra, R& rb) { ra = a, rb = b; }
};
#else  // AVX2
template <typename X>
struct Regs {  // c10::Half, c10::BFloat16: bits zero-extended to 32-bit lanes
  static constexpr int kLanes = 8;
  static constexpr int kGroup = 1;  // AVX2 permutes read one register
  using R = __m256i;
  using Idx = __m256i;
  using Mask = __m256i;
  static R load(const X* p) {
    return _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static __m128i narrow(R v) {  // lanes hold values < 2^16: packus is exact
    return _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  }
  static void store(X* p, R v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), narrow(v)); }
  static Idx index(const int32_t* v) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v)); }
  static Mask mask(uint32_t bits) {
    const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(bits), lane_bit), lane_bit);
  }
  static R permute(Idx i, R a) { return _mm256_permutevar8x32_epi32(a, i); }
  // indices 0..15: bit 3 picks b (two permutes and a blend)
  static R permute2(R a, Idx i, R b) {
    const __m256i from_b = _mm256_cmpgt_epi32(i, _mm256_set1_epi32(7));
    return _mm256_blendv_epi8(permute(i, a), permute(i, b), from_b);
  }
  static R blend(Mask k, R a, R b) { return _mm256_blendv_epi8(a, b, k); }
  static R permute_into(R src, Mask k, Idx i, R a) { return blend(k, src, permute(i, a)); }
  static R zero() { return _mm256_setzero_si256(); }
  static __m256 widen(R a) {
    if constexpr (std::is_same_v<X, c10::BFloat16>) {
      return _mm256_castsi256_ps(_mm256_slli_epi32(a, 16));
    } else {
      return _mm256_cvtph_ps(narrow(a));
    }
  }
  static void narrow2(__m256 a, __m256 b, R& ra, R& rb) {
    const __m256i v = causal_conv1d::cpu::CPU_CAPABILITY::narrow<X>(a, b);
    ra = _mm256_cvtepu16_epi32(_mm256_castsi256_si128(v));
    rb = _mm256_cvtepu16_epi32(_mm256_extracti128_si256(v, 1));
  }
};

template <>
struct Regs<float> {
  static constexpr int kLanes = 8;
  static constexpr int kGroup = 1;
  using R = __m256;
  using Idx = __m256i;
  using Mask = __m256;
  static R load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, R v) { _mm256_storeu_ps(p, v); }
  static Idx index(const int32_t* v) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v)); }
  static Mask mask(uint32_t bits) { return _mm256_castsi256_ps(Regs<c10::BFloat16>::mask(bits)); }
  static R permute(Idx i, R a) { return _mm256_permutevar8x32_ps(a, i); }
  static R permute2(R a, Idx i, R b) {
    const __m256 from_b = _mm256_castsi256_ps(_mm256_cmpgt_epi32(i, _mm256_set1_epi32(7)));
    return _mm256_blendv_ps(permute(i, a), permute(i, b), from_b);
  }
  static R blend(Mask k, R a, R b) { return _mm256_blendv_ps(a, b, k); }
  static R permute_into(R src, Mask k, Idx i, R a) { return blend(k, src, permute(i, a)); }
  static R zero() { return _mm256_setzero_ps(); }
  static __m256 widen(R a) { return a; }
  static void narrow2(__m256 a, __m256 b, R& ra, R& rb) { ra = a, rb = b; }
};
#endif

// R channels whose values lie in runs of n (1..kMaxRun) per channel: the
// run block is n registers, value q of it (channel q / n, column q % n) in
// register q / R, lane q % R. The index tables that turn those registers
// into columns (lane l = channel l) and columns back into registers, by
// permutes and blends only, so values move as raw bits. They depend only on
// n, so a call builds them once.
template <typename X>
struct Runs {
  using Rg = Regs<X>;
  static constexpr int64_t kR = Rg::kLanes;
  // A channel's run fits in one register (16 values on AVX-512, 8 on AVX2),
  // so every register holds every column and a column reads n / G groups.
  static constexpr int64_t kMaxRun = kR;
  static constexpr int64_t kG = Rg::kGroup;  // registers one permute reads from
  using R = typename Rg::R;
  using Idx = typename Rg::Idx;
  using Mask = typename Rg::Mask;

  int64_t n = 0;
  // Column c: lane l reads value (l*n + c) % (G*R) of register group
  // (l*n + c) / (G*R); col_group[c][g] marks the lanes served by group g >= 1.
  Idx col_index[kMaxRun];
  Mask col_group[kMaxRun][kMaxRun];
  // Register m, value e holds channel (R*m + e) / n, column (R*m + e) % n:
  // lane spread_index[m][e] of column register c for the values in
  // spread_mask[c][m]. With n <= R every register holds every column.
  Idx spread_index[kMaxRun];
  Mask spread_mask[kMaxRun][kMaxRun];

  explicit Runs(int64_t run) : n(run) {
    alignas(64) int32_t idx[kR];
    for (int64_t c = 0; c < n; ++c) {
      uint32_t group_bits[kMaxRun] = {};
      for (int64_t l = 0; l < kR; ++l) {
        const int64_t pos = l * n + c;
        idx[l] = static_cast<int32_t>(pos % (kG * kR));
        group_bits[pos / (kG * kR)] |= 1u << l;
      }
      col_index[c] = Rg::index(idx);
      for (int64_t g = 0; g < kMaxRun; ++g) col_group[c][g] = Rg::mask(group_bits[g]);
    }
    uint32_t spread_bits[kMaxRun][kMaxRun] = {};
    for (int64_t m = 0; m < n; ++m) {
      for (int64_t e = 0; e < kR; ++e) {
        const int64_t q = kR * m + e;
        idx[e] = static_cast<int32_t>(q / n);
        spread_bits[q % n][m] |= 1u << e;
      }
      spread_index[m] = Rg::index(idx);
    }
    for (int64_t c = 0; c < n; ++c)
      for (int64_t m = 0; m < n; ++m) spread_mask[c][m] = Rg::mask(spread_bits[c][m]);
  }

  // Column c of the n registers regs (kN: n as a constant, or 0 when only
  // known at run time).
  template <int kN = 0>
  R column(const R* regs, int64_t c) const {
    const int64_t runs = kN > 0 ? kN : n;
    auto group = [&](int64_t g) {
      if constexpr (kG == 2) {
        return kG * g + 1 < runs ? Rg::permute2(regs[kG * g], col_index[c], regs[kG * g + 1])
                                 : Rg::permute(col_index[c], regs[kG * g]);  // index < R there
      } else {
        return Rg::permute(col_index[c], regs[g]);
      }
    };
    R v = group(0);
    for (int64_t g = 1; kG * g < runs; ++g) v = Rg::blend(col_group[c][g], v, group(g));
    return v;
  }

  // Register m of the run block whose column c is cols[c] (kN as above).
  template <int kN = 0>
  R spread(const R* cols, int64_t m) const {
    const int64_t runs = kN > 0 ? kN : n;
    R v = Rg::permute(spread_index[m], cols[0]);
    for (int64_t c = 1; c < runs; ++c)
      v = Rg::permute_into(v, spread_mask[c][m], spread_index[m], cols[c]);
    return v;
  }
};

// t's values lie in per-channel runs of n: t.s1 == n, stride 1 along the
// last dimension. With n == 1 that stride is never used, and torch leaves
// any value there ((B, 1, D).transpose(1, 2).contiguous() keeps D).
inline bool in_runs(const Strided& t, int64_t n) { return t.s1 == n && (n == 1 || t.s2 == 1); }

template <typename X>
struct RegisterDecode {
  static constexpr int64_t kMaxS = 8;  // states up to 8 columns (W <= 9): run()'s cases
  static_assert(kMaxS <= Runs<X>::kMaxRun);
  using Rg = Regs<X>;
  static constexpr int64_t kR = Rg::kLanes;  // channels per register
  using R = typename Rg::R;
  using Idx = typename Rg::Idx;
  using V = at::vec::Vectorized<float>;
  static_assert(V::size() == kR);

  int64_t S = 0, W = 0;
  Runs<X> runs;    // the state's runs of S columns
  Idx last_shift;  // e -> e + 1, the last lane kept (a token replaces it)

  // The fast path's conditions: one token, fp16/bf16/fp32, a state with
  // per-channel runs of exactly S <= 8 values, x and out channel-contiguous.
  static bool applies(const ConvParams& p) {
    return p.seqlen == 1 && p.state_len >= 1 && p.state_len <= kMaxS &&
           p.width - 1 <= p.state_len && in_runs(p.conv_state, p.state_len) && p.x.s1 == 1 &&
           p.out.s1 == 1;
  }

  explicit RegisterDecode(const ConvParams& p)
      : S(p.state_len), W(p.width), runs(p.state_len) {
    alignas(64) int32_t idx[kR];
    for (int64_t e = 0; e < kR; ++e) idx[e] = static_cast<int32_t>(std::min<int64_t>(e + 1, kR - 1));
    last_shift = Rg::index(idx);
  }

  // Tasks [begin, end) of update_impl (batch row b = task / nblk, block of
  // 2R channels c = task % nblk): full blocks of live rows run here, the
  // others (a partial last block, padding rows) go to other(b, c).
  template <typename Other>
  void run(const ConvParams& p, const TapRows<float>& taps, int64_t nblk, int64_t begin,
           int64_t end, Other&& other) const {
    // S as a constant keeps the state in registers and unrolls the permutes;
    // the task loop is inside so the hot path makes no calls
    switch (S) {
      case 1: return run_s<1>(p, taps, nblk, begin, end, other);
      case 2: return run_s<2>(p, taps, nblk, begin, end, other);
      case 3: return run_s<3>(p, taps, nblk, begin, end, other);
      case 4: return run_s<4>(p, taps, nblk, begin, end, other);
      case 5: return run_s<5>(p, taps, nblk, begin, end, other);
      case 6: return run_s<6>(p, taps, nblk, begin, end, other);
      case 7: return run_s<7>(p, taps, nblk, begin, end, other);
      default: return run_s<8>(p, taps, nblk, begin, end, other);
    }
  }

 private:
  template <int kS, typename Other>
  void run_s(const ConvParams& p, const TapRows<float>& taps, int64_t nblk, int64_t begin,
             int64_t end, Other& other) const {
    const int32_t* indices = ptr<int32_t>(p.state_indices);
    const int32_t* seqlens = ptr<int32_t>(p.cache_seqlens);
    int64_t b = begin / nblk, c = begin % nblk;
    const UpdatePrefetch ahead{prefetch_group(2 * kR), nblk, 2 * kR, end};
    for (int64_t task = begin; task < end; ++task) {
      ahead.before<X>(p, task);
      const int64_t d0 = c * 2 * kR;
      const int64_t row = indices ? indices[b * p.state_indices.s0] : b;
      if (d0 + 2 * kR > p.dim || row < 0) {
        other(b, c);
      } else {
        X* st = ptr<X>(p.conv_state) + row * p.conv_state.s0 + d0 * kS;
        const X* x = ptr<X>(p.x) + b * p.x.s0 + d0;
        X* out = ptr<X>(p.out) + b * p.out.s0 + d0;
        const int64_t next = seqlens ? seqlens[b * p.cache_seqlens.s0] % kS : -1;
        V acc0 = step_s<kS>(st, x, taps.tap(0, d0), taps.stride, taps.bias(d0), next);
        V acc1 = step_s<kS>(st + kR * kS, x + kR, taps.tap(0, d0 + kR), taps.stride,
                            taps.bias(d0 + kR), next);
        if (p.silu) {
          acc0 = silu_vec<X>(acc0);
          acc1 = silu_vec<X>(acc1);
        }
        if constexpr (std::is_same_v<X, float>) {
          acc0.store(out);
          acc1.store(out + kR);
        } else {
          narrow<X>(acc0, acc1).store(out);
        }
      }
      if (++c == nblk) {
        c = 0;
        ++b;
      }
    }
  }

  // R channels: returns bias + conv before the activation and updates the
  // state st (R*S values). `next` < 0: linear state (shift left, token
  // last); else the circular write column, next = cache_seqlens % S.
  // Inlined into run_s's task loop so the permute indices stay in registers
  // and the arrays below never reach the stack.
  template <int kS>
  __attribute__((always_inline)) V step_s(X* st, const X* x, const float* taps,
                                          int64_t tap_stride, const float* bias,
                                          int64_t next) const {
    R regs[kS];
    for (int m = 0; m < kS; ++m) regs[m] = Rg::load(st + kR * m);
    const R token = Rg::load(x);
    V acc = V::loadu(bias);
    // A constant trip count (W - 1 <= S) so the loop unrolls; taps in
    // order, as every other path sums them.
    const int64_t first = next < 0 ? kS - (W - 1) : next - (W - 1) + kS;  // column of tap 0
    for (int k = 0; k < kS && k + 1 < W; ++k) {
      const int64_t c = next < 0 ? first + k : (first + k) % kS;
      const V column(Rg::widen(runs.template column<kS>(regs, c)));
      acc = at::vec::fmadd(V::loadu(taps + k * tap_stride), column, acc);
    }
    acc = at::vec::fmadd(V::loadu(taps + (W - 1) * tap_stride), V(Rg::widen(token)), acc);
    if (next < 0) {
      for (int m = 0; m < kS; ++m) {
        // value e = old value R*m + e + 1. The load reaches one value into
        // register m + 1's range, which is stored after it; the last
        // register is permuted instead so nothing past the block is read.
        // Loaded here rather than with regs: fewer registers live across
        // the taps.
        const R shifted =
            m + 1 < kS ? Rg::load(st + kR * m + 1) : Rg::permute(last_shift, regs[kS - 1]);
        Rg::store(st + kR * m, Rg::permute_into(shifted, runs.spread_mask[kS - 1][m],
                                                runs.spread_index[m], token));
      }
    } else {
      for (int m = 0; m < kS; ++m) {
        Rg::store(st + kR * m, Rg::permute_into(regs[m], runs.spread_mask[next][m],
                                                runs.spread_index[m], token));
      }
    }
    return acc;
  }
};
#endif  // CPU_CAPABILITY_AVX512 || CPU_CAPABILITY_AVX2

}  // namespace causal_conv1d::cpu::CPU_CAPABILITY
