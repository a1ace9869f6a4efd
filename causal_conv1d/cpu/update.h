// Decode step (backend.h run_update) on CPU, and the channel-block engine
// that packed.h's prefill shares.
//
// Decode touches a few values per channel (S state columns, one token), so
// all of it is vectorized across channels and split into (batch row, block
// of channels) tasks, run batch-row-major so the states stream through
// memory in order. Each thread first transposes the weights of the channels
// it will see (tap k of every channel in one row) into a per-thread buffer
// that later calls reuse: decode allocates nothing.
//
// Two paths:
//  - RegisterDecode (AVX-512, AVX2): one token with the usual contiguous
//    (N, D, S <= 8) state. The states of a block of channels are loaded as
//    whole registers; window columns, the shifted state and the token's place
//    in it are in-register permutes.
//  - ChannelBlock, everything else (any strides, L > 1, wide states, fp64,
//    the portable tier): the W-1 inputs before the next token are gathered
//    into a transposed buffer (lanes = channels), after which every token is
//    W vector FMAs over that buffer. Only the gathers into the buffer and the
//    state update (shift_state) look at the layout.
#pragma once

#include <algorithm>
#include <cstring>
#include <array>
#include <tuple>
#include <type_traits>
#include <vector>

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

#include "common.h"

namespace causal_conv1d::cpu::CPU_CAPABILITY {

// Calls f.template operator()<Wt>() for the runtime weight dtype. Weight and
// bias are converted once per call (transpose_taps), so only that conversion
// depends on Wt: the kernels are instantiated per x dtype only.
template <typename F>
void dispatch_weight_dtype(DType w, F&& f) {
  switch (w) {
    case DType::Float32: return f.template operator()<float>();
    case DType::Float16: return f.template operator()<c10::Half>();
    case DType::BFloat16: return f.template operator()<c10::BFloat16>();
    case DType::Float64: return f.template operator()<double>();
  }
}

// ((a % m) + m) % m for a possibly negative a, m > 0.
inline int64_t wrap_index(int64_t a, int64_t m) {
  const int64_t r = a % m;
  return r < 0 ? r + m : r;
}

// Weights and bias with channels along rows: row k < W holds tap k of every
// channel, row W the bias (zeros without one); rows are D rounded up to whole
// channel blocks long, the padding lanes zero.
template <typename A>
struct TapRows {
  const A* data = nullptr;
  int64_t stride = 0;  // row length
  int64_t width = 0;
  const A* tap(int64_t k, int64_t d0) const { return data + k * stride + d0; }
  const A* bias(int64_t d0) const { return data + width * stride + d0; }
};

// Fills the columns of channel blocks [c_lo, c_hi) (blocks of `lanes`
// channels) of a per-thread buffer that later calls reuse.
template <typename A>
TapRows<A> transpose_taps(const ConvParams& p, int64_t lanes, int64_t c_lo, int64_t c_hi) {
  thread_local std::vector<A> scratch;
  const int64_t W = p.width, D = p.dim;
  const int64_t stride = (D + lanes - 1) / lanes * lanes;
  if (static_cast<int64_t>(scratch.size()) < (W + 1) * stride) scratch.resize((W + 1) * stride);
  A* rows = scratch.data();
  const int64_t d_lo = c_lo * lanes, d_hi = std::min(c_hi * lanes, D), pad_hi = c_hi * lanes;
  dispatch_weight_dtype(p.weight_dtype, [&]<typename Wt>() {
    const Wt* w = ptr<Wt>(p.weight);
    if constexpr (sizeof(Wt) >= sizeof(A)) {
      // One pass over weight in memory order (a channel's taps are usually
      // adjacent), writing W rows at once: measured 20% faster decode at
      // B = 1 than the row-by-row loop below for fp32 weights, 20% slower
      // for 16-bit ones (whose row-by-row conversion vectorizes).
      for (int64_t d = d_lo; d < d_hi; ++d) {
        const Wt* wd = w + d * p.weight.s0;
        for (int64_t k = 0; k < W; ++k) rows[k * stride + d] = A(wd[k * p.weight.s1]);
      }
    } else {
      for (int64_t k = 0; k < W; ++k)
        for (int64_t d = d_lo; d < d_hi; ++d) rows[k * stride + d] = A(w[d * p.weight.s0 + k * p.weight.s1]);
    }
    for (int64_t k = 0; k < W; ++k) std::fill(rows + k * stride + d_hi, rows + k * stride + pad_hi, A(0));
    A* r = rows + W * stride;
    if (p.bias.given()) {
      const Wt* bi = ptr<Wt>(p.bias);
      for (int64_t d = d_lo; d < d_hi; ++d) r[d] = A(bi[d * p.bias.s0]);
    } else {
      std::fill(r + d_lo, r + d_hi, A(0));
    }
    std::fill(r + d_hi, r + pad_hi, A(0));
  });
  return {rows, stride, W};
}

// Up to kLanes channels of one stream (one sequence or batch row), computed
// with one vector lane per channel. Per stream and block of channels: bind
// the block's weights, load_window (or clear_window), run over its tokens,
// then write the state (shift_state).
template <typename X>
struct ChannelBlock {
  using A = acc_t<X>;
  using V = at::vec::Vectorized<A>;
  static constexpr int64_t N = V::size();
  static constexpr int64_t kLanes = 2 * N;  // channels per block: two vectors
  static constexpr int64_t kChunk = 32;     // tokens per pass through buf
  static constexpr bool kSameAsAcc = std::is_same_v<X, A>;

