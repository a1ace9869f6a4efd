// Forward (backend.h run_fwd) on CPU.
//
// Three paths, chosen per call from the strides in ConvParams:
//   rows      x and out contiguous along L (s2 == 1): SIMD along t; a task is
//             one (b, d) row, or a block of kRowBlock tokens of it.
//   channels  x and out contiguous along D (s1 == 1), e.g. y.transpose(1, 2)
//             of a (B, L, D) tensor or a slice of a wider projection: SIMD
//             across channels, a few tokens at a time with their windows in
//             registers; a task is a tile of tokens x channels.
//   generic   anything else: scalar, any strides. It is also the statement of
//             the semantics the other two must match.
// Tasks never share an output, and each output is computed by exactly one
// task in a fixed order, so results do not depend on the number of threads.
#pragma once

#include <limits>
#include <vector>

#include "common.h"

namespace causal_conv1d::cpu::CPU_CAPABILITY {

// final_states[b, d, :] = the last W-1 inputs of row (b, d), of its last
// segment when seq_idx is given, zero where there are fewer.
template <typename X>
void write_final_state(const ConvParams& p, int64_t b, int64_t d) {
  const int64_t L = p.seqlen, W = p.width;
  const X* xr = ptr<X>(p.x) + b * p.x.s0 + d * p.x.s1;
  const X* ir = p.initial_states.given()
                    ? ptr<X>(p.initial_states) + b * p.initial_states.s0 + d * p.initial_states.s1
                    : nullptr;
  const int32_t* sr = p.seq_idx.given() ? ptr<int32_t>(p.seq_idx) + b * p.seq_idx.s0 : nullptr;
  const int32_t first_id = (sr && L > 0) ? sr[0] : 0;
  const int32_t last_id = (sr && L > 0) ? sr[(L - 1) * p.seq_idx.s1] : first_id;
  X* frow = ptr<X>(p.final_states) + b * p.final_states.s0 + d * p.final_states.s1;
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
          } else if (id == first_id) {  // zeros without initial states (Inf * 0 is NaN)
            acc += wk[k] * (ir ? A(ir[(W - 1 + pos) * p.initial_states.s2]) : A(0));
          }
        }
        orow[t * p.out.s2] = X(p.silu ? silu(acc) : acc);
      }
      if (p.final_states.given()) write_final_state<X>(p, b, d);
    }
  });
}

// ---------------------------------------------------------------------------
// fast paths

namespace fwd_fast {

constexpr int64_t kRowBlock = 4096;  // tokens per rows task (fp32 staging: 16 KiB)
constexpr int64_t kChanBlock = 128;  // tokens per channels task
constexpr int64_t kShortRow = 16;    // rows up to this long go through a channels tile
constexpr int64_t kShortRowSliding = 14;  // the same where row_slide serves the rows
constexpr int64_t kShortSpan = 64;   // channels per short-rows tile
constexpr int64_t kChanGroup = 4;    // tokens per register pass in a channels task
constexpr int64_t kChanTasks = 16;   // channels tasks to aim for before splitting D
constexpr int64_t kTaskWork = 16384; // outputs per task that make a thread worth waking
constexpr int64_t kFarBack = 255;    // run length saturates here (> any window + chunk)

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// What every task reads besides ConvParams: taps widened to the compute type
// once per call, and the segment structure of seq_idx.
template <typename X>
struct Ctx {
  using A = acc_t<X>;
  static constexpr int64_t N = kLanes<A>;  // lanes per vector
  static constexpr int64_t S = 2 * N;      // outputs per step: two vectors

  const ConvParams& p;
  int64_t B, D, L, W;
  int64_t Dpad;          // D rounded up to S, so vector loads of taps never run off
  std::vector<A> w;      // (W, Dpad): w[k * Dpad + d] = weight[d, k], zero padded
  std::vector<A> bias;   // (Dpad,), zero when bias is not given
  // With seq_idx, (B, L): run[b * L + t] = how many positions right before t
  // share t's id, saturating at kFarBack; the first segment also owns the
  // positions < 0 (the initial state), so it is kFarBack throughout. A window
  // [t - r, t] is one segment exactly when run[t] >= r.
  std::vector<uint8_t> run;

  explicit Ctx(const ConvParams& p_)
      : p(p_), B(p_.batch), D(p_.dim), L(p_.seqlen), W(p_.width), Dpad(ceil_div(D, S) * S) {}

