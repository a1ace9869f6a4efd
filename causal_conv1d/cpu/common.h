// Shared by the CPU kernels: dtype dispatch, element access, activation.
// Compiled once per tier (through kernels.h), inside cpu::CPU_CAPABILITY.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include "../params.h"
#include "tiers.h"

#ifndef CPU_CAPABILITY
#error "compile kernels.h through a tier_*.cpp file with CPU_CAPABILITY defined"
#endif

namespace causal_conv1d::cpu::CPU_CAPABILITY {

// ---------------------------------------------------------------------------
// dtypes

// Arithmetic type: fp64 for fp64 inputs, fp32 otherwise.
template <typename X> using acc_t = std::conditional_t<std::is_same_v<X, double>, double, float>;

// The one switch over DType in the CPU kernels: calls
// f.template operator()<T>() with T the element type of t.
template <typename F>
void dispatch_dtype(DType t, F&& f) {
  switch (t) {
    case DType::Float32: return f.template operator()<float>();
    case DType::Float16: return f.template operator()<c10::Half>();
    case DType::BFloat16: return f.template operator()<c10::BFloat16>();
    case DType::Float64: return f.template operator()<double>();
  }
}

// Calls f.template operator()<X, Wt>() for the runtime dtypes of x and weight.
template <typename F>
void dispatch_dtypes(DType x, DType w, F&& f) {
  dispatch_dtype(x, [&]<typename X>() {
    dispatch_dtype(w, [&]<typename Wt>() { f.template operator()<X, Wt>(); });
  });
}

// Widths with an unrolled kernel (WC = W) and the rest (WC = 0, the
// any-width kernel): calls f.template operator()<WC>().
template <typename F>
void dispatch_width(int64_t W, F&& f) {
  switch (W) {
    case 1: return f.template operator()<1>();
    case 2: return f.template operator()<2>();
    case 3: return f.template operator()<3>();
    case 4: return f.template operator()<4>();
    default: return f.template operator()<0>();
  }
}

template <typename T> inline T* ptr(const Strided& v) { return static_cast<T*>(v.data); }

// n vectors, left unset. at::vec's Vectorized zeroes itself when default
// constructed, so an array of them declared in a loop over channels is
// zeroed on every pass: for the any-width kernels' arrays, sized for
// W = 32, that took longer than the arithmetic.
template <typename V, int64_t n>
struct VecArray {
  union {
    V at[n];
  };
  VecArray() {}
  V& operator[](int64_t i) { return at[i]; }
  const V& operator[](int64_t i) const { return at[i]; }
};

template <typename A> inline A silu(A v) { return v / (A(1) + std::exp(-v)); }

// ---------------------------------------------------------------------------
// SIMD (at::vec, so one source serves every tier): Vec<A> holds kLanes<A>
// accumulators; VecIO<X> moves them from/to memory of the x dtype, widening
// fp16/bf16 to fp32 on load and rounding back on store.

template <typename A> using Vec = at::vec::Vectorized<A>;
template <typename A> constexpr int64_t kLanes = Vec<A>::size();

inline float exp_scalar(float v) { return std::exp(v); }
inline double exp_scalar(double v) { return std::exp(v); }

// silu(v) = v / (1 + e^-v) in fp32 with AVX-512 / AVX2. One implementation
// for every op, in two precisions: kFull for fp32 results (relative error
// below 7e-6, measured over [-88, 88]), and for results rounded to fp16/bf16
// a cheaper one on AVX-512 (below 1.2e-4, under a quarter of an fp16 ulp)
// that the 16-bit stores hide.
//
// AVX-512: e^-v = 2^t with t = -v log2(e) = floor(t) + f, f in [0, 1) from
// one VREDUCEPS; 2^f is a polynomial in f fitted for relative error (degree
// 4, or 3 for 16-bit results) and VSCALEFPS applies 2^floor(t). 1 / (1 + e)
// is a division for fp32 results and VRCP14PS (2^-14) for 16-bit ones. Nine
// instructions, no range clamps: the non-finite cases come out right by
// themselves: t = +-inf gives f = 0 and 2^t = inf or 0, so silu(-inf) =
// -inf / inf = NaN as in the reference, silu(+inf) = inf / 1, large
// negative v give -0 and NaN stays NaN.
// AVX2 has neither instruction: t is clamped to [-126, 128], f in [-1/2,
// 1/2] comes from a rounding and 2^n is built in the exponent field (2^128
// is +inf, the overflow the division relies on); both precisions divide
// (VRCPPS's 2^-12 would cost fp16 results an ulp now and then).
// aarch64 (every tier: at::vec is NEON there) computes the AVX2 way with
// the NEON equivalents (FRINTN rounds to nearest even like VROUNDPS).
enum class SiluPrecision { kFull, kHalf };

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2) || defined(__aarch64__)
namespace silu_poly {
constexpr float kMinusLog2e = -1.44269504088896341f;
#if defined(CPU_CAPABILITY_AVX512)
// 2^f on [0, 1), highest degree first.
constexpr float kFull[] = {0x1.bb7c40p-7f, 0x1.aa13f2p-5f, 0x1.ee7998p-3f, 0x1.62d164p-1f,
                           0x1.00002cp+0f};
constexpr float kHalf[] = {0x1.3f95e2p-4f, 0x1.cefc24p-3f, 0x1.644468p-1f, 0x1.fff62ep-1f};
#else
// 2^f on [-1/2, 1/2], highest degree first.
constexpr float kFull[] = {0x1.3997d4p-7f, 0x1.ca1442p-5f, 0x1.ec06dap-3f, 0x1.62e0dcp-1f,
                           0x1.ffffe8p-1f};
#endif
}  // namespace silu_poly
#endif