  static constexpr int64_t kMaxGatherStride = 16;  // channel stride the gathers take
  using I = at::vec::int_same_size_t<A>;
  using IV = at::vec::Vectorized<I>;

  int64_t width = 1;
  int64_t lanes = kLanes;  // live channels (the last block may have fewer)
  bool silu = false;
  const A* taps = nullptr;  // tap k of lane j at taps[k * tap_stride + j]
  int64_t tap_stride = 0;
  const A* bias = nullptr;
  int64_t gather_stride = 0;  // the channel stride `gather_index` was made for
  IV gather_index;            // lane l: l * gather_stride
  // Rows 0..W-2: the W-1 inputs before the current chunk, oldest first;
  // rows W-1..W-2+tc: the chunk's tokens. Token t's window is rows t..t+W-1.
  alignas(64) A buf[kMaxWidthCpu - 1 + kChunk][kLanes];
  alignas(64) A res[kChunk][kLanes];
  // A block of states with contiguous columns, widened to A for the gathers.
  alignas(64) A flat[kLanes * (kMaxGatherStride + 1)];

  ChannelBlock(const ConvParams& p) : width(p.width), silu(p.silu) {}

  // Channels d0 .. d0+n-1 (n <= kLanes).
  void bind(const TapRows<A>& rows, int64_t d0, int64_t n) {
    lanes = n;
    taps = rows.tap(0, d0);
    tap_stride = rows.stride;
    bias = rows.bias(d0);
  }

  void clear_window() {
    for (int64_t k = 0; k + 1 < width; ++k) std::fill(buf[k], buf[k] + kLanes, A(0));
  }

  // Window row k (k < W-1) = column col[k] of each channel's state:
  // st[j * s_ch + col[k] * s_col] for lane j.
  void load_window(const X* st, int64_t s_ch, int64_t s_col, const int64_t* col) {
    if (width == 1) return;
    if (s_ch == 1) {  // columns are contiguous: one vector load per row
      for (int64_t k = 0; k + 1 < width; ++k) load_lanes(st + col[k] * s_col, buf[k]);
      return;
    }
    if (s_col == 1 && s_ch <= kMaxGatherStride) {  // per-channel contiguous: gather
      gather_window(st, s_ch, col);
      return;
    }
    for (int64_t k = 0; k + 1 < width; ++k) {
      const X* src = st + col[k] * s_col;
      A* row = buf[k];
      for (int64_t j = 0; j < lanes; ++j) row[j] = A(src[j * s_ch]);
      std::fill(row + lanes, row + kLanes, A(0));
    }
  }

  // Tokens t = 0..L-1 of x (lane j, token t at x[j * s_ch + t * s_tok]) into
  // out (same convention); afterwards the window holds the last W-1 inputs.
  void run(const X* x, int64_t xs_ch, int64_t xs_tok, int64_t L, X* out, int64_t os_ch,
           int64_t os_tok) {
    for (int64_t t0 = 0; t0 < L; t0 += kChunk) {
      const int64_t tc = std::min(kChunk, L - t0);
      load_tokens(x + t0 * xs_tok, xs_ch, xs_tok, tc);
      convolve(tc);
      store_results(out + t0 * os_tok, os_ch, os_tok, tc);
      // the last W-1 rows become the window of the next chunk
      if (t0 + tc < L && width > 1)
        std::memmove(buf[0], buf[tc], sizeof(A) * kLanes * (width - 1));
    }
  }