  const int32_t* seq_row(int64_t b) const {
    return p.seq_idx.given() ? ptr<int32_t>(p.seq_idx) + b * p.seq_idx.s0 : nullptr;
  }
  const X* init_row(int64_t b, int64_t d) const {
    return p.initial_states.given()
               ? ptr<X>(p.initial_states) + b * p.initial_states.s0 + d * p.initial_states.s1
               : nullptr;
  }
};

template <typename X, typename Wt>
void load_taps(Ctx<X>& c) {
  using A = acc_t<X>;
  const ConvParams& p = c.p;
  c.w.assign(c.W * c.Dpad, A(0));
  c.bias.assign(c.Dpad, A(0));
  const Wt* w = ptr<Wt>(p.weight);
  for (int64_t d = 0; d < c.D; ++d)
    for (int64_t k = 0; k < c.W; ++k) c.w[k * c.Dpad + d] = A(w[d * p.weight.s0 + k * p.weight.s1]);
  if (p.bias.given()) {
    const Wt* bias = ptr<Wt>(p.bias);
    for (int64_t d = 0; d < c.D; ++d) c.bias[d] = A(bias[d * p.bias.s0]);
  }
}

template <typename X>
void find_runs(Ctx<X>& c) {
  const int64_t L = c.L, s1 = c.p.seq_idx.s1;
  c.run.resize(c.B * L);
  at::parallel_for(0, c.B, std::max<int64_t>(1, kTaskWork / L), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int32_t* sr = c.seq_row(b);
      uint8_t* r = c.run.data() + b * L;
      int64_t t = 0;
      for (; t < L && sr[t * s1] == sr[0]; ++t) r[t] = uint8_t(kFarBack);
      for (int64_t start = t; t < L; ++t) {
        if (sr[t * s1] != sr[(t - 1) * s1]) start = t;
        r[t] = uint8_t(std::min(t - start, kFarBack));
      }
    }
  });
}

// ---- rows: x and out contiguous along t --------------------------------------

// buf[i] = input at position pos0 + i for i < count (the initial state or
// zeros before position 0), widened; then S zeros, because a row_span reads
// up to S - 1 elements past its last input.
template <typename X>
void stage_row(acc_t<X>* buf, const X* xr, const X* init, int64_t init_s2, int64_t W,
               int64_t pos0, int64_t count) {
  using A = acc_t<X>;
  constexpr int64_t S = Ctx<X>::S;
  int64_t i = 0;
  for (; i < count && pos0 + i < 0; ++i)
    buf[i] = init ? A(init[(W - 1 + pos0 + i) * init_s2]) : A(0);
  VecIO<X>::load_row(xr + pos0 + i, 1, buf + i, count - i);
  std::fill(buf + count, buf + count + S, A(0));
}

// One row's taps, widened.
template <typename A>
struct RowTaps {
  A w[kMaxWidthCpu];
  A bias;
};

// dst[i] = act(bias + sum_k w[k] * src[i + k]) for i < n: the outputs at
// positions t .. t+n-1, src[0] being the input at t - (W-1). Reads src up to
// index round_up(n, S) + W - 2, so n must be a multiple of S unless src is a
// padded staging buffer. sr/run: this row's seq_idx and runs, or nullptr.
template <int WC, typename X>
void row_span(const Ctx<X>& c, const RowTaps<acc_t<X>>& tp, const acc_t<X>* src, X* dst,
              int64_t t, int64_t n, const int32_t* sr, const uint8_t* run) {
  using A = acc_t<X>;
  using V = Vec<A>;
  using IO = VecIO<X>;
  constexpr int64_t N = Ctx<X>::N, S = Ctx<X>::S;
  const int64_t W = WC > 0 ? WC : c.W;
  const int64_t ss = c.p.seq_idx.s1;
  VecArray<V, (WC > 0 ? WC : kMaxWidthCpu)> vw;
  for (int64_t k = 0; k < W; ++k) vw[k] = V(tp.w[k]);
  const V vb(tp.bias);
  for (int64_t i = 0; i < n; i += S) {
    const int64_t cnt = std::min(S, n - i);
    if (sr) {
      const int64_t last = t + i + cnt - 1;
      if (sr[last * ss] < 0 && run[last] >= cnt - 1) {  // all padding
        IO::store2(dst + i, V(0), V(0), cnt);
        continue;
      }
      if (run[last] < cnt - 1 + W - 1) {  // a segment starts inside the window
        const int32_t first_id = sr[0];
        for (int64_t e = 0; e < cnt; ++e) {
          const int64_t tt = t + i + e;
          const int32_t id = sr[tt * ss];
          A acc = A(0);
          if (id >= 0) {
            acc = tp.bias;
            for (int64_t k = 0; k < W; ++k) {
              const int64_t pos = tt - (W - 1) + k;
              if ((pos >= 0 ? sr[pos * ss] : first_id) == id) acc += tp.w[k] * src[i + e + k];
            }
            if (c.p.silu) acc = silu(acc);
          }
          dst[i + e] = X(acc);
        }
        continue;
      }
    }
    V a0 = vb, a1 = vb;
    for (int64_t k = 0; k < W; ++k) {
      a0 = at::vec::fmadd(vw[k], V::loadu(src + i + k), a0);
      a1 = at::vec::fmadd(vw[k], V::loadu(src + i + N + k), a1);
    }
    if (c.p.silu) {
      a0 = silu_vec<X>(a0);
      a1 = silu_vec<X>(a1);
    }
    IO::store2(dst + i, a0, a1, cnt);
  }
}