// d = 1 + e^-v per lane: silu(v) = v / d and sigmoid(v) = 1 / d.
template <SiluPrecision P>
inline Vec<float> one_plus_exp_neg(const Vec<float>& v) {
#if defined(CPU_CAPABILITY_AVX512)
  constexpr bool kFull = P == SiluPrecision::kFull;
  const __m512 t = _mm512_mul_ps(v, _mm512_set1_ps(silu_poly::kMinusLog2e));
  const __m512 f = _mm512_reduce_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);  // t - floor(t)
  const float* c = kFull ? silu_poly::kFull : silu_poly::kHalf;
  constexpr int kDegree = kFull ? 4 : 3;
  __m512 q = _mm512_set1_ps(c[0]);
  for (int k = 1; k <= kDegree; ++k) q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(c[k]));
  return Vec<float>(_mm512_add_ps(_mm512_set1_ps(1.f), _mm512_scalef_ps(q, t)));  // 1 + 2^f 2^floor(t)
#elif defined(CPU_CAPABILITY_AVX2)
  const float* c = silu_poly::kFull;
  __m256 t = _mm256_mul_ps(v, _mm256_set1_ps(silu_poly::kMinusLog2e));
  t = _mm256_min_ps(_mm256_max_ps(t, _mm256_set1_ps(-126.f)), _mm256_set1_ps(128.f));
  const __m256 n = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(t, n);
  __m256 q = _mm256_set1_ps(c[0]);
  for (int k = 1; k <= 4; ++k) q = _mm256_fmadd_ps(q, f, _mm256_set1_ps(c[k]));
  const __m256i p2 = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return Vec<float>(_mm256_fmadd_ps(q, _mm256_castsi256_ps(p2), _mm256_set1_ps(1.f)));  // 1 + q 2^n
#elif defined(__aarch64__)
  const float* c = silu_poly::kFull;
  float32x4_t t = vmulq_n_f32(v, silu_poly::kMinusLog2e);
  t = vminq_f32(vmaxq_f32(t, vdupq_n_f32(-126.f)), vdupq_n_f32(128.f));
  const float32x4_t n = vrndnq_f32(t);
  const float32x4_t f = vsubq_f32(t, n);
  float32x4_t q = vdupq_n_f32(c[0]);
  for (int k = 1; k <= 4; ++k) q = vfmaq_f32(vdupq_n_f32(c[k]), q, f);  // c[k] + q f
  const int32x4_t p2 = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
  return Vec<float>(vfmaq_f32(vdupq_n_f32(1.f), q, vreinterpretq_f32_s32(p2)));  // 1 + q 2^n
#else
  // Portable tier: std::exp per lane (no dependency on the Sleef symbols
  // inside libtorch_cpu).
  return Vec<float>(1) + v.neg().map(exp_scalar);
#endif
}

template <SiluPrecision P>
inline Vec<float> silu_fp32(const Vec<float>& v) {
  const Vec<float> d = one_plus_exp_neg<P>(v);
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (P == SiluPrecision::kHalf) return Vec<float>(_mm512_mul_ps(v, _mm512_rcp14_ps(d)));
#endif
  return v / d;
}