 private:
  // The lanes' states are runs of s_ch (<= kMaxGatherStride) values: gather
  // column col[k] of every lane, straight from x-dtype memory when it needs
  // no widening, else from a widened copy of the block.
  void gather_window(const X* st, int64_t s_ch, const int64_t* col) {
    if (gather_stride != s_ch) {
      alignas(64) I idx[N];
      for (int64_t l = 0; l < N; ++l) idx[l] = static_cast<I>(l * s_ch);
      gather_index = IV::loadu(idx);
      gather_stride = s_ch;
    }
    const A* src;
    if constexpr (kSameAsAcc) {
      src = st;
    }
    if (!kSameAsAcc || lanes < kLanes) {
      // widen the block's span (zeros past its end, so every lane reads
      // memory of this buffer)
      int64_t max_col = 0;
      for (int64_t k = 0; k + 1 < width; ++k) max_col = std::max(max_col, col[k]);
      const int64_t span = (lanes - 1) * s_ch + max_col + 1;
      for (int64_t i = 0; i < span; i += kLanes) {
        const int64_t m = std::min(kLanes, span - i);
        load_lanes(st + i, flat + i, m);
      }
      std::fill(flat + span, flat + kLanes * s_ch, A(0));
      src = flat;
    }
    for (int64_t k = 0; k + 1 < width; ++k)
      for (int64_t h = 0; h < kLanes; h += N)
        at::vec::gather<sizeof(A)>(src + col[k] + h * s_ch, gather_index).store(buf[k] + h);
  }

  void load_tokens(const X* x, int64_t s_ch, int64_t s_tok, int64_t tc) {
    A(*rows)[kLanes] = buf + (width - 1);
    if (s_ch == 1) {  // channel-contiguous: one vector load per token
      for (int64_t t = 0; t < tc; ++t) load_lanes(x + t * s_tok, rows[t]);
      return;
    }
    for (int64_t j = 0; j < lanes; ++j) {
      const X* src = x + j * s_ch;
      for (int64_t t = 0; t < tc; ++t) rows[t][j] = A(src[t * s_tok]);
    }
    if (lanes < kLanes)
      for (int64_t t = 0; t < tc; ++t) std::fill(rows[t] + lanes, rows[t] + kLanes, A(0));
  }

  void convolve(int64_t tc) {
    for (int64_t t = 0; t < tc; ++t) {
      for (int64_t h = 0; h < kLanes; h += N) {
        V acc = V::loadu(bias + h);
        for (int64_t k = 0; k < width; ++k)
          acc = at::vec::fmadd(V::loadu(taps + k * tap_stride + h), V::loadu(buf[t + k] + h), acc);
        if (silu) acc = silu_vec<X>(acc);
        acc.store(res[t] + h);
      }
    }
  }

  void store_results(X* out, int64_t s_ch, int64_t s_tok, int64_t tc) {
    if (s_ch == 1) {
      for (int64_t t = 0; t < tc; ++t) store_lanes(res[t], out + t * s_tok);
      return;
    }
    for (int64_t j = 0; j < lanes; ++j) {
      X* dst = out + j * s_ch;
      for (int64_t t = 0; t < tc; ++t) dst[t * s_tok] = X(res[t][j]);
    }
  }

  // `lanes` (or n) consecutive values of x's dtype <-> kLanes accumulators;
  // lanes past them read as zero.
  void load_lanes(const X* src, A* dst) const { load_lanes(src, dst, lanes); }
  static void load_lanes(const X* src, A* dst, int64_t n) {
    V a, b;
    if constexpr (kSameAsAcc) {
      if (n == kLanes) {
        a = V::loadu(src);
        b = V::loadu(src + N);
      } else {
        a = V::loadu(src, std::min(n, N));
        b = n > N ? V::loadu(src + N, n - N) : V(A(0));
      }
    } else {
      using XV = at::vec::Vectorized<X>;
      static_assert(XV::size() == kLanes);
      std::tie(a, b) = at::vec::convert_to_float<X>(n == kLanes ? XV::loadu(src) : XV::loadu(src, n));
    }
    a.store(dst);
    b.store(dst + N);
  }