// Whether row_slide (below, one per instruction set) serves this width and dtype.
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2) || defined(__aarch64__)
template <int WC, typename X>
constexpr bool kSlides = WC >= 1 && WC <= 4 && std::is_same_v<acc_t<X>, float>;
#else
template <int WC, typename X>
constexpr bool kSlides = false;
#endif

// Rows up to this long go through a channels tile (fwd_short_rows): below
// it, a row's fixed cost outweighs its few tokens. row_slide's is the
// smaller (no staging, the tail a masked vector), so its cut is lower.
template <int WC, typename X>
constexpr int64_t kShortRowCut = kSlides<WC, X> ? kShortRowSliding : kShortRow;

// The longest row row_slide takes. On AVX2, fp16/bf16 rows past 128 tokens
// go through the staging buffer instead: converted to fp32 once, row_span's
// unaligned loads from it outrun row_slide's lane-crossing shuffles there.
// (No cap otherwise: a longer row slides block by block.)
constexpr int64_t kNoCap = std::numeric_limits<int64_t>::max();
#if defined(CPU_CAPABILITY_AVX2)
template <typename X>
constexpr int64_t kSlideRowMax = std::is_same_v<X, float> ? kNoCap : 128;
#else
template <typename X>
constexpr int64_t kSlideRowMax = kNoCap;
#endif

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2) || defined(__aarch64__)
// What row_slide needs of an instruction set: a register R of N fp32 lanes,
// and the windows of inputs 1 .. 3 positions before the lanes of cur, cut
// from cur and the previous N inputs (prev).
#if defined(CPU_CAPABILITY_AVX512)
struct Slide {
  using R = __m512;
  static constexpr int64_t N = 16;
  static R splat(float v) { return _mm512_set1_ps(v); }
  static R fmadd(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }  // a * b + c
  // One VALIGND per window: the top kBack lanes of prev, then cur.
  struct Windows {
    R prev, cur;
    template <int kBack>
    R back() const {
      return _mm512_castsi512_ps(
          _mm512_alignr_epi32(_mm512_castps_si512(cur), _mm512_castps_si512(prev), N - kBack));
    }
  };
  static Windows windows(R prev, R cur) { return {prev, cur}; }
  static R top4(float a, float b, float c, float d) {  // lanes N-4 .. N-1, the others zero
    return _mm512_insertf32x4(_mm512_setzero_ps(), _mm_setr_ps(a, b, c, d), 3);
  }
};
#elif defined(CPU_CAPABILITY_AVX2)
struct Slide {
  using R = __m256;
  static constexpr int64_t N = 8;
  static R splat(float v) { return _mm256_set1_ps(v); }
  static R fmadd(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  // AVX2 has no shift across a whole register: mid is the upper half of
  // prev with the lower half of cur (one VPERM2F128 for all windows), then
  // a VPALIGNR within each 128-bit lane per window.
  struct Windows {
    R mid, cur;
    template <int kBack>
    R back() const {
      return _mm256_castsi256_ps(
          _mm256_alignr_epi8(_mm256_castps_si256(cur), _mm256_castps_si256(mid), 16 - 4 * kBack));
    }
  };
  static Windows windows(R prev, R cur) { return {_mm256_permute2f128_ps(prev, cur, 0x21), cur}; }
  static R top4(float a, float b, float c, float d) {
    return _mm256_insertf128_ps(_mm256_setzero_ps(), _mm_setr_ps(a, b, c, d), 1);
  }
};

// The last n (0 < n < 8) fp16/bf16 values of a row as fp32 lanes (the
// others zero), and back. AVX2 has no 16-bit masked moves, and at::vec's
// partial ones go through memcpy calls and a buffer: here the pairs are one
// masked 32-bit move, an odd last value a blend or a scalar store.
template <typename X>
struct HalfTail {
  static __m128i pairs(int64_t n) {
    return _mm_cmpgt_epi32(_mm_set1_epi32(static_cast<int>(n / 2)), _mm_setr_epi32(0, 1, 2, 3));
  }
  static __m256 load(const X* p, int64_t n) {
    __m128i v = _mm_maskload_epi32(reinterpret_cast<const int*>(p), pairs(n));
    if (n % 2) {
      const __m128i at = _mm_cmpeq_epi16(_mm_setr_epi16(0, 1, 2, 3, 4, 5, 6, 7),
                                         _mm_set1_epi16(static_cast<int16_t>(n - 1)));
      v = _mm_blendv_epi8(v, _mm_set1_epi16(static_cast<int16_t>(p[n - 1].x)), at);
    }
    if constexpr (std::is_same_v<X, c10::BFloat16>) {
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
    } else {
      return _mm256_cvtph_ps(v);
    }
  }
  static void store(X* p, const Vec<float>& a, int64_t n) {
    const __m128i v = _mm256_castsi256_si128(narrow<X>(a, a));  // rounded as every store
    _mm_maskstore_epi32(reinterpret_cast<int*>(p), pairs(n), v);
    if (n % 2) {
      alignas(16) uint16_t bits[8];
      _mm_store_si128(reinterpret_cast<__m128i*>(bits), v);
      p[n - 1].x = bits[n - 1];
    }
  }
};
#else  // aarch64: every tier's at::vec is 128-bit NEON
struct Slide {
  using R = float32x4_t;
  static constexpr int64_t N = 4;
  static R splat(float v) { return vdupq_n_f32(v); }
  static R fmadd(R a, R b, R c) { return vfmaq_f32(c, a, b); }
  struct Windows {  // one EXT per window
    R prev, cur;
    template <int kBack>
    R back() const { return vextq_f32(prev, cur, N - kBack); }
  };
  static Windows windows(R prev, R cur) { return {prev, cur}; }
  static R top4(float a, float b, float c, float d) {
    return vsetq_lane_f32(d, vsetq_lane_f32(c, vsetq_lane_f32(b, vdupq_n_f32(a), 1), 2), 3);
  }
};
#endif

// A row's last n < N values as fp32 lanes (the others zero), and back.
template <typename X>
Vec<float> load_tail(const X* p, int64_t n) {
#if defined(CPU_CAPABILITY_AVX2)
  if constexpr (!VecIO<X>::kWide) return HalfTail<X>::load(p, n);
#endif
  return VecIO<X>::load1(p, n);
}
template <typename X>
void store_tail(X* p, const Vec<float>& a, int64_t n) {
#if defined(CPU_CAPABILITY_AVX2)
  if constexpr (!VecIO<X>::kWide) return HalfTail<X>::store(p, a, n);
#endif
  VecIO<X>::store1(p, a, n);
}

// dst[i] = act(bias + sum_k w[k] * x[t + i - (W-1) + k]) for i < n,
// reading the row's inputs xr in place (and for t = 0 the initial state
// init, stride init_s2, or zeros); a last partial vector reads and writes
// only its n % N elements, so a row's tail needs no staging. Each step
// loads the next N inputs once and cuts the W-1 earlier windows from them
// and the previous N with shuffles, instead of the W unaligned loads (all
// but one crossing a cache line) of row_span: the load ports were what
// bounded row_span, and the shuffles go to otherwise idle ones.
template <int WC, typename X>
void row_slide(const RowTaps<float>& tp, bool silu, const X* xr, const X* init, int64_t init_s2,
               X* dst, int64_t t, int64_t n) {
  using IO = VecIO<X>;
  using R = Slide::R;
  constexpr int64_t N = Slide::N;
  static_assert(kLanes<float> == N);
  R w[WC];
  for (int k = 0; k < WC; ++k) w[k] = Slide::splat(tp.w[k]);
  const R bias = Slide::splat(tp.bias);
  // Tap W-1-k reads the inputs k positions back.
  auto outputs = [&](R prev, R cur) {
    const Slide::Windows win = Slide::windows(prev, cur);
    R a = Slide::fmadd(w[WC - 1], cur, bias);
    if constexpr (WC >= 2) a = Slide::fmadd(w[WC - 2], win.template back<1>(), a);
    if constexpr (WC >= 3) a = Slide::fmadd(w[WC - 3], win.template back<2>(), a);
    if constexpr (WC >= 4) a = Slide::fmadd(w[WC - 4], win.template back<3>(), a);
    Vec<float> out(a);
    return silu ? silu_vec<X>(out) : out;
  };
  // The N inputs before t. At t = 0 not from a buffer written value by
  // value: a vector load of it would wait for those stores to retire (they
  // cannot be forwarded to it), once per row.
  R prev = Slide::splat(0.f);
  if (t > 0) {
    prev = IO::load1(xr + t - N, N);
  } else if (init) {
    static_assert(WC - 1 <= 4, "the look-back fits top4's lanes");
    auto at = [&](int pos) {  // pos < 0: the initial state's column W-1+pos
      return pos >= -(WC - 1) ? static_cast<float>(init[(WC - 1 + pos) * init_s2]) : 0.f;
    };
    prev = Slide::top4(at(-4), at(-3), at(-2), at(-1));
  }
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    const R cur = IO::load1(xr + t + i, N);
    IO::store1(dst + i, outputs(prev, cur), N);
    prev = cur;
  }
  if (i < n) store_tail<X>(dst + i, outputs(prev, load_tail<X>(xr + t + i, n - i)), n - i);
}
#endif