// silu of accumulators whose results are stored as X: fp32 math for
// fp32/fp16/bf16 (16-bit results take the cheaper precision), fp64 for fp64.
template <typename X>
inline Vec<acc_t<X>> silu_vec(const Vec<acc_t<X>>& v) {
  if constexpr (std::is_same_v<acc_t<X>, float>) {
    return silu_fp32<sizeof(X) == 2 ? SiluPrecision::kHalf : SiluPrecision::kFull>(v);
  } else {
    return v / (Vec<double>(1) + v.neg().map(exp_scalar));
  }
}

// sigmoid(v) = 1 / (1 + exp(-v)) at full precision of the accumulator type
// A (the backward's silu').
template <typename A>
inline Vec<A> sigmoid_vec(const Vec<A>& v) {
  if constexpr (std::is_same_v<A, float>) {
    return Vec<float>(1) / one_plus_exp_neg<SiluPrecision::kFull>(v);
  } else {
    return Vec<double>(1) / (Vec<double>(1) + v.neg().map(exp_scalar));
  }
}

// Rounding of fp32 lanes to fp16/bf16 (nearest even), for every store of a
// 16-bit result. In the avx512_bf16 tier bf16 takes one VCVTNE2PS2BF16 in
// place of ATen's eight-instruction emulation; like every AVX512_BF16
// conversion it flushes fp32 subnormals (below 1.2e-38) to zero.
template <typename X>
inline Vec<X> narrow(const Vec<float>& lo, const Vec<float>& hi) {
#if defined(CAUSAL_CONV1D_AVX512_BF16)
  if constexpr (std::is_same_v<X, c10::BFloat16>) {
    return Vec<X>(reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo)));  // lo in the low half
  }
#endif
  return at::vec::convert_from_float<X>(lo, hi);
}

// Every move of values between memory of type X (the x dtype, or a buffer
// already of the accumulator type) and accumulators: loads widen fp16/bf16
// to fp32, stores round back through narrow<X>; fp32/fp64 move as they are.
// Each function reads and writes exactly the n elements it is given, never
// memory past them (a partial vector holds zeros past n).
template <typename X>
struct VecIO {
  using A = acc_t<X>;
  using V = Vec<A>;
  static constexpr int64_t N = kLanes<A>;
  static constexpr bool kWide = std::is_same_v<X, A>;  // no conversion needed

  // One vector from the first n (0 < n <= N) elements at p; other lanes zero.
  static V load1(const X* p, int64_t n) {
    if constexpr (kWide) {
      return n == N ? V::loadu(p) : V::loadu(p, n);
    } else {
      V a;
      if (n == N) {
        at::vec::load_to_float<X>(p, a);
      } else {
        a = std::get<0>(at::vec::convert_to_float<X>(Vec<X>::loadu(p, n)));
      }
      return a;
    }
  }
  // The first n (0 < n <= N) lanes of a to p.
  static void store1(X* p, const V& a, int64_t n) {
    if constexpr (kWide) {
      if (n == N) {
        a.store(p);
      } else {
        a.store(p, n);
      }
    } else {
      const Vec<X> h = narrow<X>(a, a);
      if (n == N) {
        h.store(p, N);
      } else {
        h.store(p, n);
      }
    }
  }
  // Two vectors (2N elements) from p.
  static void load2(const X* p, V& a, V& b) {
    if constexpr (kWide) {
      a = V::loadu(p);
      b = V::loadu(p + N);
    } else {
      at::vec::load_to_float<X>(p, a, b);
    }
  }
  // The first n (0 <= n <= 2N) elements from p; the other lanes are zero.
  static void load2(const X* p, int64_t n, V& a, V& b) {
    if constexpr (kWide) {
      if (n == 2 * N) return load2(p, a, b);
      a = V::loadu(p, std::min(n, N));
      b = n > N ? V::loadu(p + N, n - N) : V(A(0));
    } else {
      // One conversion for whole and partial vectors: half the code where
      // this is inlined (ChannelBlock's loads).
      std::tie(a, b) =
          at::vec::convert_to_float<X>(n == 2 * N ? Vec<X>::loadu(p) : Vec<X>::loadu(p, n));
    }
  }
  static void store2(X* p, const V& a, const V& b) {
    if constexpr (kWide) {
      a.store(p);
      b.store(p + N);
    } else {
      narrow<X>(a, b).store(p);
    }
  }
  // The first n (0 <= n <= 2N) elements of (a, b) to p.
  static void store2(X* p, const V& a, const V& b, int64_t n) {
    if (n == 2 * N) return store2(p, a, b);
    if constexpr (kWide) {
      a.store(p, std::min(n, N));
      if (n > N) b.store(p + N, n - N);
    } else {
      narrow<X>(a, b).store(p, n);
    }
  }