  void store_lanes(const A* src, X* dst) const {
    const V a = V::loadu(src), b = V::loadu(src + N);
    if constexpr (kSameAsAcc) {
      if (lanes == kLanes) {
        a.store(dst);
        b.store(dst + N);
      } else {
        a.store(dst, std::min(lanes, N));
        if (lanes > N) b.store(dst + N, lanes - N);
      }
    } else {
      narrow<X>(a, b).store(dst, lanes);
    }
  }
};

// dst[j * d_ch] = src[j * s_ch] for j < n.
template <typename X>
inline void copy_channels(const X* src, int64_t s_ch, X* dst, int64_t d_ch, int64_t n) {
  if (s_ch == 1 && d_ch == 1) {
    std::memcpy(dst, src, sizeof(X) * n);
  } else {
    for (int64_t j = 0; j < n; ++j) dst[j * d_ch] = src[j * s_ch];
  }
}

// After a stream of L tokens, each of the n channels' S state columns
// (st[j * s_ch + i * s_col]) holds the last S inputs of (old state, tokens),
// oldest first; with keep_old false the old state counts as zeros. Values
// are copied, never converted, so the state stays bit-exact.
template <typename X>
void shift_state(X* st, int64_t s_ch, int64_t s_col, int64_t S, int64_t n, const X* x,
                 int64_t xs_ch, int64_t xs_tok, int64_t L, bool keep_old) {
  if (S == 0 || n == 0) return;
  const int64_t kept = std::max<int64_t>(S - L, 0);  // old columns that survive
  if (kept > 0 && !keep_old) {
    for (int64_t i = 0; i < kept; ++i)
      for (int64_t j = 0; j < n; ++j) st[j * s_ch + i * s_col] = X(0);
  } else if (kept > 0 && L > 0) {
    if (s_col == 1 && s_ch == S) {
      // the n channels are one contiguous run: shift it all left by L; the
      // columns this drags across channel boundaries are the ones the new
      // tokens overwrite below
      std::memmove(st, st + L, sizeof(X) * (n * S - L));
    } else if (s_ch == 1) {
      for (int64_t i = 0; i < kept; ++i)
        std::memmove(st + i * s_col, st + (i + L) * s_col, sizeof(X) * n);
    } else {
      for (int64_t i = 0; i < kept; ++i)
        for (int64_t j = 0; j < n; ++j) st[j * s_ch + i * s_col] = st[j * s_ch + (i + L) * s_col];
    }
  }
  const int64_t first = L - (S - kept);  // first token that lands in the state
  for (int64_t i = kept; i < S; ++i)
    copy_channels(x + (first + i - kept) * xs_tok, xs_ch, st + i * s_col, s_ch, n);
}

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
  static __m512 widen(R a) {
    if constexpr (std::is_same_v<X, c10::BFloat16>) {
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(a), 16));
    } else {
      return _mm512_cvtph_ps(a);
    }
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
  static __m512 widen(R a) { return a; }
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
  static R blend(Mask k, R a, R b) { return _mm256_blendv_epi8(a, b, k); }
  static R permute_into(R src, Mask k, Idx i, R a) { return blend(k, src, permute(i, a)); }
  static __m256 widen(R a) {
    if constexpr (std::is_same_v<X, c10::BFloat16>) {
      return _mm256_castsi256_ps(_mm256_slli_epi32(a, 16));
    } else {
      return _mm256_cvtph_ps(narrow(a));
    }
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
  static R blend(Mask k, R a, R b) { return _mm256_blendv_ps(a, b, k); }
  static R permute_into(R src, Mask k, Idx i, R a) { return blend(k, src, permute(i, a)); }
  static __m256 widen(R a) { return a; }
};
#endif

template <typename X>
struct RegisterDecode {
  static constexpr int64_t kMaxS = 8;  // states up to 8 columns (W <= 9)
  using Rg = Regs<X>;
  static constexpr int64_t kR = Rg::kLanes;  // channels per register
  using R = typename Rg::R;
  using Idx = typename Rg::Idx;
  using Mask = typename Rg::Mask;
  using V = at::vec::Vectorized<float>;
  static_assert(V::size() == kR);

  int64_t S = 0, W = 0;
  // Column c: lane l reads value (l*S + c) % (G*R) of register group
  // (l*S + c) / (G*R), G = Regs::kGroup registers per permute;
  // col_group[c][g] marks the lanes served by group g >= 1.
  static constexpr int64_t kG = Rg::kGroup;
  Idx col_index[kMaxS];
  Mask col_group[kMaxS][kMaxS];
  Idx last_shift;  // e -> e + 1, the last lane kept (a token replaces it)
  // Register m, value e holds channel (R*m + e) / S, column (R*m + e) % S.
  Idx token_index[kMaxS];
  Mask token_mask[kMaxS][kMaxS];  // [c][m]: values of register m in column c
  bool token_any[kMaxS][kMaxS];