// Outputs t0 .. t0+n-1 of row (b, d). buf: kRowBlock + kMaxWidthCpu + S elements.
template <int WC, typename X>
void row_task(const Ctx<X>& c, int64_t b, int64_t d, int64_t t0, int64_t n, acc_t<X>* buf) {
  constexpr int64_t S = Ctx<X>::S;
  const ConvParams& p = c.p;
  const int64_t W = WC > 0 ? WC : c.W;
  RowTaps<acc_t<X>> tp;
  for (int64_t k = 0; k < W; ++k) tp.w[k] = c.w[k * c.Dpad + d];
  tp.bias = c.bias[d];
  const X* xr = ptr<X>(p.x) + b * p.x.s0 + d * p.x.s1;
  X* orow = ptr<X>(p.out) + b * p.out.s0 + d * p.out.s1;
  const X* init = c.init_row(b, d);
  const int32_t* sr = c.seq_row(b);
  const uint8_t* run = sr ? c.run.data() + b * c.L : nullptr;
  auto span = [&](const acc_t<X>* src, int64_t t, int64_t m) {
    row_span<WC, X>(c, tp, src, orow + t, t, m, sr, run);
  };
  auto staged = [&](int64_t t, int64_t m) {
    stage_row<X>(buf, xr, init, p.initial_states.s2, W, t - (W - 1), m + W - 1);
    span(buf, t, m);
  };
  if constexpr (kSlides<WC, X>) {
    if (!sr && c.L <= kSlideRowMax<X>) {
      // In place, the tail too. A row's first vector looks back at the
      // initial state (or zeros) in a register instead of going through the
      // staging buffer, whose setup per row weighed on short rows. (t0 is 0
      // or a multiple of kRowBlock, so the staged head serves other block
      // sizes only.)
      constexpr int64_t N = kLanes<float>;
      const int64_t head = t0 > 0 && t0 < N ? std::min(n, N - t0) : 0;
      if (head > 0) staged(t0, head);
      const int64_t m = n - head;
      if (m > 0)
        row_slide<WC, X>(tp, p.silu, xr, init, p.initial_states.s2, orow + t0 + head, t0 + head, m);
      return;
    }
  }
  if constexpr (VecIO<X>::kWide) {
    // x already holds the compute type: read it in place, staging only the
    // head (positions < 0 come from the initial state) and the tail.
    int64_t i = 0;
    if (t0 < W - 1) {
      i = std::min(n, ceil_div(W - 1, S) * S);
      staged(t0, i);
    }
    const int64_t m = (n - i) / S * S;
    if (m > 0) span(xr + t0 + i - (W - 1), t0 + i, m);
    i += m;
    if (i < n) staged(t0 + i, n - i);
  } else {
    staged(t0, n);
  }
}