  // A strided row of X to a dense buffer of A: dst[i] = src[i * stride]
  // for i < n. Contiguous rows are a plain copy when X is A; otherwise they
  // go by vector pairs (one Vec<X> of fp16/bf16), their last n % 2N
  // elements by single vectors, the last one partial, so the tail is
  // converted like the body.
  static void load_row(const X* src, int64_t stride, A* dst, int64_t n) {
    if (stride != 1) {
      for (int64_t i = 0; i < n; ++i) dst[i] = A(src[i * stride]);
    } else if constexpr (kWide) {
      std::memcpy(dst, src, n * sizeof(A));
    } else {
      int64_t i = 0;
      for (; i + 2 * N <= n; i += 2 * N) {
        V a, b;
        load2(src + i, a, b);
        a.store(dst + i);
        b.store(dst + i + N);
      }
      for (; i < n; i += N) {
        const int64_t m = std::min(N, n - i);
        load1(src + i, m).store(dst + i, m);
      }
    }
  }
  // And back: dst[i * stride] = src[i] for i < n, rounded to X.
  static void store_row(const A* src, X* dst, int64_t stride, int64_t n) {
    if (stride != 1) {
      for (int64_t i = 0; i < n; ++i) dst[i * stride] = X(src[i]);
    } else if constexpr (kWide) {
      std::memcpy(dst, src, n * sizeof(A));
    } else {
      int64_t i = 0;
      for (; i + 2 * N <= n; i += 2 * N) store2(dst + i, V::loadu(src + i), V::loadu(src + i + N));
      for (; i < n; i += N) {
        const int64_t m = std::min(N, n - i);
        store1(dst + i, V::loadu(src + i, m), m);
      }
    }
  }
};

// ---------------------------------------------------------------------------
// Prefetching.

// Asks for the cache line holding p, to read or to write. Assembly rather
// than __builtin_prefetch: GCC deletes a loop whose body is nothing but that
// builtin in some shapes (prefetch_row's early return was enough), with no
// warning, and a volatile asm statement is never deleted.
inline void prefetch_line(const void* p, bool write) {
  const char* c = static_cast<const char*>(p);
#if defined(__x86_64__)
  if (write)
    asm volatile("prefetchw %0" : : "m"(*c));  // a no-op where the CPU lacks it
  else
    asm volatile("prefetcht0 %0" : : "m"(*c));
#elif defined(__aarch64__)
  if (write)
    asm volatile("prfm pstl1keep, [%0]" : : "r"(c));
  else
    asm volatile("prfm pldl1keep, [%0]" : : "r"(c));
#else
  __builtin_prefetch(c, write ? 1 : 0);
#endif
}

// Asks for the cache line holding p into L2 only, to read: for lines wanted
// a whole task later, which in L1 would evict the current task's.
inline void prefetch_line_l2(const void* p) {
  const char* c = static_cast<const char*>(p);
#if defined(__x86_64__)
  asm volatile("prefetcht1 %0" : : "m"(*c));
#elif defined(__aarch64__)
  asm volatile("prfm pldl2keep, [%0]" : : "r"(c));
#else
  __builtin_prefetch(c, 0, 2);
#endif
}

// Asks for the cache lines of n elements at p (contiguous rows only), so that
// memory is read while the previous rows compute: a task's buffered loads and
// stores alone leave the core nothing to overlap with them.
template <typename T>
inline void prefetch_row(const T* p, int64_t stride, int64_t n, bool write) {
  if (stride != 1 || n <= 0) return;
  const uintptr_t first = reinterpret_cast<uintptr_t>(p) & ~uintptr_t(63);
  const uintptr_t last = reinterpret_cast<uintptr_t>(p + n) - 1;
  for (uintptr_t line = first; line <= last; line += 64)
    prefetch_line(reinterpret_cast<const void*>(line), write);
}

// A (n, m) block of X with strides (sn, sm): its cache lines, where one
// of the strides is 1 (else nothing).
template <typename X>
void prefetch_block(const X* at, int64_t n, int64_t sn, int64_t m, int64_t sm, bool write) {
  if (sn != 1) std::swap(n, m), std::swap(sn, sm);
  if (sn != 1) return;
  if (sm == n) return prefetch_row(at, 1, n * m, write);
  for (int64_t j = 0; j < m; ++j) prefetch_row(at + j * sm, 1, n, write);
}

// How far ahead the decode loops ask for the state rows: this many
// channels on, a few KB, about the memory latency of a few tasks.
constexpr int64_t kPrefetchChannels = 256;