  // The fast path's conditions: one token, fp16/bf16/fp32, a state with
  // per-channel runs of exactly S <= 8 values, x and out channel-contiguous.
  static bool applies(const ConvParams& p) {
    return p.seqlen == 1 && p.state_len >= 1 && p.state_len <= kMaxS &&
           p.width - 1 <= p.state_len && p.conv_state.s2 == 1 &&
           p.conv_state.s1 == p.state_len && p.x.s1 == 1 && p.out.s1 == 1;
  }

  explicit RegisterDecode(const ConvParams& p) : S(p.state_len), W(p.width) {
    alignas(64) int32_t idx[kR];
    for (int64_t c = 0; c < S; ++c) {
      uint32_t group_bits[kMaxS] = {};
      for (int64_t l = 0; l < kR; ++l) {
        const int64_t pos = l * S + c;
        idx[l] = static_cast<int32_t>(pos % (kG * kR));
        group_bits[pos / (kG * kR)] |= 1u << l;
      }
      col_index[c] = Rg::index(idx);
      for (int64_t g = 0; g < kMaxS; ++g) col_group[c][g] = Rg::mask(group_bits[g]);
    }
    for (int64_t e = 0; e < kR; ++e) idx[e] = static_cast<int32_t>(std::min<int64_t>(e + 1, kR - 1));
    last_shift = Rg::index(idx);
    uint32_t token_bits[kMaxS][kMaxS] = {};
    for (int64_t m = 0; m < S; ++m) {
      for (int64_t e = 0; e < kR; ++e) {
        const int64_t q = kR * m + e;
        idx[e] = static_cast<int32_t>(q / S);
        token_bits[q % S][m] |= 1u << e;
      }
      token_index[m] = Rg::index(idx);
    }
    for (int64_t c = 0; c < S; ++c)
      for (int64_t m = 0; m < S; ++m) {
        token_mask[c][m] = Rg::mask(token_bits[c][m]);
        token_any[c][m] = token_bits[c][m] != 0;
      }
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
  template <int kS>
  R column(const R* regs, int64_t c) const {
    auto group = [&](int g) {
      if constexpr (kG == 2) {
        return kG * g + 1 < kS ? Rg::permute2(regs[kG * g], col_index[c], regs[kG * g + 1])
                               : Rg::permute(col_index[c], regs[kG * g]);  // index < R there
      } else {
        return Rg::permute(col_index[c], regs[g]);
      }
    };
    R v = group(0);
    for (int g = 1; kG * g < kS; ++g) v = Rg::blend(col_group[c][g], v, group(g));
    return v;
  }

  template <int kS, typename Other>
  void run_s(const ConvParams& p, const TapRows<float>& taps, int64_t nblk, int64_t begin,
             int64_t end, Other& other) const {
    const int32_t* indices = ptr<int32_t>(p.state_indices);
    const int32_t* seqlens = ptr<int32_t>(p.cache_seqlens);
    int64_t b = begin / nblk, c = begin % nblk;
    for (int64_t task = begin; task < end; ++task) {
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
  template <int kS>
  V step_s(X* st, const X* x, const float* taps, int64_t tap_stride, const float* bias,
           int64_t next) const {
    R regs[kS];
    for (int m = 0; m < kS; ++m) regs[m] = Rg::load(st + kR * m);
    R shifted[kS];  // value e of register m = old value R*m + e + 1
    if (next < 0) {
      for (int m = 0; m + 1 < kS; ++m) shifted[m] = Rg::load(st + kR * m + 1);
      shifted[kS - 1] = Rg::permute(last_shift, regs[kS - 1]);
    }
    const R token = Rg::load(x);
    V acc = V::loadu(bias);
    const int64_t first = next < 0 ? kS - (W - 1) : next - (W - 1) + kS;  // column of tap 0
    for (int64_t k = 0; k + 1 < W; ++k) {
      const int64_t c = next < 0 ? first + k : (first + k) % kS;
      acc = at::vec::fmadd(V::loadu(taps + k * tap_stride), V(Rg::widen(column<kS>(regs, c))), acc);
    }
    acc = at::vec::fmadd(V::loadu(taps + (W - 1) * tap_stride), V(Rg::widen(token)), acc);
    if (next < 0) {
      for (int m = 0; m < kS; ++m)
        Rg::store(st + kR * m,
                  Rg::permute_into(shifted[m], token_mask[kS - 1][m], token_index[m], token));
    } else {
      for (int m = 0; m < kS; ++m) {
        if (!token_any[next][m]) continue;
        Rg::store(st + kR * m, Rg::permute_into(regs[m], token_mask[next][m], token_index[m], token));
      }
    }
    return acc;
  }
};
#endif  // CPU_CAPABILITY_AVX512 || CPU_CAPABILITY_AVX2

// Tasks of about this many channel-token steps share a thread; below it a
// call stays on the calling thread (waking the pool costs more).
constexpr int64_t kTaskGrainSteps = int64_t(1) << 17;

template <typename X>
void update_impl(const ConvParams& p) {
  using Block = ChannelBlock<X>;
  using A = typename Block::A;
  constexpr int64_t kLanes = Block::kLanes;
  const int64_t B = p.batch, D = p.dim, L = p.seqlen, W = p.width, S = p.state_len;
  const int64_t nblk = (D + kLanes - 1) / kLanes;
  const int32_t* indices = ptr<int32_t>(p.state_indices);
  const int32_t* seqlens = ptr<int32_t>(p.cache_seqlens);
  const int64_t s_ch = p.conv_state.s1, s_col = p.conv_state.s2;
  const int64_t grain = std::max<int64_t>(1, kTaskGrainSteps / (kLanes * (L + W + S)));

  // Tasks are (batch row, channel block), row-major: states stream in order.
  at::parallel_for(0, B * nblk, grain, [&](int64_t begin, int64_t end) {
    const bool one_row = begin / nblk == (end - 1) / nblk;
    const TapRows<A> taps = transpose_taps<A>(p, kLanes, one_row ? begin % nblk : 0,
                                              one_row ? (end - 1) % nblk + 1 : nblk);
    Block blk(p);
    int64_t col[kMaxWidthCpu];
    // One task in the engine: any layout, any token count.
    auto task = [&](int64_t b, int64_t c) {
      const int64_t d0 = c * kLanes, n = std::min(kLanes, D - d0);
      const X* x = ptr<X>(p.x) + b * p.x.s0 + d0 * p.x.s1;
      X* out = ptr<X>(p.out) + b * p.out.s0 + d0 * p.out.s1;
      const int64_t row = indices ? indices[b * p.state_indices.s0] : b;
      if (row < 0) {  // padding row: output 0, state untouched
        for (int64_t t = 0; t < L; ++t)
          for (int64_t j = 0; j < n; ++j) out[j * p.out.s1 + t * p.out.s2] = X(0);
        return;
      }
      X* st = ptr<X>(p.conv_state) + row * p.conv_state.s0 + d0 * s_ch;
      blk.bind(taps, d0, n);
      if (seqlens) {
        // circular buffer: the next write goes to column seqlens[b] % S and
        // the W-1 columns before it (circularly) are the window
        const int64_t next = seqlens[b * p.cache_seqlens.s0];
        for (int64_t k = 0; k + 1 < W; ++k) col[k] = wrap_index(next - (W - 1) + k, S);
        blk.load_window(st, s_ch, s_col, col);
        blk.run(x, p.x.s1, p.x.s2, L, out, p.out.s1, p.out.s2);
        for (int64_t i = std::max<int64_t>(L - S, 0); i < L; ++i)  // later tokens win
          copy_channels(x + i * p.x.s2, p.x.s1, st + wrap_index(next + i, S) * s_col, s_ch, n);
      } else {
        for (int64_t k = 0; k + 1 < W; ++k) col[k] = S - (W - 1) + k;
        blk.load_window(st, s_ch, s_col, col);
        blk.run(x, p.x.s1, p.x.s2, L, out, p.out.s1, p.out.s2);
        shift_state(st, s_ch, s_col, S, n, x, p.x.s1, p.x.s2, L, /*keep_old=*/true);
      }
    };
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
    if constexpr (!std::is_same_v<X, double>) {
      static_assert(kLanes == 2 * RegisterDecode<X>::kR);
      if (RegisterDecode<X>::applies(p)) {
        RegisterDecode<X>(p).run(p, taps, nblk, begin, end, task);
        return;
      }
    }
#endif
    for (int64_t t = begin; t < end; ++t) task(t / nblk, t % nblk);
  });
}

inline void update(const ConvParams& p) {
  switch (p.x_dtype) {
    case DType::Float32: return update_impl<float>(p);
    case DType::Float16: return update_impl<c10::Half>(p);
    case DType::BFloat16: return update_impl<c10::BFloat16>(p);
    case DType::Float64: return update_impl<double>(p);
  }
}

}  // namespace causal_conv1d::cpu::CPU_CAPABILITY