template <int WC, typename X>
void fwd_rows(const Ctx<X>& c) {
  using A = acc_t<X>;
  const int64_t nblk = ceil_div(c.L, kRowBlock);
  const int64_t grain = std::max<int64_t>(1, kTaskWork / std::min(c.L, kRowBlock));
  const bool fin = c.p.final_states.given();
  at::parallel_for(0, c.B * c.D * nblk, grain, [&](int64_t u0, int64_t u1) {
    alignas(64) A buf[kRowBlock + kMaxWidthCpu + Ctx<X>::S];
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t row = u / nblk, blk = u % nblk;
      const int64_t b = row / c.D, d = row % c.D;
      const int64_t t0 = blk * kRowBlock;
      row_task<WC, X>(c, b, d, t0, std::min(kRowBlock, c.L - t0), buf);
      if (fin && blk == nblk - 1) write_final_state<X>(c.p, b, d);
    }
  });
}

// ---- channels: x and out contiguous along d -----------------------------------
//
// A task is a tile of kChanBlock tokens x `span` channels of one batch row
// (all D channels, unless that leaves too few tasks: whole rows keep memory
// in order, and a span's taps and history stay in cache). The tile is walked
// kChanGroup tokens at a time; for each group, the channels are swept one
// vector at a time with the group's inputs and the W-1 before them in
// registers, so taps are loaded once per group. The W-1 inputs before a
// group are read again from x, where the previous group just loaded them
// (still in cache), except those before the tile's first token: `hist` holds
// those, (W-1) rows of `span` channels, row i the input at t0 - (W-1) + i,
// primed once per tile (a scratch buffer carried from group to group would
// cost a store per input and a store-to-load dependency per group). Groups
// of 4 measured best: fewer reload taps too often, more stream too many rows
// of memory at once.