// Asks for the state rows of the upstream update's tasks [task, task +
// count) (task t: batch row t / nblk, `lanes` channels from (t % nblk) *
// lanes), as one run per batch row. A decode task does little arithmetic
// per byte, and between two steps of a layer a model's other layers evict
// its states: each batch row's state is a short run somewhere in the pool,
// which the hardware prefetchers find late. x was just written by the
// layer's projection and stays cached. Asked for a group of tasks at once
// (fewer calls: in cache the calls were what cost), ahead of the tasks
// that use them.
template <typename X>
void prefetch_update_states(const ConvParams& p, int64_t task, int64_t count, int64_t nblk,
                            int64_t lanes) {
  const Strided& st = p.conv_state;
  const int32_t* indices = ptr<int32_t>(p.state_indices);
  while (count > 0 && task / nblk < p.batch) {
    const int64_t b = task / nblk, c = task % nblk, k = std::min(count, nblk - c);
    const int64_t d0 = c * lanes, n = std::min(k * lanes, p.dim - d0);
    const int64_t row = indices ? indices[b * p.state_indices.s0] : b;
    if (row >= 0 && row < p.num_states)
      prefetch_block(ptr<X>(st) + row * st.s0 + d0 * st.s1, n, st.s1, p.state_len, st.s2, true);
    task += k;
    count -= k;
  }
}

// Tasks of `lanes` channels in kPrefetchChannels.
inline int64_t prefetch_group(int64_t lanes) { return (kPrefetchChannels + lanes - 1) / lanes; }

// The upstream update's loops: every `group` tasks, the state rows of the
// `group` tasks that start `group` tasks on.
struct UpdatePrefetch {
  int64_t group = 0;  // 0: none
  int64_t nblk = 1, lanes = 1, end = 0;
  template <typename X>
  void before(const ConvParams& p, int64_t task) const {
    if (group == 0 || task % group != 0) return;
    const int64_t from = task + group;
    if (from < end) prefetch_update_states<X>(p, from, std::min(group, end - from), nblk, lanes);
  }
};

// ---------------------------------------------------------------------------
// Taps: the one place weight and bias are widened to the accumulator type.

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
  // Weight and bias are converted here, once per call, so only this depends
  // on their dtype: the kernels are instantiated per x dtype only.
  dispatch_dtype(p.weight_dtype, [&]<typename Wt>() {
    const Wt* w = ptr<Wt>(p.weight);
    // A contiguous (D, W) weight of a constant width is one pass over it in
    // memory order with a fixed stride, which the compiler turns into whole
    // vector loads, conversions and permutes: at B = 1 the general passes
    // below cost more than the convolution itself.
    dispatch_width(p.weight.s1 == 1 && p.weight.s0 == W ? W : 0, [&]<int kW>() {
      if constexpr (kW > 0) {
        for (int64_t d = d_lo; d < d_hi; ++d)
          for (int64_t k = 0; k < kW; ++k) rows[k * stride + d] = A(w[d * kW + k]);
      } else if constexpr (sizeof(Wt) >= sizeof(A)) {
        // One pass over weight in memory order (a channel's taps are usually
        // adjacent), writing W rows at once: faster for fp32 weights, whose
        // reads then stream; 16-bit ones go row by row below, where their
        // conversion vectorizes.
        for (int64_t d = d_lo; d < d_hi; ++d) {
          const Wt* wd = w + d * p.weight.s0;
          for (int64_t k = 0; k < W; ++k) rows[k * stride + d] = A(wd[k * p.weight.s1]);
        }
      } else {
        for (int64_t k = 0; k < W; ++k)
          for (int64_t d = d_lo; d < d_hi; ++d) rows[k * stride + d] = A(w[d * p.weight.s0 + k * p.weight.s1]);
      }
    });
    for (int64_t k = 0; k < W; ++k) std::fill(rows + k * stride + d_hi, rows + k * stride + pad_hi, A(0));
    A* r = rows + W * stride;
    if (p.bias.given()) {
      const Wt* bi = ptr<Wt>(p.bias);
      if (p.bias.s0 == 1) {  // vectorizes
        for (int64_t d = d_lo; d < d_hi; ++d) r[d] = A(bi[d]);
      } else {
        for (int64_t d = d_lo; d < d_hi; ++d) r[d] = A(bi[d * p.bias.s0]);
      }
    } else {
      std::fill(r + d_lo, r + d_hi, A(0));
    }
    std::fill(r + d_hi, r + pad_hi, A(0));
  });
  return {rows, stride, W};
}

}  // namespace causal_conv1d::cpu::CPU_CAPABILITY