// hist row for position pos, from x, the initial state or zeros: primes a tile.
template <typename X>
void fill_hist_row(const Ctx<X>& c, acc_t<X>* row, int64_t b, int64_t pos, int64_t d0,
                   int64_t nd) {
  using A = acc_t<X>;
  const ConvParams& p = c.p;
  if (pos >= 0) {
    const X* xr = ptr<X>(p.x) + b * p.x.s0 + pos * p.x.s2 + d0;
    VecIO<X>::load_row(xr, 1, row, nd);
  } else if (p.initial_states.given()) {
    const X* ir = ptr<X>(p.initial_states) + b * p.initial_states.s0 +
                  (c.W - 1 + pos) * p.initial_states.s2 + d0 * p.initial_states.s1;
    VecIO<X>::load_row(ir, p.initial_states.s1, row, nd);
  } else {
    std::fill(row, row + nd, A(0));
  }
}

// Where one channels task reads and writes.
template <typename X>
struct ChanTile {
  const X* x;       // channel j at position t: x[t * xs + j]
  X* out;           // likewise with os
  int64_t xs, os;
  int64_t t0;       // the tile's first token
  int64_t nd;       // channels in the tile
  const acc_t<X>* w;     // tap k of channel j: w[k * Dpad + j]
  const acc_t<X>* bias;  // bias[j]
  const acc_t<X>* hist;  // (W-1, span): the inputs at t0 - (W-1) .. t0 - 1
  int64_t span;
};

// Tokens tg .. tg+T-1 of a tile. Masked (seq_idx): tap k of token i counts
// only when use[i][k]; pad[i] marks padding tokens (output 0). One vector of
// channels at a time: with two, the windows, taps and silu's constants would
// not fit in the registers. Always inlined: out of line (as GCC left it
// for bf16 once the prefetches below grew it) the sweep ran slower.
template <int WC, int T, bool Masked, typename X>
__attribute__((always_inline)) inline void chan_group(const Ctx<X>& c, const ChanTile<X>& g,
                                                      int64_t tg, int64_t end,
                                                      const bool (*use)[kMaxWidthCpu],
                                                      const bool* pad) {
  using A = acc_t<X>;
  using V = Vec<A>;
  using IO = VecIO<X>;
  constexpr int64_t N = Ctx<X>::N;
  constexpr int64_t RK = WC > 0 ? WC - 1 : kMaxWidthCpu - 1;  // capacity for W-1
  const int64_t W = WC > 0 ? WC : c.W;
  const int64_t R = W - 1;
  const bool silu = c.p.silu;
  // Asks for the next group's rows of x and out a sweep ahead, one cache
  // line at a time: each group reads T new rows and writes T, streams too
  // short for the hardware prefetchers to pick up early (on Zen 4 the
  // loads of the new rows waited on memory, and stores on their lines).
  const bool ahead = tg + 2 * T <= end;
  for (int64_t j = 0; j < g.nd; j += N) {
    const int64_t cnt = std::min(N, g.nd - j);
    if (ahead && (j * int64_t(sizeof(X))) % 64 == 0) {
      for (int64_t i = T; i < 2 * T; ++i) {
        prefetch_line(g.x + (tg + i) * g.xs + j, false);
        prefetch_line(g.out + (tg + i) * g.os + j, true);
      }
    }
    VecArray<V, RK + T> h;  // h[i]: the input at tg - (W-1) + i
    for (int64_t i = 0; i < R; ++i) {
      const int64_t pos = tg - R + i;
      h[i] = pos >= g.t0 ? IO::load1(g.x + pos * g.xs + j, cnt)
                         : V::loadu(g.hist + (pos - g.t0 + R) * g.span + j);
    }
    for (int64_t i = 0; i < T; ++i) h[R + i] = IO::load1(g.x + (tg + i) * g.xs + j, cnt);
    VecArray<V, RK + 1> w;
    for (int64_t k = 0; k < W; ++k) w[k] = V::loadu(g.w + k * c.Dpad + j);
    const V bias = V::loadu(g.bias + j);
    for (int64_t i = 0; i < T; ++i) {
      V a = bias;
      for (int64_t k = 0; k < W; ++k) {
        if (Masked && !use[i][k]) continue;
        a = at::vec::fmadd(w[k], h[i + k], a);
      }
      if (silu) a = silu_vec<X>(a);
      if (Masked && pad[i]) a = V(0);
      IO::store1(g.out + (tg + i) * g.os + j, a, cnt);
    }
  }
}

// Outputs t0 .. t0+n-1 of channels d0 .. d0+nd-1 of batch b.
template <int WC, typename X>
void chan_task(const Ctx<X>& c, int64_t b, int64_t t0, int64_t n, int64_t d0, int64_t nd,
               acc_t<X>* hist, int64_t span) {
  constexpr int64_t G = kChanGroup;
  const ConvParams& p = c.p;
  const int64_t W = WC > 0 ? WC : c.W;
  const int64_t R = W - 1;
  const ChanTile<X> g{ptr<X>(p.x) + b * p.x.s0 + d0, ptr<X>(p.out) + b * p.out.s0 + d0,
                      p.x.s2, p.out.s2, t0, nd, c.w.data() + d0, c.bias.data() + d0, hist, span};
  for (int64_t i = 0; i < R; ++i) fill_hist_row(c, hist + i * span, b, t0 - R + i, d0, nd);
  const int32_t* sr = c.seq_row(b);
  const uint8_t* run = sr ? c.run.data() + b * c.L : nullptr;
  const int64_t ss = p.seq_idx.s1;
  bool use[G][kMaxWidthCpu];
  bool pad[G];
  const int64_t end = t0 + n;
  for (int64_t tg = t0; tg < end;) {
    const int64_t T = end - tg >= G ? G : 1;
    // Does a segment start (or padding lie) within reach of these tokens?
    bool masked = false;
    for (int64_t i = 0; sr && i < T; ++i) masked |= run[tg + i] < R || sr[(tg + i) * ss] < 0;
    if (masked) {
      for (int64_t i = 0; i < T; ++i) {
        const int64_t t = tg + i;
        const int32_t id = sr[t * ss];
        pad[i] = id < 0;
        for (int64_t k = 0; k < W; ++k) {
          const int64_t pos = t - R + k;
          use[i][k] = id >= 0 && (pos >= 0 ? sr[pos * ss] : sr[0]) == id;
        }
      }
    }
    if (T == G) {
      if (masked) chan_group<WC, G, true, X>(c, g, tg, end, use, pad);
      else chan_group<WC, G, false, X>(c, g, tg, end, use, pad);
    } else {
      if (masked) chan_group<WC, 1, true, X>(c, g, tg, end, use, pad);
      else chan_group<WC, 1, false, X>(c, g, tg, end, use, pad);
    }
    tg += T;
  }
  if (p.final_states.given() && end == c.L)
    for (int64_t j = 0; j < nd; ++j) write_final_state<X>(p, b, d0 + j);
}

template <int WC, typename X>
void fwd_channels(const Ctx<X>& c) {
  using A = acc_t<X>;
  constexpr int64_t S = Ctx<X>::S;
  // Split D only when there are too few tiles of tokens to share out. The
  // split depends on the shape alone, and no output depends on it.
  const int64_t nt = ceil_div(c.L, kChanBlock);
  const int64_t split = std::clamp<int64_t>(ceil_div(kChanTasks, c.B * nt), 1, ceil_div(c.D, 4 * S));
  const int64_t span = ceil_div(ceil_div(c.D, split), S) * S;
  const int64_t ndr = ceil_div(c.D, span);
  const int64_t tile = std::min(c.L, kChanBlock) * std::min(c.D, span);
  const int64_t grain = std::max<int64_t>(1, kTaskWork / tile);
  at::parallel_for(0, c.B * nt * ndr, grain, [&](int64_t u0, int64_t u1) {
    std::vector<A> hist(std::max<int64_t>(c.W - 1, 1) * span);
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t dr = u % ndr, tb = (u / ndr) % nt, b = u / (ndr * nt);
      const int64_t t0 = tb * kChanBlock, d0 = dr * span;
      chan_task<WC, X>(c, b, t0, std::min(kChanBlock, c.L - t0), d0, std::min(span, c.D - d0),
                       hist.data(), span);
    }
  });
}

// ---- short rows: x and out contiguous along L, few tokens ----------------------
//
// A rows task pays a fixed cost per row (its taps, its first window, whole
// vectors for a few outputs) that a short row cannot amortize. Short rows
// are instead copied, kShortSpan channels at a time, into a tile laid out
// as the channels path reads it (token t of channel j at t * kShortSpan + j,
// raw X values), run through chan_group, and their outputs copied back: a
// few scalar moves per value in place of that fixed cost per row.
template <int WC, typename X>
void fwd_short_rows(const Ctx<X>& c) {
  using A = acc_t<X>;
  constexpr int64_t K = kShortSpan, G = kChanGroup;
  const ConvParams& p = c.p;
  const int64_t W = WC > 0 ? WC : c.W, R = W - 1;
  const int64_t nblk = ceil_div(c.D, K);
  const int64_t grain = std::max<int64_t>(1, kTaskWork / (K * c.L));
  at::parallel_for(0, c.B * nblk, grain, [&](int64_t u0, int64_t u1) {
    std::vector<X> tile_x(c.L * K), tile_out(c.L * K);
    std::vector<A> hist(std::max<int64_t>(R, 1) * K);
    bool use[G][kMaxWidthCpu];  // unread: no seq_idx here
    bool pad[G];
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t b = u / nblk, d0 = (u % nblk) * K, nd = std::min(K, c.D - d0);
      for (int64_t j = 0; j < nd; ++j) {
        const X* xr = ptr<X>(p.x) + b * p.x.s0 + (d0 + j) * p.x.s1;
        for (int64_t t = 0; t < c.L; ++t) tile_x[t * K + j] = xr[t];
        const X* init = c.init_row(b, d0 + j);
        for (int64_t i = 0; i < R; ++i) hist[i * K + j] = init ? A(init[i * p.initial_states.s2]) : A(0);
      }
      const ChanTile<X> g{tile_x.data(), tile_out.data(), K, K, 0, nd,
                          c.w.data() + d0, c.bias.data() + d0, hist.data(), K};
      for (int64_t tg = 0; tg < c.L;) {
        if (c.L - tg >= G) {
          chan_group<WC, G, false, X>(c, g, tg, c.L, use, pad);
          tg += G;
        } else {
          chan_group<WC, 1, false, X>(c, g, tg, c.L, use, pad);
          tg += 1;
        }
      }
      for (int64_t j = 0; j < nd; ++j) {
        X* orow = ptr<X>(p.out) + b * p.out.s0 + (d0 + j) * p.out.s1;
        for (int64_t t = 0; t < c.L; ++t) orow[t] = tile_out[t * K + j];
        if (p.final_states.given()) write_final_state<X>(p, b, d0 + j);
      }
    }
  });
}

}  // namespace fwd_fast

template <typename X, typename Wt>
void fwd_typed(const ConvParams& p) {
  const bool rows_ok = p.x.s2 == 1 && p.out.s2 == 1;
  const bool chans_ok = p.x.s1 == 1 && p.out.s1 == 1;
  if (p.seqlen == 0 || (!rows_ok && !chans_ok)) return fwd_generic<X, Wt>(p);
  // Both layouts at once only when D == 1 or L == 1: vectorize the longer one.
  const bool rows = rows_ok && !(chans_ok && p.dim > p.seqlen);
  fwd_fast::Ctx<X> c(p);
  fwd_fast::load_taps<X, Wt>(c);
  if (p.seq_idx.given()) fwd_fast::find_runs(c);
  dispatch_width(p.width, [&]<int WC>() {
    if (rows && p.seqlen <= fwd_fast::kShortRowCut<WC, X> && !p.seq_idx.given()) {
      fwd_fast::fwd_short_rows<WC, X>(c);
    } else if (rows) {
      fwd_fast::fwd_rows<WC, X>(c);
    } else {
      fwd_fast::fwd_channels<WC, X>(c);
    }
  });
}

inline void fwd(const ConvParams& p) {
  dispatch_dtypes(p.x_dtype, p.weight_dtype, [&]<typename X, typename Wt>() {
    // checks.cpp pairs fp64 only with fp64; the other mixes never arrive.
    if constexpr (std::is_same_v<X, double> == std::is_same_v<Wt, double>) {
      fwd_typed<X, Wt>(p);
    } else {
      fwd_generic<X, Wt>(p);
    }
  });
}

}  // namespace causal_conv1d::cpu::CPU_CAPABILITY
